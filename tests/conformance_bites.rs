//! The conformance suite catches broken stores: each deliberately broken store below fails
//! the check written for its flaw, and the same store without the flaw passes every check.
//! A check that a broken store passed would only be a claim.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use session_core::conformance::{self, Check};
use session_core::store::{IndexEntry, IndexMember, LocalLocks, SessionLock};
use session_core::{Record, SaveMode, Store, StoreError, StoreKey, Timestamp};

/// What is wrong with a [`FlawedStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
    /// None: the baseline, which passes the whole suite.
    None,
    /// `create` checks, then writes; a merge reads, then writes back: correct while calls
    /// run one after another, a data race when they run in parallel.
    Racy,
    /// `save` writes the fields but keeps the stored `created_at` and `expires_at`.
    KeepsOldTimes,
    /// `save` of an absent key creates the record.
    SavesCreate,
    /// `save` and `touch` write over a record whose deadline has passed.
    RevivesExpired,
    /// The lock is never taken over, whatever the lease.
    LockIgnoresLease,
    /// Adding a member again keeps its first `added` time.
    IndexAddKeepsOldTime,
    /// Removing a member empties its entry.
    IndexRemoveEmptiesEntry,
    /// Deleting a session also removes it from every entry.
    IndexFollowsDelete,
    /// An entry expires with the bound of its latest add, not the latest bound.
    IndexLastBoundWins,
    /// The purge removes members whose session is missing, however young.
    PurgeDropsFreshMembers,
    /// `load_many` answers in the order of the keys, sorted.
    LoadManySorted,
}

/// An index entry of a [`FlawedStore`]: its members and when each was added, and its bound.
#[derive(Clone, Default)]
struct Members {
    added: HashMap<StoreKey, Timestamp>,
    until: Option<Timestamp>,
}

/// An in-memory store with one chosen flaw.
struct FlawedStore {
    flaw: Flaw,
    records: Mutex<HashMap<StoreKey, Record>>,
    locks: LocalLocks,
    index: Mutex<HashMap<String, Members>>,
}

impl FlawedStore {
    fn shared(flaw: Flaw) -> Arc<dyn Store> {
        Arc::new(Self {
            flaw,
            records: Mutex::default(),
            locks: LocalLocks::new(),
            index: Mutex::default(),
        })
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<StoreKey, Record>> {
        self.records.lock().unwrap()
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<String, Members>> {
        self.index.lock().unwrap()
    }

    /// The record under `key` that a write may go over.
    fn writable(&self, key: &StoreKey) -> Option<Record> {
        let record = self.records().get(key).cloned()?;
        let live = !record.is_expired(Timestamp::now());
        (live || self.flaw == Flaw::RevivesExpired).then_some(record)
    }

    /// Between a read and the write that depends on it: nothing for a correct store (which
    /// holds its lock throughout), a pause for a racy one, as a network round trip would be.
    fn gap(&self) {
        if self.flaw == Flaw::Racy {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[async_trait]
impl Store for FlawedStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let records = self.records();
        Ok(records
            .get(key)
            .filter(|r| !r.is_expired(Timestamp::now()))
            .cloned())
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        if self.flaw == Flaw::Racy {
            let taken = self.load(key).await?.is_some();
            self.gap();
            if !taken {
                self.records().insert(*key, record.clone());
            }
            return Ok(!taken);
        }
        let mut records = self.records();
        if records
            .get(key)
            .is_some_and(|r| !r.is_expired(Timestamp::now()))
        {
            return Ok(false);
        }
        records.insert(*key, record.clone());
        Ok(true)
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        let mut stored = match self.writable(key) {
            Some(stored) => stored,
            None if self.flaw == Flaw::SavesCreate => {
                Record::new(record.created_at, record.expires_at)
            }
            None => return Ok(false),
        };
        if self.flaw != Flaw::Racy {
            // Read again under the lock: nothing runs between this read and the write.
            let mut records = self.records();
            if let Some(current) = records.get(key) {
                stored = current.clone();
            }
            write(&mut stored, record, mode, self.flaw);
            records.insert(*key, stored);
            return Ok(true);
        }
        self.gap();
        write(&mut stored, record, mode, self.flaw);
        self.records().insert(*key, stored);
        Ok(true)
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        let mut records = self.records();
        let now = Timestamp::now();
        match records.get_mut(key) {
            Some(r) if !r.is_expired(now) || self.flaw == Flaw::RevivesExpired => {
                r.expires_at = expires_at;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.records().remove(key);
        if self.flaw == Flaw::IndexFollowsDelete {
            for members in self.index().values_mut() {
                members.added.remove(key);
            }
        }
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let now = Timestamp::now();
        let mut records = self.records();
        let before = records.len();
        records.retain(|_, r| !r.is_expired(now));
        let removed = (before - records.len()) as u64;
        // Members of ended sessions go once older than a minute (or at once, when flawed).
        let grace = match self.flaw {
            Flaw::PurgeDropsFreshMembers => 0,
            _ => 60_000,
        };
        for members in self.index().values_mut() {
            members.added.retain(|key, added| {
                records.get(key).is_some_and(|r| !r.is_expired(now))
                    || added.as_millis() + grace > now.as_millis()
            });
        }
        Ok(removed)
    }

    fn supports_index(&self) -> bool {
        true
    }

    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let now = Timestamp::now();
        let update = |members: &mut Members, flaw: Flaw| {
            members.until = match (members.added.is_empty(), members.until, until, flaw) {
                (_, _, _, Flaw::IndexLastBoundWins) | (true, _, _, _) => until,
                (false, Some(bound), Some(until), _) => Some(bound.max(until)),
                (false, _, _, _) => None,
            };
            let keeps_old = flaw == Flaw::IndexAddKeepsOldTime;
            members
                .added
                .entry(*key)
                .and_modify(|added| *added = if keeps_old { *added } else { now })
                .or_insert(now);
        };
        if self.flaw == Flaw::Racy {
            // Read the entry, change it, write it back whole: adds in between are lost.
            let mut members = self
                .index()
                .get(entry.digest())
                .cloned()
                .unwrap_or_default();
            update(&mut members, self.flaw);
            self.gap();
            self.index().insert(entry.digest().to_owned(), members);
            return Ok(());
        }
        update(
            self.index().entry(entry.digest().to_owned()).or_default(),
            self.flaw,
        );
        Ok(())
    }

    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        if let Some(members) = self.index().get_mut(entry.digest()) {
            if self.flaw == Flaw::IndexRemoveEmptiesEntry {
                members.added.clear();
            } else {
                members.added.remove(key);
            }
        }
        Ok(())
    }

    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        let now = Timestamp::now();
        let index = self.index();
        let Some(members) = index.get(entry.digest()) else {
            return Ok(Vec::new());
        };
        // An entry past its bound has expired, as a store with native expiry drops it.
        if members.until.is_some_and(|until| until <= now) {
            return Ok(Vec::new());
        }
        Ok(members
            .added
            .iter()
            .map(|(key, added)| IndexMember {
                key: *key,
                added: *added,
            })
            .collect())
    }

    async fn load_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Record>>, StoreError> {
        let mut keys = keys.to_vec();
        if self.flaw == Flaw::LoadManySorted {
            keys.sort();
        }
        let mut records = Vec::with_capacity(keys.len());
        for key in &keys {
            records.push(self.load(key).await?);
        }
        Ok(records)
    }

    fn supports_locks(&self) -> bool {
        true
    }

    async fn lock(
        &self,
        key: &StoreKey,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        if self.flaw == Flaw::LockIgnoresLease {
            return Ok(self.locks.lock(key, wait).await);
        }
        Ok(LeasedLock::take(&self.locks, key, lease, wait).await)
    }
}

fn write(stored: &mut Record, write: &Record, mode: SaveMode, flaw: Flaw) {
    let times = (stored.created_at, stored.expires_at);
    stored.apply(write, mode);
    if flaw == Flaw::KeepsOldTimes {
        (stored.created_at, stored.expires_at) = times;
    }
}

/// An in-process lock that honours its lease, as a remote lock does: the guard is given back
/// by a timer when the lease runs out, whatever the holder does.
struct LeasedLock;

impl LeasedLock {
    async fn take(
        locks: &LocalLocks,
        key: &StoreKey,
        lease: Duration,
        wait: Duration,
    ) -> Option<SessionLock> {
        let held = Arc::new(tokio::sync::Mutex::new(locks.lock(key, wait).await?));
        let expiry = Arc::clone(&held);
        // The lease: after it, the lock is released whoever holds the handle.
        let timer = tokio::spawn(async move {
            tokio::time::sleep(lease).await;
            let lock = std::mem::replace(&mut *expiry.lock().await, SessionLock::new(Noop));
            let _ = lock.release().await;
        });
        Some(SessionLock::new(LeaseRelease { held, timer }))
    }
}

struct Noop;

#[async_trait]
impl session_core::store::Release for Noop {
    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}

struct LeaseRelease {
    held: Arc<tokio::sync::Mutex<SessionLock>>,
    timer: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl session_core::store::Release for LeaseRelease {
    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        self.timer.abort();
        let lock = std::mem::replace(&mut *self.held.lock().await, SessionLock::new(Noop));
        lock.release().await
    }
}

/// The named checks, from the suite's own list.
fn named<const N: usize>(names: [&str; N]) -> [(&'static str, Check); N] {
    let all = conformance::checks();
    names.map(|name| {
        *all.iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no check {name}"))
    })
}

/// Whether `check` fails (panics) on `store`.
async fn fails(store: Arc<dyn Store>, check: Check) -> bool {
    tokio::spawn(async move { check(&store).await })
        .await
        .is_err_and(|e| e.is_panic())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_flawless_store_passes_every_check() {
    let every = conformance::checks();
    let runs = every.into_iter().map(|(name, check)| async move {
        (name, fails(FlawedStore::shared(Flaw::None), check).await)
    });
    let failed: Vec<&str> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .filter_map(|(name, failed)| failed.then_some(name))
        .collect();
    assert!(failed.is_empty(), "the baseline store failed {failed:?}");
}

async fn assert_caught(flaw: Flaw, check: (&str, Check)) {
    // A race may be missed once; it must not be missed every time.
    for _ in 0..3 {
        if fails(FlawedStore::shared(flaw), check.1).await {
            return;
        }
    }
    panic!("a store with the flaw {flaw:?} passed `{}`", check.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_racy_create_fails_create_is_atomic() {
    let [check] = named(["create_is_atomic"]);
    assert_caught(Flaw::Racy, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_racy_merge_fails_the_concurrent_writers_check() {
    let [check] = named(["concurrent_writers_on_different_fields_lose_nothing"]);
    assert_caught(Flaw::Racy, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_save_that_keeps_the_old_times_fails_save_stores_both_times() {
    let [check] = named(["save_stores_both_times"]);
    assert_caught(Flaw::KeepsOldTimes, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_save_that_creates_fails_saves_never_create() {
    let [check] = named(["saves_never_create"]);
    assert_caught(Flaw::SavesCreate, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_over_expired_records_fail_expired_records_are_not_revived() {
    let [check] = named(["expired_records_are_not_revived"]);
    assert_caught(Flaw::RevivesExpired, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_without_a_lease_fails_the_lease_check() {
    let [check] = named(["a_holder_that_stalls_past_its_lease_loses_the_lock"]);
    assert_caught(Flaw::LockIgnoresLease, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_racy_index_add_fails_the_concurrent_adds_check() {
    let [check] = named(["concurrent_index_adds_to_one_entry_are_all_kept"]);
    assert_caught(Flaw::Racy, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_add_that_keeps_the_old_time_fails_the_refresh_check() {
    let [check] = named(["index_add_is_idempotent_and_refreshes_added"]);
    assert_caught(Flaw::IndexAddKeepsOldTime, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remove_that_empties_the_entry_fails_the_remove_checks() {
    for check in named([
        "index_remove_leaves_the_other_members",
        "index_add_list_and_remove_round_trip",
    ]) {
        assert_caught(Flaw::IndexRemoveEmptiesEntry, check).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_index_tied_to_the_records_fails_the_independence_check() {
    let [check] = named(["index_members_are_independent_of_session_records"]);
    assert_caught(Flaw::IndexFollowsDelete, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_cut_short_by_a_later_bound_fails_the_bound_check() {
    let [check] = named(["index_entries_last_until_their_bound"]);
    assert_caught(Flaw::IndexLastBoundWins, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_without_grace_fails_the_fresh_members_check() {
    let [check] = named(["purge_keeps_fresh_index_members"]);
    assert_caught(Flaw::PurgeDropsFreshMembers, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_many_out_of_order_fails_the_order_check() {
    let [check] = named(["load_many_returns_records_in_order"]);
    assert_caught(Flaw::LoadManySorted, check).await;
}
