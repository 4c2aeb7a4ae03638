//! The seed's counter app: `req.session.views`, a login, a cart and a logout.
//!
//! | route | does |
//! |---|---|
//! | `GET /` | counts the visit: `You visited N times` |
//! | `GET /peek` | `views: N`, changing nothing |
//! | `POST /login` (`name=...`, optional `remember=1`) | new session id, remembers the user, `303` to `/`; with `remember=1` the cookie lasts 30 days (`Max-Age=2592000`) instead of 15 minutes |
//! | `GET /me` | `user: NAME` or `user: none` |
//! | `POST /cart` (`item=...`) | adds to the cart, `303` to `/cart` |
//! | `GET /cart` | the cart, one item per line |
//! | `POST /logout` | destroys the session, `303` to `/`; a new session holds the flash `Signed out` |
//! | `GET /flash` | `flash: TEXT` once after login (`Welcome, NAME`) or logout (`Signed out`), then `flash: none` |
//! | `GET /sessions` | the current user's sessions, one per line, oldest login first: `* LAST_USED created CREATED expires EXPIRES session SHORT_ID`, `*` marking this one (others start with a space); `user: none` when not logged in |
//! | `POST /sessions/revoke-others` | ends every other session of the current user (they are logged out at their next request), `303` to `/sessions` |
//!
//! With `SESSION_COMPAT=express` the app shares its sessions with an express-session app:
//! see [`express_layer`] and README's "Migrating from express-session".
//!
//! The session token travels in the `sid` cookie, or, with `SESSION_TRANSPORT=header` (or
//! `both`), in the `X-Session-Token` header: the first response carries it, and a client
//! sends it back as it came.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Form;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use session_core::index::{IndexValue, SessionIndex};
use session_core::store::{CachingStore, MemoryStore, Store};
use session_core::{
    ExpressSecrets, Key, Session, SessionError, SessionLayer, StoreError, Transport,
};
use tower_http::timeout::TimeoutLayer;

/// The cookie lifetime from the seed: 15 minutes.
pub const MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// The longest a request may take, reading its body included: `408 Request Timeout` after.
/// A session is loaded (and, with per-session locks, locked) when a handler takes it, which
/// can be before a slow client has sent its body; this bounds how long such a client holds it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the app keeps per visitor.
#[derive(Session)]
pub struct Visit {
    /// Indexed: `GET /sessions` lists a user's sessions, and they can be revoked together.
    #[session(index)]
    pub user: Option<User>,
    views: u32,
    cart: Vec<String>,
    /// A message for the next request: `Welcome, NAME` after login, `Signed out` after logout.
    #[session(flash)]
    flash: Option<String>,
}

/// The signed-in user, stored as express-session apps usually keep it: `{"name": "ada"}`.
/// A bare name (`"ada"`, as sessions stored before kept it) reads too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredUser")]
pub struct User {
    /// What the user signed in as.
    pub name: String,
}

/// The forms a stored user comes in.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredUser {
    Object { name: String },
    Name(String),
}

/// A user keys the session index by its stored form, `{"name": "..."}`.
impl IndexValue for User {}

impl From<StoredUser> for User {
    fn from(stored: StoredUser) -> Self {
        match stored {
            StoredUser::Object { name } | StoredUser::Name(name) => Self { name },
        }
    }
}

/// The app's routes, without the session layer.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(home))
        .route("/peek", get(peek))
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/cart", get(cart).post(add_to_cart))
        .route("/logout", post(logout))
        .route("/flash", get(flash))
        .route("/sessions", get(sessions))
        .route("/sessions/revoke-others", post(revoke_others))
}

/// The app with sessions in `store`, as the example serves it by default.
pub fn app(store: Arc<dyn Store>, key: Key) -> Router {
    app_with(layer(store, key))
}

/// The app's routes behind `layer`, inside a [`REQUEST_TIMEOUT`]: the session layer runs
/// within the timeout, so a request cut off by it also gives its session (and lock) back.
pub fn app_with(layer: SessionLayer) -> Router {
    within_request_timeout(routes().layer(layer))
}

/// `app` (routes behind their session layer) inside a [`REQUEST_TIMEOUT`], answering `408`.
pub fn within_request_timeout(app: Router) -> Router {
    app.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        REQUEST_TIMEOUT,
    ))
}

/// The app's session layer before the environment's options: 15-minute sessions, the token
/// in the `sid` cookie (or, once the transport says so, in the `X-Session-Token` header).
pub fn layer(store: Arc<dyn Store>, key: Key) -> SessionLayer {
    SessionLayer::from_arc(store, key).with_max_age(MAX_AGE)
}

/// The app's session layer in express-session compatibility mode (`SESSION_COMPAT=express`):
/// the `connect.sid` cookie signed as express signs it, 15-minute sessions, records in the
/// format of the store (`connect-redis://` or `connect-pg://` to share them with a Node app).
pub fn express_layer(store: Arc<dyn Store>, secrets: ExpressSecrets) -> SessionLayer {
    // express-session's stores keep no index of this library's: `GET /sessions` says so.
    SessionLayer::express_from_arc(store, secrets)
        .with_max_age(MAX_AGE)
        .without_indexes()
}

/// The compatibility mode named by `SESSION_COMPAT`: `None` (empty or `none`) or `express`.
///
/// # Errors
/// A message naming the accepted values.
pub fn compat_from_spec(spec: &str) -> Result<Option<Compat>, String> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "" | "none" => Ok(None),
        "express" => Ok(Some(Compat::Express)),
        other => Err(format!(
            "unknown SESSION_COMPAT {other:?}; expected express (or nothing)"
        )),
    }
}

/// A compatibility mode of the session layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compat {
    /// Share sessions with an express-session app.
    Express,
}

/// Whether `spec` names a store that keeps express-session's records.
pub fn is_express_store(spec: &str) -> bool {
    let spec = spec.trim();
    spec.starts_with("connect-redis://") || spec.starts_with("connect-pg://")
}

/// The transport named by `SESSION_TRANSPORT`: `cookie` (or empty), `header` or `both`.
///
/// # Errors
/// A message naming the accepted values.
pub fn transport_from_spec(spec: &str) -> Result<Transport, String> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "" | "cookie" => Ok(Transport::Cookie),
        "header" => Ok(Transport::Header),
        "both" => Ok(Transport::Both),
        other => Err(format!(
            "unknown SESSION_TRANSPORT {other:?}; expected cookie, header or both"
        )),
    }
}

/// The proxies named by `SESSION_TRUSTED_PROXIES`: addresses or networks separated by
/// commas, like `127.0.0.1,10.0.0.0/8`. Empty: none.
pub fn trusted_proxies_from_spec(spec: &str) -> Vec<String> {
    spec.split(',')
        .map(str::trim)
        .filter(|proxy| !proxy.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The store named by `SESSION_STORE`.
///
/// | spec | store |
/// |---|---|
/// | `memory` or empty | [`MemoryStore`] |
/// | `file:DIR` | one file per session in `DIR` |
/// | `sqlite:PATH` | SQLite database file `PATH` |
/// | `postgres://...` | PostgreSQL |
/// | `mysql://...` | MySQL or MariaDB |
/// | `redis://...`, `redis+cluster://...` | Redis, Redis Cluster |
/// | `memcache://...` | Memcached |
/// | `mongodb://...` | MongoDB (the database named in the URL) |
/// | `connect-redis://HOST:PORT` | Redis as connect-redis keeps it (`sess:` + id), for `SESSION_COMPAT=express` |
/// | `connect-pg://USER@HOST:PORT/DB` | PostgreSQL as connect-pg-simple keeps it (table `session`), for `SESSION_COMPAT=express` |
///
/// # Errors
/// A message naming the accepted forms when `spec` names no known store, or the store's
/// error when it cannot be opened. A password in `spec` is never part of the message.
pub async fn store_from_spec(spec: &str) -> Result<Arc<dyn Store>, String> {
    open_store(spec.trim())
        .await
        .map_err(|message| redact_in(&message, spec))
}

async fn open_store(spec: &str) -> Result<Arc<dyn Store>, String> {
    match spec {
        "" | "memory" => Ok(Arc::new(MemoryStore::new())),
        #[cfg(feature = "file")]
        _ if spec.starts_with("file:") => opened(
            spec,
            session_core::store::FileStore::open(&spec["file:".len()..]).await,
        ),
        #[cfg(feature = "sqlite")]
        _ if spec.starts_with("sqlite:") => {
            opened(spec, session_core::store::SqliteStore::connect(spec).await)
        }
        #[cfg(feature = "postgres")]
        _ if spec.starts_with("postgres://") || spec.starts_with("postgresql://") => opened(
            spec,
            session_core::store::PostgresStore::connect(spec).await,
        ),
        #[cfg(feature = "mysql")]
        _ if spec.starts_with("mysql://") || spec.starts_with("mariadb://") => {
            opened(spec, session_core::store::MySqlStore::connect(spec).await)
        }
        #[cfg(feature = "redis")]
        _ if spec.starts_with("redis://") || spec.starts_with("rediss://") => {
            opened(spec, session_core::store::RedisStore::connect(spec).await)
        }
        #[cfg(feature = "redis")]
        _ if spec.starts_with("redis+cluster://") => opened(
            spec,
            session_core::store::RedisStore::connect_cluster(spec).await,
        ),
        #[cfg(feature = "memcached")]
        _ if spec.starts_with("memcache://") => opened(
            spec,
            session_core::store::MemcachedStore::connect(spec).await,
        ),
        #[cfg(feature = "mongodb")]
        _ if spec.starts_with("mongodb://") => {
            opened(spec, session_core::store::MongoStore::connect(spec).await)
        }
        #[cfg(feature = "redis")]
        _ if spec.starts_with("connect-redis://") => {
            let url = format!("redis://{}", &spec["connect-redis://".len()..]);
            opened(
                spec,
                session_core::store::ConnectRedisStore::connect(&url).await,
            )
        }
        #[cfg(feature = "postgres")]
        _ if spec.starts_with("connect-pg://") => {
            let url = format!("postgres://{}", &spec["connect-pg://".len()..]);
            opened(
                spec,
                session_core::store::ConnectPgStore::connect(&url).await,
            )
        }
        other => Err(format!(
            "unknown SESSION_STORE {other:?}; this build knows: {}",
            KNOWN_STORES.join(", ")
        )),
    }
}

/// Boxes an opened store, or says which spec failed and why.
#[cfg_attr(
    not(any(
        feature = "file",
        feature = "sqlite",
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "memcached",
        feature = "mongodb"
    )),
    allow(dead_code)
)]
fn opened<S: Store>(
    spec: &str,
    result: Result<S, session_core::StoreError>,
) -> Result<Arc<dyn Store>, String> {
    match result {
        Ok(store) => Ok(Arc::new(store)),
        Err(error) => Err(format!("SESSION_STORE {spec:?}: {error}")),
    }
}

/// `spec` with the password of its URL, if it has one, replaced by `***`:
/// `postgres://app:secret@db/app` becomes `postgres://app:***@db/app`.
pub fn redact(spec: &str) -> String {
    match password_of(spec) {
        Some(password) => spec.replacen(&format!(":{password}@"), ":***@", 1),
        None => spec.to_owned(),
    }
}

/// `message` with every copy of the password in `spec` replaced by `***` (an error may quote
/// the URL, or the password alone).
fn redact_in(message: &str, spec: &str) -> String {
    match password_of(spec) {
        Some(password) => message.replace(password, "***"),
        None => message.to_owned(),
    }
}

/// The password of a `scheme://user:password@host...` URL.
fn password_of(spec: &str) -> Option<&str> {
    let rest = &spec[spec.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let password = &userinfo[userinfo.find(':')? + 1..];
    (!password.is_empty()).then_some(password)
}

/// The `SESSION_STORE` forms this build accepts.
pub const KNOWN_STORES: &[&str] = &[
    "memory",
    #[cfg(feature = "file")]
    "file:DIR",
    #[cfg(feature = "sqlite")]
    "sqlite:PATH",
    #[cfg(feature = "postgres")]
    "postgres://USER@HOST:PORT/DB",
    #[cfg(feature = "mysql")]
    "mysql://USER@HOST:PORT/DB",
    #[cfg(feature = "redis")]
    "redis://HOST:PORT",
    #[cfg(feature = "redis")]
    "redis+cluster://HOST:PORT,HOST:PORT,...",
    #[cfg(feature = "memcached")]
    "memcache://HOST:PORT",
    #[cfg(feature = "mongodb")]
    "mongodb://HOST:PORT/DB",
    #[cfg(feature = "redis")]
    "connect-redis://HOST:PORT",
    #[cfg(feature = "postgres")]
    "connect-pg://USER@HOST:PORT/DB",
];

/// Puts an in-process cache in front of `store` when `SESSION_CACHE` asks for one.
///
/// `spec` is empty (no cache) or the longest time a change made through another instance may
/// be served stale, like `500ms` or `2s`, optionally followed by `,CAPACITY` (sessions kept;
/// default 10 000): `SESSION_CACHE=1s,50000`.
///
/// # Errors
/// A message saying what is wrong with `spec`.
pub fn with_cache(store: Arc<dyn Store>, spec: &str) -> Result<Arc<dyn Store>, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(store);
    }
    let (staleness, capacity) = match spec.split_once(',') {
        Some((staleness, capacity)) => (staleness.trim(), Some(capacity.trim())),
        None => (spec, None),
    };
    let staleness = parse_duration(staleness)
        .ok_or_else(|| format!("SESSION_CACHE {spec:?}: expected a duration like 500ms or 2s"))?;
    let mut cache = CachingStore::new(store).with_max_staleness(staleness);
    if let Some(capacity) = capacity {
        let capacity: usize = capacity
            .parse()
            .map_err(|_| format!("SESSION_CACHE {spec:?}: capacity must be a whole number"))?;
        cache = cache.with_capacity(capacity);
    }
    Ok(Arc::new(cache))
}

/// `250ms`, `2s` or `1m`.
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number * 60)),
        _ => None,
    }
}

async fn home(mut visit: Session<Visit>) -> String {
    *visit.views_mut() += 1;
    format!("You visited {} times", visit.views())
}

async fn peek(visit: Session<Visit>) -> String {
    format!("views: {}", visit.views())
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    /// `remember=1`: keep the login for [`REMEMBER_ME`] rather than the browser session.
    #[serde(default)]
    remember: Option<String>,
}

/// How long "remember me" keeps a login: 30 days.
pub const REMEMBER_ME: Duration = Duration::from_secs(30 * 24 * 60 * 60);

async fn login(mut visit: Session<Visit>, Form(form): Form<LoginForm>) -> Response {
    let name = form.name.trim();
    if name.is_empty() {
        return (StatusCode::UNPROCESSABLE_ENTITY, "name must not be empty").into_response();
    }
    // A new id at login defeats session fixation; the visit count and cart stay.
    visit.regenerate();
    visit.set_user(Some(User {
        name: name.to_owned(),
    }));
    visit.set_flash(Some(format!("Welcome, {name}")));
    if form.remember.as_deref() == Some("1") {
        visit.set_cookie_max_age(Some(REMEMBER_ME));
    }
    Redirect::to("/").into_response()
}

async fn me(visit: Session<Visit>) -> String {
    match visit.user() {
        Some(user) => format!("user: {}", user.name),
        None => "user: none".to_owned(),
    }
}

#[derive(Deserialize)]
struct CartForm {
    item: String,
}

async fn add_to_cart(mut visit: Session<Visit>, Form(form): Form<CartForm>) -> Response {
    let item = form.item.trim();
    if item.is_empty() || item.contains('\n') {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "item must be one non-empty line",
        )
            .into_response();
    }
    visit.cart_mut().push(item.to_owned());
    Redirect::to("/cart").into_response()
}

async fn cart(visit: Session<Visit>) -> Response {
    let mut body = String::new();
    for item in visit.cart() {
        body.push_str(item);
        body.push('\n');
    }
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn logout(mut visit: Session<Visit>) -> Redirect {
    visit.destroy();
    // Written after `destroy()`: a new session holding only the message.
    visit.set_flash(Some("Signed out".to_owned()));
    Redirect::to("/")
}

async fn flash(visit: Session<Visit>) -> String {
    match visit.flash() {
        Some(message) => format!("flash: {message}"),
        None => "flash: none".to_owned(),
    }
}

async fn sessions(visit: Session<Visit>, index: SessionIndex) -> Response {
    let Some(user) = visit.user().clone() else {
        return "user: none".into_response();
    };
    drop(visit);
    match index.list(Visit::user_index(), &user).await {
        Ok(list) => {
            let mut body = String::new();
            for session in list {
                body.push_str(&format!(
                    "{} {} created {} expires {} session {}\n",
                    if session.current { '*' } else { ' ' },
                    rfc3339(session.last_used),
                    rfc3339(session.created_at),
                    rfc3339(session.expires_at),
                    session.session,
                ));
            }
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
        }
        Err(error) => index_failure(&error, "could not list the user's sessions"),
    }
}

async fn revoke_others(visit: Session<Visit>, index: SessionIndex) -> Response {
    let Some(user) = visit.user().clone() else {
        return Redirect::to("/sessions").into_response();
    };
    drop(visit);
    match index.revoke_others(Visit::user_index(), &user).await {
        Ok(ended) => {
            tracing::info!(ended, "revoked the user's other sessions");
            Redirect::to("/sessions").into_response()
        }
        Err(error) => index_failure(&error, "could not revoke the user's other sessions"),
    }
}

/// `501` where the layer keeps no index (express compatibility mode), `503` when the store
/// fails.
fn index_failure(error: &SessionError, what: &str) -> Response {
    if let SessionError::Store(StoreError::Unsupported(_)) = error {
        return (
            StatusCode::NOT_IMPLEMENTED,
            "sessions are not listed in this mode",
        )
            .into_response();
    }
    tracing::error!(%error, "{what}");
    (StatusCode::SERVICE_UNAVAILABLE, "sessions unavailable").into_response()
}

/// `2026-12-02T10:00:00Z`, to the second.
fn rfc3339(time: std::time::SystemTime) -> String {
    let time = time::OffsetDateTime::from(time)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
