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
//! - A merge is one upsert, `data = s.data || EXCLUDED.data` (or `EXCLUDED.data` when the
//!   stored row has expired); `ON CONFLICT DO UPDATE` re-reads the latest row version under
//!   its lock, so concurrent merges of different fields all land.
//! - `touch`: `UPDATE .. SET expires_at = $1 WHERE "key" = $2 AND expires_at > now`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::sql::{
    backend_error, decode_record, encode_fields, spawn_purge_task, to_sql, HasPurgeSlot,
    InvalidTableName, PurgeSlot, TableName, ACQUIRE_TIMEOUT, DEFAULT_PURGE_INTERVAL,
};
use super::{Release, SessionLock, Store, StoreError};
use crate::id::StoreKey;
use crate::record::{Record, SaveMode, Timestamp};

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
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
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
            "INSERT INTO {t} AS s (\"key\", data, created_at, expires_at) \
             VALUES ($1, $2::jsonb, $3, $4) ON CONFLICT (\"key\") DO UPDATE SET"
        );
        Self {
            create_table: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 \"key\" TEXT PRIMARY KEY, \
                 data JSONB NOT NULL, \
                 created_at BIGINT NOT NULL, \
                 expires_at BIGINT NOT NULL)"
            ),
            create_index: format!("CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at)"),
            load: format!(
                "SELECT data::text, created_at, expires_at FROM {t} \
                 WHERE \"key\" = $1 AND expires_at > $2"
            ),
            // Overwrites only an expired row; a live one makes it change no row.
            create: format!(
                "{upsert} data = EXCLUDED.data, created_at = EXCLUDED.created_at, \
                 expires_at = EXCLUDED.expires_at WHERE s.expires_at <= $5"
            ),
            // An expired row is replaced whole: its fields must not come back to life.
            merge: format!(
                "{upsert} data = CASE WHEN s.expires_at <= $5 THEN EXCLUDED.data \
                 ELSE s.data || EXCLUDED.data END, \
                 created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at"
            ),
            replace: format!(
                "{upsert} data = EXCLUDED.data, created_at = EXCLUDED.created_at, \
                 expires_at = EXCLUDED.expires_at"
            ),
            touch: format!("UPDATE {t} SET expires_at = $1 WHERE \"key\" = $2 AND expires_at > $3"),
            delete: format!("DELETE FROM {t} WHERE \"key\" = $1"),
            purge: format!("DELETE FROM {t} WHERE expires_at <= $1"),
        }
    }
}

/// Creates the table and index on `conn`, serialised with other instances by an advisory
/// lock on the table name.
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
    for statement in [&sql.create_table, &sql.create_index] {
        sqlx::query(statement)
            .persistent(false)
            .execute(&mut *tx)
            .await
            .map_err(backend_error)?;
    }
    tx.commit().await.map_err(backend_error)
}

impl HasPurgeSlot for Inner {
    fn purge_slot(&self) -> &PurgeSlot {
        &self.purge
    }
}

impl Inner {
    /// The pool, once the table exists.
    async fn pool(&self) -> Result<&PgPool, StoreError> {
        self.migrated.get_or_try_init(|| self.migrate()).await?;
        Ok(&self.pool)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend_error)?;
        migrate_on(&mut conn, &self.table, &self.sql).await
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

impl PostgresStore {
    /// How often the purge task started by [`connect`](Self::connect) runs, on average.
    pub const DEFAULT_PURGE_INTERVAL: Duration = DEFAULT_PURGE_INTERVAL;

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
        // Without the pool, a refused connection fails now with its reason instead of being
        // retried until the acquire timeout.
        let mut first = tokio::time::timeout(ACQUIRE_TIMEOUT, options.connect())
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(backend_error)?;
        let store = Self::from_pool(
            PgPoolOptions::new()
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options),
        );
        let migrated = migrate_on(&mut first, &store.inner.table, &store.inner.sql).await;
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
    pub fn from_pool(pool: PgPool) -> Self {
        Self::build(pool, TableName::default_name())
    }

    fn build(pool: PgPool, table: TableName) -> Self {
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

    /// The same pool, with sessions in table `name` (created on first use, in the
    /// connection's current schema). A running purge task moves to the new table.
    ///
    /// # Errors
    /// [`InvalidTableName`] unless `name` is 1 to 48 ASCII letters, digits and underscores,
    /// not starting with a digit.
    ///
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
    /// use session_core::store::PostgresStore;
    ///
    /// let store = PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
    /// store.spawn_purge_task(Duration::from_secs(5 * 60));
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn_purge_task(&self, interval: Duration) -> JoinHandle<()> {
        spawn_purge_task(
            &self.inner,
            interval,
            "postgres",
            |inner: Arc<Inner>| async move { inner.purge_expired().await },
        )
    }

    /// Stops the purge task, if one runs: for example when a cron job purges instead.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// let store = session_core::store::PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
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
    /// use session_core::store::{sqlx, PostgresStore};
    ///
    /// let store = PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
    /// let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM sessions")
    ///     .fetch_one(store.pool())
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Stops the purge task and closes the pool, waiting for connections in use to be
    /// returned. Calls made afterwards fail with [`StoreError::Backend`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), session_core::StoreError> {
    /// let store = session_core::store::PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
    /// store.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(&self) {
        self.inner.purge.stop();
        self.inner.pool.close().await;
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.inner.table.as_str())
            .field("purge_interval", &self.inner.purge.interval())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for PostgresStore {
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
        let lock_id = advisory_lock_id(key);
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            let mut transaction = self
                .inner
                .pool()
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
            transaction.rollback().await.map_err(backend_error)?;
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(25));
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
