//! Per-session control and the express behaviours that came up short: "remember me" cookie
//! lifetimes, `touch()`, nested routers, `save()` under `resave`, `id()` after `regenerate()`,
//! `SameSite::Auto`, `Priority`, custom id generators, the cookie following the server's
//! deadline, and the events, metrics and spans an app can observe.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::Request;
use axum::routing::{get, post};
use axum::Router;
use common::{get as get_req, send, Client, RecordingStore};
use session_core::conformance::{Fault, FaultStore, Op};
use session_core::store::MemoryStore;
use session_core::{
    ConfigError, Priority, SameSite, Secure, Session, SessionError, SessionEvent, SessionEvents,
    SessionId, SessionLayer, Store, TlsConnection,
};
use typed_sessions::counter;

#[derive(Session)]
struct Visit {
    // Not `user`: the counter app in this test binary stores a `User` there.
    #[session(rename = "login")]
    user: Option<String>,
    views: u32,
}

/// `/read` (reads `views`) and `/incr` (adds one), the routes most tests here start from.
fn visit_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
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
}

const THIRTY_DAYS: u64 = 30 * 24 * 60 * 60;

fn key_of(pair: &str) -> session_core::StoreKey {
    let value = pair.split_once('=').unwrap().1;
    SessionId::parse(&value[..32]).unwrap().store_key()
}

fn max_age_of(set_cookie: &str) -> Option<u64> {
    set_cookie
        .split(';')
        .find_map(|a| a.trim().strip_prefix("Max-Age="))
        .map(|v| v.parse().unwrap())
}

/// "Remember me": on one layer, a session with a 30-day cookie and one without each keep
/// their lifetime across requests, and the remembered one outlives the layer's idle timeout.
#[tokio::test]
async fn remember_me_keeps_its_own_lifetime_and_outlives_the_default() {
    let store = MemoryStore::new();
    let layer =
        counter::layer(Arc::new(store.clone()), common::key()).with_max_age(Duration::from_secs(2));
    let app = counter::app_with(layer);
    let mut remembered = Client::new(app.clone());
    let mut plain = Client::new(app);

    let login = remembered.post("/login", "name=ada&remember=1").await;
    assert_eq!(
        max_age_of(&login.set_cookie("sid").unwrap()),
        Some(THIRTY_DAYS)
    );
    let login = plain.post("/login", "name=bob").await;
    assert_eq!(max_age_of(&login.set_cookie("sid").unwrap()), Some(2));

    // Later writes re-send each cookie with its own lifetime.
    let add = remembered.post("/cart", "item=tea").await;
    assert_eq!(
        max_age_of(&add.set_cookie("sid").unwrap()),
        Some(THIRTY_DAYS)
    );
    let add = plain.post("/cart", "item=tea").await;
    assert_eq!(max_age_of(&add.set_cookie("sid").unwrap()), Some(2));

    // The server keeps the remembered one 30 days, the other by the layer's 2 s.
    let record = store
        .load(&key_of(remembered.cookie.as_deref().unwrap()))
        .await
        .unwrap()
        .unwrap();
    let left = record
        .expires_at
        .saturating_since(session_core::Timestamp::now());
    assert!(left > Duration::from_secs(THIRTY_DAYS - 60), "{left:?}");

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(remembered.get("/me").await.body, "user: ada");
    assert_eq!(plain.get("/me").await.body, "user: none");
}

/// The counter app's `remember=1` gives the cookie `Max-Age=2592000`; without it the cookie
/// keeps the app's 15 minutes.
#[tokio::test]
async fn counter_login_with_remember_sets_a_thirty_day_cookie() {
    let app = counter::app(Arc::new(MemoryStore::new()), common::key());
    let mut client = Client::new(app.clone());
    let reply = client.post("/login", "name=ada&remember=1").await;
    assert!(reply.set_cookie("sid").unwrap().contains("Max-Age=2592000"));
    let mut client = Client::new(app);
    let reply = client.post("/login", "name=ada").await;
    assert!(reply.set_cookie("sid").unwrap().contains("Max-Age=900"));
}

/// `set_cookie_max_age(None)` makes a browser-session cookie: no `Max-Age`, no `Expires`.
#[tokio::test]
async fn a_session_can_ask_for_a_browser_session_cookie() {
    let app = Router::new()
        .route(
            "/public-computer",
            post(|mut v: Session<Visit>| async move {
                v.set_user(Some("ada".into()));
                v.set_cookie_max_age(None);
                format!("{:?}", v.cookie_max_age())
            }),
        )
        .layer(
            SessionLayer::new(MemoryStore::new(), common::key())
                .with_max_age(Duration::from_secs(900)),
        );
    let mut client = Client::new(app);
    let reply = client.post("/public-computer", "").await;
    assert_eq!(reply.body, "None");
    let cookie = reply.set_cookie("sid").unwrap();
    assert!(
        !cookie.contains("Max-Age") && !cookie.contains("Expires"),
        "{cookie}"
    );
}

/// `touch()` extends the deadline now, even within `touch_after`, and re-sends a cookie with
/// a lifetime; without it a read-only request within `touch_after` extends nothing.
#[tokio::test]
async fn touch_extends_the_deadline_now_whatever_touch_after_says() {
    let store = RecordingStore::new();
    let app = visit_routes()
        .route(
            "/touch",
            get(|mut v: Session<Visit>| async move {
                v.touch().await.unwrap();
                "touched"
            }),
        )
        .layer(
            SessionLayer::new(store.clone(), common::key())
                .with_max_age(Duration::from_secs(600))
                .with_touch_after(Duration::from_secs(3600)),
        );
    let mut client = Client::new(app);
    client.get("/incr").await;
    store.clear();
    let read = client.get("/read").await;
    assert_eq!(store.ops(), ["load"], "throttled: no touch");
    assert!(read.set_cookie("sid").is_none());

    store.clear();
    let touched = client.get("/touch").await;
    assert_eq!(store.ops(), ["load", "touch"]);
    assert_eq!(max_age_of(&touched.set_cookie("sid").unwrap()), Some(600));
}

/// With a `max_age` and `rolling` off, a read-only request that extends the server's
/// deadline (once per `touch_after`) sends the cookie too, so the browser's copy does not
/// expire before the session.
#[tokio::test]
async fn the_cookie_follows_a_touch() {
    let store = RecordingStore::new();
    let app = visit_routes().layer(
        SessionLayer::new(store.clone(), common::key())
            .with_max_age(Duration::from_secs(60))
            .with_touch_after(Duration::from_secs(1)),
    );
    let mut client = Client::new(app);
    client.get("/incr").await;
    // Within touch_after: no touch, no cookie.
    store.clear();
    assert!(client.get("/read").await.set_cookie("sid").is_none());
    assert_eq!(store.ops(), ["load"]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    store.clear();
    let read = client.get("/read").await;
    assert_eq!(store.ops(), ["load", "touch"]);
    assert_eq!(max_age_of(&read.set_cookie("sid").unwrap()), Some(60));
}

/// With the layer inside `nest("/foo", ..)` and the cookie path `/foo/bar`, the browser's
/// path decides: `/foo/bar` gets a session, `/foo/foo/bar` (whose inner path is `/foo/bar`)
/// gets none.
#[tokio::test]
async fn nested_routers_match_the_cookie_path_against_the_original_url() {
    let store = MemoryStore::new();
    let inner = Router::new()
        .route(
            "/bar",
            get(|mut v: Session<Visit>| async move {
                *v.views_mut() += 1;
                v.views().to_string()
            }),
        )
        .route(
            "/foo/bar",
            get(
                |v: Result<Session<Visit>, session_core::SessionRejection>| async move {
                    match v {
                        Ok(_) => "session".to_owned(),
                        Err(rejection) => format!("no session: {}", rejection.error()),
                    }
                },
            ),
        )
        .layer(SessionLayer::new(store.clone(), common::key()).with_path("/foo/bar"));
    let app = Router::new().nest("/foo", inner);

    let reply = send(&app, get_req("/foo/bar", None)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "1");
    let cookie = reply.set_cookie("sid").expect("a session on /foo/bar");
    assert!(cookie.contains("Path=/foo/bar"), "{cookie}");
    assert_eq!(store.len(), 1);

    let reply = send(&app, get_req("/foo/foo/bar", None)).await;
    assert!(reply.body.starts_with("no session"), "{}", reply.body);
    assert!(reply.set_cookie("sid").is_none());
    assert_eq!(store.len(), 1, "nothing stored outside the cookie path");
}

/// Under `resave`, `save()` on an unchanged session writes at once, and the end of the
/// request does not write again.
#[tokio::test]
async fn save_under_resave_writes_now() {
    let store = RecordingStore::new();
    let app = visit_routes()
        .route(
            "/save",
            get(
                |State(store): State<RecordingStore>, mut v: Session<Visit>| async move {
                    v.save().await.unwrap();
                    store.ops().join(",")
                },
            ),
        )
        .with_state(store.clone())
        .layer(SessionLayer::new(store.clone(), common::key()).with_resave(true));
    let mut client = Client::new(app);
    client.get("/incr").await;
    store.clear();
    let reply = client.get("/save").await;
    assert_eq!(
        reply.body, "load,save",
        "written before the handler returned"
    );
    assert_eq!(store.ops(), ["load", "save"], "and not again at the end");
}

/// `id()` after `regenerate()` is the new id at once, and the cookie carries it.
#[tokio::test]
async fn id_after_regenerate_is_the_new_id() {
    let app = visit_routes()
        .route(
            "/login",
            get(|mut v: Session<Visit>| async move {
                let before = v.id().unwrap();
                v.regenerate();
                let after = v.id().unwrap();
                assert_ne!(before, after);
                after.as_str().to_owned()
            }),
        )
        .layer(SessionLayer::new(MemoryStore::new(), common::key()));
    let mut client = Client::new(app);
    client.get("/incr").await;
    let reply = client.get("/login").await;
    let cookie = reply.cookie_pair("sid").unwrap();
    assert_eq!(&cookie["sid=".len().."sid=".len() + 32], reply.body);
}

fn same_site_app(store: MemoryStore) -> Router {
    visit_routes().layer(
        SessionLayer::new(store, common::key())
            .with_same_site(SameSite::Auto)
            .with_priority(Priority::High)
            .check()
            .unwrap(),
    )
}

/// `SameSite::Auto`: `None` with `Secure` on a secure request, `Lax` without `Secure` on plain
/// HTTP (where a `None` cookie would be dropped, and the session is still stored only when its
/// cookie can be set); `Priority` is rendered.
#[tokio::test]
async fn same_site_auto_follows_the_request_and_priority_is_sent() {
    let app = same_site_app(MemoryStore::new());
    let plain = send(&app, get_req("/incr", None)).await;
    let cookie = plain.set_cookie("sid").unwrap();
    assert!(
        cookie.contains("SameSite=Lax") && !cookie.contains("Secure"),
        "{cookie}"
    );
    assert!(cookie.contains("Priority=High"), "{cookie}");

    let mut request: Request<axum::body::Body> = get_req("/incr", None);
    request.extensions_mut().insert(TlsConnection);
    let secure = send(&app, request).await;
    let cookie = secure.set_cookie("sid").unwrap();
    assert!(
        cookie.contains("SameSite=None") && cookie.contains("Secure"),
        "{cookie}"
    );

    let refused = SessionLayer::new(MemoryStore::new(), common::key())
        .with_same_site(SameSite::Auto)
        .with_secure(Secure::Never)
        .check()
        .unwrap_err();
    assert_eq!(refused, ConfigError::SameSiteAutoWithoutSecure);
}

/// A custom id generator makes the ids; generators that repeat or barely vary are refused.
#[tokio::test]
async fn custom_id_generators_are_used_and_weak_ones_refused() {
    let last = Arc::new(Mutex::new([0u8; 24]));
    let seen = last.clone();
    let layer = SessionLayer::new(MemoryStore::new(), common::key())
        .with_id_generator(move || {
            let mut bytes = [0u8; 24];
            getrandom_fill(&mut bytes);
            *seen.lock().unwrap() = bytes;
            bytes
        })
        .check()
        .unwrap();
    let app = visit_routes().layer(layer);
    let reply = send(&app, get_req("/incr", None)).await;
    let expected = SessionId::from_bytes(*last.lock().unwrap());
    assert!(reply
        .cookie_pair("sid")
        .unwrap()
        .starts_with(&format!("sid={}.", expected.as_str())));

    let counter = AtomicU64::new(0);
    let weak = SessionLayer::new(MemoryStore::new(), common::key())
        .with_id_generator(move || {
            let mut bytes = [0u8; 24];
            bytes[..8].copy_from_slice(&counter.fetch_add(1, Ordering::Relaxed).to_le_bytes());
            bytes
        })
        .check();
    assert!(
        matches!(weak, Err(ConfigError::WeakIdGenerator(_))),
        "{weak:?}"
    );
    let constant = SessionLayer::new(MemoryStore::new(), common::key())
        .with_id_generator(|| [7u8; 24])
        .check();
    assert!(matches!(constant, Err(ConfigError::WeakIdGenerator(_))));
}

/// Random bytes without another dependency: ids from the default generator.
fn getrandom_fill(bytes: &mut [u8; 24]) {
    let id = SessionId::generate().unwrap();
    bytes.copy_from_slice(&id.as_str().as_bytes()[..24]);
}

/// Records every event's kind.
#[derive(Default)]
struct EventLog(Mutex<Vec<String>>);

impl SessionEvents for EventLog {
    fn on_event(&self, event: &SessionEvent<'_>) {
        let line = match event {
            SessionEvent::Created { fields, .. } => {
                format!("created {:?}", fields.keys().collect::<Vec<_>>())
            }
            SessionEvent::Loaded { .. } => "loaded".into(),
            SessionEvent::ExpiredOnLoad => "expired_on_load".into(),
            SessionEvent::Saved { fields, whole, .. } => {
                format!(
                    "saved {:?} whole={whole}",
                    fields.keys().collect::<Vec<_>>()
                )
            }
            SessionEvent::Touched { .. } => "touched".into(),
            SessionEvent::Regenerated { .. } => "regenerated".into(),
            SessionEvent::Destroyed { .. } => "destroyed".into(),
            SessionEvent::Ended { .. } => "ended".into(),
            SessionEvent::Error { logged_only, .. } => format!("error logged_only={logged_only}"),
            _ => "other".into(),
        };
        self.0.lock().unwrap().push(line);
    }
}

impl EventLog {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// Every event reaches the app's hook and the layer's counters, without a tracing subscriber.
#[tokio::test]
async fn events_and_metrics_report_every_step() {
    let store = FaultStore::new(MemoryStore::new());
    let events = Arc::new(EventLog::default());
    let layer = SessionLayer::new(store.clone(), common::key())
        .with_touch_after(Duration::ZERO)
        .with_events(events.clone());
    let metrics = layer.metrics();
    let app = visit_routes()
        .route(
            "/login",
            get(|mut v: Session<Visit>| async move {
                v.regenerate();
                v.set_user(Some("ada".into()));
                "ok"
            }),
        )
        .route(
            "/logout",
            get(|mut v: Session<Visit>| async move {
                v.destroy();
                "ok"
            }),
        )
        .layer(layer);
    let mut client = Client::new(app.clone());
    client.get("/incr").await;
    assert_eq!(events.take(), [r#"created ["views"]"#]);
    client.get("/incr").await;
    assert_eq!(events.take(), ["loaded", r#"saved ["views"] whole=false"#]);
    client.get("/read").await;
    assert_eq!(events.take(), ["loaded", "touched"]);
    store.inject_times(Op::Touch, Fault::Error, 1);
    client.get("/read").await;
    assert_eq!(events.take(), ["loaded", "error logged_only=true"]);
    let old = client.cookie.clone().unwrap();
    client.get("/login").await;
    assert_eq!(events.take(), ["loaded", "regenerated"]);
    client.get("/logout").await;
    assert_eq!(events.take(), ["loaded", "destroyed"]);
    send(&app, get_req("/read", Some(&old))).await;
    assert_eq!(events.take(), ["expired_on_load"]);

    let s = metrics.snapshot();
    assert_eq!(
        (
            s.created,
            s.loaded,
            s.saved,
            s.touched,
            s.regenerated,
            s.destroyed
        ),
        (1, 5, 1, 1, 1, 1)
    );
    assert_eq!((s.expired_on_load, s.errors, s.store_errors), (1, 1, 1));
    assert!(s.store_calls >= 12, "{s:?}");
    let text = metrics.render_prometheus();
    assert!(
        text.contains("sessions_total{event=\"created\"} 1"),
        "{text}"
    );
    assert!(text.contains("session_store_call_seconds_count"), "{text}");
}

/// A request that finds its session gone reports `Ended`.
#[tokio::test]
async fn a_session_ended_elsewhere_is_reported() {
    let store = MemoryStore::new();
    let events = Arc::new(EventLog::default());
    let app = visit_routes()
        .route(
            "/save-after-delete",
            get(
                |State(store): State<MemoryStore>, mut v: Session<Visit>| async move {
                    store.delete(&v.id().unwrap().store_key()).await.unwrap();
                    *v.views_mut() += 1;
                    matches!(v.save().await, Err(SessionError::Ended)).to_string()
                },
            ),
        )
        .with_state(store.clone())
        .layer(SessionLayer::new(store, common::key()).with_events(events.clone()));
    let mut client = Client::new(app);
    client.get("/incr").await;
    events.take();
    let reply = client.get("/save-after-delete").await;
    assert_eq!(reply.body, "true");
    assert_eq!(events.take(), ["loaded", "ended"]);
    assert!(reply.set_cookie("sid").unwrap().contains("Max-Age=0"));
}
