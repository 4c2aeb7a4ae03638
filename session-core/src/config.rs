//! Options and their defaults, checked once when the layer is built.

use std::sync::Arc;
use std::time::Duration;

use crate::codec::{ExpressUpgrade, TokenCodec};
use crate::error::SessionError;
use crate::events::{SessionEvents, SessionMetrics};
use crate::id::SessionId;
use crate::store::{LocalLocks, Store};

/// Server-side idle timeout when neither `max_age` nor `idle_timeout` is set.
pub(crate) const DEFAULT_IDLE: Duration = Duration::from_secs(24 * 60 * 60);
/// Default absolute timeout: a session lives at most this long after it was created (or last
/// regenerated, as at login), however active. Long enough for a 30-day "remember me"; an
/// app holding sensitive data sets hours (OWASP suggests 4 to 8 for a working day).
pub(crate) const DEFAULT_ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Default limit on one encoded session. Every request that takes the session reads it
/// whole, so the limit multiplies every store read; a session is not a file store.
pub(crate) const DEFAULT_MAX_RECORD_BYTES: usize = 128 << 10;
/// Default limit on one store call.
pub(crate) const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default lease of a per-session lock.
pub(crate) const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(30);
/// Default keep-alive touch throttle.
pub(crate) const DEFAULT_TOUCH_AFTER: Duration = Duration::from_secs(60);

/// When the session cookie carries the `Secure` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Secure {
    /// Always: the cookie is only sent over HTTPS.
    Always,
    /// Never (plain-HTTP development).
    Never,
    /// When the request came over HTTPS: the app's own TLS listener or a trusted proxy says
    /// so, never the client (see [`transport`](crate::transport) for the rules).
    #[default]
    Auto,
}

/// The cookie's `SameSite` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SameSite {
    /// Sent on same-site requests only.
    Strict,
    /// Also sent on top-level cross-site navigations (links). The default.
    #[default]
    Lax,
    /// Sent on every request; browsers require `Secure` with it.
    None,
    /// `None` (with `Secure`) on a secure request, `Lax` otherwise: express's `'auto'`, for an
    /// app embedded cross-site in production and tried over plain HTTP in development. Needs
    /// [`Secure::Auto`] or [`Secure::Always`].
    Auto,
}

/// The cookie's `Priority` attribute (a Chromium extension: which cookies a full cookie jar
/// keeps longest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// `Priority=Low`.
    Low,
    /// `Priority=Medium`, what browsers assume without the attribute.
    Medium,
    /// `Priority=High`.
    High,
}

/// Draws the 24 random bytes of a new session id: see
/// [`with_id_generator`](crate::SessionLayer::with_id_generator).
pub(crate) type IdGenerator = Arc<dyn Fn() -> [u8; 24] + Send + Sync>;

/// What happens to the response when the session cannot be written at its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SaveErrors {
    /// Replace the handler's response with the error status (the default): the client never
    /// sees a success that was not stored.
    #[default]
    Respond,
    /// Log the error and send the handler's response, without a session cookie for a
    /// session that was not stored.
    Log,
}

/// The checked configuration shared by every request.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) store: Arc<dyn Store>,
    /// How the id is written into the token and which store key it names.
    pub(crate) codec: TokenCodec,
    /// Express sessions still accepted until regenerated (a native layer only).
    pub(crate) upgrade: Option<ExpressUpgrade>,
    pub(crate) cookie_name: String,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) http_only: bool,
    pub(crate) secure: Secure,
    #[cfg(feature = "axum")]
    pub(crate) transport: crate::transport::TransportConfig,
    pub(crate) same_site: SameSite,
    pub(crate) partitioned: bool,
    pub(crate) max_age: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) absolute_timeout: Option<Duration>,
    pub(crate) touch_after: Duration,
    pub(crate) resave: bool,
    pub(crate) save_uninitialized: bool,
    pub(crate) rolling: bool,
    pub(crate) error_status: u16,
    pub(crate) save_errors: SaveErrors,
    pub(crate) max_record_bytes: usize,
    pub(crate) store_timeout: Option<Duration>,
    pub(crate) lock: Option<LockConfig>,
    pub(crate) priority: Option<Priority>,
    pub(crate) id_generator: Option<IdGenerator>,
    pub(crate) metrics: SessionMetrics,
    pub(crate) events: Option<Arc<dyn SessionEvents>>,
    /// This process's queue in front of the store's per-session locks.
    pub(crate) local_locks: LocalLocks,
    /// The stored keys of the program's `#[session(index)]` fields, if this layer keeps
    /// indexes (empty otherwise).
    pub(crate) indexed: Arc<[&'static str]>,
    /// Whether `check()` refuses two structs storing one key with different types.
    pub(crate) key_type_check: bool,
}

/// Per-session locking: how long a lock lives if its holder vanishes, and how long a request
/// waits for one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LockConfig {
    pub(crate) lease: Duration,
    pub(crate) wait: Duration,
}

impl Config {
    pub(crate) fn new(store: Arc<dyn Store>, codec: TokenCodec) -> Self {
        Self {
            store,
            codec,
            upgrade: None,
            cookie_name: "sid".to_owned(),
            path: "/".to_owned(),
            domain: None,
            http_only: true,
            secure: Secure::Auto,
            #[cfg(feature = "axum")]
            transport: Default::default(),
            same_site: SameSite::Lax,
            partitioned: false,
            max_age: None,
            idle_timeout: None,
            absolute_timeout: Some(DEFAULT_ABSOLUTE_TIMEOUT),
            touch_after: DEFAULT_TOUCH_AFTER,
            resave: false,
            save_uninitialized: false,
            rolling: false,
            error_status: 500,
            save_errors: SaveErrors::Respond,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            store_timeout: Some(DEFAULT_STORE_TIMEOUT),
            lock: None,
            priority: None,
            id_generator: None,
            metrics: SessionMetrics::default(),
            events: None,
            local_locks: LocalLocks::new(),
            indexed: crate::registry::indexed_keys().into(),
            key_type_check: true,
        }
    }

    /// A fresh session id, from the app's generator if it set one.
    pub(crate) fn new_id(&self) -> Result<SessionId, SessionError> {
        match &self.id_generator {
            Some(generate) => Ok(SessionId::from_bytes(generate())),
            None => SessionId::generate().map_err(|e| SessionError::Random(e.to_string())),
        }
    }

    /// How long an untouched session lives on the server.
    /// Whether a loaded record may be served: both deadlines are checked here, whatever the
    /// store and the cookie say.
    pub(crate) fn is_live(
        &self,
        record: &crate::record::Record,
        now: crate::record::Timestamp,
    ) -> bool {
        !record.is_expired(now)
            && self
                .absolute_timeout
                .is_none_or(|absolute| record.created_at.saturating_add(absolute) > now)
    }

    /// Runs a store call under `limit`, if there is one, and counts it in the metrics. A call
    /// that answers at once (an in-process store) never sets up a timer and reads no clock:
    /// it counts as taking no time (it takes well under the metrics' 1 µs resolution). A call
    /// that waits is timed from its first wait.
    pub(crate) async fn call_within<T>(
        &self,
        limit: Option<Duration>,
        call: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
    ) -> Result<T, crate::store::StoreError> {
        use std::task::Poll;
        let mut call = std::pin::pin!(call);
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        let (result, took) = match first {
            Poll::Ready(result) => (result, Duration::ZERO),
            Poll::Pending => {
                let started = std::time::Instant::now();
                let result = match limit {
                    None => call.await,
                    // Boxed: the timer is a few hundred bytes that every future awaiting a
                    // store call would carry, and only calls that wait need it.
                    Some(limit) => Box::pin(tokio::time::timeout(limit, call))
                        .await
                        .unwrap_or(Err(crate::store::StoreError::Timeout)),
                };
                (result, started.elapsed())
            }
        };
        self.metrics.store_call(took, result.is_err());
        result
    }

    pub(crate) fn idle(&self) -> Duration {
        self.idle_timeout.or(self.max_age).unwrap_or(DEFAULT_IDLE)
    }

    /// Checks the options against each other and against what browsers accept.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !token(&self.cookie_name) {
            return Err(ConfigError::CookieName(self.cookie_name.clone()));
        }
        let attribute = |s: &str| s.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b';');
        if !self.path.starts_with('/') || !attribute(&self.path) {
            return Err(ConfigError::Path(self.path.clone()));
        }
        if let Some(domain) = &self.domain {
            if domain.is_empty() || !attribute(domain) {
                return Err(ConfigError::Domain(domain.clone()));
            }
        }
        if self.uses_cookie() {
            self.check_cookie_security()?;
        }
        if self.partitioned && self.secure == Secure::Never {
            return Err(ConfigError::PartitionedWithoutSecure);
        }
        if !(400..600).contains(&self.error_status) {
            return Err(ConfigError::ErrorStatus(self.error_status));
        }
        for (name, value) in [
            ("max_age", self.max_age),
            ("idle_timeout", self.idle_timeout),
            ("absolute_timeout", self.absolute_timeout),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(ConfigError::Timeout(name));
            }
        }
        #[cfg(feature = "axum")]
        self.transport.check()?;
        if self.key_type_check {
            if let Some(conflict) = crate::registry::key_conflict() {
                return Err(conflict);
            }
        }
        if let Some(key) = self.indexed.first() {
            if !self.store.supports_index() {
                return Err(ConfigError::IndexUnsupported(key));
            }
        }
        if let Some(lock) = self.lock {
            if !self.store.supports_locks() {
                return Err(ConfigError::LocksUnsupported);
            }
            if lock.lease <= lock.wait {
                return Err(ConfigError::LockLease);
            }
        }
        if let Some(generate) = &self.id_generator {
            check_id_generator(&**generate)?;
        }
        self.check_express()
    }

    /// What express-session compatibility mode cannot do.
    fn check_express(&self) -> Result<(), ConfigError> {
        let TokenCodec::Express { misplaced_key, .. } = &self.codec else {
            #[cfg(feature = "axum")]
            if self.upgrade.is_some() && self.transport.uses_header() {
                return Err(ConfigError::ExpressCompat(
                    "express sessions are upgraded from their cookie only: use `Transport::Cookie`",
                ));
            }
            return Ok(());
        };
        if self.upgrade.is_some() {
            return Err(ConfigError::ExpressCompat(
                "`with_express_upgrade` moves a native layer off express sessions; an express layer has them already",
            ));
        }
        if *misplaced_key {
            return Err(ConfigError::ExpressCompat(
                "`with_old_key` takes native keys; give older express secrets with `ExpressSecrets::with_old_secret` or `ExpressSecrets::from_list`",
            ));
        }
        if self.absolute_timeout.is_some() {
            return Err(ConfigError::ExpressCompat(
                "express-session records carry no creation time, so an absolute timeout cannot be enforced: remove `with_absolute_timeout`",
            ));
        }
        if self.lock.is_some() {
            return Err(ConfigError::ExpressCompat(
                "per-session locks are not shared with the express app, so they cannot serialise its requests: remove `with_session_lock`",
            ));
        }
        #[cfg(feature = "axum")]
        if self.transport.uses_header() {
            return Err(ConfigError::ExpressCompat(
                "express-session reads the session id from its cookie only: use `Transport::Cookie`",
            ));
        }
        Ok(())
    }
}

/// Draws 32 ids and refuses a generator that repeats one, or whose ids differ in fewer than 20
/// of their 24 bytes positions (a counter, a clock, a hash of little). This catches the
/// usual mistakes, not every weak generator: the rule stays "24 bytes from a CSPRNG".
fn check_id_generator(generate: &(dyn Fn() -> [u8; 24] + Send + Sync)) -> Result<(), ConfigError> {
    const DRAWS: usize = 32;
    let ids: Vec<[u8; 24]> = (0..DRAWS).map(|_| generate()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() < DRAWS {
        return Err(ConfigError::WeakIdGenerator(
            "it returned the same id twice in 32 draws",
        ));
    }
    let varying = (0..24)
        .filter(|&i| ids.iter().any(|id| id[i] != ids[0][i]))
        .count();
    if varying < 20 {
        return Err(ConfigError::WeakIdGenerator(
            "its ids differ in too few of their 24 bytes to hold 128 random bits",
        ));
    }
    Ok(())
}

impl Config {
    #[cfg(feature = "axum")]
    fn uses_cookie(&self) -> bool {
        self.transport.uses_cookie()
    }

    #[cfg(not(feature = "axum"))]
    fn uses_cookie(&self) -> bool {
        true
    }

    /// Whether a token can be sent in a header, which reaches the client over plain HTTP too.
    #[cfg(feature = "axum")]
    pub(crate) fn uses_token_header(&self) -> bool {
        self.transport.uses_header()
    }

    #[cfg(not(feature = "axum"))]
    pub(crate) fn uses_token_header(&self) -> bool {
        false
    }

    /// The rules browsers apply to cookie attributes, so a cookie they would drop is refused
    /// here instead of losing every session in production.
    fn check_cookie_security(&self) -> Result<(), ConfigError> {
        let always_secure = self.secure == Secure::Always;
        // `SameSite=None` without `Secure` is dropped; `Auto` would send it on plain HTTP.
        if self.same_site == SameSite::None && !always_secure {
            return Err(ConfigError::SameSiteNoneWithoutSecure);
        }
        // `Auto` sends `None` on secure requests, which needs `Secure` there.
        if self.same_site == SameSite::Auto && self.secure == Secure::Never {
            return Err(ConfigError::SameSiteAutoWithoutSecure);
        }
        let name = self.cookie_name.as_bytes();
        let prefixed = |prefix: &str| {
            name.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
        };
        // `__Host-` cookies must be `Secure`, host-only and for the whole site.
        if prefixed("__Host-") {
            if !always_secure {
                return Err(ConfigError::HostPrefixWithoutSecure);
            }
            if self.domain.is_some() {
                return Err(ConfigError::HostPrefixWithDomain);
            }
            if self.path != "/" {
                return Err(ConfigError::HostPrefixPath(self.path.clone()));
            }
        }
        // `__Secure-` cookies must be `Secure`.
        if prefixed("__Secure-") && !always_secure {
            return Err(ConfigError::SecurePrefixWithoutSecure);
        }
        Ok(())
    }
}

/// A configuration the layer cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `SameSite::Auto` was asked for with `Secure::Never`.
    #[error("SameSite::Auto sends SameSite=None on secure requests, which needs Secure: use `.with_secure(Secure::Auto)` or `Secure::Always`")]
    SameSiteAutoWithoutSecure,
    /// The id generator repeats itself or varies in too few bytes to carry 128 bits.
    #[error("the session id generator is weak: {0}; draw 24 bytes from a CSPRNG (`getrandom`, `rand::rngs::OsRng`)")]
    WeakIdGenerator(&'static str),
    /// The cookie name has characters a cookie name cannot have.
    #[error("invalid session cookie name {0:?}: use letters, digits and !#$%&'*+-.^_`|~")]
    CookieName(String),
    /// The cookie path does not start with `/` or has characters a cookie cannot carry.
    #[error("invalid session cookie path {0:?}: it must start with `/` and hold no `;`, space or control character")]
    Path(String),
    /// The cookie domain is empty or has characters a cookie cannot carry.
    #[error("invalid session cookie domain {0:?}")]
    Domain(String),
    /// `SameSite=None` was asked for without `Secure::Always`; browsers drop such cookies
    /// (with `Secure::Auto`, on every plain-HTTP request).
    #[error("SameSite=None needs a cookie that is always Secure (browsers reject it otherwise): add `.with_secure(Secure::Always)`, or use SameSite::Lax")]
    SameSiteNoneWithoutSecure,
    /// A `__Host-` cookie name without `Secure::Always`.
    #[error("a `__Host-` cookie must always be Secure (browsers reject it otherwise): add `.with_secure(Secure::Always)`, or drop the prefix")]
    HostPrefixWithoutSecure,
    /// A `__Host-` cookie name with a `Domain`.
    #[error("a `__Host-` cookie cannot have a Domain (browsers reject it): remove `.with_domain(...)`, or use the `__Secure-` prefix")]
    HostPrefixWithDomain,
    /// A `__Host-` cookie name with a path other than `/`.
    #[error("a `__Host-` cookie must have Path=/ (browsers reject it otherwise), not {0:?}: remove `.with_path(...)`, or use the `__Secure-` prefix")]
    HostPrefixPath(String),
    /// A `__Secure-` cookie name without `Secure::Always`.
    #[error("a `__Secure-` cookie must always be Secure (browsers reject it otherwise): add `.with_secure(Secure::Always)`, or drop the prefix")]
    SecurePrefixWithoutSecure,
    /// A trusted proxy that is neither an IP address nor a network.
    #[error("invalid trusted proxy {0:?}: give an IP address (`10.0.0.7`, `::1`) or a network (`10.0.0.0/8`, `fd00::/8`)")]
    TrustedProxy(String),
    /// A token header name that is not a header name, or names a header with another meaning.
    #[error("invalid session token header {0:?}: give a header name such as `X-Session-Token` (not Cookie, Set-Cookie or Cache-Control; for `Authorization: Bearer` use TokenHeader::Bearer)")]
    TokenHeader(String),
    /// `Partitioned` was asked for with `Secure::Never`; browsers drop such cookies.
    #[error("a Partitioned cookie must be Secure; use Secure::Always or Secure::Auto")]
    PartitionedWithoutSecure,
    /// The error status is not a 4xx or 5xx code.
    #[error("session error status {0} is not a 4xx or 5xx status")]
    ErrorStatus(u16),
    /// Per-session locks were asked for on a store that has none.
    #[error("this store does not support per-session locks (the memory, Redis and PostgreSQL stores do)")]
    LocksUnsupported,
    /// The lock lease is not longer than the lock wait.
    #[error("the session lock lease must be longer than the time a request waits for the lock")]
    LockLease,
    /// Two derived structs store one key with different types (or one as a flash field).
    #[error("the session key `{key}` is stored by {first} and by {second}: one would read the other's value as garbage and overwrite it; give one struct `#[session(namespace = \"...\")]` or the field `#[session(rename = \"...\")]`, or make the types equal")]
    KeyTypeConflict {
        /// The stored key.
        key: &'static str,
        /// The first struct and its type for the key.
        first: String,
        /// The second struct and its type for the key.
        second: String,
    },
    /// The program has `#[session(index)]` fields and the store keeps no indexes.
    #[error("this store keeps no session indexes, which the `#[session(index)]` field `{0}` needs (every store of this crate keeps them); use such a store, or call `.without_indexes()` on the layer to keep none")]
    IndexUnsupported(&'static str),
    /// A timeout is zero.
    #[error("`{0}` must be longer than zero")]
    Timeout(&'static str),
    /// An option that express-session compatibility mode cannot honour (see
    /// [`SessionLayer::express`](crate::SessionLayer::express)).
    #[error("express-session compatibility mode: {0}")]
    ExpressCompat(&'static str),
}
