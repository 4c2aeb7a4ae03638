//! A logout must hold against requests already in flight, on every store.
//!
//! A request that loaded the session before another request destroyed it (logout) or
//! regenerated it (login) saves after; with a store whose save could create, that save would
//! bring the old id back to life. Here the in-flight handler waits on a signal between its load
//! and its save, so the race happens every time, in the same order.
#![cfg(all(
    feature = "file",
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "memcached",
    feature = "mongodb"
))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use common::{get as get_req, post_form, send, stores, Reply};
use session_core::{Session, SessionLayer, Store};
use tokio::sync::Notify;

#[derive(Session)]
struct Visit {
    // Not `user`: the counter app in this test binary stores a `User` there.
    #[session(rename = "login")]
    user: Option<String>,
    views: u32,
    cart: Vec<String>,
}

/// Signals between the test and the in-flight handler.
#[derive(Default)]
struct Gate {
    /// The handler has its session (it is loaded).
    loaded: Notify,
    /// The test lets the handler finish.
    go: Notify,
}

impl Gate {
    /// Called by the handler after extraction: says so, then waits to be let go.
    async fn hold(&self) {
        self.loaded.notify_one();
        self.go.notified().await;
    }
}

fn app(store: Arc<dyn Store>, gate: Arc<Gate>, resave: bool) -> Router {
    let layer = SessionLayer::from_arc(store, common::key())
        .with_max_age(Duration::from_secs(900))
        .with_rolling(true)
        .with_resave(resave)
        .with_touch_after(Duration::ZERO);
    Router::new()
        .route(
            "/login",
            post(|mut visit: Session<Visit>| async move {
                visit.regenerate();
                visit.set_user(Some("ada".to_owned()));
                "logged in"
            }),
        )
        .route(
            "/logout",
            post(|mut visit: Session<Visit>| async move {
                visit.destroy();
                "logged out"
            }),
        )
        .route(
            "/view",
            get(|mut visit: Session<Visit>| async move {
                *visit.views_mut() += 1;
                visit.views().to_string()
            }),
        )
        .route(
            "/me",
            get(|visit: Session<Visit>| async move {
                format!("user: {}", visit.user().as_deref().unwrap_or("none"))
            }),
        )
        // The in-flight requests: load, wait, then write a field (or only read).
        .route(
            "/slow-add",
            post(
                |State(gate): State<Arc<Gate>>, mut visit: Session<Visit>| async move {
                    gate.hold().await;
                    visit.cart_mut().push("stolen".to_owned());
                    "added"
                },
            ),
        )
        .route(
            "/slow-read",
            get(
                |State(gate): State<Arc<Gate>>, visit: Session<Visit>| async move {
                    gate.hold().await;
                    visit.views().to_string()
                },
            ),
        )
        .with_state(gate)
        .layer(layer)
}

fn pair(reply: &Reply) -> String {
    reply.cookie_pair("sid").expect("a session cookie was set")
}

/// The `Set-Cookie` of the in-flight response never carries the old id again.
fn assert_not_reissued(reply: &Reply, old: &str) {
    for cookie in reply.set_cookies() {
        assert!(
            !cookie.starts_with(&format!("{old};")) && cookie.split(';').next() != Some(old),
            "the ended session's cookie was sent again: {cookie}"
        );
    }
}

/// Runs `path` with `cookie` until its handler holds the loaded session, then `meanwhile`,
/// then lets it finish; returns its reply.
async fn race<F, Fut>(
    app: &Router,
    gate: &Gate,
    slow: axum::http::Request<axum::body::Body>,
    meanwhile: F,
) -> Reply
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let in_flight = {
        let app = app.clone();
        tokio::spawn(async move { send(&app, slow).await })
    };
    gate.loaded.notified().await;
    meanwhile().await;
    gate.go.notify_one();
    in_flight.await.unwrap()
}

/// Logout while a request that loaded the session is still running: the late save writes
/// nothing, the response clears the cookie, and the old cookie stays dead.
async fn logout_holds_against_a_late_write(store: Arc<dyn Store>, resave: bool) {
    let gate = Arc::new(Gate::default());
    let app = app(store, gate.clone(), resave);
    let login = send(&app, post_form("/login", "", None)).await;
    let cookie = pair(&login);

    let late = race(
        &app,
        &gate,
        post_form("/slow-add", "", Some(&cookie)),
        || async {
            let logout = send(&app, post_form("/logout", "", Some(&cookie))).await;
            assert!(
                logout.set_cookie("sid").unwrap().contains("Max-Age=0"),
                "logout clears the cookie"
            );
        },
    )
    .await;
    assert_eq!(late.status, 200, "the in-flight handler still answers");
    assert_not_reissued(&late, &cookie);
    assert!(
        late.set_cookie("sid")
            .is_some_and(|c| c.contains("Max-Age=0")),
        "the in-flight response clears the cookie of the ended session: {:?}",
        late.set_cookies()
    );

    // The stolen cookie is dead: no user, no cart, and it is not adopted.
    let me = send(&app, get_req("/me", Some(&cookie))).await;
    assert_eq!(me.body, "user: none");
    assert_not_reissued(&me, &cookie);
    let view = send(&app, get_req("/view", Some(&cookie))).await;
    assert_eq!(view.body, "1", "a fresh session, not the destroyed one");
    assert_not_reissued(&view, &cookie);
}

/// A read-only request in flight (touch, or a whole rewrite under `resave`) does not bring
/// the session back either.
async fn logout_holds_against_a_late_touch(store: Arc<dyn Store>, resave: bool) {
    let gate = Arc::new(Gate::default());
    let app = app(store, gate.clone(), resave);
    let login = send(&app, post_form("/login", "", None)).await;
    let cookie = pair(&login);

    let late = race(
        &app,
        &gate,
        get_req("/slow-read", Some(&cookie)),
        || async {
            send(&app, post_form("/logout", "", Some(&cookie))).await;
        },
    )
    .await;
    assert_eq!(late.status, 200);
    assert_not_reissued(&late, &cookie);

    let me = send(&app, get_req("/me", Some(&cookie))).await;
    assert_eq!(me.body, "user: none");
}

/// A login (regenerate) while a request holds the pre-login session: the late save does not
/// bring the pre-login id back, and the new session keeps its user.
async fn login_holds_against_a_late_write_to_the_old_id(store: Arc<dyn Store>) {
    let gate = Arc::new(Gate::default());
    let app = app(store, gate.clone(), false);
    let first = send(&app, get_req("/view", None)).await;
    let before = pair(&first);

    let mut after = String::new();
    let late = race(
        &app,
        &gate,
        post_form("/slow-add", "", Some(&before)),
        || async {
            let login = send(&app, post_form("/login", "", Some(&before))).await;
            after = pair(&login);
        },
    )
    .await;
    assert_ne!(after, before);
    assert_not_reissued(&late, &before);

    let old = send(&app, get_req("/me", Some(&before))).await;
    assert_eq!(old.body, "user: none", "the pre-login id is dead");
    let new = send(&app, get_req("/me", Some(&after))).await;
    assert_eq!(new.body, "user: ada");
}

stores::on_every_store! {
    logout_beats_a_late_field_write =>
        |store| logout_holds_against_a_late_write(store, false).await;
    logout_beats_a_late_field_write_under_resave =>
        |store| logout_holds_against_a_late_write(store, true).await;
    logout_beats_a_late_touch => |store| logout_holds_against_a_late_touch(store, false).await;
    logout_beats_a_late_resave => |store| logout_holds_against_a_late_touch(store, true).await;
    login_beats_a_late_write_to_the_pre_login_id =>
        |store| login_holds_against_a_late_write_to_the_old_id(store).await;
}
