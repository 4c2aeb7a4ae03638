//! What a client sees when the store fails, hangs or is slow, call by call: a clear error
//! status (never a panic, never a hang), a logged-only failure where the app asks for that,
//! and no partial record left behind.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{get as get_req, send, Client};
use session_core::conformance::{Fault, FaultStore, Op};
use session_core::store::MemoryStore;
use session_core::{SaveErrors, SessionLayer, Store};

fn app(
    store: FaultStore<MemoryStore>,
    layer: impl FnOnce(SessionLayer) -> SessionLayer,
) -> axum::Router {
    use axum::routing::get;
    common::visit::routes()
        .route("/plain", get(|| async { "plain" }))
        .layer(layer(
            SessionLayer::new(store, common::key()).with_touch_after(Duration::ZERO),
        ))
}

fn faulty() -> FaultStore<MemoryStore> {
    FaultStore::new(MemoryStore::new())
}

#[tokio::test]
async fn load_error_gives_the_configured_status_and_the_lazy_path_still_works() {
    let store = faulty();
    let app = app(store.clone(), |l| {
        l.with_error_status(StatusCode::SERVICE_UNAVAILABLE)
    });
    let mut client = Client::new(app);
    client.get("/incr").await;
    store.inject(Op::Load, Fault::Error);
    let reply = client.get("/read").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, "session store unavailable");
    assert!(reply.set_cookies().is_empty());
    assert_eq!(client.get("/plain").await.status, StatusCode::OK);
    store.heal_all();
    assert_eq!(
        client.get("/read").await.body,
        "views: 1",
        "the session survived the outage"
    );
}

#[tokio::test]
async fn unreadable_record_starts_a_new_session_and_is_left_in_place() {
    let store = faulty();
    let mut client = Client::new(app(store.clone(), |l| l));
    client.get("/incr").await;
    let old = client.cookie.clone().unwrap();
    store.inject(Op::Load, Fault::Corrupt);
    let reply = send(&client.app, get_req("/incr", Some(&old))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "views: 1");
    assert_ne!(reply.cookie_pair("sid").unwrap()[..36], old[..36]);
    store.heal_all();
    let kept = send(&client.app, get_req("/read", Some(&old))).await;
    assert_eq!(
        kept.body, "views: 1",
        "the unreadable record is not destroyed"
    );
}

#[tokio::test]
async fn a_hanging_store_is_cut_off_by_the_store_timeout() {
    let store = faulty();
    let app = app(store.clone(), |l| {
        l.with_store_timeout(Duration::from_millis(200))
    });
    let mut client = Client::new(app);
    client.get("/incr").await;
    for op in [Op::Load, Op::Save] {
        store.heal_all();
        store.inject(op, Fault::Hang);
        let started = Instant::now();
        let reply = client.get("/incr").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{op:?}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200), "{op:?}: {waited:?}");
        assert!(
            waited < Duration::from_secs(5),
            "{op:?}: no hang ({waited:?})"
        );
    }
}

#[tokio::test]
async fn a_slow_store_is_only_slow() {
    let store = faulty();
    store.inject(Op::Create, Fault::Delay(Duration::from_millis(100)));
    store.inject(Op::Load, Fault::Delay(Duration::from_millis(100)));
    let mut client = Client::new(app(store, |l| l));
    assert_eq!(client.get("/incr").await.body, "views: 1");
    assert_eq!(client.get("/incr").await.body, "views: 2");
}

#[tokio::test]
async fn save_error_replaces_the_response_and_the_stored_record_is_untouched() {
    let store = faulty();
    let mut client = Client::new(app(store.clone(), |l| l));
    client.get("/incr").await;
    store.inject(Op::Save, Fault::Error);
    let reply = client.get("/incr").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body, "session error");
    store.heal_all();
    assert_eq!(
        client.get("/read").await.body,
        "views: 1",
        "no partial write"
    );
}

#[tokio::test]
async fn save_error_is_only_logged_when_the_app_says_so() {
    let store = faulty();
    let mut client = Client::new(app(store.clone(), |l| l.with_save_errors(SaveErrors::Log)));
    client.get("/incr").await;
    store.inject(Op::Save, Fault::Error);
    let reply = client.get("/incr").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "views: 2");
    store.inject(Op::Create, Fault::Error);
    let fresh = send(&client.app, get_req("/incr", None)).await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert!(
        fresh.set_cookies().is_empty(),
        "no cookie for a session that was not stored"
    );
    assert_eq!(store.inner().len(), 1);
}

#[tokio::test]
async fn failed_regeneration_leaves_no_second_record_and_the_old_session_intact() {
    let store = faulty();
    let mut client = Client::new(app(store.clone(), |l| l));
    client.get("/incr").await;
    let cookie = client.cookie.clone().unwrap();
    // The old id cannot be deleted (once): the regeneration fails as a whole.
    store.inject_times(Op::Delete, Fault::Error, 1);
    let reply = client.get("/login").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.set_cookies().is_empty());
    store.heal_all();
    assert_eq!(store.inner().len(), 1, "the new copy was taken back");
    assert_eq!(
        send(&client.app, get_req("/read", Some(&cookie)))
            .await
            .body,
        "views: 1"
    );
}

#[tokio::test]
async fn failed_touch_does_not_fail_the_request() {
    let store = faulty();
    let mut client = Client::new(app(store.clone(), |l| l));
    client.get("/incr").await;
    store.inject(Op::Touch, Fault::Error);
    let reply = client.get("/read").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "views: 1");
}

#[tokio::test]
async fn failed_destroy_is_an_error_and_the_cookie_is_kept() {
    let store = faulty();
    let mut client = Client::new(app(store.clone(), |l| l));
    client.get("/incr").await;
    store.inject(Op::Delete, Fault::Error);
    let reply = client.get("/logout").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        reply.set_cookies().is_empty(),
        "no clearing cookie for a session still stored"
    );
}

#[tokio::test]
async fn lock_failure_is_an_error_status() {
    let store = faulty();
    let mut client = Client::new(app(store.clone(), |l| {
        l.with_session_lock(Duration::from_secs(1))
    }));
    client.get("/incr").await;
    store.inject(Op::Lock, Fault::Error);
    assert_eq!(
        client.get("/read").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    store.heal_all();
    assert_eq!(client.get("/read").await.body, "views: 1");
}

/// Under any single fault in any call, every request answers, and with the status that
/// fault means: an error in a call the request made is the error status (except in a touch,
/// which only extends a deadline and is logged), a delay within the store timeout changes
/// nothing.
#[tokio::test]
async fn every_single_fault_gives_the_status_it_means() {
    let faults = [Fault::Error, Fault::Delay(Duration::from_millis(5))];
    let ops = [Op::Load, Op::Create, Op::Save, Op::Touch, Op::Delete];
    for fault in faults {
        for op in ops {
            let store = faulty();
            let app = app(store.clone(), |l| {
                l.with_store_timeout(Duration::from_secs(2))
            });
            let mut client = Client::new(app);
            client.get("/incr").await;
            store.inject(op, fault);
            for uri in ["/read", "/incr", "/login", "/logout", "/incr"] {
                let fired_before = store.fired();
                let reply = client.get(uri).await;
                let met_the_fault = store.fired() > fired_before;
                let expected = if fault == Fault::Error && met_the_fault && op != Op::Touch {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                };
                assert_eq!(
                    reply.status, expected,
                    "{op:?} {fault:?} {uri} (the fault fired: {met_the_fault}): {}",
                    reply.body
                );
            }
            assert!(
                store.fired() > 0,
                "{op:?} {fault:?}: no request met the fault"
            );
            Store::purge_expired(&store).await.unwrap();
        }
    }
}
