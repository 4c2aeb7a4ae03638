//! The in-process store: sharded, bounded, swept.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::Duration;

use async_trait::async_trait;

use super::{IndexEntry, IndexMember, LocalLocks, SessionLock, Store, StoreError};
use crate::id::StoreKey;
use crate::record::{Fields, Record, SaveMode, Timestamp};

const SHARDS: usize = 64;
const DEFAULT_CAPACITY: usize = 100_000;
/// The default byte budget: with the layer's default record limit (128 KiB) a flood needs
/// over a thousand full-size sessions to reach it.
const DEFAULT_MAX_BYTES: usize = 128 << 20;
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// When the store is full, one pass over a shard evicts this fraction of it, so the cost of
/// the pass is spread over many inserts.
const EVICT_FRACTION: usize = 16;
/// What a record costs beyond its field bytes: the map entry, the key, the times, the slice.
const RECORD_OVERHEAD: usize = 96;

/// A record as the memory store keeps it: fields in a sorted slice rather than a map (a map
/// node has room for eleven entries; a session usually has a few), keyed by the raw digest.
struct Stored {
    fields: Box<[(Arc<str>, Arc<str>)]>,
    created_at: Timestamp,
    expires_at: Timestamp,
    /// A client came back with this session's cookie at least once. Sessions that never
    /// came back (a flood of cookieless requests is made of them) are evicted first.
    returned: bool,
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
            returned: false,
        }
    }

    fn to_record(&self) -> Record {
        // Inserted one by one: the slice is sorted and short, and `collect` would sort a
        // copy of it first.
        let mut fields = Fields::new();
        for (name, value) in &self.fields {
            fields.insert(name.clone(), value.clone());
        }
        Record {
            fields,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }

    fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }

    /// The bytes this record counts against the store's budget.
    fn size(&self) -> usize {
        RECORD_OVERHEAD
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// Writes `write` over this record as `mode` says.
    fn apply(&mut self, write: &Record, mode: SaveMode) {
        if mode == SaveMode::Replace {
            *self = Self {
                returned: self.returned,
                ..Self::new(write)
            };
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

/// One shard: its records by digest, and a bound on their deadlines so that a pass looking
/// for expired records skips, without a scan, a shard that cannot hold one (at capacity,
/// making room visits every shard).
#[derive(Default)]
struct Shard {
    map: HashMap<[u8; 32], Stored, BuildHasherDefault<DigestHasher>>,
    /// No record here has a deadline before this; `None` when the shard was empty at its
    /// last scan and nothing was written since. Lowered by every write of a deadline
    /// ([`note`](Self::note)), made exact by every scan.
    earliest: Option<Timestamp>,
}

impl Shard {
    /// Records that a record here now has the deadline `at`.
    fn note(&mut self, at: Timestamp) {
        self.earliest = Some(self.earliest.map_or(at, |earliest| earliest.min(at)));
    }

    /// Removes the records expired at `now`; returns how many and their bytes. A shard
    /// whose bound says none has expired is not scanned.
    fn drop_expired(&mut self, now: Timestamp) -> (usize, usize) {
        if self.earliest.is_none_or(|earliest| earliest > now) {
            return (0, 0);
        }
        let before = self.map.len();
        let mut freed = 0;
        let mut earliest: Option<Timestamp> = None;
        self.map.retain(|_, stored| {
            if stored.is_expired(now) {
                freed += stored.size();
                return false;
            }
            earliest = Some(earliest.map_or(stored.expires_at, |e| e.min(stored.expires_at)));
            true
        });
        self.earliest = earliest;
        (before - self.map.len(), freed)
    }
}

impl std::ops::Deref for Shard {
    type Target = HashMap<[u8; 32], Stored, BuildHasherDefault<DigestHasher>>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

/// Hashes a key by eight bytes of its digest. The digest is the SHA-256 of an id, already
/// uniform (and no client can pick it: ids come from the server's generator), so SipHash over
/// all 32 bytes would only add time to every lookup. Bytes 8..16 are used: the first byte
/// picks the shard.
#[derive(Clone, Copy, Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        match bytes.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(word) => self.0 ^= u64::from_le_bytes(word),
            // Not a digest (never, for this map's keys): fold the bytes in.
            None => {
                for &byte in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(byte);
                }
            }
        }
    }

    // The array's length prefix: the same for every key.
    fn write_usize(&mut self, _: usize) {}
}

/// Which records a pass of [`MemoryStore::make_room`] may evict.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victims {
    Expired,
    OneShot,
    Any,
}

/// Sessions kept in this process's memory: the default store.
///
/// - **Sharded**: keys are spread over 64 independently locked maps, so requests for
///   different sessions do not wait on one lock.
/// - **Expiry on read**: an expired record is never returned, even before it is swept.
/// - **Swept**: a background task (started on first write inside a Tokio runtime) removes
///   expired records every minute, or as [`with_sweep_interval`](Self::with_sweep_interval)
///   says. It stops when the last clone of the store is dropped.
/// - **Bounded in count and in bytes**: at most [`with_capacity`](Self::with_capacity)
///   records (100 000 by default) and at most [`with_max_bytes`](Self::with_max_bytes) bytes
///   of records (128 MiB by default; each record counts its field names and values plus
///   96 bytes). A new record that would pass either bound makes room in its shard first:
///   1. expired records go;
///   2. then sessions that never came back: created, but never loaded again by a request
///      carrying their cookie. A flood of cookieless requests is made only of these, so it
///      evicts itself and leaves the sessions of real, returning users alone;
///   3. only when the shard has none of those left, returning sessions closest to expiry.
///
///   Each pass evicts a sixteenth of the shard (or more, for bytes), so its cost is spread
///   over many inserts. Saves that grow a record are not refused; the next new record makes
///   room. [`evictions`](Self::evictions) counts evicted live records.
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
    max_bytes: usize,
    /// Records held, expired ones not yet removed included.
    len: AtomicUsize,
    /// Their bytes, as [`Stored::size`] counts them.
    bytes: AtomicUsize,
    sweep_interval: Duration,
    sweeper_started: AtomicBool,
    evictions: AtomicUsize,
    /// Index entries (by digest) and their members, with when each was added.
    indexes: Mutex<HashMap<StoreKey, HashMap<StoreKey, Timestamp>>>,
}

impl MemoryStore {
    /// A store holding at most 100 000 sessions and 128 MiB of them.
    pub fn new() -> Self {
        Self::build(DEFAULT_CAPACITY, DEFAULT_MAX_BYTES, DEFAULT_SWEEP_INTERVAL)
    }

    /// Sets the most sessions the store holds. Drops what the store held before.
    #[must_use]
    pub fn with_capacity(self, capacity: usize) -> Self {
        Self::build(capacity, self.inner.max_bytes, self.inner.sweep_interval)
    }

    /// Sets the most bytes of sessions the store holds (field names and values, plus 96
    /// bytes per record). Drops what the store held before.
    #[must_use]
    pub fn with_max_bytes(self, max_bytes: usize) -> Self {
        Self::build(self.inner.capacity, max_bytes, self.inner.sweep_interval)
    }

    /// Sets how often expired records are swept. Drops what the store held before.
    #[must_use]
    pub fn with_sweep_interval(self, interval: Duration) -> Self {
        Self::build(self.inner.capacity, self.inner.max_bytes, interval)
    }

    fn build(capacity: usize, max_bytes: usize, sweep_interval: Duration) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                locks: LocalLocks::new(),
                capacity: capacity.max(1),
                max_bytes: max_bytes.max(RECORD_OVERHEAD),
                len: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
                sweep_interval: sweep_interval.max(Duration::from_millis(10)),
                sweeper_started: AtomicBool::new(false),
                evictions: AtomicUsize::new(0),
                indexes: Mutex::new(HashMap::new()),
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

    /// The bytes of the records the store holds, as counted against
    /// [`with_max_bytes`](Self::with_max_bytes).
    pub fn bytes(&self) -> usize {
        self.inner.bytes.load(Ordering::Relaxed)
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
        let size = stored.size();
        if self.is_full(size) {
            self.make_room(shard, shard_of(&key), now, size);
        }
        shard.note(stored.expires_at);
        shard.map.insert(key, stored);
        self.inner.len.fetch_add(1, Ordering::Relaxed);
        self.inner.bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// Whether a new record of `size` bytes would pass a bound.
    fn is_full(&self, size: usize) -> bool {
        self.inner.len.load(Ordering::Relaxed) >= self.inner.capacity
            || self.inner.bytes.load(Ordering::Relaxed) + size > self.inner.max_bytes
    }

    /// Replaces a stored record's content, keeping the byte count right.
    fn rewrite(&self, stored: &mut Stored, write: impl FnOnce(&mut Stored)) {
        let before = stored.size();
        write(stored);
        let after = stored.size();
        if after >= before {
            self.inner
                .bytes
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.inner
                .bytes
                .fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Removes `key` from the shard, keeping the counts right.
    fn remove(&self, shard: &mut Shard, key: &[u8; 32]) {
        if let Some(stored) = shard.map.remove(key) {
            self.inner.forget(1, stored.size());
        }
    }

    /// Frees room for a record of `size` bytes about to go into shard `home`, as the type's
    /// docs describe: expired records go first, then sessions that never returned, then
    /// returning ones; at each step from `home` first, then from the other shards. Other
    /// shards are only tried, never waited for, so two inserts cannot deadlock.
    fn make_room(&self, shard: &mut Shard, home: usize, now: Timestamp, size: usize) {
        let mut evicted = 0;
        'passes: for victims in [Victims::Expired, Victims::OneShot, Victims::Any] {
            if self.evict_from(shard, now, size, victims, &mut evicted) {
                break;
            }
            for index in (0..SHARDS).filter(|&i| i != home) {
                let mut other = match self.inner.shards[index].try_lock() {
                    Ok(other) => other,
                    Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                    Err(TryLockError::WouldBlock) => continue,
                };
                if self.evict_from(&mut other, now, size, victims, &mut evicted) {
                    break 'passes;
                }
            }
        }
        if evicted > 0 {
            let before = self.inner.evictions.fetch_add(evicted, Ordering::Relaxed);
            if before == 0 {
                tracing::warn!(
                    capacity = self.inner.capacity,
                    max_bytes = self.inner.max_bytes,
                    "memory session store is full; evicting sessions that never returned first"
                );
            }
        }
    }

    /// Evicts from one shard until a record of `size` bytes fits: expired records, then (as
    /// `victims` allows) live ones that never returned, then the others, nearest deadline
    /// first, a sixteenth of the shard at a time. Adds live evictions to `evicted`; returns
    /// whether the record fits now.
    fn evict_from(
        &self,
        shard: &mut Shard,
        now: Timestamp,
        size: usize,
        victims: Victims,
        evicted: &mut usize,
    ) -> bool {
        let (expired, freed) = shard.drop_expired(now);
        self.inner.forget(expired, freed);
        while self.is_full(size) {
            if victims == Victims::Expired {
                return false;
            }
            let mut order: Vec<(bool, Timestamp, [u8; 32])> = shard
                .iter()
                .filter(|(_, s)| victims == Victims::Any || !s.returned)
                .map(|(k, s)| (s.returned, s.expires_at, *k))
                .collect();
            if order.is_empty() {
                return false;
            }
            let batch = (shard.len() / EVICT_FRACTION).clamp(1, order.len());
            order.select_nth_unstable(batch - 1);
            let mut freed = 0;
            for (_, _, key) in &order[..batch] {
                if let Some(stored) = shard.map.remove(key) {
                    freed += stored.size();
                }
            }
            self.inner.forget(batch, freed);
            *evicted += batch;
        }
        true
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
            let (expired, freed) = lock(shard).drop_expired(now);
            self.forget(expired, freed);
            removed += expired;
        }
        self.prune_indexes(now);
        removed
    }

    /// Drops index members whose session is gone, once they are older than the grace a write
    /// in flight may need between adding a member and storing its record.
    fn prune_indexes(&self, now: Timestamp) {
        let grace = now.as_millis().saturating_sub(PRUNE_GRACE_MILLIS);
        let mut indexes = self.indexes.lock().unwrap_or_else(|p| p.into_inner());
        indexes.retain(|_, members| {
            members.retain(|key, added| {
                added.as_millis() >= grace || {
                    let shard = lock(&self.shards[shard_of(&key.digest())]);
                    shard
                        .get(&key.digest())
                        .is_some_and(|stored| !stored.is_expired(now))
                }
            });
            !members.is_empty()
        });
    }

    fn indexes(&self) -> MutexGuard<'_, HashMap<StoreKey, HashMap<StoreKey, Timestamp>>> {
        self.indexes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `records` records of `bytes` bytes in all off the counts.
    fn forget(&self, records: usize, bytes: usize) {
        self.len.fetch_sub(records, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
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
            .field("max_bytes", &self.inner.max_bytes)
            .field("len", &self.len())
            .field("bytes", &self.bytes())
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

/// The shard of a raw digest: the same as [`shard_index`] of its hex key.
fn shard_of(digest: &[u8; 32]) -> usize {
    usize::from(digest[0]) % SHARDS
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
        match shard.map.get_mut(&digest) {
            Some(stored) if !stored.is_expired(now) => {
                stored.returned = true;
                Ok(Some(stored.to_record()))
            }
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
        match shard.map.get_mut(&digest) {
            Some(stored) if !stored.is_expired(now) => Ok(false),
            Some(stored) => {
                self.rewrite(stored, |stored| *stored = Stored::new(record));
                shard.note(record.expires_at);
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
    ) -> Result<bool, StoreError> {
        let now = Timestamp::now();
        let mut shard = self.shard(key);
        match shard.map.get_mut(&key.digest()) {
            Some(stored) if !stored.is_expired(now) => {
                self.rewrite(stored, |stored| stored.apply(record, mode));
                shard.note(record.expires_at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        let now = Timestamp::now();
        let mut shard = self.shard(key);
        match shard.map.get_mut(&key.digest()) {
            Some(stored) if !stored.is_expired(now) => {
                stored.expires_at = expires_at;
                shard.note(expires_at);
                Ok(true)
            }
            _ => Ok(false),
        }
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

    fn supports_index(&self) -> bool {
        true
    }

    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        _until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let name = entry.name();
        self.inner
            .indexes()
            .entry(name)
            .or_default()
            .insert(*key, Timestamp::now());
        Ok(())
    }

    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        let name = entry.name();
        let mut indexes = self.inner.indexes();
        if let Some(members) = indexes.get_mut(&name) {
            members.remove(key);
            if members.is_empty() {
                indexes.remove(&name);
            }
        }
        Ok(())
    }

    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        let indexes = self.inner.indexes();
        Ok(indexes
            .get(&entry.name())
            .map(|members| {
                members
                    .iter()
                    .map(|(key, added)| IndexMember {
                        key: *key,
                        added: *added,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// [`PRUNE_GRACE`](crate::index::PRUNE_GRACE) in milliseconds.
const PRUNE_GRACE_MILLIS: u64 = crate::index::PRUNE_GRACE.as_secs() * 1000;

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
            assert!(store.create(&key(), &expired).await.unwrap());
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

    /// Each shard skips its scan for expired records while its deadline bound says none can
    /// have expired; every write of a deadline (a save, a touch) must lower that bound, or a
    /// record whose deadline was shortened would be missed and a live session evicted in its
    /// place.
    #[tokio::test]
    async fn shortened_deadlines_are_still_found_when_making_room() {
        let store = MemoryStore::new().with_capacity(SHARDS * 4);
        let store = store.with_sweep_interval(Duration::from_secs(3600));
        let keys: Vec<StoreKey> = (0..SHARDS * 4).map(|_| key()).collect();
        for k in &keys {
            assert!(store.create(k, &live()).await.unwrap());
        }
        // Half of the sessions get a deadline a moment away, half of those by a save and
        // half by a touch; the other half stay live.
        let soon = Timestamp::now().saturating_add(Duration::from_millis(1));
        for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            if i % 4 == 0 {
                let mut write = live();
                write.expires_at = soon;
                assert!(store.save(k, &write, SaveMode::Merge).await.unwrap());
            } else {
                assert!(store.touch(k, soon).await.unwrap());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        // The store is full: new sessions take the expired ones' room, not the live ones'.
        for _ in 0..SHARDS {
            assert!(store.create(&key(), &live()).await.unwrap());
        }
        assert_eq!(store.evictions(), 0);
        for k in keys.iter().skip(1).step_by(2) {
            assert!(store.load(k).await.unwrap().is_some());
        }
    }

    fn record_of(bytes: usize) -> Record {
        let mut record = live();
        record
            .fields
            .insert(Arc::from("cart"), Arc::from("x".repeat(bytes)));
        record
    }

    #[tokio::test]
    async fn byte_budget_bounds_the_bytes_held() {
        let store = MemoryStore::new().with_max_bytes(1 << 20);
        for _ in 0..200 {
            assert!(store.create(&key(), &record_of(64 << 10)).await.unwrap());
        }
        assert!(store.bytes() <= 1 << 20, "bytes = {}", store.bytes());
        let held: usize = store
            .inner
            .shards
            .iter()
            .map(|s| lock(s).values().map(Stored::size).sum::<usize>())
            .sum();
        assert_eq!(held, store.bytes(), "the byte count matches the shards");
        assert!(store.evictions() > 0);
    }

    #[tokio::test]
    async fn a_flood_of_one_shot_sessions_evicts_itself_not_returning_users() {
        let store = MemoryStore::new().with_capacity(SHARDS * 32);
        // Real users: created, then back with their cookie (a load).
        let users: Vec<StoreKey> = (0..SHARDS * 8).map(|_| key()).collect();
        for user in &users {
            store.create(user, &live()).await.unwrap();
            assert!(store.load(user).await.unwrap().is_some());
        }
        // A flood of cookieless requests, each making a session nobody comes back to.
        for _ in 0..SHARDS * 500 {
            store.create(&key(), &live()).await.unwrap();
        }
        assert!(store.evictions() > 0);
        for user in &users {
            assert!(
                store.load(user).await.unwrap().is_some(),
                "a returning user's session was evicted by the flood"
            );
        }
    }

    #[tokio::test]
    async fn returning_sessions_are_evicted_when_nothing_else_is_left() {
        let store = MemoryStore::new().with_capacity(SHARDS);
        for _ in 0..SHARDS * 4 {
            let k = key();
            store.create(&k, &live()).await.unwrap();
            store.load(&k).await.unwrap();
        }
        assert!(store.len() <= SHARDS, "len = {}", store.len());
    }

    #[tokio::test]
    async fn save_and_touch_never_create() {
        let store = MemoryStore::new();
        let k = key();
        assert!(!store.save(&k, &live(), SaveMode::Merge).await.unwrap());
        assert!(!store.save(&k, &live(), SaveMode::Replace).await.unwrap());
        assert!(!store.touch(&k, Timestamp::now()).await.unwrap());
        assert!(store.is_empty());
        assert_eq!(store.bytes(), 0);
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
