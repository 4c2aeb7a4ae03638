//! express-session's decision matrix (`shared/spec/express-semantics.md`), cell by cell:
//! for every combination of `resave`, `save_uninitialized` and `rolling`, whether
//! `Set-Cookie` is sent and exactly which store calls happen, for a new or existing session
//! whose handler does or does not change data.
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
use common::{send, RecordingStore};
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
    let mut layer = SessionLayer::new(store.clone(), common::key())
        .with_resave(resave)
        .with_save_uninitialized(save_uninit)
        .with_rolling(rolling)
        .with_touch_after(Duration::ZERO);
    if max_age {
        layer = layer.with_max_age(Duration::from_secs(60));
    }
    Router::new()
        .route("/read", get(read))
        .route("/write", get(write))
        .layer(layer)
}

/// Runs one cell; returns whether `Set-Cookie` was sent and the store calls made.
async fn cell(
    app: &Router,
    store: &RecordingStore,
    existing: bool,
    modify: bool,
) -> (bool, Vec<&'static str>) {
    let cookie = if existing {
        // A separate request creates the session this cell starts from.
        let setup = send(app, common::get("/write", None)).await;
        let pair = setup
            .cookie_pair("sid")
            .expect("setup request got no cookie");
        store.clear();
        Some(pair)
    } else {
        None
    };
    let uri = if modify { "/write" } else { "/read" };
    let reply = send(app, common::get(uri, cookie.as_deref())).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let sent = reply.set_cookie("sid").is_some();
    let ops = store.ops();
    store.clear();
    (sent, ops)
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
const SET: &[&str] = &["create"];
const GET_TOUCH: &[&str] = &["load", "touch"];
const GET_SET: &[&str] = &["load", "save"];

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
            (true, SET),
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
        [(true, SET), (true, SET), (true, GET_TOUCH), (true, GET_SET)],
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
            (true, GET_SET), // the cookie follows the extended deadline
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
        [(false, NONE), (true, SET), (true, GET_SET), (true, GET_SET)],
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
            (true, SET),
            (true, SET),
            (true, GET_SET), // the cookie follows the extended deadline
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
        [(true, SET), (true, SET), (true, GET_SET), (true, GET_SET)],
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
