//! What the layer writes to the log, read back through a real `tracing` subscriber. One test
//! in its own binary, with the subscriber installed globally: `tracing` caches per call site
//! whether anyone listens, so a subscriber set for one thread while other tests run would
//! miss events.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use common::{get as get_req, send, Client, RecordingStore};
use serde::Deserialize;
use session_core::conformance::{Fault, FaultStore, Op};
use session_core::store::MemoryStore;
use session_core::{Session, SessionId, SessionLayer};

#[derive(Session)]
struct Visit {
    views: u32,
    items: Vec<String>,
}

#[derive(Deserialize)]
struct Add {
    n: usize,
}

/// Where the subscriber writes.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

fn routes() -> Router {
    Router::new()
        .route(
            "/read",
            get(|v: Session<Visit>| async move { v.views().to_string() }),
        )
        .route(
            "/incr",
            get(|mut v: Session<Visit>| async move {
                *v.views_mut() += 1;
                "ok"
            }),
        )
        .route(
            "/add",
            get(|mut v: Session<Visit>, Query(add): Query<Add>| async move {
                v.items_mut().push("x".repeat(add.n));
                "added"
            }),
        )
}

#[tokio::test]
async fn log_lines() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();

    client_caused_errors_are_not_logged_as_errors_and_are_rate_limited(&logs).await;
    log_lines_name_the_session_by_its_short_id(&logs).await;
}

/// Conditions a client causes at will (here: a session grown past the limit, 200 times) log
/// no `ERROR` line and at most a line a second at `INFO`, so a client cannot flood the error
/// log or page an operator.
async fn client_caused_errors_are_not_logged_as_errors_and_are_rate_limited(logs: &LogBuffer) {
    logs.take();
    let store = RecordingStore::new();
    let app =
        routes().layer(SessionLayer::new(store.clone(), common::key()).with_max_record_bytes(1024));
    for _ in 0..200 {
        let reply = send(&app, get_req("/add?n=4096", None)).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
    let text = logs.take();
    assert!(!text.contains("ERROR"), "{text}");
    let lines = text
        .lines()
        .filter(|l| l.contains("over the limit"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} lines for 200 oversized requests:\n{text}"
    );
}

/// The layer's log lines carry `session=` and the short id (8 hex characters of the hash),
/// never the id itself.
async fn log_lines_name_the_session_by_its_short_id(logs: &LogBuffer) {
    let store = FaultStore::new(MemoryStore::new());
    let app = routes()
        .layer(SessionLayer::new(store.clone(), common::key()).with_touch_after(Duration::ZERO));
    let mut client = Client::new(app);
    client.get("/incr").await;
    logs.take();
    store.inject(Op::Touch, Fault::Error);
    client.get("/read").await;
    let cookie = client.cookie.unwrap();
    let text = logs.take();
    let id = &cookie["sid=".len().."sid=".len() + 32];
    let key = SessionId::parse(id).unwrap().store_key();
    let expected = format!("session{{session={}}}", &key.as_str()[..8]);
    assert!(text.contains(&expected), "{expected} not in:\n{text}");
    assert!(!text.contains(id), "the id leaked into the logs:\n{text}");
}
