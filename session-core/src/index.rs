//! Sessions by user: list a user's sessions, count them, and sign them out, on every store.
//!
//! Mark a field `#[session(index)]` (an `Option<T>` whose `T` is an [`IndexValue`]: an
//! integer, a `String`, a `bool`, a `char`, or your own type that implements it). The layer
//! then keeps, in the store, the set of sessions holding each value of that field, and
//! [`SessionIndex`] reads it:
//!
//! ```
//! use axum::{routing::post, Router};
//! use session_core::index::SessionIndex;
//! use session_core::store::MemoryStore;
//! use session_core::{Key, Session, SessionLayer};
//!
//! #[derive(Session)]
//! struct Auth {
//!     #[session(index)]
//!     user_id: Option<u64>,
//! }
//!
//! /// "Sign out of all other devices".
//! async fn sign_out_others(auth: Session<Auth>, sessions: SessionIndex) -> String {
//!     let Some(user) = *auth.user_id() else {
//!         return "not signed in".into();
//!     };
//!     match sessions.revoke_others(Auth::user_id_index(), &user).await {
//!         Ok(ended) => format!("{ended} other sessions signed out"),
//!         Err(error) => format!("could not sign out: {error}"),
//!     }
//! }
//!
//! # async fn run() -> Result<(), session_core::SessionError> {
//! let layer = SessionLayer::new(MemoryStore::new(), Key::generate().expect("OS randomness"));
//! // Outside any request (a password-change job, an admin tool): a handle from the layer.
//! let sessions = layer.sessions();
//! let app: Router = Router::new()
//!     .route("/sign-out-others", post(sign_out_others))
//!     .layer(layer);
//! for session in sessions.list(Auth::user_id_index(), &42).await? {
//!     tracing::info!(session = %session.session, last_used = ?session.last_used, "signed in");
//! }
//! sessions.revoke_all(Auth::user_id_index(), &42).await?;
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - A session is added to its entry *before* its value is written, and removed *after* the
//!   value is gone (changed, cleared, destroyed, regenerated away), so a live session is never
//!   missing from the index. An entry may for a moment name a session that no longer holds the
//!   value or no longer exists; listing loads every member and never returns those. Members
//!   that have been stale for longer than a minute are removed as they are found, and by the
//!   stores' purges.
//! - Revoking deletes the session's record, so it ends on every instance at its next request
//!   (the store's "only create creates" rule means a request that loaded it before cannot
//!   save it back). A [`CachingStore`](crate::store::CachingStore) drops its own copy at once;
//!   other instances' caches serve it at most for their `max_stale`.
//! - A revocation racing a login: every session that held the value when `revoke_all` read
//!   the index is ended; a login that stores the value after that read survives (it was not
//!   there to revoke), and a revoked session never comes back.
//! - Handles ([`SessionRef`]) name a session by its store key, a hash of its id: they cannot
//!   be turned into a cookie.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::data::{SessionData, SessionView};
use crate::error::SessionError;
use crate::events::ShortId;
use crate::id::StoreKey;
use crate::lifecycle::{stored_max_age, RequestState};
use crate::record::{Fields, Record, Timestamp};
use crate::store::StoreError;

/// How long an index member may name a session that does not hold the value before a reader
/// removes it: longer than any write between adding a member and storing the value takes.
pub const PRUNE_GRACE: Duration = Duration::from_secs(60);

/// A type whose values can key a session index: its JSON encoding must identify the value
/// and never change for equal values (no maps with unordered keys, no floats).
///
/// Implemented for the integers, `String`, `bool` and `char`; implement it for your own
/// identifier types (`impl IndexValue for UserId {}`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot key a session index",
    label = "not an index value",
    note = "index values are integers, `String`, `bool`, `char`, or types that implement `session_core::index::IndexValue`"
)]
pub trait IndexValue: Serialize {}

macro_rules! index_values {
    ($($ty:ty),*) => { $(impl IndexValue for $ty {})* };
}
index_values!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, String, bool, char);

/// The type of an `#[session(index)]` field: `Option<T>`, `None` meaning "not indexed".
#[diagnostic::on_unimplemented(
    message = "`#[session(index)]` needs an `Option<T>` field with `T: IndexValue`, not `{Self}`",
    label = "not an `Option` of an index value",
    note = "a session without a value (`None`) is not in the index; index values are integers, `String`, `bool`, `char`, or types that implement `session_core::index::IndexValue`"
)]
pub trait IndexedField {
    /// The value the index is keyed by.
    type Value: IndexValue;
}

impl<T: IndexValue> IndexedField for Option<T> {
    type Value = T;
}

/// The index of one `#[session(index)]` field of `T`, keyed by values of type `V`. The derive
/// generates `T::<field>_index()` for each indexed field.
pub struct Index<T, V> {
    key: &'static str,
    marker: PhantomData<fn() -> (T, V)>,
}

impl<T, V> Index<T, V> {
    /// The index of the field stored under `key`. Used by generated code.
    #[doc(hidden)]
    pub const fn new(key: &'static str) -> Self {
        Self {
            key,
            marker: PhantomData,
        }
    }

    /// The stored key of the indexed field.
    pub const fn key(&self) -> &'static str {
        self.key
    }
}

impl<T, V> Clone for Index<T, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, V> Copy for Index<T, V> {}

impl<T, V> fmt::Debug for Index<T, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Index").field(&self.key).finish()
    }
}

/// One indexed field and one of its values (`user_id = 42`): what a store keeps the set of
/// sessions for.
///
/// Stores name it by its [`digest`](Self::digest), a SHA-256 of the field and the value, so
/// the store holds no user identifier in its keys and every name has the same length.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    field: Arc<str>,
    value: Arc<str>,
    digest: StoreKey,
}

impl IndexEntry {
    /// The entry of the field stored under `field` holding the JSON-encoded `value`.
    pub fn new(field: &str, value: &str) -> Self {
        let mut hash = Sha256::new();
        hash.update(field.as_bytes());
        hash.update([0]);
        hash.update(value.as_bytes());
        Self {
            field: Arc::from(field),
            value: Arc::from(value),
            digest: StoreKey::from_digest(&hash.finalize().into()),
        }
    }

    /// The stored key of the indexed field.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The value, JSON-encoded as the field stores it.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The entry's name for stores: 64 lowercase hex characters.
    pub fn digest(&self) -> &str {
        self.digest.as_str()
    }

    /// The digest as a store key, for stores that keep entries beside sessions.
    pub(crate) fn name(&self) -> StoreKey {
        self.digest
    }

    /// Whether `record` holds this entry's value.
    fn held_by(&self, record: &Record) -> bool {
        record
            .fields
            .get(&*self.field)
            .is_some_and(|value| **value == *self.value)
    }
}

impl fmt::Debug for IndexEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value may identify a person: logs get the field and a short digest only.
        write!(f, "IndexEntry({}, {})", self.field, &self.digest()[..12])
    }
}

/// One member of an index entry, as a store returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexMember {
    /// The session's store key.
    pub key: StoreKey,
    /// When it was (last) added to the entry.
    pub added: Timestamp,
}

/// The entries `fields` holds for the indexed `keys`: one per indexed field with a value
/// other than `null`.
pub(crate) fn entries_of(fields: &Fields, keys: &[&'static str]) -> Vec<IndexEntry> {
    keys.iter()
        .filter_map(|key| {
            let value = fields.get(*key)?;
            (&**value != "null").then(|| IndexEntry::new(key, value))
        })
        .collect()
}

/// A session found in an index: a handle that names it without revealing its id.
///
/// It cannot be turned into a cookie (it holds the hash of the id, not the id); its `Display`
/// is the short id the logs use.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionRef {
    key: StoreKey,
}

impl fmt::Debug for SessionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionRef({})", ShortId::of(&self.key))
    }
}

impl fmt::Display for SessionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&ShortId::of(&self.key), f)
    }
}

/// One session of a listing.
#[derive(Debug)]
#[non_exhaustive]
pub struct IndexedSession<T> {
    /// The session's data, decoded as the listed struct.
    pub data: T,
    /// When the session was created (or last regenerated: a login).
    pub created_at: SystemTime,
    /// When it expires unless it is used again.
    pub expires_at: SystemTime,
    /// When a request last wrote or touched it: its deadline minus its idle timeout, so as
    /// fine as `touch_after` (a minute by default).
    pub last_used: SystemTime,
    /// Whether it is the session of the request the [`SessionIndex`] was taken from.
    pub current: bool,
    /// A handle to revoke it with.
    pub session: SessionRef,
}

/// Lists, counts and revokes the sessions of an indexed value.
///
/// From a handler, take it as an extractor: it knows the request's own session (for
/// [`IndexedSession::current`] and [`revoke_others`](Self::revoke_others)). Outside any
/// request, get one from [`SessionLayer::sessions`](crate::SessionLayer::sessions). It is
/// cheap to clone.
#[derive(Clone)]
pub struct SessionIndex {
    config: Arc<Config>,
    current: Option<Arc<RequestState>>,
}

impl fmt::Debug for SessionIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionIndex")
            .field("in_request", &self.current.is_some())
            .finish_non_exhaustive()
    }
}

impl SessionIndex {
    pub(crate) fn new(config: Arc<Config>, current: Option<Arc<RequestState>>) -> Self {
        Self { config, current }
    }

    /// The live sessions whose indexed field holds `value`, as `T`, in order of creation.
    ///
    /// # Errors
    /// [`SessionError::Store`] when the store fails or does not keep indexes.
    pub async fn list<T: SessionData, V: IndexValue>(
        &self,
        index: Index<T, V>,
        value: &V,
    ) -> Result<Vec<IndexedSession<T>>, SessionError> {
        self.list_as::<T, T, V>(index, value).await
    }

    /// Like [`list`](Self::list), decoding each session as another struct `U` (one that
    /// shares the keys it wants to show).
    ///
    /// # Errors
    /// As [`list`](Self::list).
    pub async fn list_as<U: SessionData, T, V: IndexValue>(
        &self,
        index: Index<T, V>,
        value: &V,
    ) -> Result<Vec<IndexedSession<U>>, SessionError> {
        let current = self.current_key();
        let live = self.live(&kept_entry(&self.config, index, value)?).await?;
        let sessions = live
            .into_iter()
            .map(|(key, record)| IndexedSession {
                data: U::View::decode(&record.fields, &Fields::new()).into_data(),
                created_at: record.created_at.into(),
                expires_at: record.expires_at.into(),
                last_used: self.last_used(&record).into(),
                current: current == Some(key),
                session: SessionRef { key },
            })
            .collect();
        Ok(sessions)
    }

    /// How many live sessions hold `value`: e.g. to cap concurrent sessions per user.
    ///
    /// # Errors
    /// As [`list`](Self::list).
    pub async fn count<T, V: IndexValue>(
        &self,
        index: Index<T, V>,
        value: &V,
    ) -> Result<usize, SessionError> {
        Ok(self
            .live(&kept_entry(&self.config, index, value)?)
            .await?
            .len())
    }

    /// Ends one session: its record is deleted, so its next request (on any instance) finds
    /// no session. Returns whether it was still there.
    ///
    /// # Errors
    /// [`SessionError::Store`] when the store fails.
    pub async fn revoke(&self, session: &SessionRef) -> Result<bool, SessionError> {
        let store = &self.config.store;
        let record = self.call(store.load(&session.key)).await.ok().flatten();
        self.call(store.delete(&session.key)).await?;
        if let Some(record) = &record {
            for entry in entries_of(&record.fields, &self.config.indexed) {
                if let Err(error) = self.call(store.index_remove(&entry, &session.key)).await {
                    tracing::warn!(%error, "could not remove a revoked session from its index; readers skip it");
                }
            }
        }
        Ok(record.is_some())
    }

    /// Ends every session holding `value`. Returns how many were ended.
    ///
    /// # Errors
    /// As [`revoke`](Self::revoke); sessions revoked before the error stay revoked.
    pub async fn revoke_all<T, V: IndexValue>(
        &self,
        index: Index<T, V>,
        value: &V,
    ) -> Result<usize, SessionError> {
        self.revoke_matching(index, value, None).await
    }

    /// Ends every session holding `value` except the current request's ("sign out of all
    /// other devices"). Outside a request, the same as [`revoke_all`](Self::revoke_all).
    ///
    /// # Errors
    /// As [`revoke_all`](Self::revoke_all).
    pub async fn revoke_others<T, V: IndexValue>(
        &self,
        index: Index<T, V>,
        value: &V,
    ) -> Result<usize, SessionError> {
        self.revoke_matching(index, value, self.current_key()).await
    }

    async fn revoke_matching<T, V: IndexValue>(
        &self,
        index: Index<T, V>,
        value: &V,
        except: Option<StoreKey>,
    ) -> Result<usize, SessionError> {
        let live = self.live(&kept_entry(&self.config, index, value)?).await?;
        let mut ended = 0;
        // Only sessions that hold the value now: a session that changed hands since it was
        // indexed is not this value's to end.
        for (key, _) in live.into_iter().filter(|(key, _)| Some(*key) != except) {
            if self.revoke(&SessionRef { key }).await? {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// The live sessions under `entry` holding its value, oldest first. Members stale for
    /// longer than [`PRUNE_GRACE`] are removed on the way.
    async fn live(&self, entry: &IndexEntry) -> Result<Vec<(StoreKey, Record)>, SessionError> {
        let store = &self.config.store;
        let members = self.call(store.index_members(entry)).await?;
        let keys: Vec<StoreKey> = members.iter().map(|member| member.key).collect();
        let records = self.call(store.load_many(&keys)).await?;
        let now = Timestamp::now();
        let prune_before = Timestamp::from_millis(
            now.as_millis()
                .saturating_sub(u64::try_from(PRUNE_GRACE.as_millis()).unwrap_or(u64::MAX)),
        );
        let mut live = Vec::with_capacity(members.len());
        let mut seen = HashSet::with_capacity(members.len());
        for (member, record) in members.into_iter().zip(records) {
            match record {
                Some(record) if self.config.is_live(&record, now) && entry.held_by(&record) => {
                    // Not in the guard: a key listed twice must not fall to the pruning arm.
                    let first = seen.insert(member.key);
                    if first {
                        live.push((member.key, record));
                    }
                }
                _ if member.added < prune_before => {
                    if let Err(error) = self.call(store.index_remove(entry, &member.key)).await {
                        tracing::debug!(%error, "could not prune a stale index member");
                    }
                }
                _ => {}
            }
        }
        live.sort_by_key(|(key, record)| (record.created_at, *key));
        Ok(live)
    }

    /// The record's deadline minus its idle timeout, within its lifetime.
    fn last_used(&self, record: &Record) -> Timestamp {
        // As the lifecycle sets the deadline: the session's own cookie lifetime is its idle
        // timeout, if it has one.
        let idle = match stored_max_age(record) {
            Some(Some(max_age)) => max_age,
            _ => self.config.idle(),
        };
        let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let used = Timestamp::from_millis(record.expires_at.as_millis().saturating_sub(idle));
        used.max(record.created_at).min(Timestamp::now())
    }

    /// The store key of the request's own session, as stored now.
    fn current_key(&self) -> Option<StoreKey> {
        self.current.as_ref().and_then(|state| state.stored_key())
    }

    async fn call<R>(
        &self,
        call: impl std::future::Future<Output = Result<R, StoreError>>,
    ) -> Result<R, SessionError> {
        Ok(self
            .config
            .call_within(self.config.store_timeout, call)
            .await?)
    }
}

/// The entry of `value` in `index`, on a layer that keeps that index.
fn kept_entry<T, V: IndexValue>(
    config: &Config,
    index: Index<T, V>,
    value: &V,
) -> Result<IndexEntry, SessionError> {
    if !config.indexed.contains(&index.key) {
        return Err(SessionError::Store(StoreError::Unsupported(
            "session indexes on this layer (it was built `without_indexes`)",
        )));
    }
    let encoded = serde_json::to_string(value).map_err(SessionError::Encode)?;
    Ok(IndexEntry::new(index.key, &encoded))
}

#[cfg(feature = "axum")]
mod extract {
    use axum_core::extract::FromRequestParts;
    use http::request::Parts;

    use super::SessionIndex;
    use crate::extract::{handle, load, SessionRejection};

    /// The request's [`SessionIndex`]: it knows the request's session, which it loads.
    impl<S: Send + Sync> FromRequestParts<S> for SessionIndex {
        type Rejection = SessionRejection;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            let handle = handle(parts).map_err(SessionRejection::misuse)?;
            load(parts, &handle).await?;
            Ok(SessionIndex::new(handle.0.config.clone(), Some(handle.0)))
        }
    }
}
