//! The checks every SQL store passes besides the conformance suite: expiry before the purge,
//! the purge task, the table created on first use, merges into expired rows, byte-exact
//! values, rows the store did not write, several instances on one database, and errors
//! instead of panics when the server is not there.
//!
//! Each check is an async function taking a store through [`SqlTestStore`], which each SQL
//! store's test file implements with its own SQL; [`sql_store_tests!`](crate::sql_store_tests)
//! makes them `#[tokio::test]`s. Nothing here needs a SQL feature: the code that does is in
//! the test files.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use session_core::conformance::{key, record};
use session_core::store::IndexEntry;
use session_core::{Record, SaveMode, Store, StoreError, StoreKey, Timestamp};
use tokio::task::JoinHandle;

pub const MINUTE: Duration = Duration::from_secs(60);

/// A SQL store under test, and the SQL the checks need to look behind its back. Each test
/// file implements it for its store type, on the store's own table.
#[async_trait]
pub trait SqlTestStore: Store + Sized {
    /// Whether the `data` column takes any text (SQLite's `TEXT`), not only JSON.
    const DATA_IS_ANY_TEXT: bool;

    /// Another store on the same database and table, with a pool of its own, as another app
    /// instance opens it.
    async fn another_instance(&self) -> Self;

    /// The store's `migrate`.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// The store's `spawn_purge_task`.
    fn spawn_purge_task(&self, interval: Duration) -> JoinHandle<()>;

    /// Rows in the table, expired ones included.
    async fn rows(&self) -> i64;

    /// Whether the table exists.
    async fn table_exists(&self) -> bool;

    /// Whether the table's index on `expires_at` exists.
    async fn index_exists(&self) -> bool;

    /// Writes a row, live for a minute, whose `data` column is `data` as given.
    async fn insert_raw(&self, key: &StoreKey, data: &str);

    /// Member `name` of the row's stored `data` object, as text (`2` for the number 2).
    async fn raw_field(&self, key: &StoreKey, name: &str) -> String;

    /// Sets the `added_at` of the index member `key` of `entry` to `added` (Unix ms): ages
    /// it, as the trait cannot.
    async fn set_index_added(&self, entry: &IndexEntry, key: &StoreKey, added: i64);

    /// Drops the table (and its index member table), at the end of a check that had one of
    /// its own.
    async fn drop_table(&self);
}

/// The shared checks as `#[tokio::test]`s, for a store type implementing [`SqlTestStore`]:
///
/// - `store`: an async expression giving `Option<S>` (`None` skips, for a server that is not
///   there) on a table the tests share: those checks use fresh random keys;
/// - `fresh_table`: an async function giving, for a table name, `Option<S>` made with
///   `from_pool` on a table that does not exist yet; those checks drop it when they pass;
/// - `server` (for the stores on a database server): the store type, a URL whose server
///   refuses connections and a malformed URL.
#[macro_export]
macro_rules! sql_store_tests {
    (
        store: $store:expr,
        fresh_table: $fresh:expr
        $(, server: $Store:ident { refused: $refused:expr, malformed: $malformed:expr $(,)? })?
        $(,)?
    ) => {
        $crate::sql_store_tests!(@shared $store;
            merge_into_an_expired_row_writes_nothing,
            create_takes_over_an_expired_key_exactly_once,
            merged_values_round_trip_byte_exact,
            a_row_whose_data_is_not_an_object_is_corrupt,
            fields_that_are_not_strings_are_skipped_and_kept_in_the_row,
            two_instances_lose_no_concurrent_merge,
            purge_removes_old_index_members_of_ended_sessions_only,
        );
        $crate::sql_store_tests!(@fresh $fresh;
            expired_rows_are_invisible_before_the_purge_and_purge_removes_them("purge_sessions"),
            purge_task_purges_in_the_background_and_ends_with_the_store("purge_task_sessions"),
            table_name_is_configurable_and_the_table_is_created_on_first_use("first_use_sessions"),
            instances_starting_together_create_the_table_once("race_sessions"),
        );
        $(
            #[tokio::test]
            async fn a_refused_connection_is_a_store_error_not_a_panic() {
                let unreachable = session_core::store::sqlx::pool::PoolOptions::new()
                    .acquire_timeout(::std::time::Duration::from_millis(300))
                    .connect_lazy($refused)
                    .unwrap();
                $crate::common::sql::a_refused_connection_is_a_store_error_not_a_panic(
                    $Store::connect($refused),
                    $Store::from_pool(unreachable),
                )
                .await;
            }

            #[tokio::test]
            async fn a_malformed_url_is_a_store_error() {
                $crate::common::sql::a_malformed_url_is_a_store_error($Store::connect($malformed))
                    .await;
            }
        )?
    };
    (@shared $store:expr; $($name:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                if let Some(store) = $store.await {
                    $crate::common::sql::$name(&store).await;
                }
            }
        )*
    };
    (@fresh $fresh:expr; $($name:ident($table:literal),)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                if let Some(store) = ($fresh)($table).await {
                    $crate::common::sql::$name(store).await;
                }
            }
        )*
    };
}

/// A record that expired a second ago.
pub fn expired(fields: &[(&str, &str)]) -> Record {
    let mut record = record(fields, MINUTE);
    let now = Timestamp::now();
    record.created_at = Timestamp::from_millis(now.as_millis() - 60_000);
    record.expires_at = Timestamp::from_millis(now.as_millis() - 1_000);
    record
}

/// Polls `futures` concurrently in this task (they may borrow the store) and returns their
/// outputs in order.
pub async fn join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}

/// Expired rows stay stored but are neither read nor revived; the purge deletes them only.
pub async fn expired_rows_are_invisible_before_the_purge_and_purge_removes_them(
    store: impl SqlTestStore,
) {
    let dead = key();
    assert!(store.create(&dead, &expired(&[("a", "1")])).await.unwrap());
    let live = key();
    store
        .create(&live, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap();

    assert_eq!(store.rows().await, 2, "the expired row is still stored");
    assert!(store.load(&dead).await.unwrap().is_none());
    assert!(!store
        .touch(&dead, Timestamp::now().saturating_add(MINUTE))
        .await
        .unwrap());
    assert!(
        store.load(&dead).await.unwrap().is_none(),
        "touch does not revive a row"
    );

    assert_eq!(store.purge_expired().await.unwrap(), 1);
    assert_eq!(store.rows().await, 1);
    assert!(store.load(&live).await.unwrap().is_some());
    store.drop_table().await;
}

/// The purge task deletes expired rows in the background and ends when the store is dropped.
pub async fn purge_task_purges_in_the_background_and_ends_with_the_store(store: impl SqlTestStore) {
    for _ in 0..3 {
        assert!(store.create(&key(), &expired(&[("a", "1")])).await.unwrap());
    }
    let task = store.spawn_purge_task(Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.rows().await > 0 {
        assert!(Instant::now() < deadline, "the purge task did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.drop_table().await;
    drop(store);
    let ended = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the purge task ends when the store is dropped");
    // Ended by the store (it aborts the task when dropped) or by itself; never by a panic.
    if let Err(error) = ended {
        assert!(error.is_cancelled(), "the purge task panicked: {error}");
    }
}

/// A store made with `from_pool` on a table of its own does no I/O; its first call creates
/// the table and its index, and the row goes there.
pub async fn table_name_is_configurable_and_the_table_is_created_on_first_use(
    store: impl SqlTestStore,
) {
    assert!(!store.table_exists().await, "from_pool does no I/O");
    let key = key();
    assert!(store
        .create(&key, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap());
    assert!(store.table_exists().await);
    assert!(store.index_exists().await);
    assert_eq!(store.rows().await, 1);
    assert!(store.load(&key).await.unwrap().is_some());
    store.drop_table().await;
}

/// Instances starting together all create the table without tripping over each other.
pub async fn instances_starting_together_create_the_table_once(store: impl SqlTestStore) {
    let mut stores = Vec::new();
    for _ in 0..6 {
        stores.push(store.another_instance().await);
    }
    let results = join_all(stores.iter().map(|s| s.migrate())).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    store.drop_table().await;
}

/// A merge into an expired row (not purged yet) writes nothing: the session has ended and
/// its fields never come back, not even beside the new ones.
pub async fn merge_into_an_expired_row_writes_nothing(store: &impl Store) {
    let key = key();
    assert!(store
        .create(&key, &expired(&[("old", "1"), ("a", "1")]))
        .await
        .unwrap());
    assert!(!store
        .save(&key, &record(&[("a", "2")], MINUTE), SaveMode::Merge)
        .await
        .unwrap());
    assert!(
        store.load(&key).await.unwrap().is_none(),
        "the expired session came back"
    );
}

/// Of several creates racing for an expired key, exactly one wins.
pub async fn create_takes_over_an_expired_key_exactly_once(store: &impl Store) {
    let key = key();
    assert!(store
        .create(&key, &expired(&[("owner", "\"old\"")]))
        .await
        .unwrap());
    let won = join_all((0..8).map(|i| async move {
        let value = format!("\"{i}\"");
        store
            .create(&key, &record(&[("owner", value.as_str())], MINUTE))
            .await
            .unwrap()
    }))
    .await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let owner = store.load(&key).await.unwrap().unwrap().fields["owner"].clone();
    assert_ne!(&*owner, "\"old\"");
}

/// Values come back byte for byte through a merge: the database's JSON type normalises
/// neither the merged values nor the ones already stored.
pub async fn merged_values_round_trip_byte_exact(store: &impl Store) {
    let key = key();
    store
        .create(
            &key,
            &record(
                &[("n", "1.50"), ("keep", "{ \"b\" : 1, \"a\": 2 }")],
                MINUTE,
            ),
        )
        .await
        .unwrap();
    let tricky = record(
        &[
            ("名前", "\"Dhruv 🧠 \\\"quoted\\\" \\\\ back\""),
            ("n", "1e2"),
            ("escaped", "\"\\u00e9\\u0000\""),
        ],
        MINUTE,
    );
    store.save(&key, &tricky, SaveMode::Merge).await.unwrap();
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        &*loaded.fields["名前"],
        "\"Dhruv 🧠 \\\"quoted\\\" \\\\ back\""
    );
    assert_eq!(&*loaded.fields["n"], "1e2");
    assert_eq!(&*loaded.fields["escaped"], "\"\\u00e9\\u0000\"");
    assert_eq!(
        &*loaded.fields["keep"], "{ \"b\" : 1, \"a\": 2 }",
        "the database did not normalise it"
    );
}

/// A row whose `data` is not a JSON object loads as [`StoreError::Corrupt`].
pub async fn a_row_whose_data_is_not_an_object_is_corrupt<S: SqlTestStore>(store: &S) {
    let mut cases = vec!["[1,2]", "\"text\"", "42", "null"];
    if S::DATA_IS_ANY_TEXT {
        cases.push("not json");
    }
    for data in cases {
        let key = key();
        store.insert_raw(&key, data).await;
        match store.load(&key).await {
            Err(StoreError::Corrupt(message)) => assert!(!message.is_empty()),
            other => panic!("{data:?} loaded as {other:?}"),
        }
        store.delete(&key).await.unwrap();
    }
}

/// Fields whose stored value is not a JSON string are skipped on load, and a merge keeps
/// them in the row.
pub async fn fields_that_are_not_strings_are_skipped_and_kept_in_the_row(
    store: &impl SqlTestStore,
) {
    let key = key();
    store
        .insert_raw(&key, r#"{"good":"1","bad":2,"worse":{"x":"y"}}"#)
        .await;
    let loaded = store.load(&key).await.unwrap().unwrap();
    let names: Vec<&str> = loaded.fields.keys().map(|k| &**k).collect();
    assert_eq!(names, ["good"]);

    store
        .save(&key, &record(&[("good", "2")], MINUTE), SaveMode::Merge)
        .await
        .unwrap();
    assert_eq!(
        (
            store.raw_field(&key, "bad").await,
            store.raw_field(&key, "good").await
        ),
        ("2".to_owned(), "2".to_owned()),
        "the undecodable field is not lost"
    );
    store.delete(&key).await.unwrap();
}

/// The purge removes index members older than the grace whose session is gone or expired,
/// and keeps the members of live sessions (old or not) and young members of missing ones.
pub async fn purge_removes_old_index_members_of_ended_sessions_only(store: &impl SqlTestStore) {
    let entry = IndexEntry::new("user", &format!("\"{}\"", key()));
    let (old_live, old_gone, old_expired, young_gone) = (key(), key(), key(), key());
    store.create(&old_live, &record(&[], MINUTE)).await.unwrap();
    store.create(&old_expired, &expired(&[])).await.unwrap();
    for key in [&old_live, &old_gone, &old_expired, &young_gone] {
        store.index_add(&entry, key, None).await.unwrap();
    }
    let two_minutes_ago = Timestamp::now().as_millis() as i64 - 120_000;
    for key in [&old_live, &old_gone, &old_expired] {
        store.set_index_added(&entry, key, two_minutes_ago).await;
    }
    store.purge_expired().await.unwrap();
    let mut left: Vec<StoreKey> = store
        .index_members(&entry)
        .await
        .unwrap()
        .into_iter()
        .map(|member| member.key)
        .collect();
    left.sort();
    let mut expected = vec![old_live, young_gone];
    expected.sort();
    assert_eq!(left, expected);
}

/// Two instances merging different fields into one session at once lose none of them.
pub async fn two_instances_lose_no_concurrent_merge(first: &impl SqlTestStore) {
    let second = first.another_instance().await;
    let key = key();
    first
        .create(&key, &record(&[("base", "0")], MINUTE))
        .await
        .unwrap();
    let stores: [&dyn Store; 2] = [first, &second];
    let results = join_all((0..60).map(|i| {
        let store = stores[i % 2];
        async move {
            let name = format!("f{i}");
            store
                .save(
                    &key,
                    &record(&[(name.as_str(), "1")], MINUTE),
                    SaveMode::Merge,
                )
                .await
        }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(second.load(&key).await.unwrap().unwrap().fields.len(), 61);
}

/// `connect` to a server that refuses connections fails at once with a store error; a store
/// on a pool that cannot reach its server times out instead.
pub async fn a_refused_connection_is_a_store_error_not_a_panic<S: Store + Debug>(
    connect: impl Future<Output = Result<S, StoreError>>,
    unreachable: S,
) {
    let started = Instant::now();
    let result = connect.await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    let key = key();
    assert!(matches!(
        unreachable.load(&key).await,
        Err(StoreError::Timeout)
    ));
    assert!(unreachable
        .save(&key, &record(&[], MINUTE), SaveMode::Merge)
        .await
        .is_err());
    assert!(unreachable.purge_expired().await.is_err());
}

/// A malformed URL is a store error, not a panic.
pub async fn a_malformed_url_is_a_store_error<S: Debug>(
    connect: impl Future<Output = Result<S, StoreError>>,
) {
    let result = connect.await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
}
