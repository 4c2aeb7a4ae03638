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
//! CREATE TABLE IF NOT EXISTS "sessions_index" (    -- session index members
//!     entry       TEXT NOT NULL,      -- IndexEntry digest: 64 lowercase hex characters
//!     session_key TEXT NOT NULL,      -- StoreKey
//!     added_at    INTEGER NOT NULL,   -- Unix milliseconds
//!     PRIMARY KEY (entry, session_key)
//! ) WITHOUT ROWID;
//! ```
//!
//! # Statements
//!
//! - Reads filter on `expires_at > now`, so expired rows are invisible before any purge.
//! - `create` is one upsert that only overwrites an expired row, and reports a collision when
//!   it changed no row:
//!   `INSERT .. ON CONFLICT ("key") DO UPDATE SET .. WHERE "sessions".expires_at <= now`.
//! - A save is one `UPDATE .. WHERE "key" = ? AND expires_at > now`, so it never brings back
//!   a deleted or expired row; a merge patches the stored object with `json_patch`. SQLite
//!   runs one writer at a time, so concurrent merges of different fields all land.
//! - `touch` is `UPDATE .. SET expires_at = ? WHERE "key" = ? AND expires_at > now`.
//!
//! Connections use WAL mode (readers do not wait for the writer) and a 5 s busy timeout, so
//! concurrent writers queue instead of failing with "database is locked".

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::Sqlite;

use super::sql::{
    backend_error, placeholders, sql_store_api, Dialect, Queries, RowsAffected, SqlStore,
    TableName, ACQUIRE_TIMEOUT, DEFAULT_PURGE_INTERVAL, LOAD_BATCHES,
};
use super::StoreError;

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
/// - **Indexes** (`#[session(index)]`): members in a side table `<table>_index` keyed by
///   (entry, session key), created with the table; listing reads one range of its primary
///   key, and the purge removes the members of ended sessions.
///
/// Cloning is cheap and shares the connection pool.
///
/// [`SaveMode::Merge`]: crate::SaveMode::Merge
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
    inner: Arc<SqlStore<Sqlite>>,
}

/// SQLite's SQL: `?N` placeholders, `ON CONFLICT` upserts and `json_patch`. Its behaviour is
/// the shared default: the statements need no lock, retry or batch of their own.
impl Dialect for Sqlite {
    const BACKEND: &'static str = "sqlite";

    fn queries(table: &TableName) -> Queries {
        let t = format!("\"{}\"", table.as_str());
        let index = format!("\"{}\"", table.index_name());
        let members = format!("\"{}\"", table.members_table());
        let upsert = format!(
            "INSERT INTO {t} (\"key\", data, created_at, expires_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (\"key\") DO UPDATE SET"
        );
        Queries {
            migrate: vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (\
                     \"key\" TEXT PRIMARY KEY NOT NULL, \
                     data TEXT NOT NULL, \
                     created_at INTEGER NOT NULL, \
                     expires_at INTEGER NOT NULL)"
                ),
                format!("CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at)"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {members} (\
                     entry TEXT NOT NULL, \
                     session_key TEXT NOT NULL, \
                     added_at INTEGER NOT NULL, \
                     PRIMARY KEY (entry, session_key)) WITHOUT ROWID"
                ),
            ],
            load: format!(
                "SELECT data, created_at, expires_at FROM {t} WHERE \"key\" = ?1 AND expires_at > ?2"
            ),
            // Overwrites only an expired row; a live one makes it change no row.
            create: format!(
                "{upsert} data = excluded.data, created_at = excluded.created_at, \
                 expires_at = excluded.expires_at WHERE {t}.expires_at <= ?5"
            ),
            // Saves only update a live row: a deleted or expired session stays gone.
            merge: format!(
                "UPDATE {t} SET data = json_patch(data, ?1), created_at = ?2, expires_at = ?3 \
                 WHERE \"key\" = ?4 AND expires_at > ?5"
            ),
            replace: format!(
                "UPDATE {t} SET data = ?1, created_at = ?2, expires_at = ?3 \
                 WHERE \"key\" = ?4 AND expires_at > ?5"
            ),
            touch: format!(
                "UPDATE {t} SET expires_at = ?1 WHERE \"key\" = ?2 AND expires_at > ?3"
            ),
            delete: format!("DELETE FROM {t} WHERE \"key\" = ?1"),
            purge: format!("DELETE FROM {t} WHERE expires_at <= ?1"),
            index_add: format!(
                "INSERT INTO {members} (entry, session_key, added_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (entry, session_key) DO UPDATE SET added_at = ?4"
            ),
            index_remove: format!("DELETE FROM {members} WHERE entry = ?1 AND session_key = ?2"),
            index_members: format!("SELECT session_key, added_at FROM {members} WHERE entry = ?1"),
            index_purge: format!(
                "DELETE FROM {members} WHERE added_at < ?1 AND NOT EXISTS \
                 (SELECT 1 FROM {t} WHERE {t}.\"key\" = {members}.session_key \
                 AND {t}.expires_at > ?2)"
            ),
            load_many: LOAD_BATCHES
                .iter()
                .map(|size| {
                    format!(
                        "SELECT \"key\", data, created_at, expires_at FROM {t} \
                         WHERE expires_at > ?1 AND \"key\" IN ({})",
                        placeholders('?', true, 2, *size)
                    )
                })
                .collect(),
        }
    }
}

impl RowsAffected for SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        SqliteQueryResult::rows_affected(self)
    }
}

impl SqliteStore {
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
        let inner = SqlStore::from_pool(pool);
        inner.migrate().await?;
        inner.spawn_purge_task(DEFAULT_PURGE_INTERVAL);
        Ok(Self { inner })
    }
}

/// Whether `url` names an in-memory database.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

sql_store_api! {
    store: SqliteStore,
    pool: SqlitePool;

    from_pool:
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

    with_table_name:
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

    migrate:
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

    spawn_purge_task:
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

    stop_purge_task:
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// let store = session_core::store::SqliteStore::connect("sqlite::memory:").await?;
    /// store.stop_purge_task(); // purge from a cron job instead
    /// # Ok(())
    /// # }
    /// ```

    pool:
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

    close:
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// let store = session_core::store::SqliteStore::connect("sqlite::memory:").await?;
    /// store.close().await;
    /// # Ok(())
    /// # }
    /// ```
}
