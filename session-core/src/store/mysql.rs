//! The MySQL and MariaDB store.
//!
//! # Schema
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS `sessions` (
//!     `key`      CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,  -- StoreKey
//!     data       JSON NOT NULL,     -- {"field": "<encoded JSON text>", ...}
//!     created_at BIGINT NOT NULL,   -- Unix milliseconds
//!     expires_at BIGINT NOT NULL,   -- Unix milliseconds
//!     PRIMARY KEY (`key`),
//!     INDEX `sessions_expires_at_idx` (expires_at)
//! ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
//! ```
//!
//! On MariaDB `JSON` is `LONGTEXT` with a `JSON_VALID` check; on MySQL it is the binary JSON
//! type. Either way field values are JSON strings, so they round-trip byte for byte.
//!
//! # Statements
//!
//! - Reads filter on `expires_at > now`, so expired rows are invisible before any purge.
//! - `create` is a plain `INSERT`; the primary key decides collisions atomically. On a
//!   duplicate key it deletes the row if it has expired
//!   (`DELETE .. WHERE `key` = ? AND expires_at <= now`) and inserts again; if nothing was
//!   deleted the key is live and `create` reports a collision. (The rows-affected count of
//!   `INSERT .. ON DUPLICATE KEY UPDATE` cannot tell an insert from an untouched live row
//!   here: sqlx always connects with `CLIENT_FOUND_ROWS`, which counts both as 1.)
//! - A merge is one `INSERT .. ON DUPLICATE KEY UPDATE` with
//!   `data = IF(expires_at <= now, VALUES(data), JSON_MERGE_PATCH(data, VALUES(data)))`;
//!   InnoDB locks the row, so concurrent merges of different fields all land. Assignments in
//!   that clause see the columns already assigned, so `expires_at` is assigned last.
//!   `VALUES()` is used rather than MySQL 8's row alias, which MariaDB lacks.
//! - `touch`: `UPDATE .. SET expires_at = ? WHERE `key` = ? AND expires_at > now`.
//! - The purge deletes in batches of 10 000 rows, so it never holds many locks at once.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::sql::{
    backend_error, decode_record, encode_fields, spawn_purge_task, to_sql, HasPurgeSlot,
    InvalidTableName, PurgeSlot, TableName, ACQUIRE_TIMEOUT, DEFAULT_PURGE_INTERVAL,
};
use super::{Store, StoreError};
use crate::id::StoreKey;
use crate::record::{Record, SaveMode, Timestamp};

/// Rows deleted per purge statement.
const PURGE_BATCH: u64 = 10_000;

/// How many times a write that InnoDB chose as a deadlock victim is tried in all.
const DEADLOCK_ATTEMPTS: usize = 3;

/// Sessions in MySQL or MariaDB: a production database store, shared by any number of app
/// instances.
///
/// - **Schema**: one row per session in a table (`sessions` unless
///   [`with_table_name`](Self::with_table_name) says otherwise): the store key, the fields as
///   a JSON object of strings (so each value round-trips byte for byte), and the creation and
///   expiry times in Unix milliseconds. The table and an index on the expiry are created by
///   [`connect`](Self::connect), by [`migrate`](Self::migrate), or on first use.
/// - **Expiry**: expired rows are never read, even before they are purged; the purge task
///   ([`spawn_purge_task`](Self::spawn_purge_task), started by `connect`) deletes them.
/// - **Partial writes**: [`SaveMode::Merge`] merges the changed fields with
///   `JSON_MERGE_PATCH` in one statement, so two requests (on any instances) changing
///   different fields both keep their change.
///
/// Expiry is judged by the app's clock, so keep the instances' clocks in sync (NTP).
/// Cloning is cheap and shares the connection pool.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use session_core::store::{MySqlStore, Store};
///
/// let store: Arc<dyn Store> = Arc::new(MySqlStore::connect("mysql://app@db.internal/app").await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MySqlStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: MySqlPool,
    table: TableName,
    sql: Queries,
    migrated: OnceCell<()>,
    purge: PurgeSlot,
}

/// The statements for one table, built once.
struct Queries {
    create_table: String,
    load: String,
    insert: String,
    free_expired: String,
    merge: String,
    replace: String,
    touch: String,
    delete: String,
    purge: String,
}

impl Queries {
    fn new(table: &TableName) -> Self {
        let t = format!("`{}`", table.as_str());
        let index = format!("`{}`", table.index_name());
        let insert =
            format!("INSERT INTO {t} (`key`, data, created_at, expires_at) VALUES (?, ?, ?, ?)");
        Self {
            create_table: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 `key` CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
                 data JSON NOT NULL, \
                 created_at BIGINT NOT NULL, \
                 expires_at BIGINT NOT NULL, \
                 PRIMARY KEY (`key`), \
                 INDEX {index} (expires_at)\
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            ),
            load: format!(
                "SELECT CAST(data AS CHAR CHARACTER SET utf8mb4), created_at, expires_at \
                 FROM {t} WHERE `key` = ? AND expires_at > ?"
            ),
            free_expired: format!("DELETE FROM {t} WHERE `key` = ? AND expires_at <= ?"),
            // The condition reads the stored `expires_at`, so it must come before the
            // assignment to `expires_at`. An expired row is replaced whole.
            merge: format!(
                "{insert} ON DUPLICATE KEY UPDATE \
                 data = IF(expires_at <= ?, VALUES(data), JSON_MERGE_PATCH(data, VALUES(data))), \
                 created_at = VALUES(created_at), \
                 expires_at = VALUES(expires_at)"
            ),
            replace: format!(
                "{insert} ON DUPLICATE KEY UPDATE data = VALUES(data), \
                 created_at = VALUES(created_at), expires_at = VALUES(expires_at)"
            ),
            insert,
            touch: format!("UPDATE {t} SET expires_at = ? WHERE `key` = ? AND expires_at > ?"),
            delete: format!("DELETE FROM {t} WHERE `key` = ?"),
            purge: format!("DELETE FROM {t} WHERE expires_at <= ? LIMIT {PURGE_BATCH}"),
        }
    }
}

async fn migrate_on(conn: &mut MySqlConnection, sql: &Queries) -> Result<(), StoreError> {
    sqlx::query(&sql.create_table)
        .persistent(false)
        .execute(conn)
        .await
        .map_err(backend_error)?;
    Ok(())
}

/// Whether `error` is a duplicate primary key.
fn is_duplicate_key(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}

/// Whether InnoDB rolled the statement back to break a deadlock (error 1213), in which case
/// it is safe to run it again.
fn is_deadlock(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|db| db.code().as_deref() == Some("40001"))
}

impl HasPurgeSlot for Inner {
    fn purge_slot(&self) -> &PurgeSlot {
        &self.purge
    }
}

impl Inner {
    /// The pool, once the table exists.
    async fn pool(&self) -> Result<&MySqlPool, StoreError> {
        self.migrated.get_or_try_init(|| self.migrate()).await?;
        Ok(&self.pool)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend_error)?;
        migrate_on(&mut conn, &self.sql).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let pool = self.pool().await?;
        let now = to_sql(Timestamp::now());
        let mut removed = 0;
        loop {
            let done = sqlx::query(&self.sql.purge)
                .bind(now)
                .execute(pool)
                .await
                .map_err(backend_error)?;
            removed += done.rows_affected();
            if done.rows_affected() < PURGE_BATCH {
                return Ok(removed);
            }
        }
    }
}

impl MySqlStore {
    /// How often the purge task started by [`connect`](Self::connect) runs, on average.
    pub const DEFAULT_PURGE_INTERVAL: Duration = DEFAULT_PURGE_INTERVAL;

    /// Connects to the database at `url` (`mysql://USER[:PASSWORD]@HOST[:PORT]/DB`;
    /// `mariadb://` is accepted too), creates the `sessions` table if needed and starts the
    /// purge task.
    ///
    /// One connection is opened at once, so an unreachable server or a bad password fails
    /// here with its reason; the pool then opens connections as needed (at most 10) and
    /// waits at most 10 s for one.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the URL is malformed or the server refuses the
    /// connection or the statements; [`StoreError::Timeout`] when it does not answer in 10 s.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// use session_core::store::MySqlStore;
    ///
    /// let store = MySqlStore::connect("mysql://app:secret@127.0.0.1:3306/app").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_owned(),
        };
        let options = MySqlConnectOptions::from_str(&url).map_err(backend_error)?;
        // Without the pool, a refused connection fails now with its reason instead of being
        // retried until the acquire timeout.
        let mut first = tokio::time::timeout(ACQUIRE_TIMEOUT, options.connect())
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(backend_error)?;
        let store = Self::from_pool(
            MySqlPoolOptions::new()
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options),
        );
        let migrated = migrate_on(&mut first, &store.inner.sql).await;
        // The connection has done its job; a failure to say goodbye changes nothing.
        let _ = first.close().await;
        migrated?;
        let _ = store.inner.migrated.set(());
        store.spawn_purge_task(DEFAULT_PURGE_INTERVAL);
        Ok(store)
    }

    /// A store on a pool you configured. Does no I/O: the table is created on first use (or
    /// call [`migrate`](Self::migrate)), and no purge task runs until you
    /// [start one](Self::spawn_purge_task).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use session_core::store::sqlx::mysql::MySqlPoolOptions;
    /// use session_core::store::MySqlStore;
    ///
    /// let pool = MySqlPoolOptions::new()
    ///     .max_connections(20)
    ///     .connect("mysql://app@127.0.0.1/app")
    ///     .await?;
    /// let store = MySqlStore::from_pool(pool).with_table_name("web_sessions")?;
    /// store.migrate().await?;
    /// store.spawn_purge_task(Duration::from_secs(600));
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_pool(pool: MySqlPool) -> Self {
        Self::build(pool, TableName::default_name())
    }

    fn build(pool: MySqlPool, table: TableName) -> Self {
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
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = session_core::store::sqlx::MySqlPool::connect("mysql://app@127.0.0.1/app").await?;
    /// use session_core::store::MySqlStore;
    ///
    /// let store = MySqlStore::from_pool(pool).with_table_name("web_sessions")?;
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
    /// [`StoreError`] when no connection can be had or the server refuses the statement
    /// (for example for lack of the `CREATE` privilege).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = session_core::store::sqlx::MySqlPool::connect("mysql://app@127.0.0.1/app").await?;
    /// let store = session_core::store::MySqlStore::from_pool(pool);
    /// store.migrate().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await?;
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
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// use std::time::Duration;
    /// use session_core::store::MySqlStore;
    ///
    /// let store = MySqlStore::connect("mysql://app@127.0.0.1/app").await?;
    /// store.spawn_purge_task(Duration::from_secs(5 * 60));
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn_purge_task(&self, interval: Duration) -> JoinHandle<()> {
        spawn_purge_task(
            &self.inner,
            interval,
            "mysql",
            |inner: Arc<Inner>| async move { inner.purge_expired().await },
        )
    }

    /// Stops the purge task, if one runs: for example when a cron job purges instead.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// let store = session_core::store::MySqlStore::connect("mysql://app@127.0.0.1/app").await?;
    /// store.stop_purge_task();
    /// # Ok(())
    /// # }
    /// ```
    pub fn stop_purge_task(&self) {
        self.inner.purge.stop();
    }

    /// The connection pool, for queries of your own.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use session_core::store::{sqlx, MySqlStore};
    ///
    /// let store = MySqlStore::connect("mysql://app@127.0.0.1/app").await?;
    /// let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM sessions")
    ///     .fetch_one(store.pool())
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pool(&self) -> &MySqlPool {
        &self.inner.pool
    }

    /// Stops the purge task and closes the pool, waiting for connections in use to be
    /// returned. Calls made afterwards fail with [`StoreError::Backend`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// let store = session_core::store::MySqlStore::connect("mysql://app@127.0.0.1/app").await?;
    /// store.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(&self) {
        self.inner.purge.stop();
        self.inner.pool.close().await;
    }

    /// Runs one upsert, again if InnoDB picked it as a deadlock victim.
    async fn upsert(
        &self,
        statement: &str,
        key: &StoreKey,
        data: &str,
        record: &Record,
        with_now: bool,
    ) -> Result<(), StoreError> {
        let pool = self.inner.pool().await?;
        let mut attempt = 1;
        loop {
            let mut query = sqlx::query(statement).bind(key.as_str()).bind(data);
            query = query
                .bind(to_sql(record.created_at))
                .bind(to_sql(record.expires_at));
            if with_now {
                query = query.bind(to_sql(Timestamp::now()));
            }
            match query.execute(pool).await {
                Ok(_) => return Ok(()),
                Err(error) if is_deadlock(&error) && attempt < DEADLOCK_ATTEMPTS => {
                    tracing::debug!(attempt, "session write was a deadlock victim; retrying");
                    attempt += 1;
                }
                Err(error) => return Err(backend_error(error)),
            }
        }
    }
}

impl std::fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlStore")
            .field("table", &self.inner.table.as_str())
            .field("purge_interval", &self.inner.purge.interval())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for MySqlStore {
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
        let pool = self.inner.pool().await?;
        // Twice at most: a second duplicate means another create took the freed key.
        for _ in 0..2 {
            let inserted = sqlx::query(&self.inner.sql.insert)
                .bind(key.as_str())
                .bind(data.as_str())
                .bind(to_sql(record.created_at))
                .bind(to_sql(record.expires_at))
                .execute(pool)
                .await;
            match inserted {
                Ok(_) => return Ok(true),
                Err(error) if is_duplicate_key(&error) => {
                    let freed = sqlx::query(&self.inner.sql.free_expired)
                        .bind(key.as_str())
                        .bind(to_sql(Timestamp::now()))
                        .execute(pool)
                        .await
                        .map_err(backend_error)?;
                    if freed.rows_affected() == 0 {
                        return Ok(false);
                    }
                }
                Err(error) => return Err(backend_error(error)),
            }
        }
        Ok(false)
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<(), StoreError> {
        let data = encode_fields(&record.fields)?;
        match mode {
            SaveMode::Merge => {
                self.upsert(&self.inner.sql.merge, key, &data, record, true)
                    .await
            }
            SaveMode::Replace => {
                self.upsert(&self.inner.sql.replace, key, &data, record, false)
                    .await
            }
        }
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
