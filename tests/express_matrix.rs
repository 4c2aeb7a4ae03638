//! express-session's decision matrix (`shared/spec/express-semantics.md`), cell by cell:
//! for every combination of `resave`, `save_uninitialized` and `rolling`, whether
//! `Set-Cookie` is sent and exactly which store calls happen (operation, save mode, fields
//! written, and the key: always the session's own), for a new or existing session whose
//! handler does or does not change data; then the touch throttle and a cookie whose record
//! is gone.
//!
//! One deliberate difference (marked in the rows): when an existing session with a cookie
//! lifetime is touched or rewritten (here on every request: `touch_after` is zero), the cookie
//! is sent again with the new expiry. express keeps extending the server's deadline while the
//! browser's cookie keeps its first expiry, so the browser drops a cookie whose session is
//! still alive.

mod common;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{send, store_key_of, RecordingStore};
use session_core::{Session, SessionLayer};

#[derive(Session)]
struct Visit {
    views: u32,
}

async fn read(visit: Session<Visit>) -> String {
    format!("views: {}", visit.views())
}

async fn write(mut visit: Session<Visit>) -> String {
    *visit.views_mut() += 1;
    format!("views: {}", visit.views())
}

fn app(
    store: &RecordingStore,
    resave: bool,
    save_uninit: bool,
    rolling: bool,
    max_age: bool,
) -> Router {
    app_with(store, resave, save_uninit, rolling, max_age, Duration::ZERO)
}

fn app_with(
    store: &RecordingStore,
    resave: bool,
    save_uninit: bool,
    rolling: bool,
    max_age: bool,
    touch_after: Duration,
) -> Router {
    let mut layer = SessionLayer::new(store.clone(), common::key())
        .with_resave(resave)
        .with_save_uninitialized(save_uninit)
        .with_rolling(rolling)
        .with_touch_after(touch_after);
    if max_age {
        layer = layer.with_max_age(Duration::from_secs(60));
    }
    Router::new()
        .route("/read", get(read))
        .route("/write", get(write))
        .layer(layer)
}

/// A session made by a separate `/write`; returns its cookie pair, with the recorded calls
/// cleared.
async fn existing_session(app: &Router, store: &RecordingStore) -> String {
    let setup = send(app, common::get("/write", None)).await;
    let pair = setup
        .cookie_pair("sid")
        .expect("setup request got no cookie");
    store.clear();
    pair
}

/// The calls recorded since the last clear; clears them.
fn take_calls(store: &RecordingStore) -> Vec<common::Call> {
    let calls = store.calls();
    store.clear();
    calls
}

/// Each call as [`Call::describe`](common::Call::describe) puts it.
fn described(calls: &[common::Call]) -> Vec<String> {
    calls.iter().map(common::Call::describe).collect()
}

/// Runs one cell; returns whether `Set-Cookie` was sent and the store calls made, described
/// by [`Call::describe`](common::Call::describe). Every call must be on the session's key:
/// the cookie's, or for a new session the one its `Set-Cookie` names.
async fn cell(
    app: &Router,
    store: &RecordingStore,
    existing: bool,
    modify: bool,
) -> (bool, Vec<String>) {
    let cookie = if existing {
        Some(existing_session(app, store).await)
    } else {
        None
    };
    let uri = if modify { "/write" } else { "/read" };
    let reply = send(app, common::get(uri, cookie.as_deref())).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let sent = reply.cookie_pair("sid");
    if let (Some(sent), Some(cookie)) = (&sent, &cookie) {
        assert_eq!(
            store_key_of(sent),
            store_key_of(cookie),
            "an existing session keeps its id"
        );
    }
    let calls = take_calls(store);
    if let Some(session) = cookie.as_deref().or(sent.as_deref()) {
        let key = store_key_of(session);
        for call in &calls {
            assert_eq!(
                call.key, key,
                "{} on another key than the session's",
                call.op
            );
        }
    } else {
        assert!(calls.is_empty(), "store calls without a session: {calls:?}");
    }
    (sent.is_some(), described(&calls))
}

/// One row of the matrix: (cookie, calls) for new/unmod, new/mod, exist/unmod, exist/mod.
async fn row(resave: bool, save_uninit: bool, rolling: bool, expected: [(bool, &[&str]); 4]) {
    let store = RecordingStore::new();
    let app = app(&store, resave, save_uninit, rolling, true);
    let columns = [(false, false), (false, true), (true, false), (true, true)];
    for ((existing, modify), (cookie, calls)) in columns.into_iter().zip(expected) {
        let (sent, ops) = cell(&app, &store, existing, modify).await;
        let name = format!(
            "resave={resave} save_uninitialized={save_uninit} rolling={rolling} {}/{}",
            if existing { "exist" } else { "new" },
            if modify { "mod" } else { "unmod" },
        );
        assert_eq!(sent, cookie, "Set-Cookie sent, {name}");
        assert_eq!(ops, calls, "store calls, {name}");
    }
}

const NONE: &[&str] = &[];
/// A new session stored with nothing in it (`save_uninitialized`).
const SET_EMPTY: &[&str] = &["create()"];
const SET: &[&str] = &["create(views)"];
const GET_TOUCH: &[&str] = &["load", "touch"];
/// `resave` of an unchanged session: the whole record written back.
const GET_RESAVE: &[&str] = &["load", "save replace(views)"];
/// A change: only the changed field written.
const GET_SET: &[&str] = &["load", "save merge(views)"];

#[tokio::test]
async fn row_resave_f_uninit_f_rolling_f() {
    row(
        false,
        false,
        false,
        [
            (false, NONE),
            (true, SET),
            (true, GET_TOUCH), // the cookie follows the extended deadline
            (true, GET_SET),
        ],
    )
    .await;
}

#[tokio::test]
async fn row_resave_f_uninit_f_rolling_t() {
    row(
        false,
        false,
        true,
        [
            (false, NONE),
            (true, SET),
            (true, GET_TOUCH),
            (true, GET_SET),
        ],
    )
    .await;
}

#[tokio::test]
async fn row_resave_f_uninit_t_rolling_f() {
    row(
        false,
        true,
        false,
        [
            (true, SET_EMPTY),
            (true, SET),
            (true, GET_TOUCH), // the cookie follows the extended deadline
            (true, GET_SET),
        ],
    )
    .await;
}

#[tokio::test]
async fn row_resave_f_uninit_t_rolling_t() {
    row(
        false,
        true,
        true,
        [
            (true, SET_EMPTY),
            (true, SET),
            (true, GET_TOUCH),
            (true, GET_SET),
        ],
    )
    .await;
}

#[tokio::test]
async fn row_resave_t_uninit_f_rolling_f() {
    row(
        true,
        false,
        false,
        [
            (false, NONE),
            (true, SET),
            (true, GET_RESAVE), // the cookie follows the extended deadline
            (true, GET_SET),
        ],
    )
    .await;
}

#[tokio::test]
async fn row_resave_t_uninit_f_rolling_t() {
    row(
        true,
        false,
        true,
        [
            (false, NONE),
            (true, SET),
            (true, GET_RESAVE),
            (true, GET_SET),
        ],
    )
    .await;
}

#[tokio::test]
async fn row_resave_t_uninit_t_rolling_f() {
    row(
        true,
        true,
        false,
        [
            (true, SET_EMPTY),
            (true, SET),
            (true, GET_RESAVE), // the cookie follows the extended deadline
            (true, GET_SET),
        ],
    )
    .await;
}

#[tokio::test]
async fn row_resave_t_uninit_t_rolling_t() {
    row(
        true,
        true,
        true,
        [
            (true, SET_EMPTY),
            (true, SET),
            (true, GET_RESAVE),
            (true, GET_SET),
        ],
    )
    .await;
}

#[tokio::test]
async fn browser_session_cookie_is_not_resent_on_change_unless_rolling() {
    for rolling in [false, true] {
        let store = RecordingStore::new();
        let app = app(&store, false, false, rolling, false);
        let (sent, ops) = cell(&app, &store, true, true).await;
        assert_eq!(sent, rolling, "rolling={rolling}");
        assert_eq!(ops, GET_SET);
    }
}

#[tokio::test]
async fn resave_writes_the_whole_record_back() {
    let store = RecordingStore::new();
    let app = app(&store, true, false, false, true);
    let setup = send(&app, common::get("/write", None)).await;
    let cookie = setup.cookie_pair("sid").unwrap();
    store.clear();
    send(&app, common::get("/read", Some(&cookie))).await;
    let calls = store.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].mode, Some(session_core::SaveMode::Replace));
    assert_eq!(calls[1].fields, ["views"]);
}

/// With `touch_after` set, an unchanged session is not touched again until that much of its
/// lifetime has passed; then it is, once. A change is written whatever the throttle says.
#[tokio::test]
async fn touch_after_throttles_the_touch_of_an_unchanged_session() {
    for rolling in [false, true] {
        let store = RecordingStore::new();
        let app = app_with(&store, false, false, rolling, true, Duration::from_secs(1));
        let cookie = existing_session(&app, &store).await;
        let key = store_key_of(&cookie);
        let calls = |store: &RecordingStore| -> Vec<String> {
            let calls = take_calls(store);
            assert!(calls.iter().all(|c| c.key == key), "{calls:?}");
            described(&calls)
        };

        let fresh = send(&app, common::get("/read", Some(&cookie))).await;
        assert_eq!(
            calls(&store),
            ["load"],
            "rolling={rolling}: touched within touch_after"
        );
        // `rolling` re-sends the cookie on every response, touched or not.
        assert_eq!(
            fresh.set_cookie("sid").is_some(),
            rolling,
            "rolling={rolling}"
        );
        send(&app, common::get("/write", Some(&cookie))).await;
        assert_eq!(
            calls(&store),
            GET_SET,
            "rolling={rolling}: a change is written"
        );

        tokio::time::sleep(Duration::from_millis(1100)).await;
        let due = send(&app, common::get("/read", Some(&cookie))).await;
        assert_eq!(calls(&store), GET_TOUCH, "rolling={rolling}: touch due");
        // The cookie (it has a lifetime) follows the extended deadline, rolling or not.
        assert!(due.set_cookie("sid").is_some(), "rolling={rolling}");
        send(&app, common::get("/read", Some(&cookie))).await;
        assert_eq!(calls(&store), ["load"], "rolling={rolling}: touched once");
    }
}

/// A signed cookie whose record is gone (expired, destroyed elsewhere) is a new visitor: the
/// lookup misses, nothing is written for a read, and a write creates a new session under a new
/// id, never under the old one.
#[tokio::test]
async fn a_cookie_whose_record_is_gone_starts_a_new_session() {
    let store = RecordingStore::new();
    let app = app(&store, false, false, false, true);
    let cookie = existing_session(&app, &store).await;
    let old = store_key_of(&cookie);
    session_core::Store::delete(&store.inner, &old)
        .await
        .unwrap();
    store.clear();

    let read = send(&app, common::get("/read", Some(&cookie))).await;
    assert_eq!(read.body, "views: 0");
    let calls = take_calls(&store);
    assert_eq!(described(&calls), ["load"]);
    assert_eq!(calls[0].key, old);
    assert!(
        read.cookie_pair("sid").is_none(),
        "{:?}",
        read.set_cookies()
    );

    let write = send(&app, common::get("/write", Some(&cookie))).await;
    assert_eq!(write.body, "views: 1");
    let new = write.cookie_pair("sid").expect("the new session's cookie");
    let new = store_key_of(&new);
    assert_ne!(new, old, "the old id is never adopted");
    let calls = take_calls(&store);
    assert_eq!(described(&calls), ["load", "create(views)"]);
    assert_eq!((calls[0].key, calls[1].key), (old, new));
}
