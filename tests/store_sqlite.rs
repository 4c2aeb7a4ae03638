//! The store conformance suite and the SQL store checks (`common::sql`) against the SQLite
//! store, on temporary database files, and what is particular to it: the file, WAL mode, the
//! default table, `sqlite::memory:`, and errors instead of panics.

#![cfg(feature = "sqlite")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::sql::{SqlTestStore, MINUTE};
use session_core::conformance::{key, record};
use session_core::store::sqlx::{self, SqlitePool};
use session_core::store::{IndexEntry, IndexMember, SqliteStore, Store};
use session_core::{Record, SaveMode, StoreError, StoreKey, Timestamp};
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// A SQLite store on a database file of its own, removed (after the last store on it) when
/// dropped.
struct TempSqliteStore {
    store: SqliteStore,
    dir: Arc<TempDir>,
}

impl TempSqliteStore {
    /// A store opened with `connect` on a new file.
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::connect(&url(&dir)).await.unwrap();
        Self {
            store,
            dir: Arc::new(dir),
        }
    }

    /// A store made with `from_pool` on a new file, with table `name`: nothing is created yet.
    async fn on_table(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pool = SqlitePool::connect(&format!("{}?mode=rwc", url(&dir)))
            .await
            .unwrap();
        let store = SqliteStore::from_pool(pool).with_table_name(name).unwrap();
        Self {
            store,
            dir: Arc::new(dir),
        }
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
    ) -> Result<bool, StoreError> {
        self.store.save(key, record, mode).await
    }
    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        self.store.touch(key, expires_at).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.store.delete(key).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.store.purge_expired().await
    }
    fn supports_index(&self) -> bool {
        self.store.supports_index()
    }
    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.store.index_add(entry, key, until).await
    }
    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        self.store.index_remove(entry, key).await
    }
    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        self.store.index_members(entry).await
    }
    async fn load_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Record>>, StoreError> {
        self.store.load_many(keys).await
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

sql_store_tests! {
    store: async { Some(TempSqliteStore::new().await) },
    fresh_table: |name| async move { Some(TempSqliteStore::on_table(name).await) },
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
async fn a_table_of_its_own_leaves_the_default_table_alone() {
    let store = TempSqliteStore::on_table("web_sessions").await;
    assert_eq!(store.store.table_name(), "web_sessions");
    assert!(store
        .create(&key(), &record(&[("a", "1")], MINUTE))
        .await
        .unwrap());
    assert!(table_exists(store.store.pool(), "web_sessions").await);
    assert!(
        !table_exists(store.store.pool(), "sessions").await,
        "the default table is not used"
    );
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

#[async_trait]
impl SqlTestStore for TempSqliteStore {
    // SQLite's `data` column is plain `TEXT`.
    const DATA_IS_ANY_TEXT: bool = true;

    /// A store opened with `connect` on the same file: like another process.
    async fn another_instance(&self) -> Self {
        let other = SqliteStore::connect(&url(&self.dir)).await.unwrap();
        Self {
            store: other.with_table_name(self.store.table_name()).unwrap(),
            dir: self.dir.clone(),
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.store.migrate().await
    }

    fn spawn_purge_task(&self, interval: Duration) -> JoinHandle<()> {
        self.store.spawn_purge_task(interval)
    }

    async fn rows(&self) -> i64 {
        let statement = format!("SELECT count(*) FROM \"{}\"", self.store.table_name());
        let (count,): (i64,) = sqlx::query_as(&statement)
            .fetch_one(self.store.pool())
            .await
            .unwrap();
        count
    }

    async fn table_exists(&self) -> bool {
        table_exists(self.store.pool(), self.store.table_name()).await
    }

    async fn index_exists(&self) -> bool {
        let (count,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?1")
                .bind(format!("{}_expires_at_idx", self.store.table_name()))
                .fetch_one(self.store.pool())
                .await
                .unwrap();
        count == 1
    }

    async fn insert_raw(&self, key: &StoreKey, data: &str) {
        let expires = Timestamp::now().as_millis() as i64 + 60_000;
        sqlx::query(&format!(
            "INSERT INTO \"{}\" (\"key\", data, created_at, expires_at) VALUES (?1, ?2, 0, ?3)",
            self.store.table_name()
        ))
        .bind(key.as_str())
        .bind(data)
        .bind(expires)
        .execute(self.store.pool())
        .await
        .unwrap();
    }

    async fn raw_field(&self, key: &StoreKey, name: &str) -> String {
        let statement = format!(
            "SELECT CAST(json_extract(data, ?2) AS TEXT) FROM \"{}\" WHERE \"key\" = ?1",
            self.store.table_name()
        );
        let (value,): (String,) = sqlx::query_as(&statement)
            .bind(key.as_str())
            .bind(format!("$.{name}"))
            .fetch_one(self.store.pool())
            .await
            .unwrap();
        value
    }

    async fn set_index_added(&self, entry: &IndexEntry, key: &StoreKey, added: i64) {
        let statement = format!(
            "UPDATE \"{}_index\" SET added_at = ?1 WHERE entry = ?2 AND session_key = ?3",
            self.store.table_name()
        );
        let done = sqlx::query(&statement)
            .bind(added)
            .bind(entry.digest())
            .bind(key.as_str())
            .execute(self.store.pool())
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
    }

    async fn drop_table(&self) {
        for table in [
            self.store.table_name().to_owned(),
            format!("{}_index", self.store.table_name()),
        ] {
            let statement = format!("DROP TABLE IF EXISTS \"{table}\"");
            sqlx::query(&statement)
                .execute(self.store.pool())
                .await
                .unwrap();
        }
    }
}
