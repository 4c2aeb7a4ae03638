//! Errors a session operation can end in.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::record::Timestamp;
use crate::store::StoreError;

/// Why a session could not be loaded, extracted or saved.
///
/// At the end of a request these become the layer's error response (status 500 unless
/// [`with_error_status`](crate::SessionLayer::with_error_status) says otherwise); the details
/// go to the log, never to the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A field's value could not be encoded as JSON (for example a map with non-string keys).
    #[error("a session field could not be encoded: {0}")]
    Encode(#[source] serde_json::Error),
    /// The encoded session is larger than the configured limit.
    #[error("session is {size} bytes encoded, over the limit of {limit}")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The operating system could not provide random bytes for a new id.
    #[error("could not generate a session id: {0}")]
    Random(String),
    /// The session's lock was held by another request for longer than the configured wait.
    #[error("the session is locked by another request; gave up after {0:?}")]
    LockTimeout(std::time::Duration),
    /// The store reported a collision for every fresh id tried.
    #[error("could not find an unused session id")]
    IdCollision,
    /// Two `Session` views alive at once in one request changed the same stored key: the one
    /// checked in later would silently overwrite the other, so the request fails instead and
    /// nothing it changed is written. Give one of the structs a `namespace`, or let one view
    /// go (drop it, or `save()` it) before the other is taken.
    #[error("two live session views changed the stored key `{key}`: {first} and then {second}; namespace one of the structs, or drop or save the first view before taking the second")]
    Conflict {
        /// The stored key both changed.
        key: String,
        /// The struct whose view checked in its change first.
        first: &'static str,
        /// The struct whose view checked in its change second.
        second: &'static str,
    },
    /// The session ended while this request used it: another request destroyed it (a
    /// logout) or regenerated it (a login), or it expired. The store had no record to write
    /// over, so nothing was written: only a new session is ever created. The session now
    /// reads as empty; writing to it starts a new session under a fresh id.
    ///
    /// Returned by [`Session::save`](crate::Session::save) and
    /// [`Session::reload`](crate::Session::reload). At the end of a request the same finding
    /// is not an error: the changes are dropped and the response clears the cookie.
    #[error(
        "the session has ended (destroyed, regenerated or expired elsewhere); nothing was written"
    )]
    Ended,
    /// The extractor ran on a request that did not pass through `SessionLayer`: a programming
    /// error. The client gets a plain 500.
    #[error("`Session` was extracted on a route without `SessionLayer`: add `.layer(SessionLayer::new(store, key))` to the router (below the routes that take a session), or take `Option<Session<T>>` where a session is optional")]
    MissingLayer,
    /// The request is outside the layer's cookie path (`with_path`): the browser would not
    /// send the cookie there, so there is no session.
    #[error("`Session` was extracted on a path outside the session cookie's path; take `Option<Session<T>>` there, or widen `with_path`")]
    OutsidePath,
}

impl SessionError {
    /// Whether a client can cause this on its own requests (a session it grew too large, its
    /// own requests queueing on the session lock), as opposed to a fault of the server or
    /// the store.
    pub fn is_client_caused(&self) -> bool {
        matches!(self, Self::TooLarge { .. } | Self::LockTimeout(_))
    }
}

/// Logs a failed session operation: `ERROR` for faults of the server or the store, and for
/// conditions a client causes at will only `INFO`, at most one line per second (with how
/// many were left out), so a client cannot fill the error log.
pub(crate) fn log_failure(error: &SessionError, what: &'static str) {
    if !error.is_client_caused() {
        tracing::error!(%error, "{what}");
    } else if let Some(suppressed) = CLIENT_CAUSED.allow() {
        tracing::info!(%error, suppressed, "{what} (caused by the client's request)");
    }
}

static CLIENT_CAUSED: RateLimit = RateLimit::new();

/// One event per wall-clock second, counting those it refuses.
pub(crate) struct RateLimit {
    second: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub(crate) const fn new() -> Self {
        Self {
            second: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(events refused since the last allowed one)` if this one may go out.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = Timestamp::now().as_millis() / 1000;
        let last = self.second.load(Ordering::Relaxed);
        if now > last
            && self
                .second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn rate_limit_lets_one_event_a_second_through_and_counts_the_rest() {
        let limit = RateLimit::new();
        assert_eq!(limit.allow(), Some(0));
        let through = (0..1000).filter(|_| limit.allow().is_some()).count();
        // The second may turn once during the loop.
        assert!(through <= 1, "{through} got through");
    }
}
