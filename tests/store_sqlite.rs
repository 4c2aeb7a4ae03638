//! The store conformance suite against the SQLite store, on a temporary database file, and
//! what is particular to it: the table, expiry before the purge, the purge task, corrupt
//! rows, WAL with several pools on one file, and errors instead of panics.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use session_core::conformance::{key, record};
use session_core::store::sqlx::{self, SqlitePool};
use session_core::store::{SqliteStore, Store};
use session_core::{Record, SaveMode, StoreError, StoreKey, Timestamp};
use tempfile::TempDir;

const MINUTE: Duration = Duration::from_secs(60);

/// A SQLite store on a database file of its own, removed (after the store) when dropped.
struct TempSqliteStore {
    store: SqliteStore,
    dir: TempDir,
}

impl TempSqliteStore {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::connect(&url(&dir)).await.unwrap();
        Self { store, dir }
    }
}

fn url(dir: &TempDir) -> String {
    format!("sqlite:{}", dir.path().join("sessions.db").display())
}

#[async_trait]
impl Store for TempSqliteStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.store.load(key).await
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        self.store.create(key, record).await
    }
    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<(), StoreError> {
        self.store.save(key, record, mode).await
    }
    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<(), StoreError> {
        self.store.touch(key, expires_at).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.store.delete(key).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.store.purge_expired().await
    }
}

session_core::store_conformance_tests!(async { Some(TempSqliteStore::new().await) });

mod in_memory {
    //! The suite again on `sqlite::memory:`, which lives in a single pooled connection.
    use session_core::store::SqliteStore;

    session_core::store_conformance_tests!(async {
        Some(SqliteStore::connect("sqlite::memory:").await.unwrap())
    });
}

/// A record that expired a second ago.
fn expired(fields: &[(&str, &str)]) -> Record {
    let mut record = record(fields, MINUTE);
    let now = Timestamp::now();
    record.created_at = Timestamp::from_millis(now.as_millis() - 60_000);
    record.expires_at = Timestamp::from_millis(now.as_millis() - 1_000);
    record
}

async fn rows(pool: &SqlitePool, table: &str) -> i64 {
    let (count,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM \"{table}\""))
        .fetch_one(pool)
        .await
        .unwrap();
    count
}

async fn table_exists(pool: &SqlitePool, table: &str) -> bool {
    let found: Option<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1")
            .bind(table)
            .fetch_optional(pool)
            .await
            .unwrap();
    found.is_some()
}

async fn insert_raw(pool: &SqlitePool, table: &str, key: &StoreKey, data: &str) {
    let expires = Timestamp::now().as_millis() as i64 + 60_000;
    sqlx::query(&format!(
        "INSERT INTO \"{table}\" (\"key\", data, created_at, expires_at) VALUES (?1, ?2, 0, ?3)"
    ))
    .bind(key.as_str())
    .bind(data)
    .bind(expires)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn connect_creates_the_file_and_the_default_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    assert!(!path.exists());
    let store = SqliteStore::connect(&url(&dir)).await.unwrap();
    assert!(path.exists());
    assert_eq!(store.table_name(), "sessions");
    assert!(table_exists(store.pool(), "sessions").await);
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let (index,): (String,) = sqlx::query_as(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'sessions_expires_at_idx'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(index.contains("(expires_at)"), "{index}");
}

#[tokio::test]
async fn table_name_is_configurable_and_the_table_is_created_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let pool = SqlitePool::connect(&format!("{}?mode=rwc", url(&dir)))
        .await
        .unwrap();
    let store = SqliteStore::from_pool(pool.clone())
        .with_table_name("web_sessions")
        .unwrap();
    assert_eq!(store.table_name(), "web_sessions");
    assert!(
        !table_exists(&pool, "web_sessions").await,
        "from_pool does no I/O"
    );

    let key = key();
    assert!(store
        .create(&key, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap());
    assert!(table_exists(&pool, "web_sessions").await);
    assert!(
        !table_exists(&pool, "sessions").await,
        "the default table is not used"
    );
    assert_eq!(rows(&pool, "web_sessions").await, 1);
    assert!(store.load(&key).await.unwrap().is_some());
}

#[tokio::test]
async fn explicit_migrate_creates_the_table_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let pool = SqlitePool::connect(&format!("{}?mode=rwc", url(&dir)))
        .await
        .unwrap();
    let store = SqliteStore::from_pool(pool.clone());
    store.migrate().await.unwrap();
    assert!(table_exists(&pool, "sessions").await);
    store.migrate().await.unwrap();
}

#[tokio::test]
async fn invalid_table_names_are_refused() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    for bad in [
        "",
        "1st",
        "a b",
        "x\"; DROP TABLE sessions; --",
        "main.sessions",
    ] {
        let error = store.clone().with_table_name(bad).unwrap_err();
        assert_eq!(error.name(), bad);
    }
}

#[tokio::test]
async fn expired_rows_are_invisible_before_the_purge_and_purge_removes_them() {
    let store = TempSqliteStore::new().await;
    let pool = store.store.pool();
    let dead = key();
    store
        .save(&dead, &expired(&[("a", "1")]), SaveMode::Replace)
        .await
        .unwrap();
    let live = key();
    store
        .create(&live, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap();

    assert_eq!(
        rows(pool, "sessions").await,
        2,
        "the expired row is still stored"
    );
    assert!(store.load(&dead).await.unwrap().is_none());
    store
        .touch(&dead, Timestamp::now().saturating_add(MINUTE))
        .await
        .unwrap();
    assert!(
        store.load(&dead).await.unwrap().is_none(),
        "touch does not revive a row"
    );

    assert_eq!(store.purge_expired().await.unwrap(), 1);
    assert_eq!(rows(pool, "sessions").await, 1);
    assert!(store.load(&live).await.unwrap().is_some());
}

#[tokio::test]
async fn merge_into_an_expired_row_replaces_it_whole() {
    let store = TempSqliteStore::new().await;
    let key = key();
    store
        .save(
            &key,
            &expired(&[("old", "1"), ("a", "1")]),
            SaveMode::Replace,
        )
        .await
        .unwrap();
    store
        .save(&key, &record(&[("a", "2")], MINUTE), SaveMode::Merge)
        .await
        .unwrap();
    let loaded = store.load(&key).await.unwrap().unwrap();
    let names: Vec<&str> = loaded.fields.keys().map(|k| &**k).collect();
    assert_eq!(
        names,
        ["a"],
        "fields of the expired session do not come back"
    );
}

#[tokio::test]
async fn create_takes_over_an_expired_key_exactly_once() {
    let store = TempSqliteStore::new().await;
    let key = key();
    store
        .save(&key, &expired(&[("owner", "\"old\"")]), SaveMode::Replace)
        .await
        .unwrap();
    let store = &store;
    let attempts = (0..8).map(|i| async move {
        let value = format!("\"{i}\"");
        store
            .create(&key, &record(&[("owner", value.as_str())], MINUTE))
            .await
            .unwrap()
    });
    let won = join_all(attempts).await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let owner = store.load(&key).await.unwrap().unwrap().fields["owner"].clone();
    assert_ne!(&*owner, "\"old\"");
}

/// Polls `futures` concurrently in this task (they may borrow the store) and returns their
/// outputs in order.
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
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

#[tokio::test]
async fn merged_values_round_trip_byte_exact() {
    let store = TempSqliteStore::new().await;
    let key = key();
    store
        .create(
            &key,
            &record(&[("n", "1.50"), ("keep", "{ \"spaced\" : 1 }")], MINUTE),
        )
        .await
        .unwrap();
    let tricky = record(
        &[
            ("名前", "\"Dhruv 🧠 \\\"quoted\\\" \\\\ back\""),
            ("n", "1e2"),
            ("nul", "\"\\u0000\""),
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
    assert_eq!(&*loaded.fields["nul"], "\"\\u0000\"");
    assert_eq!(&*loaded.fields["keep"], "{ \"spaced\" : 1 }");
}

#[tokio::test]
async fn a_row_whose_data_is_not_an_object_is_corrupt() {
    let store = TempSqliteStore::new().await;
    for data in ["not json", "[1,2]", "\"text\"", "42"] {
        let key = key();
        insert_raw(store.store.pool(), "sessions", &key, data).await;
        match store.load(&key).await {
            Err(StoreError::Corrupt(message)) => assert!(!message.is_empty()),
            other => panic!("{data:?} loaded as {other:?}"),
        }
    }
}

#[tokio::test]
async fn fields_that_are_not_strings_are_skipped_and_kept_in_the_row() {
    let store = TempSqliteStore::new().await;
    let pool = store.store.pool();
    let key = key();
    insert_raw(
        pool,
        "sessions",
        &key,
        r#"{"good":"1","bad":2,"worse":{"x":"y"}}"#,
    )
    .await;
    let loaded = store.load(&key).await.unwrap().unwrap();
    let names: Vec<&str> = loaded.fields.keys().map(|k| &**k).collect();
    assert_eq!(names, ["good"]);

    store
        .save(&key, &record(&[("good", "2")], MINUTE), SaveMode::Merge)
        .await
        .unwrap();
    let (bad, good): (i64, String) = sqlx::query_as(
        "SELECT json_extract(data, '$.bad'), json_extract(data, '$.good') FROM sessions WHERE \"key\" = ?1",
    )
    .bind(key.as_str())
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (bad, good.as_str()),
        (2, "2"),
        "the undecodable field is not lost"
    );
}

#[tokio::test]
async fn two_pools_on_one_file_lose_no_concurrent_merge() {
    // Two stores on one file behave like two processes sharing the database.
    let first = TempSqliteStore::new().await;
    let second = SqliteStore::connect(&url(&first.dir)).await.unwrap();
    let key = key();
    first
        .create(&key, &record(&[("base", "0")], MINUTE))
        .await
        .unwrap();
    let stores: [&dyn Store; 2] = [&first, &second];
    let writes = (0..60).map(|i| {
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
    });
    let results = join_all(writes).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(second.load(&key).await.unwrap().unwrap().fields.len(), 61);
}

#[tokio::test]
async fn purge_task_purges_in_the_background_and_ends_with_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::connect(&url(&dir)).await.unwrap();
    for _ in 0..3 {
        store
            .save(&key(), &expired(&[("a", "1")]), SaveMode::Replace)
            .await
            .unwrap();
    }
    let task = store.spawn_purge_task(Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(5);
    while rows(store.pool(), "sessions").await > 0 {
        assert!(Instant::now() < deadline, "the purge task did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(store);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the purge task ends when the store is dropped")
        .ok();
}

#[tokio::test]
async fn an_unopenable_database_is_a_store_error() {
    let result = SqliteStore::connect("sqlite:/nonexistent-dir/deeper/sessions.db").await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    let result = SqliteStore::connect("sqlite:?mode=bogus").await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
}

#[tokio::test]
async fn calls_on_a_closed_store_fail_without_panicking() {
    let store = TempSqliteStore::new().await;
    store.store.close().await;
    let key = key();
    assert!(store.load(&key).await.is_err());
    assert!(store.create(&key, &record(&[], MINUTE)).await.is_err());
    assert!(store.purge_expired().await.is_err());
}
