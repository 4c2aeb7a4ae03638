//! The real express-session app of `tests/express-app/` beside the Rust counter in express
//! compatibility mode, and a client with one cookie jar for both.
//!
//! Node.js and npm are needed; without them the tests print why they skip, unless
//! `SESSIONS_REQUIRE_SERVERS=1`. The app's packages are installed with `npm ci` from its
//! `package-lock.json` when `node_modules` is missing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use session_core::{ExpressSecrets, Store};
use typed_sessions::counter;

use super::servers_required;

/// The secret both apps share: express's own example, shorter than a native key may be.
pub const SECRET: &str = "keyboard cat";

/// The express app's directory.
pub fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/express-app")
}

/// A skip (printed) or, with `SESSIONS_REQUIRE_SERVERS=1`, a failure.
pub fn skip(reason: &str) -> Option<std::convert::Infallible> {
    if servers_required() {
        panic!("the express interop tests need it (SESSIONS_REQUIRE_SERVERS=1): {reason}");
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "skipping: {reason}; set SESSIONS_REQUIRE_SERVERS=1 to make this a failure"
    );
    None
}

/// Installs the express app's packages once per test process, if they are missing. `None`
/// (after printing why) when Node.js or npm is not there.
pub fn install() -> Option<()> {
    static INSTALLED: Mutex<Option<bool>> = Mutex::new(None);
    let mut installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ok) = *installed {
        return ok.then_some(());
    }
    let ok = install_now();
    *installed = Some(ok);
    ok.then_some(())
}

fn install_now() -> bool {
    let found = |program: &str| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !found("node") || !found("npm") {
        skip("node and npm are not both on PATH (Node.js 18 or later)");
        return false;
    }
    let dir = app_dir();
    if dir.join("node_modules/express-session").is_dir() {
        return true;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent"])
        .current_dir(&dir)
        .status();
    match status {
        Ok(status) if status.success() => true,
        other => panic!("npm ci in {} failed: {other:?}", dir.display()),
    }
}

/// A running `node app.js`, stopped when dropped.
pub struct NodeApp {
    child: Child,
    pub base: String,
}

impl NodeApp {
    /// Starts the express app on a free port with `store` (`connect-redis://...` or
    /// `connect-pg://...`) and the prefix or table name of the test.
    pub async fn start(store: &str, prefix: &str, table: &str) -> NodeApp {
        let port = free_port();
        let child = Command::new("node")
            .arg("app.js")
            .current_dir(app_dir())
            .env("PORT", port.to_string())
            .env("SESSION_SECRET", SECRET)
            .env("SESSION_STORE", store)
            .env("SESSION_PREFIX", prefix)
            .env("SESSION_TABLE", table)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node app.js starts");
        let app = NodeApp {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return app;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the express app did not listen on port {port} within 10 s");
    }
}

impl Drop for NodeApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// Serves the counter app in express compatibility mode on `store`; returns its base URL.
pub async fn serve_rust(store: Arc<dyn Store>) -> String {
    let secrets = ExpressSecrets::new(SECRET).unwrap();
    let layer = counter::express_layer(store, secrets).check().unwrap();
    serve_router(counter::app_with(layer)).await
}

/// Serves `app` on a free port; returns its base URL.
pub async fn serve_router(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    format!("http://{addr}")
}

/// A random suffix for this test's Redis prefix or table name.
pub fn unique(what: &str) -> String {
    let id = session_core::SessionId::generate().unwrap();
    let suffix: String = id
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{what}_{suffix}")
}

/// One answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub set_cookies: Vec<String>,
}

/// An HTTP client with one cookie jar, like a browser talking to both apps behind one proxy.
pub struct Jar {
    client: Client<HttpConnector, Body>,
    pub cookies: BTreeMap<String, String>,
}

impl Default for Jar {
    fn default() -> Self {
        Self::new()
    }
}

impl Jar {
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            cookies: BTreeMap::new(),
        }
    }

    pub async fn get(&mut self, url: &str) -> Answer {
        self.send(Request::get(url), Body::empty()).await
    }

    pub async fn post(&mut self, url: &str, form: &str) -> Answer {
        let request =
            Request::post(url).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        self.send(request, Body::from(form.to_owned())).await
    }

    /// The cookie header the jar sends.
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, mut request: axum::http::request::Builder, body: Body) -> Answer {
        if !self.cookies.is_empty() {
            request = request.header(header::COOKIE, self.cookie_header());
        }
        let response = self
            .client
            .request(request.body(body).unwrap())
            .await
            .expect("the app answers");
        let status = response.status().as_u16();
        let set_cookies: Vec<String> = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for cookie in &set_cookies {
            self.keep(cookie);
        }
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            set_cookies,
        }
    }

    /// Keeps a `Set-Cookie` as a browser would: an empty value, `Max-Age=0` or an expiry in
    /// 1970 removes the cookie.
    fn keep(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|pair| pair.trim().split_once('=')) else {
            return;
        };
        let removes = value.is_empty()
            || parts.any(|attribute| {
                let attribute = attribute.trim().to_ascii_lowercase();
                attribute == "max-age=0" || attribute.contains("1970")
            });
        if removes {
            self.cookies.remove(name);
        } else {
            self.cookies.insert(name.to_owned(), value.to_owned());
        }
    }
}

/// The store key of an express session id, as the layer in express mode names it.
pub fn store_key(id: &str) -> session_core::StoreKey {
    session_core::StoreKey::unhashed(&session_core::SessionId::parse(id).expect("an express id"))
}
