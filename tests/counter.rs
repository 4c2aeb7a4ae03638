//! The counter app (the main job), route by route, through the real `Router`.

mod common;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use common::{get as get_req, send, Client, TokenClient};
use session_core::store::MemoryStore;
use session_core::Transport;
use typed_sessions::counter;

fn client() -> (Client, MemoryStore) {
    let store = MemoryStore::new();
    let app = counter::app(Arc::new(store.clone()), common::key());
    (Client::new(app), store)
}

#[tokio::test]
async fn home_counts_visits_from_one() {
    let (mut client, _) = client();
    for n in 1..=5 {
        assert_eq!(client.get("/").await.body, format!("You visited {n} times"));
    }
}

#[tokio::test]
async fn first_visit_sets_a_fifteen_minute_http_only_cookie() {
    let (mut client, _) = client();
    let reply = client.get("/").await;
    let cookie = reply.set_cookie("sid").unwrap();
    assert!(cookie.contains("Max-Age=900"), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
}

#[tokio::test]
async fn peek_reads_without_writing_or_sending_a_cookie() {
    let (mut client, store) = client();
    client.get("/").await;
    client.get("/").await;
    let reply = client.get("/peek").await;
    assert_eq!(reply.body, "views: 2");
    assert!(reply.set_cookies().is_empty());
    assert_eq!(store.len(), 1);
    // A peek by a new visitor stores nothing at all.
    let fresh = send(&client.app, get_req("/peek", None)).await;
    assert_eq!(fresh.body, "views: 0");
    assert!(fresh.set_cookies().is_empty());
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn login_regenerates_the_id_and_remembers_the_user() {
    let (mut client, store) = client();
    assert_eq!(client.get("/me").await.body, "user: none");
    client.get("/").await;
    let before = client.cookie.clone().unwrap();
    let reply = client.post("/login", "name=Dhruv").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.headers[header::LOCATION], "/");
    assert_ne!(client.cookie.as_deref(), Some(before.as_str()));
    assert_eq!(client.get("/me").await.body, "user: Dhruv");
    assert_eq!(client.get("/").await.body, "You visited 2 times");
    // The pre-login id no longer works.
    let stale = send(&client.app, get_req("/me", Some(&before))).await;
    assert_eq!(stale.body, "user: none");
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn login_needs_a_name() {
    let (mut client, store) = client();
    let reply = client.post("/login", "name=").await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(store.is_empty());
}

#[tokio::test]
async fn cart_keeps_items_in_order() {
    let (mut client, _) = client();
    assert_eq!(client.get("/cart").await.body, "");
    for item in ["apple", "pear", "fig"] {
        let reply = client.post("/cart", &format!("item={item}")).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER);
    }
    assert_eq!(client.get("/cart").await.body, "apple\npear\nfig\n");
}

#[tokio::test]
async fn logout_destroys_the_session_and_leaves_only_a_signed_out_flash() {
    let (mut client, store) = client();
    client.post("/login", "name=ada").await;
    client.post("/cart", "item=tea").await;
    let old = client.cookie.clone().unwrap();
    let reply = client.post("/logout", "").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    // The cookie is replaced by that of a new session holding only the message.
    let new = reply.cookie_pair("sid").unwrap();
    assert_ne!(new, old);
    assert_eq!(
        store.len(),
        1,
        "the old record is gone, the flash session stored"
    );
    assert_eq!(client.get("/flash").await.body, "flash: Signed out");
    assert_eq!(client.get("/flash").await.body, "flash: none");
    assert_eq!(client.get("/me").await.body, "user: none");
    assert_eq!(client.get("/cart").await.body, "");
    // The old cookie leads nowhere.
    let stale = send(&client.app, get_req("/me", Some(&old))).await;
    assert_eq!(stale.body, "user: none");
}

#[tokio::test]
async fn login_leaves_a_welcome_flash_shown_once() {
    let (mut client, _) = client();
    assert_eq!(client.get("/flash").await.body, "flash: none");
    client.post("/login", "name=ada").await;
    assert_eq!(client.get("/flash").await.body, "flash: Welcome, ada");
    assert_eq!(client.get("/flash").await.body, "flash: none");
    assert_eq!(client.get("/me").await.body, "user: ada");
}

#[tokio::test]
async fn unknown_store_spec_is_a_clear_error() {
    let error = counter::store_from_spec("nosuch://x").await.err().unwrap();
    assert!(error.contains("unknown SESSION_STORE"), "{error}");
    assert!(counter::store_from_spec("").await.is_ok());
    assert!(counter::store_from_spec("memory").await.is_ok());
}

/// A store URL's password never shows in a startup error, whichever store it names.
#[tokio::test]
async fn store_errors_never_show_the_password() {
    for spec in [
        "postgres://app:hunter2@127.0.0.1:1/test",
        "mysql://root:hunter2@127.0.0.1:1/test",
        "redis://:hunter2@127.0.0.1:1",
        "memcache://u:hunter2@127.0.0.1:1",
        "nosuchstore://admin:hunter2@example/x",
    ] {
        let error = match counter::store_from_spec(spec).await {
            Ok(_) => panic!("{spec} opened"),
            Err(error) => error,
        };
        assert!(!error.contains("hunter2"), "{spec}: {error}");
        assert!(error.contains(":***@"), "{spec}: {error}");
    }
    assert_eq!(
        counter::redact("postgres://app:s3cr:t@db:5432/app?x=1"),
        "postgres://app:***@db:5432/app?x=1"
    );
    assert_eq!(counter::redact("sqlite:/tmp/x.db"), "sqlite:/tmp/x.db");
    assert_eq!(
        counter::redact("redis://127.0.0.1:6379"),
        "redis://127.0.0.1:6379"
    );
}

/// The app answers `408` to a request that takes longer than its timeout (a slow client),
/// which also ends any hold it had on its session.
#[tokio::test(start_paused = true)]
async fn a_request_slower_than_the_timeout_gets_408() {
    use axum::body::{Body, Bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    // A body that never finishes arriving.
    let body = Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
    let request = Request::post("/cart")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .unwrap();
    let app = counter::app(Arc::new(MemoryStore::new()), common::key());
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
}

fn token_client(transport: &str) -> (TokenClient, MemoryStore) {
    let store = MemoryStore::new();
    let transport = counter::transport_from_spec(transport).unwrap();
    let layer = counter::layer(Arc::new(store.clone()), common::key()).with_transport(transport);
    let app = counter::app_with(layer.check().unwrap());
    (TokenClient::new(app, "x-session-token"), store)
}

#[tokio::test]
async fn header_transport_counts_with_the_x_session_token_header() {
    for transport in ["header", "both"] {
        let (mut client, store) = token_client(transport);
        let first = client.get("/").await;
        assert_eq!(first.body, "You visited 1 times");
        let token = first.headers["x-session-token"].to_str().unwrap();
        assert_eq!(token.len(), 76, "{transport}: {token}");
        for n in 2..=3 {
            let reply = client.get("/").await;
            assert_eq!(reply.body, format!("You visited {n} times"), "{transport}");
            assert!(reply.set_cookies().is_empty(), "{transport}");
        }
        assert_eq!(client.get("/peek").await.body, "views: 3");
        assert_eq!(store.len(), 1);
    }
}

#[tokio::test]
async fn header_transport_logs_in_and_out() {
    let (mut client, store) = token_client("header");
    client.get("/").await;
    let before = client.token.clone().unwrap();
    let login = send(
        &client.app,
        axum::http::Request::post("/login")
            .header("x-session-token", &before)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(axum::body::Body::from("name=ada"))
            .unwrap(),
    )
    .await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    let after = login.headers["x-session-token"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(after, before);
    client.token = Some(after.clone());
    assert_eq!(client.get("/me").await.body, "user: ada");
    let logout = send(
        &client.app,
        axum::http::Request::post("/logout")
            .header("x-session-token", &after)
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    // The old session is gone; a new one holds the "Signed out" flash, under a new token.
    let flash_token = logout.headers["x-session-token"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!flash_token.is_empty() && flash_token != after);
    assert_eq!(store.len(), 1);
    client.token = Some(after);
    assert_eq!(client.get("/me").await.body, "user: none");
    client.token = Some(flash_token);
    assert_eq!(client.get("/flash").await.body, "flash: Signed out");
}

#[test]
fn transport_and_proxy_specs_parse() {
    assert_eq!(counter::transport_from_spec(""), Ok(Transport::Cookie));
    assert_eq!(
        counter::transport_from_spec("cookie"),
        Ok(Transport::Cookie)
    );
    assert_eq!(
        counter::transport_from_spec(" Header "),
        Ok(Transport::Header)
    );
    assert_eq!(counter::transport_from_spec("both"), Ok(Transport::Both));
    let error = counter::transport_from_spec("pigeon").unwrap_err();
    assert!(error.contains("expected cookie, header or both"), "{error}");
    assert_eq!(
        counter::trusted_proxies_from_spec(" 127.0.0.1, 10.0.0.0/8 ,"),
        ["127.0.0.1", "10.0.0.0/8"]
    );
    assert!(counter::trusted_proxies_from_spec("").is_empty());
}
