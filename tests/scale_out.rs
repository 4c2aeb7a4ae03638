//! Scale-out: two instances of the counter app, as separate processes, share one Redis (or one
//! Redis Cluster, or one MongoDB); a client that alternates between them keeps its session and
//! sees every visit counted once.
//!
//! The app is `examples/counter.rs`, built by the test with `cargo build --example counter`
//! into the target directory the test itself runs from.

#![cfg(any(feature = "redis", feature = "mongodb"))]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[cfg(feature = "mongodb")]
use session_core::store::MongoStore;
#[cfg(feature = "redis")]
use session_core::store::RedisStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Both instances sign cookies with this, as instances behind one load balancer would.
const SECRET: &str = "scale-out-test-secret-that-is-at-least-32-bytes";

#[cfg(feature = "redis")]
fn redis_url() -> String {
    std::env::var("SESSION_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

#[cfg(feature = "redis")]
fn cluster_spec() -> String {
    std::env::var("SESSION_TEST_REDIS_CLUSTER").unwrap_or_else(|_| {
        "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".to_owned()
    })
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_alternating_between_two_instances_on_redis_keeps_its_session() {
    let url = redis_url();
    if common::server_or_skip(&format!("Redis at {url}"), RedisStore::connect(&url).await).is_none()
    {
        return;
    }
    alternate_between_two_instances(&url, 100).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_alternating_between_two_instances_on_redis_cluster_keeps_its_session() {
    let spec = cluster_spec();
    let reachable = RedisStore::connect_cluster(&spec).await;
    if common::server_or_skip(&format!("Redis Cluster at {spec}"), reachable).is_none() {
        return;
    }
    alternate_between_two_instances(&spec, 100).await;
}

#[cfg(feature = "mongodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_alternating_between_two_instances_on_mongodb_keeps_its_session() {
    let url = std::env::var("SESSION_TEST_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/test".to_owned());
    let reachable = MongoStore::connect(&url).await;
    if common::server_or_skip(&format!("MongoDB at {url}"), reachable).is_none() {
        return;
    }
    alternate_between_two_instances(&url, 40).await;
}

/// Sends `requests` visits, alternating between two instances on `store`.
async fn alternate_between_two_instances(store: &str, requests: u32) {
    let binary = tokio::task::spawn_blocking(counter_binary)
        .await
        .unwrap()
        .clone();
    let instances = [
        Instance::start(&binary, store).await,
        Instance::start(&binary, store).await,
    ];
    let mut cookie: Option<String> = None;
    for n in 1..=requests {
        let instance = &instances[(n % 2) as usize];
        let reply = get(instance.port, "/", cookie.as_deref()).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, format!("You visited {n} times").as_str()),
            "request {n}, to the instance on port {}",
            instance.port
        );
        if let Some(pair) = reply.cookie("sid") {
            cookie = Some(pair);
        }
        assert!(
            cookie.is_some(),
            "the first response sets the session cookie"
        );
    }
}

/// The counter example, built once per test process. Its path comes from this test's own:
/// `<target>/<profile>/deps/scale_out-<hash>` next to `<target>/<profile>/examples/counter`.
fn counter_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test knows its own path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from <target>/<profile>/deps");
        let target_dir = profile_dir
            .parent()
            .expect("a profile directory has a parent");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let mut build = Command::new(cargo);
        build
            .args([
                "build",
                "--quiet",
                "--example",
                "counter",
                "--manifest-path",
            ])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            build.arg("--release");
        }
        let output = build.output().expect("cargo runs");
        assert!(
            output.status.success(),
            "cargo build --example counter failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let binary = profile_dir
            .join("examples")
            .join(format!("counter{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.exists(), "{} was not built", binary.display());
        binary
    })
}

/// One running instance of the app; killed when dropped.
struct Instance {
    child: Child,
    port: u16,
}

impl Instance {
    async fn start(binary: &Path, store: &str) -> Self {
        let port = free_port();
        let child = Command::new(binary)
            .env("PORT", port.to_string())
            .env("SESSION_SECRET", SECRET)
            .env("SESSION_STORE", store)
            .env_remove("SESSION_CACHE")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut instance = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = instance.child.try_wait().unwrap() {
                panic!("the counter app on port {port} exited at start: {status}");
            }
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return instance;
            }
            assert!(
                Instant::now() < deadline,
                "the counter app did not listen on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A response, read whole.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    /// The `name=value` pair of the cookie `name` this response sets, if it sets it.
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(header, _)| header.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, value)| value.split(';').next().unwrap_or("").trim().to_owned())
            .find(|pair| pair.starts_with(&format!("{name}=")))
    }
}

/// `GET path` over a fresh HTTP/1.1 connection.
async fn get(port: u16, path: &str, cookie: Option<&str>) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
        if let Some(cookie) = cookie {
            request.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the app answers within 10 s");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..end])
            .ok()
            .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok())
            .expect("a chunk size");
        if size == 0 {
            break;
        }
        let start = end + 2;
        body.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    body
}
