//! An in-process cache in front of any store.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::memory::shard_index;
use super::{IndexEntry, IndexMember, SessionLock, Store, StoreError};
use crate::id::StoreKey;
use crate::record::{Record, SaveMode, Timestamp};

const SHARDS: usize = 64;
const DEFAULT_CAPACITY: usize = 10_000;
const DEFAULT_STALENESS: Duration = Duration::from_secs(1);

struct Entry {
    record: Record,
    /// When the record was last read from, or wholly written to, the inner store.
    fetched: Instant,
}

type Shard = HashMap<StoreKey, Entry>;

/// Keeps recently used sessions in process memory in front of another store, so hot
/// sessions skip the network.
///
/// - **Read-through**: a load is answered from the cache while the cached copy is younger
///   than [`with_max_staleness`](Self::with_max_staleness) (1 s by default) and not expired;
///   otherwise it goes to the inner store. A change made through another instance is
///   therefore served stale for at most that long.
/// - **Write-through**: every write goes to the inner store first, and the cache is updated
///   only once the inner store succeeded.
/// - **Bounded**: at most [`with_capacity`](Self::with_capacity) sessions (10 000 by
///   default); the least recently fetched go first.
///
/// ```
/// use std::time::Duration;
/// use session_core::store::{CachingStore, MemoryStore};
///
/// let store = CachingStore::new(MemoryStore::new())
///     .with_max_staleness(Duration::from_millis(500))
///     .with_capacity(50_000);
/// ```
pub struct CachingStore<S> {
    inner: S,
    shards: Box<[Mutex<Shard>]>,
    capacity_per_shard: usize,
    max_staleness: Duration,
}

impl<S: Store> CachingStore<S> {
    /// A cache of up to 10 000 sessions, at most 1 s stale, in front of `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            capacity_per_shard: DEFAULT_CAPACITY.div_ceil(SHARDS),
            max_staleness: DEFAULT_STALENESS,
        }
    }

    /// The most sessions kept (rounded up to a multiple of 64).
    #[must_use]
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity_per_shard = capacity.div_ceil(SHARDS).max(1);
        self
    }

    /// How long a cached copy may answer loads before the inner store is asked again.
    /// Zero turns read caching off.
    #[must_use]
    pub fn with_max_staleness(mut self, staleness: Duration) -> Self {
        self.max_staleness = staleness;
        self
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// How many sessions are cached.
    pub fn cached(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    fn shard(&self, key: &StoreKey) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard_index(key, SHARDS)])
    }

    fn put(&self, key: &StoreKey, record: Record, fetched: Instant) {
        let mut shard = self.shard(key);
        if shard.len() >= self.capacity_per_shard && !shard.contains_key(key) {
            let oldest = shard
                .iter()
                .min_by_key(|(_, entry)| entry.fetched)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                shard.remove(&oldest);
            }
        }
        shard.insert(*key, Entry { record, fetched });
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S> std::fmt::Debug for CachingStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingStore")
            .field("capacity", &(self.capacity_per_shard * SHARDS))
            .field("max_staleness", &self.max_staleness)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: Store> Store for CachingStore<S> {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let now = Timestamp::now();
        {
            let mut shard = self.shard(key);
            if let Some(entry) = shard.get(key) {
                if entry.record.is_expired(now) {
                    shard.remove(key);
                } else if entry.fetched.elapsed() < self.max_staleness {
                    return Ok(Some(entry.record.clone()));
                }
            }
        }
        let fetched = Instant::now();
        let loaded = self.inner.load(key).await?;
        match &loaded {
            Some(record) => self.put(key, record.clone(), fetched),
            None => {
                self.shard(key).remove(key);
            }
        }
        Ok(loaded)
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        let fetched = Instant::now();
        let created = self.inner.create(key, record).await?;
        if created {
            self.put(key, record.clone(), fetched);
        } else {
            // Someone else holds the key: whatever we cached is not to be trusted.
            self.shard(key).remove(key);
        }
        Ok(created)
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        let fetched = Instant::now();
        let result = self.inner.save(key, record, mode).await;
        let mut shard = self.shard(key);
        match (&result, mode, shard.get_mut(key)) {
            // A whole write: the cache now holds exactly what the store holds.
            (Ok(true), SaveMode::Replace, _) => {
                drop(shard);
                self.put(key, record.clone(), fetched);
            }
            // A partial write: other fields may have changed elsewhere, so the copy keeps
            // its old fetch time and still expires on schedule.
            (Ok(true), SaveMode::Merge, Some(entry)) => entry.record.apply(record, mode),
            (Ok(true), SaveMode::Merge, None) => {}
            // Gone from the store (deleted or revoked by another instance), or failed: the
            // copy must not serve it again.
            (Ok(false) | Err(_), _, _) => {
                shard.remove(key);
            }
        }
        result
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        let result = self.inner.touch(key, expires_at).await;
        let mut shard = self.shard(key);
        match (&result, shard.get_mut(key)) {
            (Ok(true), Some(entry)) => entry.record.expires_at = expires_at,
            (Ok(false) | Err(_), Some(_)) => {
                shard.remove(key);
            }
            _ => {}
        }
        result
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        // Forget first: even if the store fails, a deleted session must not be served.
        self.shard(key).remove(key);
        self.inner.delete(key).await
    }

    fn supports_locks(&self) -> bool {
        self.inner.supports_locks()
    }

    async fn lock(
        &self,
        key: &StoreKey,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        let lock = self.inner.lock(key, lease, wait).await?;
        if lock.is_some() {
            // Whoever held the lock may have written through another instance.
            self.shard(key).remove(key);
        }
        Ok(lock)
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let now = Timestamp::now();
        for shard in self.shards.iter() {
            lock(shard).retain(|_, entry| !entry.record.is_expired(now));
        }
        self.inner.purge_expired().await
    }

    fn supports_index(&self) -> bool {
        self.inner.supports_index()
    }

    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.inner.index_add(entry, key, until).await
    }

    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        self.inner.index_remove(entry, key).await
    }

    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        self.inner.index_members(entry).await
    }

    /// Read from the store behind the cache: a listing shows what every instance sees.
    async fn load_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Record>>, StoreError> {
        self.inner.load_many(keys).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    fn key() -> StoreKey {
        SessionId::generate().unwrap().store_key()
    }

    fn record(value: &str) -> Record {
        let now = Timestamp::now();
        let mut record = Record::new(now, now.saturating_add(Duration::from_secs(60)));
        record.fields.insert(Arc::from("v"), Arc::from(value));
        record
    }

    #[tokio::test]
    async fn change_through_another_instance_is_seen_within_the_staleness_bound() {
        let shared = MemoryStore::new();
        let a = CachingStore::new(shared.clone()).with_max_staleness(Duration::from_millis(100));
        let b = CachingStore::new(shared.clone()).with_max_staleness(Duration::from_millis(100));
        let key = key();
        a.create(&key, &record("1")).await.unwrap();
        assert_eq!(&*b.load(&key).await.unwrap().unwrap().fields["v"], "1");
        a.save(&key, &record("2"), SaveMode::Merge).await.unwrap();
        // b may still serve its copy, but not for longer than the bound.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(&*b.load(&key).await.unwrap().unwrap().fields["v"], "2");
    }

    #[tokio::test]
    async fn hot_reads_skip_the_inner_store() {
        let shared = MemoryStore::new();
        let cache = CachingStore::new(shared.clone()).with_max_staleness(Duration::from_secs(60));
        let key = key();
        cache.create(&key, &record("1")).await.unwrap();
        // Remove behind the cache's back: a cached read does not notice within the bound.
        shared.delete(&key).await.unwrap();
        assert!(cache.load(&key).await.unwrap().is_some());
        // Deleting through the cache is seen at once.
        cache.delete(&key).await.unwrap();
        assert!(cache.load(&key).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn capacity_bounds_the_cache() {
        let cache = CachingStore::new(MemoryStore::new()).with_capacity(SHARDS);
        for _ in 0..SHARDS * 10 {
            cache.create(&key(), &record("x")).await.unwrap();
        }
        assert!(cache.cached() <= SHARDS);
    }

    #[tokio::test]
    async fn expired_copies_are_not_served() {
        let cache =
            CachingStore::new(MemoryStore::new()).with_max_staleness(Duration::from_secs(60));
        let key = key();
        let now = Timestamp::now();
        let short = Record::new(now, now.saturating_add(Duration::from_millis(50)));
        cache.create(&key, &short).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(cache.load(&key).await.unwrap().is_none());
    }
}
