//! HTTP-level behaviour of the layer beyond the express matrix: laziness, precise
//! modification, partial writes, timeouts, regenerate, destroy, reload, save, key rotation,
//! hostile cookies, store errors, schema evolution and cookie attributes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::http::{header, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use common::{get as get_req, send, Client, RecordingStore};
use serde::Deserialize;
use session_core::store::MemoryStore;
use session_core::{
    Key, SameSite, SaveMode, Secure, Session, SessionId, SessionLayer, Store, Timestamp,
    TlsConnection,
};

#[derive(Session)]
struct Profile {
    name: Option<String>,
    views: u32,
    tags: Vec<String>,
}

#[derive(Deserialize)]
struct Tag {
    t: String,
}

fn routes() -> Router {
    Router::new()
        .route("/noop", get(|| async { "no session here" }))
        .route(
            "/read",
            get(|p: Session<Profile>| async move { format!("views: {}", p.views()) }),
        )
        .route(
            "/touch-only",
            get(|mut p: Session<Profile>| async move {
                let _ = p.views_mut();
                p.tags_mut().retain(|_| true);
                "touched"
            }),
        )
        .route(
            "/incr",
            get(|mut p: Session<Profile>| async move {
                *p.views_mut() += 1;
                format!("views: {}", p.views())
            }),
        )
        .route(
            "/slow-incr",
            get(|mut p: Session<Profile>| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                *p.views_mut() += 1;
                "ok"
            }),
        )
        .route(
            "/tag",
            get(
                |mut p: Session<Profile>, Query(tag): Query<Tag>| async move {
                    p.tags_mut().push(tag.t);
                    "ok"
                },
            ),
        )
        .route(
            "/name",
            get(|p: Session<Profile>| async move {
                format!("name: {}", p.name().as_deref().unwrap_or("none"))
            }),
        )
        .route(
            "/login",
            get(|mut p: Session<Profile>| async move {
                p.regenerate();
                p.set_name(Some("ada".to_owned()));
                "logged in"
            }),
        )
        .route(
            "/login-fresh",
            get(|mut p: Session<Profile>| async move {
                p.clear();
                p.regenerate();
                p.set_name(Some("ada".to_owned()));
                "logged in"
            }),
        )
        .route(
            "/logout",
            get(|mut p: Session<Profile>| async move {
                p.destroy();
                "bye"
            }),
        )
        .route(
            "/reload",
            get(|mut p: Session<Profile>| async move {
                *p.views_mut() += 100;
                p.reload().await.unwrap();
                format!("views: {}", p.views())
            }),
        )
        .route(
            "/save-now",
            get(|mut p: Session<Profile>| async move {
                *p.views_mut() += 1;
                let before = p.id().is_some();
                p.save().await.unwrap();
                format!("id before: {before}, after: {}", p.id().is_some())
            }),
        )
        .route(
            "/twice",
            get(|_a: Session<Profile>, _b: Session<Profile>| async { "two views" }),
        )
}

fn app_with(layer: SessionLayer) -> Router {
    routes().layer(layer)
}

fn layer(store: impl Store) -> SessionLayer {
    SessionLayer::new(store, common::key())
}

/// The store key of the session named by a `sid=...` pair.
fn key_of(pair: &str) -> session_core::StoreKey {
    let value = pair.strip_prefix("sid=").unwrap();
    SessionId::parse(&value[..32]).unwrap().store_key()
}

#[tokio::test]
async fn request_that_does_not_extract_the_session_costs_no_store_call() {
    let store = RecordingStore::new();
    let mut client = Client::new(app_with(layer(store.clone())));
    client.get("/incr").await;
    store.clear();
    let reply = client.get("/noop").await;
    assert_eq!(reply.body, "no session here");
    assert!(store.ops().is_empty(), "{:?}", store.ops());
    assert!(reply.set_cookies().is_empty());
}

#[tokio::test]
async fn accessor_used_without_a_change_writes_nothing() {
    let store = RecordingStore::new();
    let mut client = Client::new(app_with(layer(store.clone())));
    client.get("/incr").await;
    store.clear();
    let reply = client.get("/touch-only").await;
    // The default touch_after (60 s) has not passed, so not even a touch.
    assert_eq!(store.ops(), ["load"]);
    assert!(reply.set_cookies().is_empty());
}

#[tokio::test]
async fn new_session_handler_that_only_reads_stores_nothing() {
    let store = RecordingStore::new();
    let reply = send(
        &app_with(layer(store.clone())),
        get_req("/touch-only", None),
    )
    .await;
    assert!(store.ops().is_empty());
    assert!(reply.set_cookies().is_empty());
}

#[tokio::test]
async fn only_the_changed_field_is_written() {
    let store = RecordingStore::new();
    let mut client = Client::new(app_with(layer(store.clone())));
    client.get("/tag?t=a").await;
    client.get("/incr").await;
    let calls = store.calls();
    let save = calls.iter().rfind(|c| c.op == "save").unwrap();
    assert_eq!(save.fields, ["views"]);
    assert_eq!(save.mode, Some(SaveMode::Merge));
    assert_eq!(client.get("/read").await.body, "views: 1");
}

#[tokio::test]
async fn concurrent_requests_changing_different_fields_both_keep_their_change() {
    let store = MemoryStore::new();
    let app = app_with(layer(store.clone()));
    let mut client = Client::new(app.clone());
    client.get("/incr").await;
    let cookie = client.cookie.clone().unwrap();
    let slow = send(&app, get_req("/slow-incr", Some(&cookie)));
    let tag = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        send(&app, get_req("/tag?t=x", Some(&cookie))).await
    };
    let (a, b) = tokio::join!(slow, tag);
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    let record = store.load(&key_of(&cookie)).await.unwrap().unwrap();
    assert_eq!(&*record.fields["views"], "2");
    assert_eq!(&*record.fields["tags"], "[\"x\"]");
}

#[tokio::test]
async fn touch_is_throttled_by_touch_after() {
    for (touch_after, expected) in [
        (Duration::ZERO, vec!["load", "touch"]),
        (Duration::from_secs(3600), vec!["load"]),
    ] {
        let store = RecordingStore::new();
        let mut client = Client::new(app_with(layer(store.clone()).with_touch_after(touch_after)));
        client.get("/incr").await;
        store.clear();
        client.get("/read").await;
        assert_eq!(store.ops(), expected, "touch_after = {touch_after:?}");
    }
}

#[tokio::test]
async fn touch_extends_the_deadline() {
    let store = MemoryStore::new();
    let mut client = Client::new(app_with(
        layer(store.clone())
            .with_idle_timeout(Duration::from_secs(3600))
            .with_touch_after(Duration::ZERO),
    ));
    client.get("/incr").await;
    let key = key_of(client.cookie.as_deref().unwrap());
    let first = store.load(&key).await.unwrap().unwrap().expires_at;
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.get("/read").await;
    let second = store.load(&key).await.unwrap().unwrap().expires_at;
    assert!(second > first, "{second:?} > {first:?}");
}

#[tokio::test]
async fn idle_session_expires_on_the_server_whatever_the_client_sends() {
    let store = MemoryStore::new();
    let app = app_with(layer(store.clone()).with_idle_timeout(Duration::from_secs(1)));
    let mut client = Client::new(app.clone());
    client.get("/incr").await;
    let old = client.cookie.clone().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = send(&app, get_req("/incr", Some(&old))).await;
    assert_eq!(reply.body, "views: 1");
    let new = reply.cookie_pair("sid").unwrap();
    assert_ne!(new, old);
}

#[tokio::test]
async fn absolute_timeout_ends_an_active_session() {
    let store = MemoryStore::new();
    let app = app_with(
        layer(store.clone())
            .with_idle_timeout(Duration::from_secs(60))
            .with_absolute_timeout(Duration::from_secs(1))
            .with_touch_after(Duration::ZERO),
    );
    let mut client = Client::new(app);
    assert_eq!(client.get("/incr").await.body, "views: 1");
    for views in 2..=5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Within the absolute window the session lives on, visit by visit.
        assert_eq!(client.get("/incr").await.body, format!("views: {views}"));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Active all along, but created more than a second ago: a new session starts.
    assert_eq!(client.get("/incr").await.body, "views: 1");
}

#[tokio::test]
async fn regenerate_keeps_the_data_under_a_new_id_and_kills_the_old_one() {
    let store = MemoryStore::new();
    let app = app_with(layer(store.clone()));
    let mut client = Client::new(app.clone());
    client.get("/incr").await;
    client.get("/incr").await;
    let before = client.cookie.clone().unwrap();
    let reply = client.get("/login").await;
    let after = client.cookie.clone().unwrap();
    assert_ne!(before, after);
    assert!(reply.set_cookie("sid").is_some());
    assert_eq!(client.get("/read").await.body, "views: 2");
    assert_eq!(client.get("/name").await.body, "name: ada");
    assert!(store.load(&key_of(&before)).await.unwrap().is_none());
    let stale = send(&app, get_req("/read", Some(&before))).await;
    assert_eq!(stale.body, "views: 0");
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn clear_with_regenerate_drops_the_data() {
    let mut client = Client::new(app_with(layer(MemoryStore::new())));
    client.get("/incr").await;
    client.get("/login-fresh").await;
    assert_eq!(client.get("/read").await.body, "views: 0");
    assert_eq!(client.get("/name").await.body, "name: ada");
}

#[tokio::test]
async fn destroy_deletes_the_record_and_clears_the_cookie() {
    let store = MemoryStore::new();
    let app = app_with(layer(store.clone()));
    let mut client = Client::new(app.clone());
    client.get("/incr").await;
    let old = client.cookie.clone().unwrap();
    let reply = client.get("/logout").await;
    let clearing = reply.set_cookie("sid").unwrap();
    assert!(clearing.starts_with("sid=;"), "{clearing}");
    assert!(clearing.contains("Max-Age=0"), "{clearing}");
    assert!(store.is_empty());
    assert_eq!(
        send(&app, get_req("/read", Some(&old))).await.body,
        "views: 0"
    );
}

#[tokio::test]
async fn reload_discards_unsaved_changes() {
    let mut client = Client::new(app_with(layer(MemoryStore::new())));
    client.get("/incr").await;
    assert_eq!(client.get("/reload").await.body, "views: 1");
    assert_eq!(client.get("/read").await.body, "views: 1");
}

#[tokio::test]
async fn save_writes_before_the_handler_returns_and_the_cookie_still_goes_out() {
    let store = RecordingStore::new();
    let mut client = Client::new(app_with(layer(store.clone())));
    let reply = client.get("/save-now").await;
    assert_eq!(reply.body, "id before: false, after: true");
    assert!(reply.set_cookie("sid").is_some());
    assert_eq!(store.ops(), ["create"]);
    assert_eq!(client.get("/read").await.body, "views: 1");
}

#[tokio::test]
async fn cookie_signed_with_an_old_key_is_accepted_and_re_signed() {
    let store = MemoryStore::new();
    let old_key = Key::from_bytes(&[1u8; 32]).unwrap();
    let mut old_client = Client::new(app_with(SessionLayer::new(store.clone(), old_key.clone())));
    old_client.get("/incr").await;
    let old_cookie = old_client.cookie.clone().unwrap();

    let rotated = app_with(SessionLayer::new(store.clone(), common::key()).with_old_key(old_key));
    let reply = send(&rotated, get_req("/read", Some(&old_cookie))).await;
    assert_eq!(reply.body, "views: 1");
    let resigned = reply
        .cookie_pair("sid")
        .expect("old-key cookie is re-signed");
    assert_ne!(resigned, old_cookie);
    assert_eq!(resigned[..36], old_cookie[..36], "same id, new signature");
    let reply = send(&rotated, get_req("/read", Some(&resigned))).await;
    assert_eq!(reply.body, "views: 1");
    assert!(
        reply.set_cookies().is_empty(),
        "a current-key cookie is not re-sent"
    );
}

#[tokio::test]
async fn bad_cookies_get_a_fresh_session_without_a_store_lookup() {
    let store = RecordingStore::new();
    let app = app_with(layer(store.clone()));
    let mut client = Client::new(app.clone());
    client.get("/incr").await;
    let good = client.cookie.clone().unwrap();
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let id_only = good[..36].to_owned();
    let huge = format!("sid={}", "x".repeat(8000));
    for bad in [
        tampered.as_str(),
        id_only.as_str(),
        "sid=",
        "sid=%%%",
        huge.as_str(),
        "sid=a.b.c",
    ] {
        store.clear();
        let reply = send(&app, get_req("/read", Some(bad))).await;
        assert_eq!(reply.status, 200, "{bad}");
        assert_eq!(reply.body, "views: 0", "{bad}");
        assert!(store.ops().is_empty(), "{bad}: {:?}", store.ops());
    }
    // A valid cookie among duplicates and forgeries is still found.
    let mixed = format!("sid=forged; other=1; {good}; sid=also-forged");
    store.clear();
    assert_eq!(
        send(&app, get_req("/read", Some(&mixed))).await.body,
        "views: 1"
    );
    assert_eq!(store.ops(), ["load"]);
}

#[tokio::test]
async fn an_id_the_store_does_not_know_is_never_adopted() {
    let store = MemoryStore::new();
    let app = app_with(layer(store.clone()));
    let mut client = Client::new(app.clone());
    client.get("/incr").await;
    let cookie = client.cookie.clone().unwrap();
    store.delete(&key_of(&cookie)).await.unwrap();
    let reply = send(&app, get_req("/incr", Some(&cookie))).await;
    assert_eq!(reply.body, "views: 1");
    let fresh = reply.cookie_pair("sid").unwrap();
    assert_ne!(fresh[..36], cookie[..36]);
}

#[tokio::test]
async fn schema_evolution_keeps_what_the_struct_does_not_understand() {
    let store = MemoryStore::new();
    let mut client = Client::new(app_with(layer(store.clone())));
    client.get("/incr").await;
    let key = key_of(client.cookie.as_deref().unwrap());
    // A later deploy removed `legacy`; an earlier one stored `name` as a number.
    let mut extra = session_core::Record::new(
        Timestamp::now(),
        Timestamp::now().saturating_add(Duration::from_secs(60)),
    );
    extra
        .fields
        .insert(Arc::from("legacy"), Arc::from("{\"keep\":true}"));
    extra.fields.insert(Arc::from("name"), Arc::from("42"));
    store.save(&key, &extra, SaveMode::Merge).await.unwrap();

    assert_eq!(client.get("/name").await.body, "name: none");
    assert_eq!(client.get("/incr").await.body, "views: 2");
    client.get("/touch-only").await;
    let record = store.load(&key).await.unwrap().unwrap();
    assert_eq!(&*record.fields["legacy"], "{\"keep\":true}");
    assert_eq!(
        &*record.fields["name"], "42",
        "undecodable field is not overwritten"
    );
    assert_eq!(&*record.fields["views"], "2");
    // Missing field (`tags` was never written): its default.
    assert!(!record.fields.contains_key("tags"));
}

#[tokio::test]
async fn secure_cookie_on_plain_http_stores_nothing() {
    let store = RecordingStore::new();
    let app = app_with(layer(store.clone()).with_secure(Secure::Always));
    let reply = send(&app, get_req("/incr", None)).await;
    assert_eq!(reply.status, 200);
    assert!(reply.set_cookies().is_empty());
    assert!(
        store.ops().is_empty(),
        "no orphan record: {:?}",
        store.ops()
    );
}

#[tokio::test]
#[allow(deprecated)] // `with_trusted_proxy(true)` keeps working, trusting every peer.
async fn secure_follows_a_trusted_forwarded_proto() {
    let request = || {
        Request::get("/incr")
            .header("x-forwarded-proto", "https, http")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let trusted = app_with(layer(MemoryStore::new()).with_trusted_proxy(true));
    let cookie = send(&trusted, request()).await.set_cookie("sid").unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    let untrusted = app_with(layer(MemoryStore::new()));
    let cookie = send(&untrusted, request()).await.set_cookie("sid").unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
}

#[tokio::test]
async fn absolute_form_https_target_on_plain_http_gets_no_secure_cookie() {
    // `GET https://example.com/incr HTTP/1.1` on a plain connection: the client wrote the
    // scheme, so it says nothing about the connection.
    let request = || {
        Request::get("https://example.com/incr")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let auto = app_with(layer(MemoryStore::new()));
    let cookie = send(&auto, request()).await.set_cookie("sid").unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
    // Nor does it let a `Secure::Always` session be stored on plain HTTP.
    let store = RecordingStore::new();
    let always = app_with(layer(store.clone()).with_secure(Secure::Always));
    let reply = send(&always, request()).await;
    assert!(reply.set_cookies().is_empty(), "{:?}", reply.set_cookies());
    assert!(store.ops().is_empty(), "{:?}", store.ops());
}

#[tokio::test]
async fn cookie_attributes_follow_the_options() {
    let default = send(&app_with(layer(MemoryStore::new())), get_req("/incr", None)).await;
    let cookie = default.set_cookie("sid").unwrap();
    for part in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }
    assert!(
        !cookie.contains("Max-Age"),
        "browser-session cookie by default: {cookie}"
    );

    let custom = layer(MemoryStore::new())
        .with_cookie_name("app.sid")
        .with_max_age(Duration::from_secs(900))
        .with_domain("example.com")
        .with_same_site(SameSite::Strict)
        .with_secure(Secure::Always)
        .with_partitioned(true);
    // Over TLS terminated by the app (a `Secure::Always` cookie is only set on HTTPS).
    let request = Request::get("https://example.com/incr")
        .extension(TlsConnection)
        .body(axum::body::Body::empty())
        .unwrap();
    let reply = send(&app_with(custom), request).await;
    let cookie = reply.set_cookie("app.sid").unwrap();
    for part in [
        "Max-Age=900",
        "Expires=",
        "Domain=example.com",
        "SameSite=Strict",
        "Secure",
        "Partitioned",
    ] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }
}

#[tokio::test]
async fn requests_outside_the_cookie_path_get_no_session() {
    let app = Router::new()
        .route(
            "/app/read",
            get(|p: Session<Profile>| async move { format!("views: {}", p.views()) }),
        )
        .route(
            "/other",
            get(|p: Session<Profile>| async move { format!("views: {}", p.views()) }),
        )
        .layer(layer(MemoryStore::new()).with_path("/app"));
    assert_eq!(send(&app, get_req("/app/read", None)).await.status, 200);
    let outside = send(&app, get_req("/other", None)).await;
    assert_eq!(outside.status, StatusCode::INTERNAL_SERVER_ERROR);
    // A programming error: the client sees no internal detail.
    assert_eq!(outside.body, "session error");
    assert!(outside.set_cookies().is_empty());
}

#[tokio::test]
async fn two_views_of_one_struct_at_once_are_fine() {
    let reply = send(
        &app_with(layer(MemoryStore::new())),
        get_req("/twice", None),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "two views");
}

#[tokio::test]
async fn oversized_session_is_refused_with_an_error() {
    let app = app_with(layer(MemoryStore::new()).with_max_record_bytes(64));
    let long = "x".repeat(100);
    let reply = send(&app, get_req(&format!("/tag?t={long}"), None)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.body, "session too large");
    assert!(reply.set_cookies().is_empty());
}

#[tokio::test]
async fn a_session_over_a_lowered_limit_can_still_shrink_but_not_grow() {
    let store = MemoryStore::new();
    let mut client = Client::new(app_with(layer(store.clone())));
    client.get("/incr").await;
    for _ in 0..3 {
        client.get(&format!("/tag?t={}", "x".repeat(40))).await;
    }
    let cookie = client.cookie.clone().unwrap();
    // The limit is lowered below what the session already holds.
    let strict = app_with(layer(store.clone()).with_max_record_bytes(64));
    let grow = send(&strict, get_req("/tag?t=more", Some(&cookie))).await;
    assert_eq!(grow.status, StatusCode::PAYLOAD_TOO_LARGE);
    let same_size = send(&strict, get_req("/incr", Some(&cookie))).await;
    assert_eq!(
        same_size.status,
        StatusCode::OK,
        "a write that does not grow it is allowed"
    );
    assert_eq!(
        send(&strict, get_req("/read", Some(&cookie))).await.body,
        "views: 2"
    );
}

#[test]
fn invalid_configuration_is_reported_by_check() {
    let bad_name = layer(MemoryStore::new())
        .with_cookie_name("my session")
        .check();
    assert!(bad_name.unwrap_err().to_string().contains("cookie name"));
    let none_insecure = layer(MemoryStore::new())
        .with_same_site(SameSite::None)
        .with_secure(Secure::Never)
        .check();
    assert!(none_insecure.is_err());
    let bad_path = layer(MemoryStore::new()).with_path("app").check();
    assert!(bad_path.is_err());
    assert!(layer(MemoryStore::new()).check().is_ok());
}

#[tokio::test]
async fn cookie_header_with_many_cookies_is_handled() {
    let mut header_value = String::new();
    for i in 0..500 {
        header_value.push_str(&format!("c{i}=v{i}; "));
    }
    let request = Request::get("/read")
        .header(header::COOKIE, header_value)
        .body(axum::body::Body::empty())
        .unwrap();
    let reply = send(&app_with(layer(MemoryStore::new())), request).await;
    assert_eq!(reply.body, "views: 0");
}

/// With no absolute timeout set, a session still dies 30 days after it was created, however
/// active: the deadline stored is capped there even when the idle timeout is longer.
#[tokio::test]
async fn the_default_absolute_timeout_is_thirty_days() {
    let store = MemoryStore::new();
    let app = app_with(layer(store.clone()).with_idle_timeout(Duration::from_secs(90 * 86_400)));
    let mut client = Client::new(app);
    client.get("/incr").await;
    let record = store
        .load(&key_of(client.cookie.as_deref().unwrap()))
        .await
        .unwrap()
        .unwrap();
    let lifetime = record.expires_at.saturating_since(record.created_at);
    assert_eq!(lifetime, Duration::from_secs(30 * 86_400));

    // And it can be turned off.
    let store = MemoryStore::new();
    let app = app_with(
        layer(store.clone())
            .with_idle_timeout(Duration::from_secs(90 * 86_400))
            .without_absolute_timeout(),
    );
    let mut client = Client::new(app);
    client.get("/incr").await;
    let record = store
        .load(&key_of(client.cookie.as_deref().unwrap()))
        .await
        .unwrap()
        .unwrap();
    let lifetime = record.expires_at.saturating_since(record.created_at);
    assert_eq!(lifetime, Duration::from_secs(90 * 86_400));
}

/// A login (`regenerate`) starts the absolute-timeout window again: the session outlives
/// the deadline its pre-login id had.
#[tokio::test]
async fn regenerate_starts_a_new_absolute_timeout_window() {
    let store = MemoryStore::new();
    let app = app_with(
        layer(store.clone())
            .with_idle_timeout(Duration::from_secs(60))
            .with_absolute_timeout(Duration::from_secs(2))
            .with_touch_after(Duration::ZERO),
    );
    let mut client = Client::new(app);
    client.get("/incr").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client.get("/login").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // 2.4 s after the first visit, 1.2 s after the login: still the logged-in session.
    assert_eq!(client.get("/name").await.body, "name: ada");
    assert_eq!(client.get("/read").await.body, "views: 1");
}

/// `reload()` of a session another request destroyed reports that it ended, and the
/// response does not bring it back.
#[tokio::test]
async fn reload_of_a_destroyed_session_reports_that_it_ended() {
    let store = MemoryStore::new();
    let racing = RacingDelete {
        inner: store.clone(),
        loads: Default::default(),
    };
    let app = routes()
        .route(
            "/reload-gone",
            get(|mut p: Session<Profile>| async move {
                let error = p.reload().await.unwrap_err();
                format!(
                    "ended: {}; views: {}",
                    matches!(error, session_core::SessionError::Ended),
                    p.views()
                )
            }),
        )
        // A store of the test's own, keeping no indexes.
        .layer(layer(racing).without_indexes());
    let mut client = Client::new(app);
    client.get("/incr").await;
    let reply = client.get("/reload-gone").await;
    assert_eq!(reply.body, "ended: true; views: 0");
    assert!(
        reply.set_cookie("sid").unwrap().contains("Max-Age=0"),
        "the ended session's cookie is cleared"
    );
    assert!(client.cookie.is_none());
}

/// A memory store whose second load of a key deletes the record first, as a logout in
/// another request would between a handler's load and its `reload()`.
#[derive(Clone)]
struct RacingDelete {
    inner: MemoryStore,
    loads: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<session_core::StoreKey, u32>>>,
}

#[async_trait::async_trait]
impl Store for RacingDelete {
    async fn load(
        &self,
        key: &session_core::StoreKey,
    ) -> Result<Option<session_core::Record>, session_core::StoreError> {
        let seen = {
            let mut loads = self.loads.lock().unwrap();
            let n = loads.entry(*key).or_default();
            *n += 1;
            *n
        };
        if seen == 2 {
            self.inner.delete(key).await?;
        }
        self.inner.load(key).await
    }
    async fn create(
        &self,
        key: &session_core::StoreKey,
        record: &session_core::Record,
    ) -> Result<bool, session_core::StoreError> {
        self.inner.create(key, record).await
    }
    async fn save(
        &self,
        key: &session_core::StoreKey,
        record: &session_core::Record,
        mode: session_core::SaveMode,
    ) -> Result<bool, session_core::StoreError> {
        self.inner.save(key, record, mode).await
    }
    async fn touch(
        &self,
        key: &session_core::StoreKey,
        at: session_core::Timestamp,
    ) -> Result<bool, session_core::StoreError> {
        self.inner.touch(key, at).await
    }
    async fn delete(&self, key: &session_core::StoreKey) -> Result<(), session_core::StoreError> {
        self.inner.delete(key).await
    }
}
