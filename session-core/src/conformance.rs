//! The store conformance suite: the same tests for every [`Store`].
//!
//! Every store in this crate runs it, and so can yours. Each check is an async function
//! taking the store; [`store_conformance_tests!`](crate::store_conformance_tests) turns them
//! into `#[tokio::test]`s for a store made by an async expression that returns
//! `Option<impl Store>` (`None` skips, for a server that is not there):
//!
//! ```no_run
//! // In tests/my_store.rs, with `MyStore::connect()` in place of the memory store:
//! use session_core::store::MemoryStore;
//!
//! session_core::store_conformance_tests!(async { Some(MemoryStore::new()) });
//! # fn main() {}
//! ```
//!
//! The checks use fresh random keys, so they can share one database and run in parallel.
//! Each takes the store as `&Arc<dyn Store>`: the concurrency checks spawn their writers as
//! tasks that start together on a multi-thread runtime, so a store that is only atomic while
//! nothing else runs (a data race, a create that checks then writes) fails them.
//!
//! The index checks (`index_*`) run on a store that
//! [`supports_index`](Store::supports_index); on one that does not, they check that it
//! refuses the index calls with [`StoreError::Unsupported`].
//!
//! A store whose per-session lock lives in the process, with no lease, writes
//! `store_conformance_tests!(in_process_locks: ...)` to leave out the lease check (see
//! [`a_holder_that_stalls_past_its_lease_loses_the_lock`]). [`checks`] lists every check by
//! name, to run them by hand.
//!
//! [`FaultStore`] wraps any store to inject errors, delays and hangs into chosen calls.

use std::sync::Arc;
use std::time::Duration;

use crate::id::{SessionId, StoreKey};
use crate::record::{Fields, Record, SaveMode, Timestamp};
use crate::store::{IndexEntry, IndexMember, Store, StoreError};

/// A fresh random store key.
pub fn key() -> StoreKey {
    SessionId::generate().expect("OS randomness").store_key()
}

/// A record with `fields`, created now and live for `ttl`.
pub fn record(fields: &[(&str, &str)], ttl: Duration) -> Record {
    let now = Timestamp::now();
    Record {
        fields: fields_of(fields),
        created_at: now,
        expires_at: now.saturating_add(ttl),
    }
}

fn fields_of(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (Arc::from(*k), Arc::from(*v)))
        .collect()
}

const MINUTE: Duration = Duration::from_secs(60);

fn assert_close(actual: Timestamp, expected: Timestamp, what: &str) {
    let gap = if actual > expected {
        actual.saturating_since(expected)
    } else {
        expected.saturating_since(actual)
    };
    assert!(
        gap <= Duration::from_secs(1),
        "{what}: stored {actual:?}, expected about {expected:?}"
    );
}

/// A created record loads back with its fields and times; absent keys load as `None`.
pub async fn round_trip(store: &Arc<dyn Store>) {
    let key = key();
    assert!(store.load(&key).await.unwrap().is_none());
    let written = record(&[("views", "3"), ("user", "{\"name\":\"ada\"}")], MINUTE);
    assert!(store.create(&key, &written).await.unwrap());
    let loaded = store
        .load(&key)
        .await
        .unwrap()
        .expect("created record loads");
    assert_eq!(loaded.fields, written.fields);
    assert_close(loaded.created_at, written.created_at, "created_at");
    assert_close(loaded.expires_at, written.expires_at, "expires_at");
}

/// Only `create` creates: `save` (either mode) and `touch` of an absent key, or of a key
/// whose record was deleted, write nothing and report `false`. This is what stops a request
/// that loaded a session before a logout from bringing it back by saving after.
pub async fn saves_never_create(store: &Arc<dyn Store>) {
    let later = Timestamp::now().saturating_add(MINUTE);
    for mode in [SaveMode::Merge, SaveMode::Replace] {
        let absent = key();
        let written = record(&[("a", "1")], MINUTE);
        assert!(
            !store.save(&absent, &written, mode).await.unwrap(),
            "{mode:?} of an absent key reported a write"
        );
        assert!(
            store.load(&absent).await.unwrap().is_none(),
            "{mode:?} of an absent key created a record"
        );

        let deleted = key();
        assert!(store.create(&deleted, &written).await.unwrap());
        store.delete(&deleted).await.unwrap();
        let change = record(&[("a", "2"), ("b", "3")], MINUTE);
        assert!(
            !store.save(&deleted, &change, mode).await.unwrap(),
            "{mode:?} of a deleted key reported a write"
        );
        assert!(
            store.load(&deleted).await.unwrap().is_none(),
            "{mode:?} brought a deleted record back"
        );
    }
    let absent = key();
    assert!(!store.touch(&absent, later).await.unwrap());
    assert!(store.load(&absent).await.unwrap().is_none());
}

/// A save or touch of a record whose deadline has passed (purged or not) writes nothing and
/// reports `false`: an expired session stays ended, its fields never come back.
pub async fn expired_records_are_not_revived(store: &Arc<dyn Store>) {
    let short = Duration::from_millis(1200);
    let merged = key();
    let replaced = key();
    let touched = key();
    for key in [&merged, &replaced, &touched] {
        assert!(store
            .create(key, &record(&[("old", "1")], short))
            .await
            .unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let change = record(&[("new", "2")], MINUTE);
    assert!(!store.save(&merged, &change, SaveMode::Merge).await.unwrap());
    assert!(!store
        .save(&replaced, &change, SaveMode::Replace)
        .await
        .unwrap());
    let later = Timestamp::now().saturating_add(MINUTE);
    assert!(!store.touch(&touched, later).await.unwrap());
    for key in [&merged, &replaced, &touched] {
        assert!(
            store.load(key).await.unwrap().is_none(),
            "an expired record came back"
        );
    }
    // The key is free for a create, which starts from nothing.
    assert!(store.create(&merged, &change).await.unwrap());
    let loaded = store.load(&merged).await.unwrap().unwrap();
    assert_eq!(loaded.fields, fields_of(&[("new", "2")]));
}

/// `save`, in both modes, stores the `created_at` and `expires_at` it is given.
pub async fn save_stores_both_times(store: &Arc<dyn Store>) {
    for mode in [SaveMode::Merge, SaveMode::Replace] {
        let key = key();
        assert!(store
            .create(&key, &record(&[("a", "1")], MINUTE))
            .await
            .unwrap());
        let now = Timestamp::now();
        let write = Record {
            fields: fields_of(&[("a", "2")]),
            created_at: Timestamp::from_millis(now.as_millis() - 3_600_000),
            expires_at: now.saturating_add(Duration::from_secs(7200)),
        };
        assert!(store.save(&key, &write, mode).await.unwrap(), "{mode:?}");
        let loaded = store.load(&key).await.unwrap().unwrap();
        assert_close(loaded.created_at, write.created_at, "created_at after save");
        assert_close(loaded.expires_at, write.expires_at, "expires_at after save");
    }
}

/// Deleting removes the record; deleting an absent record is not an error.
pub async fn delete_removes(store: &Arc<dyn Store>) {
    let key = key();
    store
        .create(&key, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap();
    store.delete(&key).await.unwrap();
    assert!(store.load(&key).await.unwrap().is_none());
    store.delete(&key).await.unwrap();
}

/// `create` on a key with a live record reports a collision and changes nothing.
pub async fn create_detects_collisions(store: &Arc<dyn Store>) {
    let key = key();
    let first = record(&[("owner", "\"first\"")], MINUTE);
    assert!(store.create(&key, &first).await.unwrap());
    let second = record(&[("owner", "\"second\"")], MINUTE);
    assert!(!store.create(&key, &second).await.unwrap());
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(&*loaded.fields["owner"], "\"first\"");
}

/// Concurrent `create`s of one key, started together on several threads: exactly one wins,
/// and the record holds the winner's value.
pub async fn create_is_atomic(store: &Arc<dyn Store>) {
    let key = key();
    let results = all_at_once(store, 16, move |store, i| async move {
        let rec = record(&[("winner", i.to_string().as_str())], MINUTE);
        (i, store.create(&key, &rec).await.unwrap())
    })
    .await;
    let winners: Vec<usize> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
    assert_eq!(winners.len(), 1, "winners of one key: {winners:?}");
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(&*loaded.fields["winner"], winners[0].to_string());
}

/// Runs `task(store, i)` for `i` in `0..count` as spawned tasks that wait on one barrier, so
/// they start together and, on a multi-thread runtime, run in parallel: a store that is only
/// atomic while nothing else runs between its awaits fails the checks that use this.
async fn all_at_once<T, F, Fut>(store: &Arc<dyn Store>, count: usize, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Arc<dyn Store>, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(count));
    let handles: Vec<_> = (0..count)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let run = task(Arc::clone(store), i);
            tokio::spawn(async move {
                barrier.wait().await;
                run.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(count);
    for handle in handles {
        match handle.await {
            Ok(result) => results.push(result),
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    results
}

/// A merge writes only the fields it names and keeps every other stored field, including
/// fields no struct knows any more.
pub async fn merge_writes_only_given_fields(store: &Arc<dyn Store>) {
    let key = key();
    let base = record(
        &[("views", "1"), ("cart", "[]"), ("legacy", "\"keep me\"")],
        MINUTE,
    );
    store.create(&key, &base).await.unwrap();
    let change = record(&[("views", "2")], MINUTE);
    assert!(store.save(&key, &change, SaveMode::Merge).await.unwrap());
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        loaded.fields,
        fields_of(&[("views", "2"), ("cart", "[]"), ("legacy", "\"keep me\"")])
    );
}

/// A replace removes the fields it does not name.
pub async fn replace_writes_the_whole_record(store: &Arc<dyn Store>) {
    let key = key();
    store
        .create(&key, &record(&[("a", "1"), ("b", "2")], MINUTE))
        .await
        .unwrap();
    assert!(store
        .save(&key, &record(&[("c", "3")], MINUTE), SaveMode::Replace)
        .await
        .unwrap());
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(loaded.fields, fields_of(&[("c", "3")]));
}

/// A record whose deadline has passed is never loaded, before any purge.
pub async fn expired_records_are_invisible(store: &Arc<dyn Store>) {
    let key = key();
    let short = record(&[("a", "1")], Duration::from_millis(1500));
    store.create(&key, &short).await.unwrap();
    assert!(store.load(&key).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(store.load(&key).await.unwrap().is_none());
    // Its key is free again.
    assert!(store
        .create(&key, &record(&[("b", "2")], MINUTE))
        .await
        .unwrap());
}

/// `touch` moves the deadline and nothing else; touching an absent key creates nothing.
pub async fn touch_moves_only_the_deadline(store: &Arc<dyn Store>) {
    let key = key();
    let short = record(&[("a", "1")], Duration::from_secs(2));
    store.create(&key, &short).await.unwrap();
    let later = Timestamp::now().saturating_add(Duration::from_secs(120));
    assert!(store.touch(&key, later).await.unwrap());
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(loaded.fields, short.fields);
    assert_close(loaded.expires_at, later, "touched expires_at");
    assert_close(
        loaded.created_at,
        short.created_at,
        "created_at after touch",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        store.load(&key).await.unwrap().is_some(),
        "touched record outlives its old deadline"
    );

    let absent = self::key();
    assert!(!store.touch(&absent, later).await.unwrap());
    assert!(store.load(&absent).await.unwrap().is_none());
}

/// `purge_expired` removes expired records and keeps live ones. Stores with native expiry
/// may report 0; their expired records must be gone anyway.
pub async fn purge_removes_only_expired(store: &Arc<dyn Store>) {
    let live = key();
    store
        .create(&live, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap();
    let dead: Vec<StoreKey> = (0..5).map(|_| key()).collect();
    for key in &dead {
        store
            .create(key, &record(&[("a", "1")], Duration::from_millis(1200)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1800)).await;
    store.purge_expired().await.unwrap();
    assert!(store.load(&live).await.unwrap().is_some());
    for key in &dead {
        assert!(store.load(key).await.unwrap().is_none());
    }
}

/// 100 merges of different fields into one record, started together on several threads:
/// none is lost.
pub async fn concurrent_writers_on_different_fields_lose_nothing(store: &Arc<dyn Store>) {
    let key = key();
    store
        .create(&key, &record(&[("base", "0")], MINUTE))
        .await
        .unwrap();
    all_at_once(store, 100, move |store, i| async move {
        let rec = record(
            &[(format!("f{i}").as_str(), i.to_string().as_str())],
            MINUTE,
        );
        assert!(store.save(&key, &rec, SaveMode::Merge).await.unwrap());
    })
    .await;
    let loaded = store.load(&key).await.unwrap().unwrap();
    let lost: Vec<usize> = (0..100)
        .filter(|i| {
            loaded.fields.get(format!("f{i}").as_str()).map(|v| &**v) != Some(&*i.to_string())
        })
        .collect();
    assert!(
        lost.is_empty(),
        "merges lost: {} of 100 ({lost:?})",
        lost.len()
    );
    assert_eq!(
        loaded.fields.len(),
        101,
        "fields kept: {}",
        loaded.fields.len()
    );
}

/// A 1 MB session round-trips intact.
pub async fn large_records_round_trip(store: &Arc<dyn Store>) {
    let key = key();
    let big = format!("\"{}\"", "x".repeat(1 << 20));
    let written = record(&[("blob", big.as_str()), ("n", "1")], MINUTE);
    store.create(&key, &written).await.unwrap();
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(loaded.fields, written.fields);
    store
        .save(&key, &record(&[("n", "2")], MINUTE), SaveMode::Merge)
        .await
        .unwrap();
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(loaded.fields["blob"].len(), big.len());
}

/// Unicode field names and values, quotes and backslashes survive.
pub async fn unicode_round_trips(store: &Arc<dyn Store>) {
    let key = key();
    let written = record(
        &[
            ("名前", "\"Dhruv 🧠 \\\"quoted\\\" \\\\ back\""),
            ("emoji🍪", "[\"ü\",\"\\u0000\",\"𝄞\"]"),
        ],
        MINUTE,
    );
    store.create(&key, &written).await.unwrap();
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(loaded.fields, written.fields);
}

/// Records with no fields are stored and loaded.
pub async fn empty_records_round_trip(store: &Arc<dyn Store>) {
    let key = key();
    store.create(&key, &record(&[], MINUTE)).await.unwrap();
    let loaded = store.load(&key).await.unwrap().expect("empty record loads");
    assert!(loaded.fields.is_empty());
}

/// The per-session lock excludes a second holder until released, and a holder that vanishes
/// with its request (its task is cancelled, so its [`SessionLock`](crate::store::SessionLock)
/// is dropped unreleased) does not keep it: the next request gets it within the lease. A store
/// without locks must say so and refuse the call.
pub async fn lock_is_exclusive_and_freed_when_its_holder_vanishes(store: &Arc<dyn Store>) {
    let key = key();
    let lease = Duration::from_millis(800);
    if !store.supports_locks() {
        let refused = store.lock(&key, lease, Duration::ZERO).await;
        assert!(
            matches!(refused, Err(StoreError::Unsupported(_))),
            "a store without locks answered {refused:?}"
        );
        return;
    }
    let first = store
        .lock(&key, lease, Duration::ZERO)
        .await
        .unwrap()
        .expect("a free lock is taken at once");
    assert!(held(store, &key).await, "a second holder got a held lock");
    first.release().await.unwrap();

    let (taken, is_taken) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn({
        let store = Arc::clone(store);
        async move {
            let lock = store.lock(&key, lease, Duration::ZERO).await.unwrap();
            let _ = taken.send(lock.is_some());
            std::future::pending::<()>().await;
            drop(lock);
        }
    });
    assert!(is_taken.await.unwrap(), "the released lock is free again");
    holder.abort();
    let _ = holder.await;
    let successor = store
        .lock(&key, lease, lease + Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        successor.is_some(),
        "the vanished holder kept the lock past its lease"
    );
}

/// Whether the lock of `key` is held by someone else: a try for 100 ms fails. A try that
/// succeeds is released at once.
async fn held(store: &Arc<dyn Store>, key: &StoreKey) -> bool {
    let lease = Duration::from_secs(5);
    match store
        .lock(key, lease, Duration::from_millis(100))
        .await
        .unwrap()
    {
        Some(lock) => {
            lock.release().await.unwrap();
            false
        }
        None => true,
    }
}

/// A holder that keeps the lock past its lease without releasing it (a process that hangs or
/// died while holding it) loses it: another holder takes it once the lease runs out, not
/// before, and the stalled holder's late release does not free its successor's lock.
///
/// Only for locks that outlive their holder's process (Redis, PostgreSQL, …). An in-process
/// lock such as [`LocalLocks`](crate::store::LocalLocks) has no lease to test: its holder cannot
/// vanish without dropping its guard (checked by
/// [`lock_is_exclusive_and_freed_when_its_holder_vanishes`]), and a process that dies takes its
/// locks with it. Such stores use the `in_process_locks` form of the macro, which leaves this
/// check out.
pub async fn a_holder_that_stalls_past_its_lease_loses_the_lock(store: &Arc<dyn Store>) {
    if !store.supports_locks() {
        return;
    }
    let key = key();
    let lease = Duration::from_millis(600);
    let started = std::time::Instant::now();
    let stalled = store
        .lock(&key, lease, Duration::ZERO)
        .await
        .unwrap()
        .expect("a free lock is taken at once");
    assert!(held(store, &key).await, "the lock is held within its lease");
    let successor = store
        .lock(&key, Duration::from_secs(30), Duration::from_secs(3))
        .await
        .unwrap()
        .expect("the lease runs out and the lock is taken over");
    assert!(
        started.elapsed() >= lease - Duration::from_millis(100),
        "taken over after {:?}, within the {lease:?} lease",
        started.elapsed()
    );
    stalled.release().await.unwrap();
    assert!(
        held(store, &key).await,
        "the stalled holder's release freed the successor's lock"
    );
    successor.release().await.unwrap();
    assert!(
        !held(store, &key).await,
        "the lock stayed held after its holder released it"
    );
}

/// A fresh index entry: a random value of field `user`, so runs sharing a database never
/// see each other's members.
fn entry() -> IndexEntry {
    IndexEntry::new("user", &format!("\"{}\"", key()))
}

/// Whether the index checks apply: `true` for a store that keeps indexes. A store that does
/// not must refuse every index call with [`StoreError::Unsupported`].
async fn keeps_indexes(store: &Arc<dyn Store>) -> bool {
    if store.supports_index() {
        return true;
    }
    let (entry, key) = (entry(), key());
    let refused = [
        store.index_add(&entry, &key, None).await.err(),
        store.index_remove(&entry, &key).await.err(),
        store.index_members(&entry).await.err(),
    ];
    for answer in refused {
        assert!(
            matches!(answer, Some(StoreError::Unsupported(_))),
            "a store without indexes answered {answer:?}"
        );
    }
    false
}

/// The members of `entry`, sorted by key.
async fn members(store: &Arc<dyn Store>, entry: &IndexEntry) -> Vec<IndexMember> {
    let mut members = store.index_members(entry).await.unwrap();
    members.sort_by_key(|member| member.key);
    members
}

/// The keys of `entry`'s members, sorted.
async fn member_keys(store: &Arc<dyn Store>, entry: &IndexEntry) -> Vec<StoreKey> {
    members(store, entry)
        .await
        .into_iter()
        .map(|member| member.key)
        .collect()
}

fn sorted(mut keys: Vec<StoreKey>) -> Vec<StoreKey> {
    keys.sort();
    keys
}

/// Added members are listed with the time they were added; removed ones are not; an entry
/// never written has no members.
pub async fn index_add_list_and_remove_round_trip(store: &Arc<dyn Store>) {
    if !keeps_indexes(store).await {
        return;
    }
    let entry = entry();
    assert!(store.index_members(&entry).await.unwrap().is_empty());
    let (first, second) = (key(), key());
    let before = Timestamp::now();
    store.index_add(&entry, &first, None).await.unwrap();
    store.index_add(&entry, &second, None).await.unwrap();
    let listed = members(store, &entry).await;
    assert_eq!(
        listed.iter().map(|m| m.key).collect::<Vec<_>>(),
        sorted(vec![first, second])
    );
    for member in &listed {
        assert_close(member.added, before, "added");
    }
    store.index_remove(&entry, &first).await.unwrap();
    assert_eq!(member_keys(store, &entry).await, vec![second]);
    store.index_remove(&entry, &second).await.unwrap();
    assert!(store.index_members(&entry).await.unwrap().is_empty());
}

/// Adding a member twice keeps one member and moves its `added` time forward.
pub async fn index_add_is_idempotent_and_refreshes_added(store: &Arc<dyn Store>) {
    if !keeps_indexes(store).await {
        return;
    }
    let (entry, member) = (entry(), key());
    store.index_add(&entry, &member, None).await.unwrap();
    let first = members(store, &entry).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.index_add(&entry, &member, None).await.unwrap();
    let second = members(store, &entry).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(second.len(), 1, "adding twice made {second:?}");
    assert!(
        second[0].added > first[0].added,
        "a second add did not refresh `added`: {:?} then {:?}",
        first[0].added,
        second[0].added
    );
}

/// Entries are independent: a key in two entries is removed from one only, and each lists
/// only its own members.
pub async fn index_entries_are_independent(store: &Arc<dyn Store>) {
    if !keeps_indexes(store).await {
        return;
    }
    let (one, two) = (entry(), entry());
    let (shared, only_one, only_two) = (key(), key(), key());
    for (entry, key) in [
        (&one, &shared),
        (&two, &shared),
        (&one, &only_one),
        (&two, &only_two),
    ] {
        store.index_add(entry, key, None).await.unwrap();
    }
    assert_eq!(
        member_keys(store, &one).await,
        sorted(vec![shared, only_one])
    );
    assert_eq!(
        member_keys(store, &two).await,
        sorted(vec![shared, only_two])
    );
    store.index_remove(&one, &shared).await.unwrap();
    assert_eq!(member_keys(store, &one).await, vec![only_one]);
    assert_eq!(
        member_keys(store, &two).await,
        sorted(vec![shared, only_two])
    );
}

/// Removing one member leaves every other; removing a member that is not there (from an
/// entry that has members, or one that has none) is not an error and removes nothing.
pub async fn index_remove_leaves_the_other_members(store: &Arc<dyn Store>) {
    if !keeps_indexes(store).await {
        return;
    }
    let entry = entry();
    let keys: Vec<StoreKey> = (0..5).map(|_| key()).collect();
    for key in &keys {
        store.index_add(&entry, key, None).await.unwrap();
    }
    store.index_remove(&entry, &key()).await.unwrap();
    store.index_remove(&self::entry(), &keys[0]).await.unwrap();
    assert_eq!(member_keys(store, &entry).await, sorted(keys.clone()));
    store.index_remove(&entry, &keys[2]).await.unwrap();
    store.index_remove(&entry, &keys[2]).await.unwrap();
    let left: Vec<StoreKey> = keys.iter().copied().filter(|k| *k != keys[2]).collect();
    assert_eq!(member_keys(store, &entry).await, sorted(left));
}

/// 40 adds of different keys to one entry, started together on several threads: none is
/// lost (a store that reads the entry, adds one member and writes it back without a
/// condition loses most of them).
pub async fn concurrent_index_adds_to_one_entry_are_all_kept(store: &Arc<dyn Store>) {
    if !keeps_indexes(store).await {
        return;
    }
    let entry = entry();
    let keys: Vec<StoreKey> = (0..40).map(|_| key()).collect();
    let added = keys.clone();
    let entry_for_tasks = entry.clone();
    all_at_once(store, keys.len(), move |store, i| {
        let (entry, key) = (entry_for_tasks.clone(), added[i]);
        async move { store.index_add(&entry, &key, None).await.unwrap() }
    })
    .await;
    let listed = member_keys(store, &entry).await;
    let lost: Vec<&StoreKey> = keys.iter().filter(|k| !listed.contains(k)).collect();
    assert!(lost.is_empty(), "adds lost: {} of 40", lost.len());
    assert_eq!(listed.len(), keys.len());
}

/// The index and the sessions are separate: deleting a session (or its expiry) leaves its
/// members listed, for the layer to remove; removing a member leaves the session.
pub async fn index_members_are_independent_of_session_records(store: &Arc<dyn Store>) {
    if !keeps_indexes(store).await {
        return;
    }
    let entry = entry();
    let (deleted, kept) = (key(), key());
    for key in [&deleted, &kept] {
        assert!(store
            .create(key, &record(&[("user", entry.value())], MINUTE))
            .await
            .unwrap());
        store.index_add(&entry, key, None).await.unwrap();
    }
    store.delete(&deleted).await.unwrap();
    assert_eq!(
        member_keys(store, &entry).await,
        sorted(vec![deleted, kept])
    );
    store.index_remove(&entry, &kept).await.unwrap();
    assert!(store.load(&kept).await.unwrap().is_some());
}

/// `until` bounds when a store may drop an entry, never earlier: members added with a bound
/// a few seconds away are there until it; a later add with a bound in the past (or none)
/// does not cut the earlier members' time short.
pub async fn index_entries_last_until_their_bound(store: &Arc<dyn Store>) {
    if !keeps_indexes(store).await {
        return;
    }
    let now = Timestamp::now();
    let soon = now.saturating_add(Duration::from_secs(4));
    let past = Timestamp::from_millis(now.as_millis() - 5_000);
    let (bounded, unbounded) = (entry(), entry());
    let (first, late, open) = (key(), key(), key());
    store.index_add(&bounded, &first, Some(soon)).await.unwrap();
    // A bound in the past is accepted; that member may go at once, the first may not.
    store.index_add(&bounded, &late, Some(past)).await.unwrap();
    store
        .index_add(
            &unbounded,
            &first,
            Some(now.saturating_add(Duration::from_millis(1500))),
        )
        .await
        .unwrap();
    store.index_add(&unbounded, &open, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        member_keys(store, &bounded).await.contains(&first),
        "a member was dropped before its bound"
    );
    assert!(
        member_keys(store, &unbounded).await.contains(&open),
        "a member added without a bound was dropped"
    );
    // Nothing else appeared.
    for listed in member_keys(store, &bounded).await {
        assert!(listed == first || listed == late, "{listed:?}");
    }
}

/// A purge keeps fresh members even when their session is missing or expired: a member is
/// added before its record is stored, so a write in flight must not lose it. (Removing
/// members of ended sessions once they are older than the grace, a minute, cannot be tested
/// through the trait, which cannot age them: stores test that on their own.)
pub async fn purge_keeps_fresh_index_members(store: &Arc<dyn Store>) {
    if !keeps_indexes(store).await {
        return;
    }
    let entry = entry();
    let (missing, expired, live) = (key(), key(), key());
    assert!(store
        .create(&expired, &record(&[], Duration::from_millis(300)))
        .await
        .unwrap());
    assert!(store.create(&live, &record(&[], MINUTE)).await.unwrap());
    for key in [&missing, &expired, &live] {
        store.index_add(&entry, key, None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    store.purge_expired().await.unwrap();
    assert_eq!(
        member_keys(store, &entry).await,
        sorted(vec![missing, expired, live]),
        "the purge removed a member added within the grace"
    );
}

/// `load_many` answers in the order asked, the same record as `load` for each live key and
/// `None` for missing, deleted and expired ones, duplicates included, across more keys than
/// any store loads in one batch.
pub async fn load_many_returns_records_in_order(store: &Arc<dyn Store>) {
    assert!(store.load_many(&[]).await.unwrap().is_empty());
    let (expired, deleted) = (key(), key());
    assert!(store
        .create(&expired, &record(&[("a", "1")], Duration::from_millis(300)))
        .await
        .unwrap());
    assert!(store
        .create(&deleted, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap());
    store.delete(&deleted).await.unwrap();
    let mut keys: Vec<StoreKey> = (0..600).map(|_| key()).collect();
    let mut written = std::collections::HashMap::new();
    for (i, key) in keys.iter().enumerate().step_by(7) {
        let rec = record(&[("n", i.to_string().as_str())], MINUTE);
        assert!(store.create(key, &rec).await.unwrap());
        written.insert(*key, rec);
    }
    keys.extend([expired, deleted, keys[0], keys[7]]);
    keys.swap(3, 600);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = store.load_many(&keys).await.unwrap();
    assert_eq!(loaded.len(), keys.len());
    for (key, loaded) in keys.iter().zip(&loaded) {
        match (written.get(key), loaded) {
            (Some(rec), Some(loaded)) => {
                assert_eq!(loaded.fields, rec.fields, "{key:?}");
                assert_close(loaded.expires_at, rec.expires_at, "expires_at");
            }
            (None, None) => {}
            (expected, got) => panic!(
                "{key:?}: expected {}, got {}",
                if expected.is_some() {
                    "a record"
                } else {
                    "None"
                },
                if got.is_some() { "a record" } else { "None" }
            ),
        }
    }
}

/// Generates one `#[tokio::test]` per conformance check for the store made by `$make`, an
/// expression evaluating to a future of `Option<impl Store>` (`None` skips the test).
///
/// A store whose lock lives in the process (no lease: see
/// [`a_holder_that_stalls_past_its_lease_loses_the_lock`](crate::conformance::a_holder_that_stalls_past_its_lease_loses_the_lock))
/// uses `store_conformance_tests!(in_process_locks: $make)`, which runs every other check.
#[macro_export]
macro_rules! store_conformance_tests {
    (in_process_locks: $make:expr) => {
        $crate::__with_conformance_checks!(store_conformance_tests!(@tests $make;));
    };
    ($make:expr) => {
        $crate::store_conformance_tests!(in_process_locks: $make);
        $crate::store_conformance_tests!(@tests $make;
            a_holder_that_stalls_past_its_lease_loses_the_lock,
        );
    };
    (@tests $make:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some(store) = $make.await {
                    let store: ::std::sync::Arc<dyn $crate::store::Store> =
                        ::std::sync::Arc::new(store);
                    $crate::conformance::$name(&store).await;
                }
            }
        )*
    };
}

/// The one list of checks (all but the lease check, which in-process locks skip): calls
/// `$crate::$callback!(PREFIX name, name, ...,)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_conformance_checks {
    ($callback:ident ! ($($prefix:tt)*)) => {
        $crate::$callback! { $($prefix)*
            round_trip,
            saves_never_create,
            expired_records_are_not_revived,
            save_stores_both_times,
            delete_removes,
            create_detects_collisions,
            create_is_atomic,
            merge_writes_only_given_fields,
            replace_writes_the_whole_record,
            expired_records_are_invisible,
            touch_moves_only_the_deadline,
            purge_removes_only_expired,
            concurrent_writers_on_different_fields_lose_nothing,
            large_records_round_trip,
            unicode_round_trips,
            empty_records_round_trip,
            lock_is_exclusive_and_freed_when_its_holder_vanishes,
            index_add_list_and_remove_round_trip,
            index_add_is_idempotent_and_refreshes_added,
            index_entries_are_independent,
            index_remove_leaves_the_other_members,
            concurrent_index_adds_to_one_entry_are_all_kept,
            index_members_are_independent_of_session_records,
            index_entries_last_until_their_bound,
            purge_keeps_fresh_index_members,
            load_many_returns_records_in_order,
        }
    };
}

/// Builds [`checks`]' list from the names.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_check_list {
    ($($name:ident,)*) => {
        ::std::vec![$((
            ::std::stringify!($name),
            (|store| ::std::boxed::Box::pin($crate::conformance::$name(store)))
                as $crate::conformance::Check,
        )),*]
    };
}

/// A conformance check, as [`checks`] lists it.
pub type Check = for<'a> fn(
    &'a Arc<dyn Store>,
)
    -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Every check with its name, the lease check last: for running the suite by hand, for
/// example against a store that must fail some of it.
pub fn checks() -> Vec<(&'static str, Check)> {
    let mut checks = crate::__with_conformance_checks!(__conformance_check_list!());
    checks.push((
        "a_holder_that_stalls_past_its_lease_loses_the_lock",
        |store| Box::pin(a_holder_that_stalls_past_its_lease_loses_the_lock(store)),
    ));
    checks
}

/// A store call [`FaultStore`] can disturb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Store::load`].
    Load,
    /// [`Store::create`].
    Create,
    /// [`Store::save`].
    Save,
    /// [`Store::touch`].
    Touch,
    /// [`Store::delete`].
    Delete,
    /// [`Store::lock`].
    Lock,
    /// [`Store::index_add`], [`Store::index_remove`] and [`Store::index_members`].
    Index,
}

/// What [`FaultStore`] does to a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fail with [`StoreError::Backend`] without calling the store.
    Error,
    /// Wait this long, then call the store.
    Delay(Duration),
    /// Never answer (a dead connection without a timeout).
    Hang,
    /// Fail with [`StoreError::Corrupt`], as for a record that cannot be read.
    Corrupt,
}

/// A store wrapper that injects errors, delays and hangs into chosen calls, to test what an
/// application does when its store misbehaves in ways a real server will not on demand.
///
/// ```
/// use std::time::Duration;
/// use session_core::conformance::{Fault, FaultStore, Op};
/// use session_core::store::MemoryStore;
///
/// let store = FaultStore::new(MemoryStore::new());
/// store.inject(Op::Save, Fault::Error);
/// store.inject(Op::Load, Fault::Delay(Duration::from_millis(50)));
/// store.heal(Op::Save);
/// ```
#[derive(Clone)]
pub struct FaultStore<S> {
    inner: S,
    faults: Arc<std::sync::Mutex<Faults>>,
    fired: Arc<std::sync::atomic::AtomicUsize>,
}

/// The fault of each disturbed call, and how many more calls it applies to (`None`: all).
type Faults = std::collections::HashMap<Op, (Fault, Option<usize>)>;

impl<S: Store> FaultStore<S> {
    /// `inner`, undisturbed until told otherwise.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            faults: Arc::default(),
            fired: Arc::default(),
        }
    }

    /// Disturbs every later `op` call with `fault`.
    pub fn inject(&self, op: Op, fault: Fault) {
        self.faults().insert(op, (fault, None));
    }

    /// Disturbs the next `times` `op` calls with `fault`, then lets them through.
    pub fn inject_times(&self, op: Op, fault: Fault, times: usize) {
        self.faults().insert(op, (fault, Some(times)));
    }

    /// Lets `op` calls through again.
    pub fn heal(&self, op: Op) {
        self.faults().remove(&op);
    }

    /// Lets every call through again.
    pub fn heal_all(&self) {
        self.faults().clear();
    }

    /// How many calls have been disturbed so far, to tell which requests met a fault.
    pub fn fired(&self) -> usize {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The store behind the faults.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn disturb(&self, op: Op) -> Result<(), StoreError> {
        let fault = {
            let mut faults = self.faults();
            match faults.get_mut(&op) {
                Some((fault, None)) => Some(*fault),
                Some((fault, Some(left))) if *left > 0 => {
                    *left -= 1;
                    Some(*fault)
                }
                _ => None,
            }
        };
        if fault.is_some() {
            self.fired.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        match fault {
            None => Ok(()),
            Some(Fault::Error) => Err(StoreError::backend(format!("injected fault in {op:?}"))),
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Corrupt) => Err(StoreError::Corrupt(format!("injected in {op:?}"))),
        }
    }
}

impl<S> std::fmt::Debug for FaultStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultStore").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<S: Store> Store for FaultStore<S> {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.disturb(Op::Load).await?;
        self.inner.load(key).await
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        self.disturb(Op::Create).await?;
        self.inner.create(key, record).await
    }
    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        self.disturb(Op::Save).await?;
        self.inner.save(key, record, mode).await
    }
    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        self.disturb(Op::Touch).await?;
        self.inner.touch(key, expires_at).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.disturb(Op::Delete).await?;
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
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<crate::store::SessionLock>, StoreError> {
        self.disturb(Op::Lock).await?;
        self.inner.lock(key, lease, wait).await
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
        self.disturb(Op::Index).await?;
        self.inner.index_add(entry, key, until).await
    }
    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        self.disturb(Op::Index).await?;
        self.inner.index_remove(entry, key).await
    }
    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        self.disturb(Op::Index).await?;
        self.inner.index_members(entry).await
    }
    // `load_many` keeps the default: one `load` per key, each disturbed as `Op::Load` says.
}
