//! The in-process store: sharded, bounded, swept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;

use super::{LocalLocks, SessionLock, Store, StoreError};
use crate::id::StoreKey;
use crate::record::{Fields, Record, SaveMode, Timestamp};

const SHARDS: usize = 64;
const DEFAULT_CAPACITY: usize = 100_000;
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// When the store is full, one pass over a shard evicts this fraction of it, so the cost of
/// the pass is spread over many inserts.
const EVICT_FRACTION: usize = 16;

/// A record as the memory store keeps it: fields in a sorted slice rather than a map (a map
/// node has room for eleven entries; a session usually has a few), keyed by the raw digest.
struct Stored {
    fields: Box<[(Arc<str>, Arc<str>)]>,
    created_at: Timestamp,
    expires_at: Timestamp,
}

impl Stored {
    fn new(record: &Record) -> Self {
        Self {
            fields: record
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            created_at: record.created_at,
            expires_at: record.expires_at,
        }
    }

    fn to_record(&self) -> Record {
        Record {
            fields: self.fields.iter().cloned().collect::<Fields>(),
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }

    fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }

    /// Writes `write` over this record as `mode` says.
    fn apply(&mut self, write: &Record, mode: SaveMode) {
        if mode == SaveMode::Replace {
            *self = Self::new(write);
            return;
        }
        // Both sides are sorted by name: merge them, the write winning on equal names.
        let mut merged = Vec::with_capacity(self.fields.len() + write.fields.len());
        let mut old = self.fields.iter().peekable();
        for (name, value) in &write.fields {
            while let Some(entry) = old.next_if(|(n, _)| n < name) {
                merged.push(entry.clone());
            }
            old.next_if(|(n, _)| n == name);
            merged.push((name.clone(), value.clone()));
        }
        merged.extend(old.cloned());
        self.fields = merged.into_boxed_slice();
        self.created_at = write.created_at;
        self.expires_at = write.expires_at;
    }
}

type Shard = HashMap<[u8; 32], Stored>;

/// Sessions kept in this process's memory: the default store.
///
/// - **Sharded**: keys are spread over 64 independently locked maps, so requests for
///   different sessions do not wait on one lock.
/// - **Expiry on read**: an expired record is never returned, even before it is swept.
/// - **Swept**: a background task (started on first write inside a Tokio runtime) removes
///   expired records every minute, or as [`with_sweep_interval`](Self::with_sweep_interval)
///   says. It stops when the last clone of the store is dropped.
/// - **Bounded**: at most [`with_capacity`](Self::with_capacity) records (100 000 by
///   default). When the store is full, a new record first clears the expired ones out of its
///   shard, and if that is not enough evicts the sixteenth of the shard closest to expiry, so
///   a flood of new sessions cannot grow memory without limit.
/// - **Locks**: per-session locks
///   ([`with_session_lock`](crate::SessionLayer::with_session_lock)) are held in process.
///
/// Records are lost when the process exits; use a persistent store in production.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    locks: LocalLocks,
    capacity: usize,
    /// Records held, expired ones not yet removed included.
    len: AtomicUsize,
    sweep_interval: Duration,
    sweeper_started: AtomicBool,
    evictions: AtomicUsize,
}

impl MemoryStore {
    /// A store holding at most 100 000 sessions.
    pub fn new() -> Self {
        Self::build(DEFAULT_CAPACITY, DEFAULT_SWEEP_INTERVAL)
    }

    /// Sets the most sessions the store holds. Drops what the store held before.
    #[must_use]
    pub fn with_capacity(self, capacity: usize) -> Self {
        Self::build(capacity, self.inner.sweep_interval)
    }

    /// Sets how often expired records are swept. Drops what the store held before.
    #[must_use]
    pub fn with_sweep_interval(self, interval: Duration) -> Self {
        Self::build(self.inner.capacity, interval)
    }

    fn build(capacity: usize, sweep_interval: Duration) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                locks: LocalLocks::new(),
                capacity: capacity.max(1),
                len: AtomicUsize::new(0),
                sweep_interval: sweep_interval.max(Duration::from_millis(10)),
                sweeper_started: AtomicBool::new(false),
                evictions: AtomicUsize::new(0),
            }),
        }
    }

    /// How many records the store holds, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
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

    /// Inserts a record for a key the shard does not hold, making room first if the store
    /// is full.
    fn insert_new(&self, shard: &mut Shard, key: [u8; 32], stored: Stored, now: Timestamp) {
        if self.inner.len.load(Ordering::Relaxed) >= self.inner.capacity {
            self.make_room(shard, now);
        }
        shard.insert(key, stored);
        self.inner.len.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes `key` from the shard, keeping the count right.
    fn remove(&self, shard: &mut Shard, key: &[u8; 32]) {
        if shard.remove(key).is_some() {
            self.inner.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn make_room(&self, shard: &mut Shard, now: Timestamp) {
        let before = shard.len();
        shard.retain(|_, stored| !stored.is_expired(now));
        let mut removed = before - shard.len();
        if removed == 0 && !shard.is_empty() {
            let batch = (shard.len() / EVICT_FRACTION).max(1);
            let mut by_expiry: Vec<(Timestamp, [u8; 32])> =
                shard.iter().map(|(k, s)| (s.expires_at, *k)).collect();
            by_expiry.select_nth_unstable(batch - 1);
            for (_, key) in &by_expiry[..batch] {
                shard.remove(key);
            }
            removed = batch;
            let evicted = self.inner.evictions.fetch_add(batch, Ordering::Relaxed);
            if evicted == 0 {
                tracing::warn!(
                    capacity = self.inner.capacity,
                    "memory session store is full; evicting the sessions closest to expiry"
                );
            }
        }
        self.inner.len.fetch_sub(removed, Ordering::Relaxed);
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
                let removed = inner.sweep(Timestamp::now());
                if removed > 0 {
                    tracing::debug!(removed, "swept expired sessions from memory");
                }
            }
        });
    }
}

impl Inner {
    fn sweep(&self, now: Timestamp) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|_, stored| !stored.is_expired(now));
            removed += before - shard.len();
        }
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
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
            .field("capacity", &self.inner.capacity)
            .field("len", &self.len())
            .field("sweep_interval", &self.inner.sweep_interval)
            .finish_non_exhaustive()
    }
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
        let digest = key.digest();
        let mut shard = self.shard(key);
        match shard.get(&digest) {
            Some(stored) if !stored.is_expired(now) => Ok(Some(stored.to_record())),
            Some(_) => {
                self.remove(&mut shard, &digest);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        self.start_sweeper();
        let now = Timestamp::now();
        let digest = key.digest();
        let mut shard = self.shard(key);
        match shard.get_mut(&digest) {
            Some(stored) if !stored.is_expired(now) => Ok(false),
            Some(stored) => {
                *stored = Stored::new(record);
                Ok(true)
            }
            None => {
                self.insert_new(&mut shard, digest, Stored::new(record), now);
                Ok(true)
            }
        }
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<(), StoreError> {
        self.start_sweeper();
        let now = Timestamp::now();
        let digest = key.digest();
        let mut shard = self.shard(key);
        match shard.get_mut(&digest) {
            Some(stored) if !stored.is_expired(now) => stored.apply(record, mode),
            Some(stored) => *stored = Stored::new(record),
            None => self.insert_new(&mut shard, digest, Stored::new(record), now),
        }
        Ok(())
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<(), StoreError> {
        let now = Timestamp::now();
        if let Some(stored) = self.shard(key).get_mut(&key.digest()) {
            if !stored.is_expired(now) {
                stored.expires_at = expires_at;
            }
        }
        Ok(())
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        let digest = key.digest();
        self.remove(&mut self.shard(key), &digest);
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(self.inner.sweep(Timestamp::now()) as u64)
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
        let store = MemoryStore::new().with_capacity(500);
        for _ in 0..5_000 {
            assert!(store.create(&key(), &live()).await.unwrap());
        }
        assert!(store.len() <= 500, "len = {}", store.len());
        let held: usize = store.inner.shards.iter().map(|s| lock(s).len()).sum();
        assert_eq!(held, store.len(), "the count matches the shards");
        assert!(store.evictions() >= 4_500);
    }

    #[tokio::test]
    async fn the_store_fills_to_its_capacity_before_evicting() {
        let store = MemoryStore::new().with_capacity(1_000);
        for _ in 0..1_000 {
            store.create(&key(), &live()).await.unwrap();
        }
        assert_eq!(store.len(), 1_000);
        assert_eq!(store.evictions(), 0);
    }

    #[tokio::test]
    async fn merge_keeps_fields_sorted_and_the_write_wins() {
        let store = MemoryStore::new();
        let key = key();
        let mut base = live();
        for (k, v) in [("b", "1"), ("d", "2"), ("f", "3")] {
            base.fields.insert(Arc::from(k), Arc::from(v));
        }
        store.create(&key, &base).await.unwrap();
        let mut change = live();
        for (k, v) in [("a", "9"), ("d", "8"), ("g", "7")] {
            change.fields.insert(Arc::from(k), Arc::from(v));
        }
        store.save(&key, &change, SaveMode::Merge).await.unwrap();
        let loaded = store.load(&key).await.unwrap().unwrap();
        let pairs: Vec<(&str, &str)> = loaded.fields.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(
            pairs,
            [("a", "9"), ("b", "1"), ("d", "8"), ("f", "3"), ("g", "7")]
        );
    }

    #[tokio::test]
    async fn expired_records_are_removed_before_live_ones() {
        let store = MemoryStore::new().with_capacity(SHARDS * 4);
        let store = store.with_sweep_interval(Duration::from_secs(3600));
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
