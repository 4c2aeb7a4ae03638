//! The SQLite store: sessions in one database file, in WAL mode.
//!
//! # Schema
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "sessions" (
//!     "key"      TEXT PRIMARY KEY NOT NULL,  -- StoreKey: 64 lowercase hex characters
//!     data       TEXT NOT NULL,              -- {"field": "<encoded JSON text>", ...}
//!     created_at INTEGER NOT NULL,           -- Unix milliseconds
//!     expires_at INTEGER NOT NULL            -- Unix milliseconds
//! );
//! CREATE INDEX IF NOT EXISTS "sessions_expires_at_idx" ON "sessions" (expires_at);
//! ```
//!
//! # Statements
//!
//! - Reads filter on `expires_at > now`, so expired rows are invisible before any purge.
//! - `create` is one upsert that only overwrites an expired row, and reports a collision when
//!   it changed no row:
//!   `INSERT .. ON CONFLICT ("key") DO UPDATE SET .. WHERE "sessions".expires_at <= now`.
//! - A merge is one upsert patching the stored object with `json_patch`, or replacing it if
//!   the stored row has expired; SQLite runs one writer at a time, so concurrent merges of
//!   different fields all land.
//! - `touch` is `UPDATE .. SET expires_at = ? WHERE "key" = ? AND expires_at > now`.
//!
//! Connections use WAL mode (readers do not wait for the writer) and a 5 s busy timeout, so
//! concurrent writers queue instead of failing with "database is locked".

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::sql::{
    backend_error, decode_record, encode_fields, spawn_purge_task, to_sql, HasPurgeSlot,
    InvalidTableName, PurgeSlot, TableName, ACQUIRE_TIMEOUT, DEFAULT_PURGE_INTERVAL,
};
use super::{Store, StoreError};
use crate::id::StoreKey;
use crate::record::{Record, SaveMode, Timestamp};

/// How long a connection waits for another one's write to finish before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sessions in a SQLite database: the embedded, persistent store.
///
/// - **Schema**: one row per session in a table (`sessions` unless
///   [`with_table_name`](Self::with_table_name) says otherwise): the store key, the fields as
///   a JSON object of strings (so each value round-trips byte for byte), and the creation and
///   expiry times in Unix milliseconds. The table and an index on the expiry are created by
///   [`connect`](Self::connect), by [`migrate`](Self::migrate), or on first use.
/// - **Expiry**: expired rows are never read, even before they are purged; the purge task
///   ([`spawn_purge_task`](Self::spawn_purge_task), started by `connect`) deletes them.
/// - **Partial writes**: [`SaveMode::Merge`] patches the stored fields with `json_patch` in
///   one statement, so two requests changing different fields both keep their change.
/// - **Concurrency**: WAL mode and a busy timeout; writers queue rather than fail.
///
/// Cloning is cheap and shares the connection pool.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), session_core::StoreError> {
/// use session_core::store::{SqliteStore, Store};
///
/// let store = SqliteStore::connect("sqlite::memory:").await?; // or "sqlite:sessions.db"
/// let key = session_core::SessionId::generate().unwrap().store_key();
/// assert!(store.load(&key).await?.is_none());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    table: TableName,
    sql: Queries,
    migrated: OnceCell<()>,
    purge: PurgeSlot,
}

/// The statements for one table, built once.
struct Queries {
    create_table: String,
    create_index: String,
    load: String,
    create: String,
    merge: String,
    replace: String,
    touch: String,
    delete: String,
    purge: String,
}

impl Queries {
    fn new(table: &TableName) -> Self {
        let t = format!("\"{}\"", table.as_str());
        let index = format!("\"{}\"", table.index_name());
        let upsert = format!(
            "INSERT INTO {t} (\"key\", data, created_at, expires_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (\"key\") DO UPDATE SET"
        );
        Self {
            create_table: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 \"key\" TEXT PRIMARY KEY NOT NULL, \
                 data TEXT NOT NULL, \
                 created_at INTEGER NOT NULL, \
                 expires_at INTEGER NOT NULL)"
            ),
            create_index: format!("CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at)"),
            load: format!(
                "SELECT data, created_at, expires_at FROM {t} WHERE \"key\" = ?1 AND expires_at > ?2"
            ),
            // Overwrites only an expired row; a live one makes it change no row.
            create: format!(
                "{upsert} data = excluded.data, created_at = excluded.created_at, \
                 expires_at = excluded.expires_at WHERE {t}.expires_at <= ?5"
            ),
            // An expired row is replaced whole: its fields must not come back to life.
            merge: format!(
                "{upsert} data = CASE WHEN {t}.expires_at <= ?5 THEN excluded.data \
                 ELSE json_patch({t}.data, excluded.data) END, \
                 created_at = excluded.created_at, expires_at = excluded.expires_at"
            ),
            replace: format!(
                "{upsert} data = excluded.data, created_at = excluded.created_at, \
                 expires_at = excluded.expires_at"
            ),
            touch: format!(
                "UPDATE {t} SET expires_at = ?1 WHERE \"key\" = ?2 AND expires_at > ?3"
            ),
            delete: format!("DELETE FROM {t} WHERE \"key\" = ?1"),
            purge: format!("DELETE FROM {t} WHERE expires_at <= ?1"),
        }
    }
}

impl HasPurgeSlot for Inner {
    fn purge_slot(&self) -> &PurgeSlot {
        &self.purge
    }
}

impl Inner {
    /// The pool, once the table exists.
    async fn pool(&self) -> Result<&SqlitePool, StoreError> {
        self.migrated.get_or_try_init(|| self.migrate()).await?;
        Ok(&self.pool)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        for statement in [&self.sql.create_table, &self.sql.create_index] {
            sqlx::query(statement)
                .persistent(false)
                .execute(&self.pool)
                .await
                .map_err(backend_error)?;
        }
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(&self.sql.purge)
            .bind(to_sql(Timestamp::now()))
            .execute(self.pool().await?)
            .await
            .map_err(backend_error)?;
        Ok(done.rows_affected())
    }
}

impl SqliteStore {
    /// How often the purge task started by [`connect`](Self::connect) runs, on average.
    pub const DEFAULT_PURGE_INTERVAL: Duration = DEFAULT_PURGE_INTERVAL;

    /// Opens the database at `url` (`sqlite:PATH`, creating the file if it is missing, or
    /// `sqlite::memory:`), creates the `sessions` table if needed and starts the purge task.
    ///
    /// The pool uses WAL mode, `synchronous = NORMAL` and a 5 s busy timeout. An in-memory
    /// database lives in one connection that the pool never closes; it is gone when the store
    /// is dropped.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the URL is malformed or the file cannot be opened or
    /// created.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// use session_core::store::SqliteStore;
    ///
    /// let store = SqliteStore::connect("sqlite:/var/lib/myapp/sessions.db").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(backend_error)?
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool_options = SqlitePoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
        let pool = if is_in_memory(url) {
            // Each connection to `sqlite::memory:` shares one database that lives only as
            // long as some connection is open: keep exactly one, forever. One connection
            // also avoids shared-cache table locks, which the busy timeout does not cover.
            pool_options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
        } else {
            // The pool opens its first connection here, before any concurrent ones, so the
            // switch to WAL (which needs an exclusive lock) happens once, uncontended.
            let options = options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
            pool_options.connect_with(options).await
        }
        .map_err(backend_error)?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        store.spawn_purge_task(DEFAULT_PURGE_INTERVAL);
        Ok(store)
    }

    /// A store on a pool you configured. Does no I/O: the table is created on first use (or
    /// call [`migrate`](Self::migrate)), and no purge task runs until you
    /// [start one](Self::spawn_purge_task).
    ///
    /// Use WAL mode and a busy timeout on the pool's connections if several requests may
    /// write at once, as [`connect`](Self::connect) does.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use session_core::store::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};
    /// use session_core::store::SqliteStore;
    ///
    /// let options = SqliteConnectOptions::new()
    ///     .filename("app.db")
    ///     .create_if_missing(true)
    ///     .journal_mode(SqliteJournalMode::Wal)
    ///     .busy_timeout(Duration::from_secs(5));
    /// let pool = SqlitePool::connect_with(options).await?;
    /// let store = SqliteStore::from_pool(pool).with_table_name("web_sessions")?;
    /// store.migrate().await?;
    /// store.spawn_purge_task(Duration::from_secs(600));
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self::build(pool, TableName::default_name())
    }

    fn build(pool: SqlitePool, table: TableName) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                sql: Queries::new(&table),
                table,
                migrated: OnceCell::new(),
                purge: PurgeSlot::default(),
            }),
        }
    }

    /// The same pool, with sessions in table `name` (created on first use). A running purge
    /// task moves to the new table.
    ///
    /// # Errors
    /// [`InvalidTableName`] unless `name` is 1 to 48 ASCII letters, digits and underscores,
    /// not starting with a digit.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use session_core::store::SqliteStore;
    ///
    /// let store = SqliteStore::connect("sqlite::memory:").await?.with_table_name("web_sessions")?;
    /// assert_eq!(store.table_name(), "web_sessions");
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_table_name(self, name: &str) -> Result<Self, InvalidTableName> {
        let table = TableName::new(name)?;
        let purge_interval = self.inner.purge.interval();
        let store = Self::build(self.inner.pool.clone(), table);
        if let Some(interval) = purge_interval {
            if tokio::runtime::Handle::try_current().is_ok() {
                store.spawn_purge_task(interval);
            }
        }
        Ok(store)
    }

    /// The table sessions are kept in.
    pub fn table_name(&self) -> &str {
        self.inner.table.as_str()
    }

    /// Creates the table and its expiry index if they do not exist. Stores create them on
    /// first use anyway; call this at startup to surface a problem early.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the database refuses the statements.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// # let pool = session_core::store::sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    /// use session_core::store::SqliteStore;
    ///
    /// let store = SqliteStore::from_pool(pool);
    /// store.migrate().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await?;
        // Already set if a concurrent call got there first; either way the table exists.
        let _ = self.inner.migrated.set(());
        Ok(())
    }

    /// Starts deleting expired rows in the background, every `interval` on average.
    ///
    /// Each wait is a random 50 to 150 % of `interval`, so app instances started together do
    /// not all purge at once. A store has at most one purge task: starting one stops the
    /// previous. The task ends when the store and all its clones are dropped; failures are
    /// logged with `tracing` and retried at the next run.
    ///
    /// # Panics
    /// Outside a Tokio runtime, like [`tokio::spawn`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// use std::time::Duration;
    /// use session_core::store::SqliteStore;
    ///
    /// let store = SqliteStore::connect("sqlite::memory:").await?;
    /// store.spawn_purge_task(Duration::from_secs(5 * 60));
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn_purge_task(&self, interval: Duration) -> JoinHandle<()> {
        spawn_purge_task(
            &self.inner,
            interval,
            "sqlite",
            |inner: Arc<Inner>| async move { inner.purge_expired().await },
        )
    }

    /// Stops the purge task, if one runs.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// let store = session_core::store::SqliteStore::connect("sqlite::memory:").await?;
    /// store.stop_purge_task(); // purge from a cron job instead
    /// # Ok(())
    /// # }
    /// ```
    pub fn stop_purge_task(&self) {
        self.inner.purge.stop();
    }

    /// The connection pool, for queries of your own.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use session_core::store::{sqlx, SqliteStore};
    ///
    /// let store = SqliteStore::connect("sqlite::memory:").await?;
    /// let (live,): (i64,) = sqlx::query_as("SELECT count(*) FROM sessions")
    ///     .fetch_one(store.pool())
    ///     .await?;
    /// assert_eq!(live, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Stops the purge task and closes the pool, waiting for connections in use to be
    /// returned. Calls made afterwards fail with [`StoreError::Backend`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// let store = session_core::store::SqliteStore::connect("sqlite::memory:").await?;
    /// store.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(&self) {
        self.inner.purge.stop();
        self.inner.pool.close().await;
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("table", &self.inner.table.as_str())
            .field("purge_interval", &self.inner.purge.interval())
            .finish_non_exhaustive()
    }
}

/// Whether `url` names an in-memory database.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let row: Option<(String, i64, i64)> = sqlx::query_as(&self.inner.sql.load)
            .bind(key.as_str())
            .bind(to_sql(Timestamp::now()))
            .fetch_optional(self.inner.pool().await?)
            .await
            .map_err(backend_error)?;
        row.map(|(data, created_at, expires_at)| decode_record(key, &data, created_at, expires_at))
            .transpose()
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        let data = encode_fields(&record.fields)?;
        let done = sqlx::query(&self.inner.sql.create)
            .bind(key.as_str())
            .bind(data.as_str())
            .bind(to_sql(record.created_at))
            .bind(to_sql(record.expires_at))
            .bind(to_sql(Timestamp::now()))
            .execute(self.inner.pool().await?)
            .await
            .map_err(backend_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<(), StoreError> {
        let data = encode_fields(&record.fields)?;
        let statement = match mode {
            SaveMode::Merge => &self.inner.sql.merge,
            SaveMode::Replace => &self.inner.sql.replace,
        };
        let mut query = sqlx::query(statement)
            .bind(key.as_str())
            .bind(data.as_str())
            .bind(to_sql(record.created_at))
            .bind(to_sql(record.expires_at));
        if mode == SaveMode::Merge {
            query = query.bind(to_sql(Timestamp::now()));
        }
        query
            .execute(self.inner.pool().await?)
            .await
            .map_err(backend_error)?;
        Ok(())
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<(), StoreError> {
        sqlx::query(&self.inner.sql.touch)
            .bind(to_sql(expires_at))
            .bind(key.as_str())
            .bind(to_sql(Timestamp::now()))
            .execute(self.inner.pool().await?)
            .await
            .map_err(backend_error)?;
        Ok(())
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        sqlx::query(&self.inner.sql.delete)
            .bind(key.as_str())
            .execute(self.inner.pool().await?)
            .await
            .map_err(backend_error)?;
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.inner.purge_expired().await
    }
}
