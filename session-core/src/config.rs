//! Options and their defaults, checked once when the layer is built.

use std::sync::Arc;
use std::time::Duration;

use crate::cookie::KeyRing;
use crate::store::Store;

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
    /// When the request is HTTPS: its URI scheme says so, or, with
    /// [`with_trusted_proxy`](crate::SessionLayer::with_trusted_proxy), the first
    /// `X-Forwarded-Proto` value is `https`.
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
}

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
    pub(crate) keys: KeyRing,
    pub(crate) cookie_name: String,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) http_only: bool,
    pub(crate) secure: Secure,
    pub(crate) trust_proxy: bool,
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
}

/// Per-session locking: how long a lock lives if its holder vanishes, and how long a request
/// waits for one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LockConfig {
    pub(crate) lease: Duration,
    pub(crate) wait: Duration,
}

impl Config {
    pub(crate) fn new(store: Arc<dyn Store>, keys: KeyRing) -> Self {
        Self {
            store,
            keys,
            cookie_name: "sid".to_owned(),
            path: "/".to_owned(),
            domain: None,
            http_only: true,
            secure: Secure::Auto,
            trust_proxy: false,
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
        }
    }

    /// How long an untouched session lives on the server.
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
        if self.same_site == SameSite::None && self.secure == Secure::Never {
            return Err(ConfigError::SameSiteNoneWithoutSecure);
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
            if value.is_some_and(|d| d < Duration::from_secs(1)) {
                return Err(ConfigError::Timeout(name));
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
        Ok(())
    }
}

/// A configuration the layer cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The cookie name has characters a cookie name cannot have.
    #[error("invalid session cookie name {0:?}: use letters, digits and !#$%&'*+-.^_`|~")]
    CookieName(String),
    /// The cookie path does not start with `/` or has characters a cookie cannot carry.
    #[error("invalid session cookie path {0:?}: it must start with `/` and hold no `;`, space or control character")]
    Path(String),
    /// The cookie domain is empty or has characters a cookie cannot carry.
    #[error("invalid session cookie domain {0:?}")]
    Domain(String),
    /// `SameSite=None` was asked for with `Secure::Never`; browsers drop such cookies.
    #[error("SameSite=None needs a Secure cookie: browsers reject it otherwise; use Secure::Always or Secure::Auto")]
    SameSiteNoneWithoutSecure,
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
    /// A timeout is shorter than one second.
    #[error("`{0}` must be at least one second")]
    Timeout(&'static str),
}
