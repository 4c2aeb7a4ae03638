//! The PostgreSQL store.
//!
//! # Schema
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "sessions" (
//!     "key"      TEXT PRIMARY KEY,   -- StoreKey: 64 lowercase hex characters
//!     data       JSONB NOT NULL,     -- {"field": "<encoded JSON text>", ...}
//!     created_at BIGINT NOT NULL,    -- Unix milliseconds
//!     expires_at BIGINT NOT NULL     -- Unix milliseconds
//! );
//! CREATE INDEX IF NOT EXISTS "sessions_expires_at_idx" ON "sessions" (expires_at);
//! ```
//!
//! Field values are JSON strings inside the `jsonb` object, so `jsonb`'s normalisation (key
//! order, whitespace, number forms) never touches them. The table is created inside a
//! transaction holding an advisory lock, so app instances starting together do not race on
//! `CREATE TABLE IF NOT EXISTS`.
//!
//! # Statements
//!
//! - Reads filter on `expires_at > now`, so expired rows are invisible before any purge.
//! - `create`: `INSERT .. ON CONFLICT ("key") DO UPDATE SET .. WHERE s.expires_at <= now`,
//!   a collision when it changed no row. PostgreSQL locks the conflicting row, so of two
//!   concurrent creates exactly one wins.
//! - A save is one `UPDATE .. WHERE "key" = $4 AND expires_at > now`, so it never brings back a
//!   deleted or expired row; a merge sets `data = data || $1::jsonb`. An `UPDATE` re-reads the
//!   latest row version under its row lock, so concurrent merges of different fields all land.
//! - `touch`: `UPDATE .. SET expires_at = $1 WHERE "key" = $2 AND expires_at > now`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgQueryResult};
use sqlx::{Connection, Postgres};

use super::lock::retry_lock;
use super::sql::{
    backend_error, sql_store_api, Dialect, Queries, RowsAffected, SqlStore, TableName,
};
use super::{Release, SessionLock, StoreError};
use crate::id::StoreKey;

/// Sessions in PostgreSQL: the production database store, shared by any number of app
/// instances.
///
/// - **Schema**: one row per session in a table (`sessions` unless
///   [`with_table_name`](Self::with_table_name) says otherwise): the store key, the fields as
///   a `jsonb` object of strings (so each value round-trips byte for byte), and the creation
///   and expiry times in Unix milliseconds. The table and an index on the expiry are created
///   by [`connect`](Self::connect), by [`migrate`](Self::migrate), or on first use.
/// - **Expiry**: expired rows are never read, even before they are purged; the purge task
///   ([`spawn_purge_task`](Self::spawn_purge_task), started by `connect`) deletes them.
/// - **Partial writes**: [`SaveMode::Merge`] merges the changed fields with `jsonb ||` in one
///   statement, so two requests (on any instances) changing different fields both keep their
///   change.
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
/// use session_core::store::{PostgresStore, Store};
///
/// let store: Arc<dyn Store> = Arc::new(PostgresStore::connect("postgres://app@db.internal/app").await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<SqlStore<Postgres>>,
}

/// PostgreSQL's SQL: `$N` placeholders, `ON CONFLICT` upserts and `jsonb ||`; and its own
/// migration, serialised between instances by an advisory lock.
#[async_trait]
impl Dialect for Postgres {
    const BACKEND: &'static str = "postgres";

    fn queries(table: &TableName) -> Queries {
        let t = format!("\"{}\"", table.as_str());
        let index = format!("\"{}\"", table.index_name());
        let upsert = format!(
            "INSERT INTO {t} AS s (\"key\", data, created_at, expires_at) \
             VALUES ($1, $2::jsonb, $3, $4) ON CONFLICT (\"key\") DO UPDATE SET"
        );
        Queries {
            migrate: vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (\
                     \"key\" TEXT PRIMARY KEY, \
                     data JSONB NOT NULL, \
                     created_at BIGINT NOT NULL, \
                     expires_at BIGINT NOT NULL)"
                ),
                format!("CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at)"),
            ],
            load: format!(
                "SELECT data::text, created_at, expires_at FROM {t} \
                 WHERE \"key\" = $1 AND expires_at > $2"
            ),
            // Overwrites only an expired row; a live one makes it change no row.
            create: format!(
                "{upsert} data = EXCLUDED.data, created_at = EXCLUDED.created_at, \
                 expires_at = EXCLUDED.expires_at WHERE s.expires_at <= $5"
            ),
            // Saves only update a live row: a deleted or expired session stays gone.
            merge: format!(
                "UPDATE {t} SET data = data || $1::jsonb, created_at = $2, expires_at = $3 \
                 WHERE \"key\" = $4 AND expires_at > $5"
            ),
            replace: format!(
                "UPDATE {t} SET data = $1::jsonb, created_at = $2, expires_at = $3 \
                 WHERE \"key\" = $4 AND expires_at > $5"
            ),
            touch: format!("UPDATE {t} SET expires_at = $1 WHERE \"key\" = $2 AND expires_at > $3"),
            delete: format!("DELETE FROM {t} WHERE \"key\" = $1"),
            purge: format!("DELETE FROM {t} WHERE expires_at <= $1"),
        }
    }

    /// Creates the table and index in a transaction that holds an advisory lock on the table
    /// name, so app instances starting together do not race on `CREATE TABLE IF NOT EXISTS`.
    async fn migrate_on(
        conn: &mut PgConnection,
        table: &TableName,
        sql: &Queries,
    ) -> Result<(), StoreError> {
        let mut tx = conn.begin().await.map_err(backend_error)?;
        // "relation already exists, skipping" notices are expected on every start.
        sqlx::query("SET LOCAL client_min_messages = warning")
            .execute(&mut *tx)
            .await
            .map_err(backend_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("session_core:{}", table.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(backend_error)?;
        for statement in &sql.migrate {
            sqlx::query(statement)
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(backend_error)?;
        }
        tx.commit().await.map_err(backend_error)
    }
}

impl RowsAffected for PgQueryResult {
    fn rows_affected(&self) -> u64 {
        PgQueryResult::rows_affected(self)
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`),
    /// creates the `sessions` table if needed and starts the purge task.
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
    /// use session_core::store::PostgresStore;
    ///
    /// let store = PostgresStore::connect("postgres://app:secret@127.0.0.1:5432/app").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(backend_error)?;
        Ok(Self {
            inner: SqlStore::connect_server(options).await?,
        })
    }

    /// Takes the advisory lock of `key`, waiting at most `wait`: see
    /// [`Store::lock`](super::Store::lock) below.
    async fn advisory_lock(
        &self,
        key: &StoreKey,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        let lock_id = advisory_lock_id(key);
        retry_lock(wait, || async {
            let mut transaction = self
                .inner
                .migrated_pool()
                .await?
                .begin()
                .await
                .map_err(backend_error)?;
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(lock_id)
                .fetch_one(&mut *transaction)
                .await
                .map_err(backend_error)?;
            if taken {
                return Ok(Some(SessionLock::new(PgUnlock { transaction })));
            }
            // Give the connection back while waiting.
            transaction.rollback().await.map_err(backend_error)?;
            Ok(None)
        })
        .await
    }
}

sql_store_api! {
    store: PostgresStore,
    pool: PgPool;

    from_pool:
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use session_core::store::sqlx::postgres::PgPoolOptions;
    /// use session_core::store::PostgresStore;
    ///
    /// let pool = PgPoolOptions::new()
    ///     .max_connections(20)
    ///     .connect("postgres://app@127.0.0.1/app")
    ///     .await?;
    /// let store = PostgresStore::from_pool(pool).with_table_name("web_sessions")?;
    /// store.migrate().await?;
    /// store.spawn_purge_task(Duration::from_secs(600));
    /// # Ok(())
    /// # }
    /// ```

    with_table_name:
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = session_core::store::sqlx::PgPool::connect("postgres://app@127.0.0.1/app").await?;
    /// use session_core::store::PostgresStore;
    ///
    /// let store = PostgresStore::from_pool(pool).with_table_name("web_sessions")?;
    /// assert_eq!(store.table_name(), "web_sessions");
    /// # Ok(())
    /// # }
    /// ```

    migrate:
    /// # Errors
    /// [`StoreError`] when no connection can be had or the server refuses the statements
    /// (for example for lack of the `CREATE` privilege).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = session_core::store::sqlx::PgPool::connect("postgres://app@127.0.0.1/app").await?;
    /// let store = session_core::store::PostgresStore::from_pool(pool);
    /// store.migrate().await?;
    /// # Ok(())
    /// # }
    /// ```

    spawn_purge_task:
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// use std::time::Duration;
    /// use session_core::store::PostgresStore;
    ///
    /// let store = PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
    /// store.spawn_purge_task(Duration::from_secs(5 * 60));
    /// # Ok(())
    /// # }
    /// ```

    stop_purge_task:
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// let store = session_core::store::PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
    /// store.stop_purge_task();
    /// # Ok(())
    /// # }
    /// ```

    pool:
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use session_core::store::{sqlx, PostgresStore};
    ///
    /// let store = PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
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
    /// let store = session_core::store::PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
    /// store.close().await;
    /// # Ok(())
    /// # }
    /// ```

    impl Store {
        fn supports_locks(&self) -> bool {
            true
        }

        /// A transaction-level advisory lock (`pg_try_advisory_xact_lock`) on a number derived
        /// from the key, held in an open transaction until release. A waiting request does not
        /// keep a connection: each try takes one from the pool and gives it back when the lock is
        /// busy, with a growing pause (2 ms to 25 ms) between tries. If the holder's process
        /// dies, its connection closes and the lock goes with it, so `lease` is not needed.
        async fn lock(
            &self,
            key: &StoreKey,
            _lease: Duration,
            wait: Duration,
        ) -> Result<Option<SessionLock>, StoreError> {
            self.advisory_lock(key, wait).await
        }
    }
}

/// The advisory lock number of a session: the first 60 bits of its (already hashed) key.
fn advisory_lock_id(key: &StoreKey) -> i64 {
    key.as_str()
        .get(..15)
        .and_then(|hex| i64::from_str_radix(hex, 16).ok())
        .unwrap_or_default()
}

/// Ends the transaction that holds a session's advisory lock, which releases it.
struct PgUnlock {
    transaction: sqlx::Transaction<'static, sqlx::Postgres>,
}

#[async_trait]
impl Release for PgUnlock {
    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        self.transaction.rollback().await.map_err(backend_error)
    }
}
