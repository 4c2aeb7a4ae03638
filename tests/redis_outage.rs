//! Redis goes away under traffic and comes back: requests during the outage get a clear error
//! quickly (no hang, no panic), and sessions work again by themselves once Redis is back,
//! with nothing lost or corrupted.
//!
//! The test runs its own `redis-server` on a free loopback port, with an append-only file
//! fsynced on every write, so the data outlives the `SIGKILL` and the visitor's session goes
//! on after the restart.

#![cfg(feature = "redis")]

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use session_core::store::{RedisStore, Store};
use session_core::StoreKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use typed_sessions::counter;

/// The longest a request may take while Redis is down (the store gives up after 3 s).
const OUTAGE_REPLY_LIMIT: Duration = Duration::from_millis(3500);
/// How soon after Redis is back sessions must work again.
const RECOVERY_LIMIT: Duration = Duration::from_secs(3);

/// A private `redis-server`; killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts `redis-server` on `port`, keeping its data in `dir` (append-only file, fsynced
    /// on every write). `None` if there is no `redis-server` to run.
    async fn start(port: u16, dir: &Path) -> Result<Self, String> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        let mut server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(port).await {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("redis-server exited at start: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server did not answer on port {port}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `SIGKILL`: no chance to save anything beyond what is already on disk.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis server answers `PING` on `port`.
async fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut reply)).await,
        Ok(Ok(_)) if &reply == b"+PONG\r\n"
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_redis_restart_and_outage_requests_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(mut server) = common::server_or_skip(
        "a redis-server binary",
        RedisServer::start(port, dir.path()).await,
    ) else {
        return;
    };
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let app = counter::app(Arc::new(store), common::key());
    let mut client = common::Client::new(app.clone());

    for n in 1..=5 {
        let reply = client.get("/").await;
        assert_eq!(reply.body, format!("You visited {n} times"));
    }
    let cookie = client.cookie.clone().expect("a session cookie");

    // Traffic from other requests of the same visitor while Redis dies: each one ends with
    // 200 or the error status, never hangs.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let app = app.clone();
        let stop = stop.clone();
        async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let request = common::get("/peek", Some(&cookie));
                let reply =
                    tokio::time::timeout(Duration::from_secs(5), common::send(&app, request))
                        .await
                        .expect("a request under outage still answers");
                statuses.push(reply.status);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill();

    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(10), client.get("/"))
            .await
            .expect("a request while Redis is down answers");
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "body: {}",
            reply.body
        );
        assert!(
            took < OUTAGE_REPLY_LIMIT,
            "a request during the outage took {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    println!(
        "redis outage: requests failed with 500 in at most {} ms",
        slowest.as_millis()
    );

    // Back on the same port, with the same data directory.
    let server = RedisServer::start(port, dir.path()).await.unwrap();
    let back = Instant::now();
    let (recovered, reply) = loop {
        let reply = tokio::time::timeout(Duration::from_secs(10), client.get("/"))
            .await
            .expect("a request after the restart answers");
        if reply.status == StatusCode::OK {
            break (back.elapsed(), reply);
        }
        assert!(
            back.elapsed() < RECOVERY_LIMIT,
            "no recovery {:?} after Redis came back",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "redis outage: sessions worked again {} ms after Redis came back",
        recovered.as_millis()
    );
    // The session went on where it was: the failed requests counted nothing, and nothing was
    // lost when Redis was killed.
    assert_eq!(reply.body, "You visited 6 times");
    assert_eq!(client.get("/").await.body, "You visited 7 times");

    stop.store(true, Ordering::Relaxed);
    let statuses = traffic.await.unwrap();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::INTERNAL_SERVER_ERROR),
        "{statuses:?}"
    );

    // Every record in this Redis loads whole.
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("session:*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let store = RedisStore::connect(&server.url()).await.unwrap();
    for redis_key in keys {
        let key = StoreKey::parse(redis_key.trim_start_matches("session:")).unwrap();
        let record = store
            .load(&key)
            .await
            .unwrap()
            .expect("the session is there");
        assert_eq!(record.fields.get("views").map(|v| &**v), Some("7"));
    }
}
