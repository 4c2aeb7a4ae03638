//! Store wrappers that count the calls reaching the store, and the counters they share with
//! the server's `/__stats` route.
//!
//! Counting calls is a few relaxed atomic increments, cheap enough to stay on during the timed
//! runs. Bytes are not counted here but on the wire to Redis ([`crate::wire`]), the same way
//! for both libraries.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use session_core::{Record, SaveMode, Store, StoreError, StoreKey, Timestamp};
use tower_sessions::session::{Id, Record as TowerRecord};
use tower_sessions::session_store::{self, SessionStore};

/// What one server's store has been asked to do since the server started.
#[derive(Debug, Default)]
pub struct Stats {
    pub loads: AtomicU64,
    pub creates: AtomicU64,
    pub saves: AtomicU64,
    pub touches: AtomicU64,
    pub deletes: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as `name=value` pairs, one line, as `/__stats` answers.
    pub fn render(&self, sessions: u64) -> String {
        let mut out = String::new();
        let pairs = [
            ("loads", &self.loads),
            ("creates", &self.creates),
            ("saves", &self.saves),
            ("touches", &self.touches),
            ("deletes", &self.deletes),
        ];
        for (name, counter) in pairs {
            let _ = write!(out, "{name}={} ", counter.load(Ordering::Relaxed));
        }
        let _ = write!(out, "sessions={sessions}");
        out
    }
}

/// A session-core [`Store`] that counts the calls it passes on.
pub struct CountingStore<S> {
    inner: S,
    stats: Arc<Stats>,
}

impl<S> CountingStore<S> {
    pub fn new(inner: S, stats: Arc<Stats>) -> Self {
        Self { inner, stats }
    }
}

#[async_trait]
impl<S: Store> Store for CountingStore<S> {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        Stats::add(&self.stats.loads, 1);
        self.inner.load(key).await
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        Stats::add(&self.stats.creates, 1);
        self.inner.create(key, record).await
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        Stats::add(&self.stats.saves, 1);
        self.inner.save(key, record, mode).await
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        Stats::add(&self.stats.touches, 1);
        self.inner.touch(key, expires_at).await
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        Stats::add(&self.stats.deletes, 1);
        self.inner.delete(key).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.inner.purge_expired().await
    }

    fn supports_locks(&self) -> bool {
        self.inner.supports_locks()
    }

    async fn lock(
        &self,
        key: &StoreKey,
        lease: std::time::Duration,
        wait: std::time::Duration,
    ) -> Result<Option<session_core::store::SessionLock>, StoreError> {
        self.inner.lock(key, lease, wait).await
    }
}

/// A tower-sessions [`SessionStore`] that counts the calls it passes on.
///
/// With `track_ids`, the ids of created sessions are kept so that the benchmark can delete
/// them afterwards: tower-sessions-redis-store keys sessions by bare id, with no prefix to
/// clean up by.
#[derive(Clone, Debug)]
pub struct CountingTowerStore<S> {
    inner: S,
    stats: Arc<Stats>,
    created: Option<CreatedIds>,
}

/// The ids a [`CountingTowerStore`] saw created, shared with whoever cleans them up.
pub type CreatedIds = Arc<Mutex<Vec<Id>>>;

impl<S> CountingTowerStore<S> {
    pub fn new(inner: S, stats: Arc<Stats>, track_ids: bool) -> Self {
        Self {
            inner,
            stats,
            created: track_ids.then(CreatedIds::default),
        }
    }

    /// The list the ids of created sessions go to, if they are tracked.
    pub fn created(&self) -> Option<CreatedIds> {
        self.created.clone()
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for CountingTowerStore<S> {
    async fn create(&self, record: &mut TowerRecord) -> session_store::Result<()> {
        Stats::add(&self.stats.creates, 1);
        self.inner.create(record).await?;
        if let Some(ids) = &self.created {
            ids.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(record.id);
        }
        Ok(())
    }

    async fn save(&self, record: &TowerRecord) -> session_store::Result<()> {
        Stats::add(&self.stats.saves, 1);
        self.inner.save(record).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<TowerRecord>> {
        Stats::add(&self.stats.loads, 1);
        self.inner.load(id).await
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        Stats::add(&self.stats.deletes, 1);
        self.inner.delete(id).await
    }
}
