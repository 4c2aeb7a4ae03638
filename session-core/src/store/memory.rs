//! The in-process store: sharded, bounded, swept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;

use super::{LocalLocks, SessionLock, Store, StoreError};
use crate::id::StoreKey;
use crate::record::{Record, SaveMode, Timestamp};

const SHARDS: usize = 64;
const DEFAULT_CAPACITY: usize = 100_000;
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

type Shard = HashMap<StoreKey, Record>;

/// Sessions kept in this process's memory: the default store.
///
/// - **Sharded**: keys are spread over 64 independently locked maps, so requests for
///   different sessions do not wait on one lock.
/// - **Expiry on read**: an expired record is never returned, even before it is swept.
/// - **Swept**: a background task (started on first write inside a Tokio runtime) removes
///   expired records every minute, or as [`with_sweep_interval`](Self::with_sweep_interval)
///   says. It stops when the last clone of the store is dropped.
/// - **Bounded**: at most [`with_capacity`](Self::with_capacity) records (100 000 by
///   default). When a shard is full, expired records go first, then the record closest to
///   expiry, so a flood of new sessions cannot grow memory without limit.
///
/// - **Locks**: per-session locks ([`with_session_lock`](crate::SessionLayer::with_session_lock))
///   are held in process.
///
/// Records are lost when the process exits; use a persistent store in production.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    locks: LocalLocks,
    capacity_per_shard: usize,
    sweep_interval: Duration,
    sweeper_started: AtomicBool,
    evictions: AtomicUsize,
}

impl MemoryStore {
    /// A store holding at most 100 000 sessions.
    pub fn new() -> Self {
        Self::build(DEFAULT_CAPACITY, DEFAULT_SWEEP_INTERVAL)
    }

    /// Sets the most sessions the store holds (rounded up to a multiple of 64). Drops what
    /// the store held before.
    #[must_use]
    pub fn with_capacity(self, capacity: usize) -> Self {
        Self::build(capacity, self.inner.sweep_interval)
    }

    /// Sets how often expired records are swept. Drops what the store held before.
    #[must_use]
    pub fn with_sweep_interval(self, interval: Duration) -> Self {
        let capacity = self.inner.capacity_per_shard * SHARDS;
        Self::build(capacity, interval)
    }

    fn build(capacity: usize, sweep_interval: Duration) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                locks: LocalLocks::new(),
                capacity_per_shard: capacity.div_ceil(SHARDS).max(1),
                sweep_interval: sweep_interval.max(Duration::from_millis(10)),
                sweeper_started: AtomicBool::new(false),
                evictions: AtomicUsize::new(0),
            }),
        }
    }

    /// How many records the store holds, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether the store holds no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many live records were evicted because the store was full.
    pub fn evictions(&self) -> usize {
        self.inner.evictions.load(Ordering::Relaxed)
    }

    fn shard(&self, key: &StoreKey) -> MutexGuard<'_, Shard> {
        lock(&self.inner.shards[shard_index(key, SHARDS)])
    }

    /// Makes room for one more record in a full shard.
    fn make_room(&self, shard: &mut Shard, now: Timestamp) {
        if shard.len() < self.inner.capacity_per_shard {
            return;
        }
        shard.retain(|_, record| !record.is_expired(now));
        if shard.len() < self.inner.capacity_per_shard {
            return;
        }
        let soonest = shard
            .iter()
            .min_by_key(|(_, record)| record.expires_at)
            .map(|(key, _)| *key);
        if let Some(key) = soonest {
            shard.remove(&key);
            let evicted = self.inner.evictions.fetch_add(1, Ordering::Relaxed);
            if evicted == 0 {
                tracing::warn!(
                    capacity = self.inner.capacity_per_shard * SHARDS,
                    "memory session store is full; evicting the sessions closest to expiry"
                );
            }
        }
    }

    fn start_sweeper(&self) {
        if self.inner.sweeper_started.load(Ordering::Relaxed)
            || self.inner.sweeper_started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime there is nothing to run the task on; expiry on read and the
            // capacity bound still hold. Try again on a later write.
            self.inner.sweeper_started.store(false, Ordering::Relaxed);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let interval = self.inner.sweep_interval;
        runtime.spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let removed = sweep(&inner.shards, Timestamp::now());
                if removed > 0 {
                    tracing::debug!(removed, "swept expired sessions from memory");
                }
            }
        });
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &(self.inner.capacity_per_shard * SHARDS))
            .field("sweep_interval", &self.inner.sweep_interval)
            .finish_non_exhaustive()
    }
}

fn sweep(shards: &[Mutex<Shard>], now: Timestamp) -> usize {
    let mut removed = 0;
    for shard in shards {
        let mut shard = lock(shard);
        let before = shard.len();
        shard.retain(|_, record| !record.is_expired(now));
        removed += before - shard.len();
    }
    removed
}

/// Which of `shards` holds `key`. The key is a hex SHA-256 digest, so its first characters
/// are uniformly spread.
pub(super) fn shard_index(key: &StoreKey, shards: usize) -> usize {
    let bytes = key.as_str().as_bytes();
    (usize::from(hex_value(bytes[0])) << 4 | usize::from(hex_value(bytes[1]))) % shards
}

fn hex_value(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        _ => 0,
    }
}

/// Locks a shard. A panic while a shard was locked cannot leave a record half-written (every
/// write replaces whole values), so a poisoned lock is still safe to use.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl Store for MemoryStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let now = Timestamp::now();
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(record) if !record.is_expired(now) => Ok(Some(record.clone())),
            Some(_) => {
                shard.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        self.start_sweeper();
        let now = Timestamp::now();
        let mut shard = self.shard(key);
        if shard.get(key).is_some_and(|r| !r.is_expired(now)) {
            return Ok(false);
        }
        shard.remove(key);
        self.make_room(&mut shard, now);
        shard.insert(*key, record.clone());
        Ok(true)
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<(), StoreError> {
        self.start_sweeper();
        let now = Timestamp::now();
        let mut shard = self.shard(key);
        match shard.get_mut(key) {
            Some(stored) if !stored.is_expired(now) => stored.apply(record, mode),
            _ => {
                shard.remove(key);
                self.make_room(&mut shard, now);
                shard.insert(*key, record.clone());
            }
        }
        Ok(())
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<(), StoreError> {
        let now = Timestamp::now();
        if let Some(stored) = self.shard(key).get_mut(key) {
            if !stored.is_expired(now) {
                stored.expires_at = expires_at;
            }
        }
        Ok(())
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.shard(key).remove(key);
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(sweep(&self.inner.shards, Timestamp::now()) as u64)
    }

    fn supports_locks(&self) -> bool {
        true
    }

    async fn lock(
        &self,
        key: &StoreKey,
        _lease: Duration,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        Ok(self.inner.locks.lock(key, wait).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;

    fn key() -> StoreKey {
        SessionId::generate().unwrap().store_key()
    }

    fn live() -> Record {
        let now = Timestamp::now();
        Record::new(now, now.saturating_add(Duration::from_secs(60)))
    }

    #[tokio::test]
    async fn capacity_bounds_the_number_of_records() {
        let store = MemoryStore::new().with_capacity(SHARDS * 2);
        for _ in 0..SHARDS * 20 {
            assert!(store.create(&key(), &live()).await.unwrap());
        }
        assert!(store.len() <= SHARDS * 2, "len = {}", store.len());
        assert!(store.evictions() > 0);
    }

    #[tokio::test]
    async fn expired_records_are_removed_before_live_ones() {
        let store = MemoryStore::new().with_capacity(SHARDS * 4);
        let now = Timestamp::now();
        let expired = Record::new(now, now);
        // Fill every shard with expired records, then add live ones: no live record is evicted.
        for _ in 0..SHARDS * 16 {
            store
                .save(&key(), &expired, SaveMode::Replace)
                .await
                .unwrap();
        }
        let keys: Vec<StoreKey> = (0..8).map(|_| key()).collect();
        for k in &keys {
            assert!(store.create(k, &live()).await.unwrap());
        }
        for k in &keys {
            assert!(store.load(k).await.unwrap().is_some());
        }
        assert_eq!(store.evictions(), 0);
    }

    #[tokio::test]
    async fn sweeper_removes_expired_records_in_the_background() {
        let store = MemoryStore::new().with_sweep_interval(Duration::from_millis(20));
        let now = Timestamp::now();
        let short = Record::new(now, now.saturating_add(Duration::from_millis(30)));
        for _ in 0..10 {
            store.create(&key(), &short).await.unwrap();
        }
        assert_eq!(store.len(), 10);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(store.len(), 0);
    }
}
