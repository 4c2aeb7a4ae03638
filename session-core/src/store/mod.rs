//! The [`Store`] trait and the stores that ship with this crate.
//!
//! A store keeps [`Record`]s under [`StoreKey`]s. The layer calls it through
//! `Arc<dyn Store>`, so the backend can be chosen at run time from configuration:
//!
//! ```
//! use std::sync::Arc;
//! use session_core::store::{MemoryStore, Store};
//!
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! ```
//!
//! # Contract
//!
//! - [`load`](Store::load) never returns a record whose `expires_at` has passed, even before
//!   any purge has run.
//! - [`create`](Store::create) is atomic: it stores the record only if no live record has that
//!   key, and reports a collision otherwise.
//! - **Only `create` creates.** [`save`](Store::save) and [`touch`](Store::touch) write only
//!   over a live record; when there is none (deleted, regenerated away, expired) they write
//!   nothing and return `Ok(false)`. So a request that loaded a session before another request
//!   destroyed it (a logout) cannot bring it back by saving after: the layer treats the session
//!   as ended.
//! - [`save`](Store::save) with [`SaveMode::Merge`] writes only the fields it is given and keeps
//!   the others, so two requests that change different fields both keep their change.
//! - [`save`](Store::save) in both modes stores the record's `created_at` and `expires_at`.
//! - [`touch`](Store::touch) moves the deadline and writes nothing else.
//! - Errors are returned as [`StoreError`], never as panics.
//!
//! # Indexes
//!
//! A store that [`supports_index`](Store::supports_index) keeps, for each [`IndexEntry`] (an
//! indexed field and one of its values, like `user = 42`), the set of store keys whose
//! session had that value. The layer adds a session to an entry *before* it writes the value
//! and removes it *after* the value is gone, so a live session is never missing from its
//! entries; an entry may briefly name a session that no longer has the value (or no longer
//! exists), which is why readers ([`SessionIndex`](crate::index::SessionIndex)) load every
//! member and drop the stale ones. Members are never returned in any particular order.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::id::StoreKey;
pub use crate::index::{IndexEntry, IndexMember};
use crate::record::{Record, SaveMode, Timestamp};

mod cache;
pub mod express;
#[cfg(feature = "file")]
mod file;
mod lock;
#[cfg(feature = "memcached")]
pub(crate) mod memcached;
mod memory;
#[cfg(feature = "mongodb")]
mod mongodb;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use cache::CachingStore;
#[cfg(feature = "postgres")]
pub use express::ConnectPgStore;
#[cfg(feature = "redis")]
pub use express::ConnectRedisStore;
#[cfg(feature = "file")]
pub use file::FileStore;
pub use lock::{LocalLocks, Release, SessionLock};
#[cfg(feature = "memcached")]
pub use memcached::MemcachedStore;
pub use memory::MemoryStore;
#[cfg(feature = "mongodb")]
pub use mongodb::MongoStore;
#[cfg(feature = "mysql")]
pub use mysql::MySqlStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub use sql::InvalidTableName;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
/// The SQL toolkit the SQL stores are built on, for building pools to pass to `from_pool`.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub use sqlx;

/// A place to keep sessions.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The live record under `key`, or `None` if there is none or it has expired.
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError>;

    /// Stores `record` under `key` if no live record has that key. Returns `false` on a
    /// collision, in which case nothing is written.
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError>;

    /// Writes `record` over the live record under `key` as `mode` says. `created_at` and
    /// `expires_at` are always taken from `record`.
    ///
    /// Returns `Ok(true)` when a live record was written, and `Ok(false)`, having written
    /// nothing, when there is no live record under `key` (it was deleted, or has expired even if
    /// it is not purged yet). It never creates a record: only [`create`](Store::create) does.
    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError>;

    /// Moves the deadline of the live record under `key`; writes nothing else. Returns
    /// `Ok(false)`, having written nothing, when there is no live record under `key`.
    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError>;

    /// Removes the record under `key`; removing an absent record is not an error.
    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError>;

    /// Removes expired records, for backends without native expiry. Returns how many were
    /// removed. Stores that expire records by themselves keep the default, which does nothing.
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Whether [`lock`](Store::lock) is implemented. The layer refuses
    /// [`with_session_lock`](crate::SessionLayer::with_session_lock) on a store that says no.
    fn supports_locks(&self) -> bool {
        false
    }

    /// Takes the per-session lock of `key`, waiting at most `wait`. The lock frees itself
    /// after `lease` if its holder vanishes without releasing it. Returns `None` when the lock
    /// could not be taken in time.
    ///
    /// The layer takes it, when asked to, before loading an existing session and releases it
    /// after the session is saved, so requests on one session run one after another (as
    /// PHP's session handler does) and no update is lost, even to the same field.
    async fn lock(
        &self,
        key: &StoreKey,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        let _ = (key, lease, wait);
        Err(StoreError::Unsupported("per-session locks"))
    }

    /// Whether the index operations ([`index_add`](Store::index_add),
    /// [`index_remove`](Store::index_remove), [`index_members`](Store::index_members)) are
    /// implemented. The layer refuses, at `check()`, a program with `#[session(index)]` fields
    /// on a store that says no, unless the layer is told to keep no indexes.
    fn supports_index(&self) -> bool {
        false
    }

    /// Adds `key` to the sessions under `entry`; adding a member twice is not an error.
    /// `until`, when given, is the latest time any session can still be live under this entry
    /// (the absolute timeout): stores that expire data by themselves may drop the entry then.
    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let _ = (entry, key, until);
        Err(StoreError::Unsupported("session indexes"))
    }

    /// Removes `key` from the sessions under `entry`; removing an absent member is not an
    /// error.
    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        let _ = (entry, key);
        Err(StoreError::Unsupported("session indexes"))
    }

    /// The members of `entry`, each with the time it was last added, in no particular order.
    /// Members may be stale (gone or no longer holding the value): callers load them and
    /// check.
    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        let _ = entry;
        Err(StoreError::Unsupported("session indexes"))
    }

    /// The live records of `keys`, in the same order, `None` where there is none. The
    /// default loads them one by one; stores with a batch read override it. A record that
    /// cannot be read is `None`, as the layer treats it.
    async fn load_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Record>>, StoreError> {
        let mut records = Vec::with_capacity(keys.len());
        for key in keys {
            records.push(match self.load(key).await {
                Ok(record) => record,
                Err(StoreError::Corrupt(_)) => None,
                Err(error) => return Err(error),
            });
        }
        Ok(records)
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        (**self).load(key).await
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        (**self).create(key, record).await
    }
    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        (**self).save(key, record, mode).await
    }
    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        (**self).touch(key, expires_at).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        (**self).delete(key).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        (**self).purge_expired().await
    }
    fn supports_locks(&self) -> bool {
        (**self).supports_locks()
    }
    async fn lock(
        &self,
        key: &StoreKey,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        (**self).lock(key, lease, wait).await
    }
    fn supports_index(&self) -> bool {
        (**self).supports_index()
    }
    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        (**self).index_add(entry, key, until).await
    }
    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        (**self).index_remove(entry, key).await
    }
    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        (**self).index_members(entry).await
    }
    async fn load_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Record>>, StoreError> {
        (**self).load_many(keys).await
    }
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not be reached or answered with an error.
    #[error("session store backend error: {0}")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
    /// The call did not finish in time.
    #[error("session store call timed out")]
    Timeout,
    /// A stored record could not be read at all (not one bad field: the record itself).
    #[error("stored session record is corrupt: {0}")]
    Corrupt(String),
    /// The store refused the record, for example because it is larger than its limit.
    #[error("session store refused the record: {0}")]
    Rejected(String),
    /// The store does not offer this operation.
    #[error("this session store does not support {0}")]
    Unsupported(&'static str),
}

impl StoreError {
    /// Wraps any backend error.
    pub fn backend(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::Backend(error.into())
    }
}
