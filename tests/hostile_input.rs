//! Hostile input through the real `Router`: huge, numerous, duplicate, malformed and
//! mis-signed cookies get a fresh session without a store lookup and never a 5xx; a valid
//! cookie among them is still found; an oversized session is refused with the configured
//! status and nothing stored; and a real server (`axum::serve`) answers an oversized header
//! with 431 and keeps serving.
//!
//! The decoders themselves are covered by the property tests in
//! `session-core/src/proptests.rs` and the fuzz targets in `fuzz/`.

mod common;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Query;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use common::{get as get_req, send, Client, RecordingStore};
use serde::Deserialize;
use session_core::{Key, Session, SessionLayer};

#[derive(Session)]
struct Cart {
    views: u32,
    items: Vec<String>,
}

#[derive(Deserialize)]
struct Add {
    n: usize,
}

fn routes() -> Router {
    Router::new()
        .route(
            "/read",
            get(|c: Session<Cart>| async move {
                format!("views: {} items: {}", c.views(), c.items().len())
            }),
        )
        .route(
            "/incr",
            get(|mut c: Session<Cart>| async move {
                *c.views_mut() += 1;
                format!("views: {}", c.views())
            }),
        )
        .route(
            "/add",
            get(|mut c: Session<Cart>, Query(add): Query<Add>| async move {
                c.items_mut().push("x".repeat(add.n));
                "added"
            }),
        )
}

const FRESH: &str = "views: 0 items: 0";
const ONE_VIEW: &str = "views: 1 items: 0";

fn app(store: &RecordingStore) -> Router {
    routes().layer(SessionLayer::new(store.clone(), common::key()))
}

/// A stored session with one view; returns its `sid=...` pair.
async fn stored_session(app: &Router) -> String {
    let mut client = Client::new(app.clone());
    assert_eq!(client.get("/incr").await.body, "views: 1");
    client.cookie.expect("a new session gets a cookie")
}

/// A request to `/read` with these `Cookie` header values, one header each.
fn read_with(cookies: &[HeaderValue]) -> Request<Body> {
    let mut request = Request::get("/read").body(Body::empty()).unwrap();
    for value in cookies {
        request.headers_mut().append(header::COOKIE, value.clone());
    }
    request
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap()
}

/// Sends `request` and checks it got a fresh session with no store call.
async fn assert_fresh(app: &Router, store: &RecordingStore, request: Request<Body>, what: &str) {
    store.clear();
    let reply = send(app, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{what}");
    assert_eq!(reply.body, FRESH, "{what}");
    assert!(
        store.ops().is_empty(),
        "{what}: store calls {:?}",
        store.ops()
    );
    assert!(
        reply.set_cookies().is_empty(),
        "{what}: a read-only new session sets no cookie"
    );
}

/// Sends `request` and checks it found the stored one-view session with a single load.
async fn assert_found(app: &Router, store: &RecordingStore, request: Request<Body>, what: &str) {
    store.clear();
    let reply = send(app, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{what}");
    assert_eq!(reply.body, ONE_VIEW, "{what}");
    assert_eq!(store.ops(), ["load"], "{what}");
}

#[tokio::test]
async fn one_megabyte_cookie_header_gets_a_fresh_session_without_a_store_lookup() {
    let store = RecordingStore::new();
    let app = app(&store);
    let good = stored_session(&app).await;
    let mb = 1 << 20;

    let one_value = format!("sid={}", "a".repeat(mb));
    assert_fresh(
        &app,
        &store,
        read_with(&[header_value(&one_value)]),
        "1 MB value",
    )
    .await;

    let many_pairs = "k=v; ".repeat(mb / 5);
    assert_fresh(
        &app,
        &store,
        read_with(&[header_value(&many_pairs)]),
        "1 MB of pairs",
    )
    .await;

    let forged = "sid=forged; ".repeat(mb / 12);
    assert_fresh(
        &app,
        &store,
        read_with(&[header_value(&forged)]),
        "1 MB of forgeries",
    )
    .await;

    // The scan is linear and allocation-free, so a valid cookie at the end is still found.
    let valid_last = format!("{many_pairs}{good}");
    assert_found(
        &app,
        &store,
        read_with(&[header_value(&valid_last)]),
        "valid after 1 MB",
    )
    .await;
}

#[tokio::test]
async fn ten_thousand_cookies_get_a_fresh_session_and_a_valid_one_among_them_is_found() {
    let store = RecordingStore::new();
    let app = app(&store);
    let good = stored_session(&app).await;

    let others: Vec<String> = (0..10_000).map(|i| format!("c{i}=v{i}")).collect();
    let forged: Vec<String> = (0..10_000).map(|i| format!("sid=forged{i}")).collect();

    let one_header = others.join("; ");
    assert_fresh(
        &app,
        &store,
        read_with(&[header_value(&one_header)]),
        "10 000 in one header",
    )
    .await;
    let separate: Vec<HeaderValue> = others.iter().map(|c| header_value(c)).collect();
    assert_fresh(&app, &store, read_with(&separate), "10 000 Cookie headers").await;
    let duplicates = forged.join("; ");
    assert_fresh(
        &app,
        &store,
        read_with(&[header_value(&duplicates)]),
        "10 000 forged sids",
    )
    .await;

    let with_good = format!("{duplicates}; {good}");
    assert_found(
        &app,
        &store,
        read_with(&[header_value(&with_good)]),
        "valid after 10 000",
    )
    .await;
    let mut separate = separate;
    separate.insert(5_000, header_value(&good));
    assert_found(
        &app,
        &store,
        read_with(&separate),
        "valid among 10 000 headers",
    )
    .await;
}

#[tokio::test]
async fn cookie_header_with_invalid_utf8_gets_a_fresh_session() {
    let store = RecordingStore::new();
    let app = app(&store);
    let good = stored_session(&app).await;
    let value = good.strip_prefix("sid=").unwrap();

    let mut spliced = format!("sid={value}").into_bytes();
    spliced.insert(20, 0xff);
    let bad: Vec<Vec<u8>> = vec![
        b"sid=\xff\xfe\xfd".to_vec(),
        b"\xc3\x28=\xa0\xa1; sid=\xe2\x82".to_vec(),
        [b"sid=".as_slice(), &[0x80; 76]].concat(),
        spliced,
        b"sid=\xf0\x9f\x92".to_vec(),
    ];
    for bytes in &bad {
        let header = HeaderValue::from_bytes(bytes).unwrap();
        let what = String::from_utf8_lossy(bytes).into_owned();
        assert_fresh(&app, &store, read_with(&[header]), &what).await;
    }

    // Bad bytes elsewhere in the header do not hide a valid cookie.
    let mixed = [b"x=\xff\xfe; sid=\xc0\xaf; ".as_slice(), good.as_bytes()].concat();
    let header = HeaderValue::from_bytes(&mixed).unwrap();
    assert_found(
        &app,
        &store,
        read_with(&[header]),
        "valid after invalid UTF-8",
    )
    .await;
}

#[tokio::test]
async fn duplicate_session_cookies_find_the_valid_one_wherever_it_is() {
    let store = RecordingStore::new();
    let app = app(&store);
    let good = stored_session(&app).await;
    let value = good.strip_prefix("sid=").unwrap();
    let forged = format!("sid={}.{}", &value[..32], "A".repeat(43));

    let cases = [
        ("first", format!("{good}; sid=junk; {forged}; sid=")),
        ("middle", format!("sid=junk; {good}; {forged}")),
        ("last", format!("sid=junk; {forged}; sid=; {good}")),
        ("quoted", format!("sid=junk; sid=\"{value}\"")),
        ("spaced", format!("sid = junk ; sid = {value} ")),
    ];
    for (what, header) in &cases {
        assert_found(&app, &store, read_with(&[header_value(header)]), what).await;
    }
    // The same, with each cookie in its own header.
    for (what, header) in &cases {
        let split: Vec<HeaderValue> = header.split(';').map(header_value).collect();
        assert_found(&app, &store, read_with(&split), what).await;
    }
    // Only forgeries and junk: a fresh session.
    let only_bad = format!("sid=junk; {forged}; sid=; sid={}", &value[..32]);
    assert_fresh(
        &app,
        &store,
        read_with(&[header_value(&only_bad)]),
        "no valid one",
    )
    .await;
}

#[tokio::test]
async fn old_key_signatures_are_accepted_only_while_the_key_is_in_the_ring() {
    let store = RecordingStore::new();
    let old_key = Key::from_bytes(&[1u8; 32]).unwrap();
    let old_app = routes().layer(SessionLayer::new(store.clone(), old_key.clone()));
    let old_cookie = stored_session(&old_app).await;

    let rotated =
        routes().layer(SessionLayer::new(store.clone(), common::key()).with_old_key(old_key));
    store.clear();
    let reply = send(&rotated, get_req("/read", Some(&old_cookie))).await;
    assert_eq!(reply.body, ONE_VIEW);
    assert_eq!(store.ops(), ["load"]);
    let resigned = reply
        .cookie_pair("sid")
        .expect("an old-key cookie is re-signed");
    assert_ne!(resigned, old_cookie);
    assert_eq!(resigned[..36], old_cookie[..36], "same id, new signature");

    // Once the old key has left the ring, its cookies are ignored.
    let without_old = app(&store);
    assert_fresh(
        &without_old,
        &store,
        get_req("/read", Some(&old_cookie)),
        "old key gone",
    )
    .await;
    // A key the ring never held.
    let stranger = Key::from_bytes(&[9u8; 32]).unwrap();
    let stranger_cookie =
        stored_session(&routes().layer(SessionLayer::new(RecordingStore::new(), stranger))).await;
    assert_fresh(
        &rotated,
        &store,
        get_req("/read", Some(&stranger_cookie)),
        "unknown key",
    )
    .await;
}

#[tokio::test]
async fn truncated_and_altered_signatures_get_a_fresh_session_without_a_store_lookup() {
    let store = RecordingStore::new();
    let app = app(&store);
    let good = stored_session(&app).await;
    for cut in 4..good.len() {
        let truncated = &good[..cut];
        assert_fresh(&app, &store, get_req("/read", Some(truncated)), truncated).await;
    }
    let mut extended = good.clone();
    extended.push('A');
    assert_fresh(&app, &store, get_req("/read", Some(&extended)), "extended").await;
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    assert_fresh(
        &app,
        &store,
        get_req("/read", Some(&flipped)),
        "last byte changed",
    )
    .await;
    let percent = good.replacen('-', "%2D", 1).replacen('_', "%5F", 1);
    if percent != good {
        assert_fresh(
            &app,
            &store,
            get_req("/read", Some(&percent)),
            "percent-encoded",
        )
        .await;
    }
}

#[tokio::test]
async fn oversized_session_is_refused_with_413_and_nothing_is_stored() {
    let store = RecordingStore::new();
    let app = routes().layer(
        SessionLayer::new(store.clone(), common::key())
            .with_max_record_bytes(1024)
            .with_error_status(StatusCode::SERVICE_UNAVAILABLE),
    );

    // A new session over the limit: refused before anything is written, no cookie.
    let reply = send(&app, get_req("/add?n=5000", None)).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "not the store error status"
    );
    assert_eq!(reply.body, "session too large");
    assert!(reply.set_cookies().is_empty());
    assert!(store.ops().is_empty(), "{:?}", store.ops());

    // An existing session that would grow over the limit keeps what it had.
    let mut client = Client::new(app.clone());
    assert_eq!(client.get("/add?n=100").await.status, StatusCode::OK);
    store.clear();
    let reply = client.get("/add?n=2000").await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(store.ops(), ["load"], "nothing written");
    assert_eq!(client.get("/read").await.body, "views: 0 items: 1");

    // The client's own request grew the session: never a 500.
    let default_status =
        routes().layer(SessionLayer::new(store.clone(), common::key()).with_max_record_bytes(64));
    let reply = send(&default_status, get_req("/add?n=100", None)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.set_cookies().is_empty());
}

/// What a raw HTTP/1.1 exchange over TCP ended in.
#[derive(Debug)]
enum Raw {
    /// The response's status line and body.
    Response(String, String),
    /// The connection was closed (or reset) without a response.
    Closed,
}

/// Sends `head` (a request without its final blank line), then reads the whole answer.
fn raw_request(addr: SocketAddr, head: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The server may answer and close before it has read everything: a failed write is
    // part of the outcome, not an error of the test.
    let _ = stream
        .write_all(head)
        .and_then(|()| stream.write_all(b"\r\n"))
        .and_then(|()| stream.flush());
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
        Err(error) => panic!("reading the answer: {error}"),
    }
    if answer.is_empty() {
        return Raw::Closed;
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Raw::Response(status, body)
}

fn request_head(cookie: &str) -> Vec<u8> {
    format!("GET /read HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: {cookie}\r\n")
        .into_bytes()
}

#[tokio::test]
async fn a_real_server_refuses_oversized_headers_and_keeps_serving() {
    let store = RecordingStore::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app(&store);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let outcomes = tokio::task::spawn_blocking(move || {
        let kb200 = request_head(&format!("sid={}", "a".repeat(200 * 1024)));
        let mb = request_head(&format!("sid={}", "a".repeat(1 << 20)));
        let normal = request_head("sid=junk");
        [
            raw_request(addr, &kb200),
            raw_request(addr, &mb),
            raw_request(addr, &normal),
        ]
    })
    .await
    .unwrap();
    let [kb200, mb, normal] = outcomes;

    // hyper buffers at most about 400 KB of request head (8 KiB + 100 × 4 KiB): a 200 KB
    // header reaches the app, whose cookie scan skips the oversized value.
    match &kb200 {
        Raw::Response(status, body) if status.starts_with("HTTP/1.1 431") => {
            assert!(body.is_empty() || !body.contains("views"));
        }
        Raw::Response(status, body) => {
            assert!(
                status.starts_with("HTTP/1.1 200"),
                "200 KB header: {status}"
            );
            assert_eq!(body, FRESH);
        }
        Raw::Closed => {}
    }
    // Over the limit, hyper answers 431 (or closes) before the app sees anything.
    match &mb {
        Raw::Response(status, _) => {
            assert!(status.starts_with("HTTP/1.1 431"), "1 MB header: {status}");
        }
        Raw::Closed => {}
    }
    // And the server is still there.
    match &normal {
        Raw::Response(status, body) => {
            assert!(
                status.starts_with("HTTP/1.1 200"),
                "normal request: {status}"
            );
            assert_eq!(body, FRESH);
        }
        Raw::Closed => panic!("the server stopped answering after an oversized header"),
    }
    assert!(!server.is_finished(), "the server task ended");
    assert!(store.ops().is_empty(), "{:?}", store.ops());
    server.abort();
}
