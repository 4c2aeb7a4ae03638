//! The tower [`Layer`] and [`Service`] that give every request its session.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use cookie::time::OffsetDateTime;
use http::header::SET_COOKIE;
use http::{HeaderValue, Request, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::codec::{ExpressSecrets, ExpressUpgrade, TokenCodec};
use crate::config::{
    Config, ConfigError, IdGenerator, LockConfig, Priority, SameSite, SaveErrors, Secure,
    DEFAULT_LOCK_LEASE,
};
use crate::cookie::{Key, KeyRing};
use crate::error::{log_failure, SessionError};
use crate::events::{SessionEvent, SessionEvents, SessionMetrics};
use crate::id::SessionId;
use crate::lifecycle::{CookieAction, RequestState};
use crate::store::Store;
use crate::transport::{self, Answer, Delivery, TokenHeader, Transport};

/// Adds sessions to an axum app. See the [crate docs](crate) for an example and the options
/// table.
///
/// Options are set with `with_*` methods and checked when the layer is applied; call
/// [`check`](Self::check) first to handle a bad configuration without a panic.
#[derive(Clone)]
#[must_use]
pub struct SessionLayer {
    config: Arc<Config>,
}

impl SessionLayer {
    /// A layer keeping sessions in `store`, signing cookies with `key`.
    pub fn new(store: impl Store, key: Key) -> Self {
        Self::from_arc(Arc::new(store), key)
    }

    /// Like [`new`](Self::new), for a store chosen at run time.
    pub fn from_arc(store: Arc<dyn Store>, key: Key) -> Self {
        Self {
            config: Arc::new(Config::new(store, TokenCodec::Native(KeyRing::new(key)))),
        }
    }

    /// A layer that shares sessions with a running express-session app: its cookie
    /// (`connect.sid`, `s:ID.SIG` signed with the express secret string), its ids (the store
    /// key is the id itself) and, with [`ConnectRedisStore`](crate::store::ConnectRedisStore)
    /// or [`ConnectPgStore`](crate::store::ConnectPgStore), its records (one JSON object with
    /// a `cookie` key). Typed fields are the object's top-level keys; keys the struct does not
    /// know are kept as they are. See the [`store::express`](crate::store::express) module
    /// for the record format and README's "Migrating from express-session" for the set-up.
    ///
    /// Options keep their meaning. What this mode changes: the cookie name defaults to
    /// `connect.sid`; there is no absolute timeout (express records carry no creation time,
    /// and [`check`](Self::check) refuses one); store keys are not hashed; per-session locks
    /// and the token header are refused by `check`.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use session_core::store::MemoryStore;
    /// use session_core::{ExpressSecrets, Session, SessionLayer};
    ///
    /// #[derive(Session)]
    /// struct Visit {
    ///     views: u32,
    /// }
    ///
    /// async fn home(mut visit: Session<Visit>) -> String {
    ///     *visit.views_mut() += 1;
    ///     format!("You visited {} times", visit.views())
    /// }
    ///
    /// // The same secret the express app passes to `session({ secret })`.
    /// let secrets = ExpressSecrets::new("keyboard cat")?;
    /// let layer = SessionLayer::express(MemoryStore::new(), secrets)
    ///     .with_max_age(std::time::Duration::from_secs(15 * 60))
    ///     .check()?;
    /// let app: Router = Router::new().route("/", get(home)).layer(layer);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn express(store: impl Store, secrets: ExpressSecrets) -> Self {
        Self::express_from_arc(Arc::new(store), secrets)
    }

    /// Like [`express`](Self::express), for a store chosen at run time.
    pub fn express_from_arc(store: Arc<dyn Store>, secrets: ExpressSecrets) -> Self {
        let codec = TokenCodec::Express {
            secrets,
            misplaced_key: false,
        };
        let mut config = Config::new(store, codec);
        config.cookie_name = "connect.sid".to_owned();
        config.absolute_timeout = None;
        // express's stores keep no index of this library's.
        config.indexed = Arc::from([]);
        Self {
            config: Arc::new(config),
        }
    }

    /// The way out of express compatibility mode: this (native) layer also accepts the
    /// express-session cookie `connect.sid` signed with `secrets`, and serves its session
    /// from `express_store` (the store the express layer used) in express's formats, until
    /// the session is regenerated (at the next login): then it is re-issued natively, in
    /// this layer's store under a hashed key with this layer's cookie, and the express record
    /// and cookie are deleted. New sessions are native from the start.
    ///
    /// Per-session locks and the token header are refused by [`check`](Self::check) in this
    /// mode.
    ///
    /// ```
    /// use session_core::store::MemoryStore;
    /// use session_core::{ExpressSecrets, Key, SessionLayer};
    ///
    /// # let express_store = MemoryStore::new();
    /// let layer = SessionLayer::new(MemoryStore::new(), Key::generate()?)
    ///     // In production, the `ConnectRedisStore` or `ConnectPgStore` of the express layer.
    ///     .with_express_upgrade(express_store, ExpressSecrets::new("keyboard cat")?)
    ///     .check()?;
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_express_upgrade(self, express_store: impl Store, secrets: ExpressSecrets) -> Self {
        let express: Arc<dyn Store> = Arc::new(express_store);
        self.edit(|c| {
            c.store = Arc::new(crate::store::express::UpgradeStore::new(
                c.store.clone(),
                express,
            ));
            c.upgrade = Some(ExpressUpgrade {
                secrets,
                cookie_name: "connect.sid".to_owned(),
            });
        })
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        match Arc::get_mut(&mut self.config) {
            Some(config) => f(config),
            None => {
                let mut config = (*self.config).clone();
                f(&mut config);
                self.config = Arc::new(config);
            }
        }
        self
    }

    /// Adds an older key that still verifies cookies. Cookies it verifies are re-signed with
    /// the first key on their next response. Add as many as needed, newest first.
    pub fn with_old_key(self, key: Key) -> Self {
        self.edit(|c| c.codec.push_key(key))
    }

    /// The cookie's name. Default: `sid`.
    pub fn with_cookie_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.edit(|c| c.cookie_name = name)
    }

    /// The cookie's `Path`; requests outside it get no session. Default: `/`.
    pub fn with_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.edit(|c| c.path = path)
    }

    /// The cookie's `Domain`. Default: none (host-only cookie).
    pub fn with_domain(self, domain: impl Into<String>) -> Self {
        let domain = domain.into();
        self.edit(|c| c.domain = Some(domain))
    }

    /// The cookie's `HttpOnly`. Default: `true`.
    pub fn with_http_only(self, http_only: bool) -> Self {
        self.edit(|c| c.http_only = http_only)
    }

    /// The cookie's `Secure`. Default: [`Secure::Auto`].
    pub fn with_secure(self, secure: Secure) -> Self {
        self.edit(|c| c.secure = secure)
    }

    /// `true` trusts **every peer** to say through forwarding headers that a request came
    /// over HTTPS (for [`Secure::Auto`]), so a client that reaches the app directly can claim
    /// HTTPS; the left-most `Forwarded` / `X-Forwarded-Proto` entry decides. `false` trusts
    /// nobody (the default). Replaced by
    /// [`with_trusted_proxies`](Self::with_trusted_proxies), which trusts only your proxies'
    /// addresses.
    #[deprecated(
        note = "trusts every client; use `with_trusted_proxies([\"PROXY_IP_OR_CIDR\"])` with `ConnectInfo`"
    )]
    pub fn with_trusted_proxy(self, trust: bool) -> Self {
        self.edit(|c| c.transport.set_trust_everyone(trust))
    }

    /// The proxies (IP addresses such as `10.0.0.7` or `::1`, networks such as `10.0.0.0/8`)
    /// allowed to say, with `Forwarded` or `X-Forwarded-Proto`, that a request came over
    /// HTTPS (for [`Secure::Auto`]). The peer address comes from axum's
    /// `ConnectInfo<SocketAddr>`: serve the app with
    /// `into_make_service_with_connect_info::<SocketAddr>()`. Requests from other peers, or
    /// without a peer address, are judged by their connection alone. An entry that does not
    /// parse is reported by [`check`](Self::check). See [`transport`](crate::transport) for
    /// how the headers and several hops are read. Default: none.
    pub fn with_trusted_proxies<I>(self, proxies: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let proxies = proxies.into_iter().map(Into::into);
        self.edit(|c| c.transport.set_trusted_proxies(proxies))
    }

    /// `true` says the app's own listener terminates TLS (axum-server with rustls, say), so
    /// every request counts as HTTPS for [`Secure::Auto`]. When only some requests come
    /// over TLS, mark those with [`TlsConnection`](crate::TlsConnection) instead.
    /// Default: `false`.
    pub fn with_tls_listener(self, tls: bool) -> Self {
        self.edit(|c| c.transport.tls_listener = tls)
    }

    /// Where the session token travels: the cookie (the default), a header, or both. See
    /// [`transport`](crate::transport).
    pub fn with_transport(self, transport: Transport) -> Self {
        self.edit(|c| c.transport.transport = transport)
    }

    /// The header that carries the token with [`Transport::Header`] or [`Transport::Both`].
    /// A name that is not a valid header name is reported by [`check`](Self::check).
    /// Default: `X-Session-Token`.
    pub fn with_token_header(self, header: TokenHeader) -> Self {
        self.edit(|c| c.transport.set_token_header(header))
    }

    /// The cookie's `SameSite`. Default: [`SameSite::Lax`].
    pub fn with_same_site(self, same_site: SameSite) -> Self {
        self.edit(|c| c.same_site = same_site)
    }

    /// The cookie's `Partitioned` (CHIPS). Default: `false`.
    pub fn with_partitioned(self, partitioned: bool) -> Self {
        self.edit(|c| c.partitioned = partitioned)
    }

    /// A persistent cookie lasting `max_age` (`Max-Age` and `Expires`), which is also the
    /// server-side idle timeout unless [`with_idle_timeout`](Self::with_idle_timeout) says
    /// otherwise. Default: none (the cookie lasts until the browser closes; the server keeps
    /// an idle session 24 hours).
    pub fn with_max_age(self, max_age: Duration) -> Self {
        self.edit(|c| c.max_age = Some(max_age))
    }

    /// How long an unused session lives on the server. Default: the `max_age`, or 24 hours.
    pub fn with_idle_timeout(self, idle: Duration) -> Self {
        self.edit(|c| c.idle_timeout = Some(idle))
    }

    /// How long a session lives on the server after it was created, however active it is;
    /// [`regenerate`](crate::Session::regenerate) (at login) starts the window again. This
    /// bounds how long a stolen cookie can be used, even by an attacker who keeps it busy.
    /// Default: 30 days (long enough for a 30-day "remember me"); for sensitive data choose
    /// hours (OWASP suggests 4 to 8 for an app used through a working day).
    pub fn with_absolute_timeout(self, absolute: Duration) -> Self {
        self.edit(|c| c.absolute_timeout = Some(absolute))
    }

    /// Lets an active session live for ever (each request extends it by the idle timeout),
    /// as express-session does. Not recommended: see
    /// [`with_absolute_timeout`](Self::with_absolute_timeout).
    pub fn without_absolute_timeout(self) -> Self {
        self.edit(|c| c.absolute_timeout = None)
    }

    /// Extend an unchanged session's deadline at most once per `interval`. Zero touches on
    /// every request, as express-session does. Default: 60 seconds.
    pub fn with_touch_after(self, interval: Duration) -> Self {
        self.edit(|c| c.touch_after = interval)
    }

    /// Write the whole session back on every request, changed or not (express's `resave`).
    /// Default: `false`.
    pub fn with_resave(self, resave: bool) -> Self {
        self.edit(|c| c.resave = resave)
    }

    /// Store and send a cookie for new sessions nothing was written to (express's
    /// `saveUninitialized`). Default: `false`.
    pub fn with_save_uninitialized(self, save: bool) -> Self {
        self.edit(|c| c.save_uninitialized = save)
    }

    /// Send the cookie on every response of an existing session, renewing its `Max-Age`
    /// (express's `rolling`). Default: `false`.
    pub fn with_rolling(self, rolling: bool) -> Self {
        self.edit(|c| c.rolling = rolling)
    }

    /// The status of the response sent when the store fails. Default: 500.
    pub fn with_error_status(self, status: StatusCode) -> Self {
        self.edit(|c| c.error_status = status.as_u16())
    }

    /// What a failed save at the end of a request does to the response. Default:
    /// [`SaveErrors::Respond`].
    pub fn with_save_errors(self, save_errors: SaveErrors) -> Self {
        self.edit(|c| c.save_errors = save_errors)
    }

    /// The largest encoded session, in bytes; a save over it fails with
    /// [`SessionError::TooLarge`] and the response is `413 Payload Too Large` (the stored
    /// session is left as it was). A session already over the limit (stored before it was
    /// lowered) can still be written as long as the write does not make it larger.
    /// Default: 128 KiB (every request that takes the session reads it whole).
    pub fn with_max_record_bytes(self, limit: usize) -> Self {
        self.edit(|c| c.max_record_bytes = limit)
    }

    /// The longest one store call may take before the request fails with
    /// [`StoreError::Timeout`](crate::StoreError::Timeout). Default: 10 seconds.
    pub fn with_store_timeout(self, limit: Duration) -> Self {
        self.edit(|c| c.store_timeout = Some(limit))
    }

    /// Lets store calls take as long as they take.
    pub fn without_store_timeout(self) -> Self {
        self.edit(|c| c.store_timeout = None)
    }

    /// Serialises the requests of one session: a request that takes the session waits (at
    /// most `wait`) until no other request holds it, and holds it until its changes are saved.
    /// Then no update is lost, even when concurrent requests change the same field (without
    /// it, per-field writes keep changes to *different* fields, and the last writer of one
    /// field wins). Costs a lock round trip per request on stores that keep the lock
    /// remotely. The memory store locks in process, Redis with a lease key (`SET NX PX`),
    /// PostgreSQL with an advisory lock. Off by default.
    ///
    /// A request that cannot get the lock in time fails with the error status.
    pub fn with_session_lock(self, wait: Duration) -> Self {
        self.edit(|c| {
            let lease = c
                .lock
                .map_or(DEFAULT_LOCK_LEASE, |l| l.lease)
                .max(wait.saturating_mul(2));
            c.lock = Some(LockConfig { lease, wait });
        })
    }

    /// How long a per-session lock lives if the request holding it vanishes (a crashed
    /// process): it must be longer than the wait. Default: 30 seconds.
    pub fn with_session_lock_lease(self, lease: Duration) -> Self {
        self.edit(|c| {
            let wait = c.lock.map_or(Duration::from_secs(5), |l| l.wait);
            c.lock = Some(LockConfig { lease, wait });
        })
    }

    /// The cookie's `Priority` (`Low`, `Medium`, `High`; a Chromium extension that decides
    /// which cookies a full cookie jar keeps). Default: none.
    pub fn with_priority(self, priority: Priority) -> Self {
        self.edit(|c| c.priority = Some(priority))
    }

    /// Draws new session ids from `generate` instead of the operating system's CSPRNG, e.g. to
    /// use the app's own random source. It must return 24 bytes of which at least 128 bits are
    /// random (an id's security is its unguessability); [`check`](Self::check) refuses a
    /// generator that repeats an id or whose ids differ in fewer than 20 of their 24 bytes
    /// positions in 32 draws, which catches counters, clocks and constants but cannot prove
    /// randomness. Default: 24 bytes from `getrandom`.
    pub fn with_id_generator(
        self,
        generate: impl Fn() -> [u8; 24] + Send + Sync + 'static,
    ) -> Self {
        let generate: IdGenerator = Arc::new(generate);
        self.edit(|c| c.id_generator = Some(generate))
    }

    /// Reports every session event (created, loaded, saved with its fields, touched,
    /// regenerated, destroyed, ended, expired on load, errors that were only logged) to
    /// `events`: see [`events`](crate::events).
    pub fn with_events(self, events: impl SessionEvents) -> Self {
        let events: Arc<dyn SessionEvents> = Arc::new(events);
        self.edit(|c| c.events = Some(events))
    }

    /// The counters of this layer (shared by its clones): sessions created, loaded, saved,
    /// touched, regenerated, destroyed and ended, errors, and store call latency. Read them
    /// from a handler, e.g. for a `/metrics` route: see [`events`](crate::events).
    pub fn metrics(&self) -> SessionMetrics {
        self.config.metrics.clone()
    }

    /// A handle on the sessions by indexed value (`#[session(index)]` fields): list, count
    /// and revoke them from outside any request, e.g. in a password-change job or an admin
    /// tool. In a handler, take [`SessionIndex`](crate::index::SessionIndex) as an extractor
    /// instead: it knows the request's own session. See [`index`](crate::index).
    pub fn sessions(&self) -> crate::index::SessionIndex {
        crate::index::SessionIndex::new(self.config.clone(), None)
    }

    /// Keeps no session indexes, even though the program has `#[session(index)]` fields: for
    /// a store that cannot keep them. Listing then finds nothing.
    pub fn without_indexes(self) -> Self {
        self.edit(|c| c.indexed = Arc::from([]))
    }

    /// Lets two derived structs store one un-namespaced key with different types, which
    /// [`check`](Self::check) refuses by default ([`ConfigError::KeyTypeConflict`]): each
    /// reads the other's value as a decoding failure (its default) and overwrites it when
    /// written. For tests of exactly that, and for programs whose structs serve different
    /// layers.
    pub fn allow_key_type_conflicts(self) -> Self {
        self.edit(|c| c.key_type_check = false)
    }

    /// Checks the options.
    ///
    /// # Errors
    /// The first problem found.
    pub fn check(self) -> Result<Self, ConfigError> {
        self.config.check()?;
        Ok(self)
    }
}

impl std::fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLayer")
            .field("cookie_name", &self.config.cookie_name)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    /// # Panics
    /// If the configuration is invalid; [`SessionLayer::check`] reports the same problem as
    /// an error.
    fn layer(&self, inner: S) -> Self::Service {
        if let Err(error) = self.config.check() {
            panic!("invalid SessionLayer configuration: {error}");
        }
        SessionService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around an app.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> std::fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionService").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`SessionService`]: the app's response, then, if the request
    /// took its session, the end-of-request save and cookie. A request that never took its
    /// session completes without any further work or allocation.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Option<(Arc<RequestState>, Delivery)>,
        finishing: Option<Finishing>,
    }
}

/// The end of a request whose rules need the store: the boxed store work, and what the
/// response needs once it is done. The response itself stays out of the box, which is
/// allocated per request.
struct Finishing {
    rules: Pin<Box<dyn Future<Output = Result<CookieAction, SessionError>> + Send>>,
    state: Arc<RequestState>,
    delivery: Delivery,
    response: Option<Response>,
}

impl Finishing {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Response> {
        let action = std::task::ready!(self.rules.as_mut().poll(cx));
        let response = self.response.take().unwrap_or_default();
        Poll::Ready(respond(&self.state, self.delivery, response, action))
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(finishing) = this.finishing.as_mut() {
            return finishing.poll(cx).map(Ok);
        }
        let response = match this.inner.as_mut().poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => return Poll::Pending,
        };
        let Some((state, delivery)) = this.state.take() else {
            return Poll::Ready(Ok(response));
        };
        // A request that never took its session, or only read it, answers at once: no store
        // call, no boxed future.
        match state.finish_at_once() {
            Some(CookieAction::Keep) => Poll::Ready(Ok(response)),
            Some(action) => Poll::Ready(Ok(respond(&state, delivery, response, Ok(action)))),
            None => {
                let finishing = this.finishing.insert(Finishing {
                    rules: Box::pin(end_of_request(state.clone())),
                    state,
                    delivery,
                    response: Some(response),
                });
                finishing.poll(cx).map(Ok)
            }
        }
    }
}

/// Saves the session as the rules say; returns what the response's cookie should say.
async fn end_of_request(state: Arc<RequestState>) -> Result<CookieAction, SessionError> {
    use tracing::Instrument as _;
    let span = state.span();
    state.finish().instrument(span).await
}

/// Sends the token as the end-of-request rules decided, on the request's transport, or
/// replaces the response with the error one.
fn respond(
    state: &RequestState,
    delivery: Delivery,
    mut response: Response,
    action: Result<CookieAction, SessionError>,
) -> Response {
    let answer = Answer::for_request(&state.config, delivery, state.token_sent());
    // A `Secure` cookie on plain HTTP would be dropped by the browser: with a header
    // transport at hand the token goes there only.
    let cookie = answer.cookie && (!state.cookie_secure() || delivery.secure);
    match action {
        Ok(CookieAction::Keep) => {}
        Ok(CookieAction::Set(id, max_age)) => {
            let legacy = state.legacy_id();
            match (&state.config.upgrade, legacy) {
                // An express session not yet upgraded: its cookie stays express's.
                (Some(upgrade), Some(legacy)) if legacy == id => {
                    if cookie {
                        let value = upgrade.secrets.sign(&id);
                        append_cookie(&mut response, state, &upgrade.cookie_name, &value, max_age);
                    }
                }
                _ => {
                    let value = state.signed_token(&id);
                    if cookie {
                        append_cookie(
                            &mut response,
                            state,
                            &state.config.cookie_name,
                            &value,
                            max_age,
                        );
                        // Upgraded (regenerated) from an express session: its cookie goes.
                        clear_express_cookie(&mut response, state, legacy);
                    }
                    if answer.header {
                        transport::append_token_header(&mut response, &state.config, &value);
                    }
                }
            }
        }
        Ok(CookieAction::Clear) => {
            if cookie {
                append_cookie(
                    &mut response,
                    state,
                    &state.config.cookie_name,
                    "",
                    Some(Duration::ZERO),
                );
                clear_express_cookie(&mut response, state, state.legacy_id());
            }
            if answer.header {
                transport::append_token_header(&mut response, &state.config, "");
            }
        }
        Err(error) => {
            log_failure(&error, "session could not be saved");
            let respond = state.config.save_errors == SaveErrors::Respond;
            state.emit(SessionEvent::Error {
                error: &error,
                logged_only: !respond,
            });
            if respond {
                return error_response(&state.config, &error);
            }
        }
    }
    response
}

/// Deletes the express-session cookie of a request whose session came from one (`legacy`),
/// on a layer upgrading express sessions.
fn clear_express_cookie(response: &mut Response, state: &RequestState, legacy: Option<SessionId>) {
    if let (Some(upgrade), Some(_)) = (&state.config.upgrade, legacy) {
        append_cookie(
            response,
            state,
            &upgrade.cookie_name,
            "",
            Some(Duration::ZERO),
        );
    }
}

/// Left in the extensions of a request the layer saw outside its cookie path.
#[derive(Clone, Copy)]
pub(crate) struct OutsidePath;

/// The handle the extractor finds in the request's extensions.
#[derive(Clone)]
pub(crate) struct SessionHandle(pub(crate) Arc<RequestState>, pub(crate) Delivery);

impl<S, B> Service<Request<B>> for SessionService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let config = &self.config;
        // The cookie path is matched against the path the browser asked for: under a nested
        // router, `uri()` has lost the prefix the nesting stripped; axum keeps the original.
        let path = match request.extensions().get::<axum::extract::OriginalUri>() {
            Some(original) => original.path(),
            None => request.uri().path(),
        };
        let state = path_matches(path, &config.path).then(|| {
            let delivery = Delivery::of(config, request.headers(), request.extensions());
            let state = Arc::new(RequestState::new(config.clone(), delivery.secure));
            request
                .extensions_mut()
                .insert(SessionHandle(state.clone(), delivery));
            (state, delivery)
        });
        if state.is_none() {
            // Tells the extractor "no session here" apart from "no layer at all".
            request.extensions_mut().insert(OutsidePath);
        }
        ResponseFuture {
            inner: self.inner.call(request),
            state,
            finishing: None,
        }
    }
}

/// Whether the cookie path covers the request path, as browsers match it.
fn path_matches(request: &str, cookie: &str) -> bool {
    cookie == "/"
        || request == cookie
        || (request.starts_with(cookie)
            && (cookie.ends_with('/') || request.as_bytes().get(cookie.len()) == Some(&b'/')))
}

fn append_cookie(
    response: &mut Response,
    state: &RequestState,
    name: &str,
    value: &str,
    max_age: Option<Duration>,
) {
    let config = &state.config;
    let mut cookie = cookie::Cookie::build((name, value))
        .path(config.path.as_str())
        .http_only(config.http_only)
        .secure(state.cookie_secure())
        .partitioned(config.partitioned)
        .same_site(match config.same_site {
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::None => cookie::SameSite::None,
            SameSite::Auto if state.cookie_secure() => cookie::SameSite::None,
            SameSite::Auto => cookie::SameSite::Lax,
        });
    if let Some(domain) = &config.domain {
        cookie = cookie.domain(domain.as_str());
    }
    let mut expires = None;
    if let Some(max_age) = max_age {
        // Whole seconds, rounded up: a 500 ms lifetime is `Max-Age=1`, not a deleting 0.
        let whole = max_age.as_secs() + u64::from(max_age.subsec_nanos() > 0);
        let seconds = i64::try_from(whole).unwrap_or(i64::MAX / 2);
        cookie = cookie.max_age(cookie::time::Duration::seconds(seconds));
        expires = Some(seconds);
    }
    let mut rendered = cookie.build().to_string();
    // `Expires` comes last, as the `cookie` crate writes it; formatted once per second.
    if let Some(seconds) = expires {
        rendered.push_str("; Expires=");
        if seconds == 0 {
            rendered.push_str("Thu, 01 Jan 1970 00:00:00 GMT");
        } else {
            push_expires(&mut rendered, seconds);
        }
    }
    // The `cookie` crate does not know `Priority`.
    if let Some(priority) = config.priority {
        rendered.push_str(match priority {
            Priority::Low => "; Priority=Low",
            Priority::Medium => "; Priority=Medium",
            Priority::High => "; Priority=High",
        });
    }
    match HeaderValue::try_from(rendered) {
        Ok(header) => {
            response.headers_mut().append(SET_COOKIE, header);
        }
        Err(error) => tracing::error!(%error, "session cookie is not a valid header value"),
    }
}

/// Appends the HTTP date `seconds` from now (`Wed, 02 Dec 2026 13:20:00 GMT`, as the
/// `cookie` crate formats `Expires`). The last date formatted is kept per thread, keyed by
/// the second it names, so a busy server formats it about once per second and lifetime.
fn push_expires(out: &mut String, seconds: i64) {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = OffsetDateTime::now_utc();
    let at = now.unix_timestamp().saturating_add(seconds);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != at {
            let time = now.saturating_add(cookie::time::Duration::seconds(seconds));
            last.1.clear();
            let _ = write_http_date(&mut last.1, time);
            last.0 = at;
        }
        out.push_str(&last.1);
    });
}

/// `time` as an IMF-fixdate (RFC 9110), in UTC.
fn write_http_date(out: &mut String, time: OffsetDateTime) -> std::fmt::Result {
    use std::fmt::Write as _;
    const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let time = time.to_offset(cookie::time::UtcOffset::UTC);
    write!(
        out,
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[usize::from(time.weekday().number_days_from_monday())],
        time.day(),
        MONTHS[usize::from(u8::from(time.month())) - 1],
        time.year(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

pub(crate) fn error_response(config: &Config, error: &SessionError) -> Response {
    let status = match error {
        SessionError::MissingLayer | SessionError::OutsidePath | SessionError::Conflict { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        // A client can grow its own session (a cart, say): that is its request's fault.
        SessionError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::from_u16(config.error_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let body = match status {
        StatusCode::SERVICE_UNAVAILABLE => "session store unavailable",
        StatusCode::PAYLOAD_TOO_LARGE => "session too large",
        _ => "session error",
    };
    (status, Body::from(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::{path_matches, write_http_date, OffsetDateTime};

    #[test]
    fn expires_is_formatted_as_the_cookie_crate_does() {
        for unix in [0, 951_782_400, 1_796_220_000, 4_102_444_799] {
            let time = OffsetDateTime::from_unix_timestamp(unix).unwrap();
            let mut ours = String::new();
            write_http_date(&mut ours, time).unwrap();
            let theirs = cookie::Cookie::build(("a", "b"))
                .expires(time)
                .build()
                .to_string();
            assert_eq!(theirs, format!("a=b; Expires={ours}"));
        }
    }

    #[test]
    fn cookie_path_matches_like_a_browser() {
        assert!(path_matches("/anything", "/"));
        assert!(path_matches("/app", "/app"));
        assert!(path_matches("/app/x", "/app"));
        assert!(path_matches("/app/x", "/app/"));
        assert!(!path_matches("/apple", "/app"));
        assert!(!path_matches("/", "/app"));
    }
}
