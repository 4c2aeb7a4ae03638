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
//! ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
//! CREATE TABLE IF NOT EXISTS `sessions_index` (   -- session index members
//!     entry       CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,  -- IndexEntry digest
//!     session_key CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,  -- StoreKey
//!     added_at    BIGINT NOT NULL,  -- Unix milliseconds
//!     PRIMARY KEY (entry, session_key)
//! ) ENGINE=InnoDB
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
//! - A save is one `UPDATE .. WHERE `key` = ? AND expires_at > now`, so it never brings back a
//!   deleted or expired row (a matched row counts as changed: sqlx connects with
//!   `CLIENT_FOUND_ROWS`); a merge sets `data = JSON_MERGE_PATCH(data, ?)`. InnoDB locks the
//!   row, so concurrent merges of different fields all land.
//! - `touch`: `UPDATE .. SET expires_at = ? WHERE `key` = ? AND expires_at > now`.
//! - The purge deletes in batches of 10 000 rows, so it never holds many locks at once.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlQueryResult};
use sqlx::MySql;

use super::sql::{
    backend_error, encode_fields, placeholders, sql_store_api, to_sql, write_args, Arg, Dialect,
    Driver, Queries, RowsAffected, SqlStore, TableName, LOAD_BATCHES,
};
use super::StoreError;
use crate::id::StoreKey;
use crate::record::{Record, Timestamp};

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
/// - **Indexes** (`#[session(index)]`): members in a side table `<table>_index` keyed by
///   (entry, session key), created with the table; listing reads one range of its primary
///   key, and the purge removes the members of ended sessions.
///
/// Expiry is judged by the app's clock, so keep the instances' clocks in sync (NTP).
/// Cloning is cheap and shares the connection pool.
///
/// [`SaveMode::Merge`]: crate::SaveMode::Merge
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
    inner: Arc<SqlStore<MySql>>,
}

/// MySQL's and MariaDB's SQL: `?` placeholders, `ON DUPLICATE KEY UPDATE` and
/// `JSON_MERGE_PATCH`, and one `CREATE TABLE` that declares the index too. It differs in
/// behaviour as well: `create` is an `INSERT` with a retry, the purge deletes in batches, and
/// saves are retried when InnoDB breaks a deadlock.
#[async_trait]
impl Dialect for MySql {
    const BACKEND: &'static str = "mysql";

    // So the purge never holds many locks at once.
    const PURGE_BATCH: Option<u64> = Some(PURGE_BATCH);

    fn queries(table: &TableName) -> Queries {
        let t = format!("`{}`", table.as_str());
        let index = format!("`{}`", table.index_name());
        let members = format!("`{}`", table.members_table());
        let insert =
            format!("INSERT INTO {t} (`key`, data, created_at, expires_at) VALUES (?, ?, ?, ?)");
        Queries {
            migrate: vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (\
                     `key` CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
                     data JSON NOT NULL, \
                     created_at BIGINT NOT NULL, \
                     expires_at BIGINT NOT NULL, \
                     PRIMARY KEY (`key`), \
                     INDEX {index} (expires_at)\
                     ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {members} (\
                     entry CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
                     session_key CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
                     added_at BIGINT NOT NULL, \
                     PRIMARY KEY (entry, session_key)\
                     ) ENGINE=InnoDB"
                ),
            ],
            load: format!(
                "SELECT CAST(data AS CHAR CHARACTER SET utf8mb4), created_at, expires_at \
                 FROM {t} WHERE `key` = ? AND expires_at > ?"
            ),
            // Saves only update a live row: a deleted or expired session stays gone. sqlx
            // connects with `CLIENT_FOUND_ROWS`, so a matched row counts even if unchanged.
            merge: format!(
                "UPDATE {t} SET data = JSON_MERGE_PATCH(data, ?), created_at = ?, expires_at = ? \
                 WHERE `key` = ? AND expires_at > ?"
            ),
            replace: format!(
                "UPDATE {t} SET data = ?, created_at = ?, expires_at = ? \
                 WHERE `key` = ? AND expires_at > ?"
            ),
            // A plain insert: see `create` below.
            create: insert,
            touch: format!("UPDATE {t} SET expires_at = ? WHERE `key` = ? AND expires_at > ?"),
            delete: format!("DELETE FROM {t} WHERE `key` = ?"),
            purge: format!("DELETE FROM {t} WHERE expires_at <= ? LIMIT {PURGE_BATCH}"),
            // The new time bound twice rather than `VALUES(added_at)`, which MySQL deprecates.
            index_add: format!(
                "INSERT INTO {members} (entry, session_key, added_at) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE added_at = ?"
            ),
            index_remove: format!("DELETE FROM {members} WHERE entry = ? AND session_key = ?"),
            index_members: format!(
                "SELECT CAST(session_key AS CHAR CHARACTER SET utf8mb4), added_at \
                 FROM {members} WHERE entry = ?"
            ),
            index_purge: format!(
                "DELETE FROM {members} WHERE added_at < ? AND NOT EXISTS \
                 (SELECT 1 FROM {t} WHERE {t}.`key` = {members}.session_key \
                 AND {t}.expires_at > ?) LIMIT {PURGE_BATCH}"
            ),
            load_many: LOAD_BATCHES
                .iter()
                .map(|size| {
                    format!(
                        "SELECT CAST(`key` AS CHAR CHARACTER SET utf8mb4), \
                         CAST(data AS CHAR CHARACTER SET utf8mb4), created_at, expires_at \
                         FROM {t} WHERE expires_at > ? AND `key` IN ({})",
                        placeholders('?', false, 2, *size)
                    )
                })
                .collect(),
        }
    }

    /// A plain `INSERT`, where the primary key decides collisions atomically. On a duplicate
    /// key it deletes the row if it has expired and inserts again; if nothing was deleted the
    /// key is live: a collision.
    ///
    /// Not the conditional upsert of the other backends: the rows-affected count of
    /// `INSERT .. ON DUPLICATE KEY UPDATE` cannot tell an insert from an untouched live row
    /// here, because sqlx always connects with `CLIENT_FOUND_ROWS`, which counts both as 1.
    async fn create(
        store: &SqlStore<Self>,
        key: &StoreKey,
        record: &Record,
    ) -> Result<bool, StoreError> {
        let data = encode_fields(&record.fields)?;
        let pool = store.migrated_pool().await?;
        // The insert takes no `now`: a live row is the primary key's to refuse.
        let args = write_args(key, &data, record);
        // Twice at most: a second duplicate means another create took the freed key.
        for _ in 0..2 {
            match Self::execute(pool, &store.sql().create, &args[..4]).await {
                Ok(_) => return Ok(true),
                Err(error) if is_duplicate_key(&error) => {
                    // Built here rather than with the other statements: only a create that
                    // meets an existing row runs it.
                    let free_expired = format!(
                        "DELETE FROM `{}` WHERE `key` = ? AND expires_at <= ?",
                        store.table().as_str()
                    );
                    let args = [Arg::Text(key.as_str()), Arg::Int(to_sql(Timestamp::now()))];
                    let freed = Self::execute(pool, &free_expired, &args)
                        .await
                        .map_err(backend_error)?;
                    if freed == 0 {
                        return Ok(false);
                    }
                }
                Err(error) => return Err(backend_error(error)),
            }
        }
        Ok(false)
    }

    /// A save that InnoDB rolled back to break a deadlock is safe to run again, up to
    /// [`DEADLOCK_ATTEMPTS`] tries in all.
    fn retry_save(error: &sqlx::Error, attempt: usize) -> bool {
        let retry = is_deadlock(error) && attempt < DEADLOCK_ATTEMPTS;
        if retry {
            tracing::debug!(attempt, "session write was a deadlock victim; retrying");
        }
        retry
    }
}

impl RowsAffected for MySqlQueryResult {
    fn rows_affected(&self) -> u64 {
        MySqlQueryResult::rows_affected(self)
    }
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

impl MySqlStore {
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
        // sqlx knows only the `mysql` scheme; MariaDB speaks the same protocol.
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_owned(),
        };
        let options = MySqlConnectOptions::from_str(&url).map_err(backend_error)?;
        Ok(Self {
            inner: SqlStore::connect_server(options).await?,
        })
    }
}

sql_store_api! {
    store: MySqlStore,
    pool: MySqlPool;

    from_pool:
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

    with_table_name:
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

    migrate:
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

    spawn_purge_task:
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

    stop_purge_task:
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// let store = session_core::store::MySqlStore::connect("mysql://app@127.0.0.1/app").await?;
    /// store.stop_purge_task();
    /// # Ok(())
    /// # }
    /// ```

    pool:
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

    close:
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// let store = session_core::store::MySqlStore::connect("mysql://app@127.0.0.1/app").await?;
    /// store.close().await;
    /// # Ok(())
    /// # }
    /// ```
}
