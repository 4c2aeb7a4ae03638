//! Helpers shared by the integration tests: a store that records its calls, a store that
//! fails on demand, and a tiny cookie-keeping client for a `Router`.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use session_core::store::{IndexEntry, IndexMember, MemoryStore};
use session_core::{Key, Record, SaveMode, Store, StoreError, StoreKey, Timestamp};
use tower::ServiceExt;

/// A fixed key, so tests can sign cookies themselves.
pub fn key() -> Key {
    Key::from_bytes(&[7u8; 32]).unwrap()
}

/// One store call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub op: &'static str,
    pub key: StoreKey,
    /// Field names written (for create and save).
    pub fields: Vec<String>,
    pub mode: Option<SaveMode>,
}

/// A memory store that records every call made to it.
#[derive(Clone, Default)]
pub struct RecordingStore {
    pub inner: MemoryStore,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl RecordingStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The operations called, in order, as `["load", "save"]`.
    pub fn ops(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().iter().map(|c| c.op).collect()
    }

    pub fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }

    fn record(
        &self,
        op: &'static str,
        key: &StoreKey,
        record: Option<&Record>,
        mode: Option<SaveMode>,
    ) {
        let fields = record
            .map(|r| r.fields.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        self.calls.lock().unwrap().push(Call {
            op,
            key: *key,
            fields,
            mode,
        });
    }
}

#[async_trait]
impl Store for RecordingStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.record("load", key, None, None);
        self.inner.load(key).await
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        self.record("create", key, Some(record), None);
        self.inner.create(key, record).await
    }
    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        self.record("save", key, Some(record), Some(mode));
        self.inner.save(key, record, mode).await
    }
    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        self.record("touch", key, None, None);
        self.inner.touch(key, expires_at).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.record("delete", key, None, None);
        self.inner.delete(key).await
    }
    // Index calls go to the memory store unrecorded: only the session calls are asserted.
    fn supports_index(&self) -> bool {
        true
    }
    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.inner.index_add(entry, key, until).await
    }
    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        self.inner.index_remove(entry, key).await
    }
    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        self.inner.index_members(entry).await
    }
}

/// A store of an app's own, as a third party might write it: the memory store behind only
/// the five required methods, so no locks and no indexes.
#[derive(Clone, Default)]
pub struct BareStore(pub MemoryStore);

#[async_trait]
impl Store for BareStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.0.load(key).await
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        self.0.create(key, record).await
    }
    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        self.0.save(key, record, mode).await
    }
    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        self.0.touch(key, expires_at).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.0.delete(key).await
    }
}

/// The store key of the session named by a `sid=ID.SIG` cookie pair.
pub fn store_key_of(pair: &str) -> StoreKey {
    let value = pair.split_once('=').map_or(pair, |(_, value)| value);
    session_core::SessionId::parse(&value[..32])
        .expect("a session id in the cookie")
        .store_key()
}

impl Call {
    /// `load`, `touch`, `delete`, `create(a,b)`, `save merge(a)`, `save replace(a)`: the call
    /// with the fields it wrote, sorted, and the save mode.
    pub fn describe(&self) -> String {
        let mut fields = self.fields.clone();
        fields.sort();
        let fields = fields.join(",");
        match (self.op, self.mode) {
            ("create", _) => format!("create({fields})"),
            ("save", Some(SaveMode::Merge)) => format!("save merge({fields})"),
            ("save", Some(SaveMode::Replace)) => format!("save replace({fields})"),
            (op, _) => op.to_owned(),
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// Every `Set-Cookie` header.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The `Set-Cookie` header for `name`, if any.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The `name=value` pair of the session cookie set by this response.
    pub fn cookie_pair(&self, name: &str) -> Option<String> {
        self.set_cookie(name)
            .map(|c| c.split(';').next().unwrap().to_owned())
    }
}

/// Sends one request through `app`.
pub async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub fn get(uri: &str, cookie: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(uri);
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    builder.body(Body::empty()).unwrap()
}

pub fn post_form(uri: &str, form: &str, cookie: Option<&str>) -> Request<Body> {
    let mut builder =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    builder.body(Body::from(form.to_owned())).unwrap()
}

/// A client that keeps the session cookie between requests, like a browser.
pub struct Client {
    pub app: Router,
    pub name: String,
    pub cookie: Option<String>,
}

impl Client {
    pub fn new(app: Router) -> Self {
        Self {
            app,
            name: "sid".to_owned(),
            cookie: None,
        }
    }

    pub async fn get(&mut self, uri: &str) -> Reply {
        let reply = send(&self.app, get(uri, self.cookie.as_deref())).await;
        self.keep(&reply);
        reply
    }

    pub async fn post(&mut self, uri: &str, form: &str) -> Reply {
        let reply = send(&self.app, post_form(uri, form, self.cookie.as_deref())).await;
        self.keep(&reply);
        reply
    }

    fn keep(&mut self, reply: &Reply) {
        if let Some(set) = reply.set_cookie(&self.name) {
            let pair = set.split(';').next().unwrap().to_owned();
            let cleared = set.contains("Max-Age=0");
            self.cookie = if cleared { None } else { Some(pair) };
        }
    }
}

/// A client without a cookie jar: it keeps the session token from a response header and
/// sends it back in the same header, as an API or mobile client does.
pub struct TokenClient {
    pub app: Router,
    /// The token header, as the response sends it (`x-session-token`, `authorization`).
    pub header: header::HeaderName,
    /// The header's whole value to send back (`TOKEN` or `Bearer TOKEN`).
    pub token: Option<String>,
}

impl TokenClient {
    pub fn new(app: Router, header: &'static str) -> Self {
        Self {
            app,
            header: header::HeaderName::from_static(header),
            token: None,
        }
    }

    pub async fn get(&mut self, uri: &str) -> Reply {
        let mut builder = Request::get(uri);
        if let Some(token) = &self.token {
            builder = builder.header(&self.header, token);
        }
        let reply = send(&self.app, builder.body(Body::empty()).unwrap()).await;
        if let Some(value) = reply.headers.get(&self.header) {
            let value = value.to_str().unwrap();
            self.token = (!value.is_empty()).then(|| value.to_owned());
        }
        reply
    }
}

/// Whether a missing test server is a failure (set by `.ci/run`) rather than a skip.
pub fn servers_required() -> bool {
    std::env::var("SESSIONS_REQUIRE_SERVERS").is_ok_and(|v| v == "1" || v == "true")
}

/// Turns a failed connection to a test server into a skip with a printed reason, or into a
/// failure when `SESSIONS_REQUIRE_SERVERS=1`.
pub fn server_or_skip<T, E: std::fmt::Display>(what: &str, connected: Result<T, E>) -> Option<T> {
    match connected {
        Ok(value) => Some(value),
        Err(error) if servers_required() => {
            panic!("{what} is required (SESSIONS_REQUIRE_SERVERS=1) but not reachable: {error}")
        }
        Err(error) => {
            // Straight to stderr: the test harness captures `eprintln!` of passing tests.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "skipping: {what} is not reachable ({error}); set SESSIONS_REQUIRE_SERVERS=1 to make this a failure"
            );
            None
        }
    }
}

pub mod cart;
pub mod express;
pub mod restart;
pub mod sql;
#[cfg(all(
    feature = "file",
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "memcached",
    feature = "mongodb"
))]
pub mod stores;
pub mod visit;
pub mod wide;
