//! Sessions in composed apps: several views per request (a login middleware holding its view
//! across `next.run`, two structs in one handler), namespaces, the same-key conflict,
//! `Option<Session<T>>`, flash fields, a missing layer, and sub-second timeouts.

mod common;

use std::time::Duration;

use axum::extract::Request;
use axum::middleware::{from_fn, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use common::{get as get_req, send, Client, RecordingStore};
use session_core::store::MemoryStore;
use session_core::{Session, SessionLayer, Store};

/// Who is logged in: shares its key with `Shop` on purpose (no namespace).
#[derive(Session)]
struct Auth {
    // Not `user`: the counter app in this test binary stores a `User` there.
    #[session(rename = "login")]
    user: Option<String>,
}

#[derive(Session)]
struct Shop {
    // Not `user`: the counter app in this test binary stores a `User` there.
    #[session(rename = "login")]
    user: Option<String>,
    views: u32,
    cart: Vec<String>,
    #[session(flash)]
    notice: Option<String>,
}

/// Stored under `prefs.*`: no other struct can read or clobber these keys.
#[derive(Session)]
#[session(namespace = "prefs")]
struct Prefs {
    theme: String,
    views: String,
}

/// A struct that reuses `Shop`'s key `views` with another type: a mistake, caught as a
/// conflict when both change it in one request.
#[derive(Session)]
struct Counter {
    views: u32,
}

/// Requires a login: redirects to `/login` otherwise; holds its view across the handler.
async fn require_login(auth: Session<Auth>, request: Request, next: Next) -> Response {
    if auth.user().is_none() {
        return Redirect::to("/login").into_response();
    }
    let response = next.run(request).await;
    drop(auth);
    response
}

fn app(store: impl Store) -> Router {
    let private = Router::new()
        .route(
            "/cart",
            post(|mut shop: Session<Shop>| async move {
                shop.cart_mut().push("tea".into());
                shop.set_notice(Some("Added tea".into()));
                format!("{} items", shop.cart().len())
            }),
        )
        .route(
            "/cart",
            get(|shop: Session<Shop>| async move { shop.cart().join(",") }),
        )
        .layer(from_fn(require_login));
    Router::new()
        .merge(private)
        .route(
            "/login",
            post(|mut auth: Session<Auth>| async move {
                auth.regenerate();
                auth.set_user(Some("ada".into()));
                "logged in"
            }),
        )
        .route(
            "/both",
            get(
                |mut shop: Session<Shop>, mut prefs: Session<Prefs>| async move {
                    *shop.views_mut() += 1;
                    prefs.set_theme("dark".into());
                    prefs.set_views("many".into());
                    format!("{} {} {}", shop.views(), prefs.theme(), prefs.views())
                },
            ),
        )
        .route(
            "/read",
            get(|shop: Session<Shop>, prefs: Session<Prefs>| async move {
                format!(
                    "user={:?} views={} theme={} notice={:?}",
                    shop.user(),
                    shop.views(),
                    prefs.theme(),
                    shop.notice()
                )
            }),
        )
        .route(
            "/clear-prefs",
            post(|mut prefs: Session<Prefs>| async move {
                prefs.clear();
                "cleared"
            }),
        )
        .route(
            "/conflict",
            get(
                |mut shop: Session<Shop>, mut counter: Session<Counter>| async move {
                    *shop.views_mut() += 1;
                    *counter.views_mut() += 10;
                    "both changed views"
                },
            ),
        )
        .route(
            "/maybe",
            get(|shop: Option<Session<Shop>>| async move {
                match shop {
                    Some(shop) => format!("hello {:?}", shop.user()),
                    None => "login link".to_owned(),
                }
            }),
        )
        .route(
            "/logout",
            post(|mut shop: Session<Shop>| async move {
                shop.destroy();
                shop.set_notice(Some("Signed out".into()));
                "bye"
            }),
        )
        .layer(SessionLayer::new(store, common::key()))
}

/// A `from_fn` middleware holds `Session<Auth>` across `next.run` while the handler takes
/// `Session<Shop>`: both work, and the middleware redirects when nobody is logged in.
#[tokio::test]
async fn login_middleware_holds_its_view_while_the_handler_takes_another() {
    let mut client = Client::new(app(MemoryStore::new()));
    let denied = client.post("/cart", "").await;
    assert_eq!(denied.status, 303);
    assert_eq!(denied.headers["location"], "/login");
    client.post("/login", "").await;
    let added = client.post("/cart", "").await;
    assert_eq!(added.status, 200, "{}", added.body);
    assert_eq!(added.body, "1 items");
    assert_eq!(client.post("/cart", "").await.body, "2 items");
    assert_eq!(client.get("/cart").await.body, "tea,tea");
}

/// Two structs in one handler: both changes land, in one save of only the changed fields.
#[tokio::test]
async fn two_views_in_one_handler_are_saved_together() {
    let store = RecordingStore::new();
    let mut client = Client::new(app(store.clone()));
    assert_eq!(client.get("/both").await.body, "1 dark many");
    store.clear();
    assert_eq!(client.get("/both").await.body, "2 dark many");
    let calls = store.calls();
    assert_eq!(store.ops(), ["load", "save"], "one save for both views");
    assert_eq!(calls[1].fields, ["views"], "only the changed field");
}

/// A namespaced struct's keys are its own: `Prefs.views` (a string) and `Shop.views` (a
/// number) never meet, and `Prefs::clear()` leaves the login and the cart alone.
#[tokio::test]
async fn a_namespaced_struct_is_isolated_and_clears_only_itself() {
    let store = MemoryStore::new();
    let mut client = Client::new(app(store.clone()));
    client.post("/login", "").await;
    client.get("/both").await;
    client.post("/cart", "").await;
    assert_eq!(
        client.get("/read").await.body,
        "user=Some(\"ada\") views=1 theme=dark notice=Some(\"Added tea\")"
    );
    client.post("/clear-prefs", "").await;
    assert_eq!(
        client.get("/read").await.body,
        "user=Some(\"ada\") views=1 theme= notice=None"
    );
    assert_eq!(client.get("/cart").await.body, "tea");
}

/// Two live views changing one stored key: the request fails with a plain 500 and writes
/// nothing, rather than keep one change and silently lose the other.
#[tokio::test]
async fn the_same_key_changed_by_two_live_views_is_a_conflict() {
    let store = RecordingStore::new();
    let mut client = Client::new(app(store.clone()));
    client.get("/both").await;
    store.clear();
    let reply = client.get("/conflict").await;
    assert_eq!(reply.status, 500);
    assert_eq!(
        reply.body, "session error",
        "no internal detail for the client"
    );
    assert_eq!(store.ops(), ["load"], "nothing written");
    assert_eq!(client.get("/both").await.body, "2 dark many");
}

/// `Option<Session<T>>` is `None` without a live session, and then creates nothing: no
/// cookie, no store write.
#[tokio::test]
async fn optional_session_creates_nothing() {
    let store = RecordingStore::new();
    let app = app(store.clone());
    let reply = send(&app, get_req("/maybe", None)).await;
    assert_eq!(reply.body, "login link");
    assert!(reply.set_cookies().is_empty());
    assert!(store.ops().is_empty(), "{:?}", store.ops());

    let mut client = Client::new(app.clone());
    client.post("/login", "").await;
    store.clear();
    assert_eq!(client.get("/maybe").await.body, "hello Some(\"ada\")");
    assert_eq!(store.ops(), ["load"], "read only");

    // A cookie whose session is gone: still `None`, nothing written.
    let cookie = client.cookie.clone().unwrap();
    client.post("/logout", "").await;
    store.clear();
    let reply = send(&app, get_req("/maybe", Some(&cookie))).await;
    assert_eq!(reply.body, "login link");
    assert!(reply.set_cookies().is_empty());
    assert_eq!(store.ops(), ["load"]);
}

/// A flash set in one request is readable in it and the next, and gone after the next, read
/// or not; it survives `regenerate` (login) and `destroy` (logout with a message).
#[tokio::test]
async fn flash_lives_for_one_more_request() {
    let mut client = Client::new(app(MemoryStore::new()));
    client.post("/login", "").await;
    client.post("/cart", "").await; // sets "Added tea"
    let first = client.get("/read").await.body;
    assert!(first.ends_with("notice=Some(\"Added tea\")"), "{first}");
    let second = client.get("/read").await.body;
    assert!(second.ends_with("notice=None"), "{second}");

    // Consumed at the end of the next request even if nobody reads it.
    client.post("/cart", "").await;
    client.get("/cart").await; // does not read `notice`
    assert!(client.get("/read").await.body.ends_with("notice=None"));

    // Across logout: the message rides a new session; the old one stays gone.
    let old = client.cookie.clone().unwrap();
    client.post("/logout", "").await;
    assert_ne!(client.cookie.as_deref(), Some(old.as_str()));
    let after = client.get("/read").await.body;
    assert_eq!(
        after,
        "user=None views=0 theme= notice=Some(\"Signed out\")"
    );
    assert!(client.get("/read").await.body.ends_with("notice=None"));
}

/// A route without the layer answers a plain 500 with no internal text; the message a
/// handler sees names the fix.
#[tokio::test]
async fn a_missing_layer_is_a_plain_500_and_names_the_fix() {
    let app = Router::new()
        .route("/plain", get(|_s: Session<Shop>| async { "unreachable" }))
        .route(
            "/inspect",
            get(
                |s: Result<Session<Shop>, session_core::SessionRejection>| async move {
                    match s {
                        Ok(_) => "session".to_owned(),
                        Err(rejection) => rejection.error().to_string(),
                    }
                },
            ),
        );
    let reply = send(&app, get_req("/plain", None)).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.body, "session error");
    let message = send(&app, get_req("/inspect", None)).await.body;
    assert!(message.contains(".layer(SessionLayer::new"), "{message}");
}

/// Timeouts below a second are accepted; a sub-second cookie lifetime is sent as
/// `Max-Age=1`, never as a deleting 0.
#[tokio::test]
async fn sub_second_timeouts_are_accepted() {
    let layer = SessionLayer::new(MemoryStore::new(), common::key())
        .with_max_age(Duration::from_millis(300))
        .with_absolute_timeout(Duration::from_millis(900))
        .check()
        .unwrap();
    let app = Router::new()
        .route(
            "/incr",
            get(|mut s: Session<Shop>| async move {
                *s.views_mut() += 1;
                s.views().to_string()
            }),
        )
        .layer(layer);
    let mut client = Client::new(app);
    let reply = client.get("/incr").await;
    assert!(reply.set_cookie("sid").unwrap().contains("Max-Age=1;"));
    assert_eq!(client.get("/incr").await.body, "2");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        client.get("/incr").await.body,
        "1",
        "idle for longer than 300 ms"
    );
}
