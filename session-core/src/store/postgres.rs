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
//! CREATE TABLE IF NOT EXISTS "sessions_index" (   -- session index members
//!     entry       TEXT NOT NULL,     -- IndexEntry digest: 64 lowercase hex characters
//!     session_key TEXT NOT NULL,     -- StoreKey
//!     added_at    BIGINT NOT NULL,   -- Unix milliseconds
//!     PRIMARY KEY (entry, session_key)
//! );
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

use super::lock::{lock_token, retry_lock};
use super::sql::{
    backend_error, placeholders, sql_store_api, to_sql, Dialect, Queries, RowsAffected, SqlStore,
    TableName, LOAD_BATCHES,
};
use super::{Release, SessionLock, StoreError};
use crate::id::StoreKey;
use crate::record::Timestamp;

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
        let locks = lock_table(table);
        let members = format!("\"{}\"", table.members_table());
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
                // Per-session lock leases: see `Store::lock` below.
                format!(
                    "CREATE TABLE IF NOT EXISTS {locks} (\
                     \"key\" TEXT PRIMARY KEY, \
                     token TEXT NOT NULL, \
                     expires_at BIGINT NOT NULL)"
                ),
                // Session index members. `TEXT` as the sessions' key, not `CHAR(64)`: the
                // statements bind text, and `bpchar = text` would not use the primary key.
                format!(
                    "CREATE TABLE IF NOT EXISTS {members} (\
                     entry TEXT NOT NULL, \
                     session_key TEXT NOT NULL, \
                     added_at BIGINT NOT NULL, \
                     PRIMARY KEY (entry, session_key))"
                ),
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
            // Lapsed lock leases go with the expired sessions; the count is the sessions'.
            purge: format!(
                "WITH lapsed AS (DELETE FROM {locks} WHERE expires_at <= $1) \
                 DELETE FROM {t} WHERE expires_at <= $1"
            ),
            index_add: format!(
                "INSERT INTO {members} (entry, session_key, added_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (entry, session_key) DO UPDATE SET added_at = $4"
            ),
            index_remove: format!("DELETE FROM {members} WHERE entry = $1 AND session_key = $2"),
            index_members: format!("SELECT session_key, added_at FROM {members} WHERE entry = $1"),
            index_purge: format!(
                "DELETE FROM {members} m WHERE m.added_at < $1 AND NOT EXISTS \
                 (SELECT 1 FROM {t} s WHERE s.\"key\" = m.session_key AND s.expires_at > $2)"
            ),
            load_many: LOAD_BATCHES
                .iter()
                .map(|size| {
                    format!(
                        "SELECT \"key\", data::text, created_at, expires_at FROM {t} \
                         WHERE expires_at > $1 AND \"key\" IN ({})",
                        placeholders('$', true, 2, *size)
                    )
                })
                .collect(),
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

    /// Takes the lease of `key`, waiting at most `wait`: see [`Store::lock`](super::Store::lock)
    /// below.
    async fn lease_lock(
        &self,
        key: &StoreKey,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        let locks = lock_table(self.inner.table());
        let take = format!(
            "INSERT INTO {locks} AS l (\"key\", token, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (\"key\") DO UPDATE SET token = EXCLUDED.token, \
             expires_at = EXCLUDED.expires_at WHERE l.expires_at <= $4"
        );
        let token = lock_token()?;
        let pool = self.inner.migrated_pool().await?;
        retry_lock(wait, || async {
            let now = Timestamp::now();
            let taken = sqlx::query(&take)
                .bind(key.as_str())
                .bind(&token)
                .bind(to_sql(now.saturating_add(lease)))
                .bind(to_sql(now))
                .execute(pool)
                .await
                .map_err(backend_error)?
                .rows_affected();
            Ok((taken == 1).then(|| {
                SessionLock::new(PgUnlease {
                    pool: pool.clone(),
                    statement: format!("DELETE FROM {locks} WHERE \"key\" = $1 AND token = $2"),
                    key: *key,
                    token: token.clone(),
                })
            }))
        })
        .await
    }
}

/// The quoted name of the lock table of the sessions table `table`.
fn lock_table(table: &TableName) -> String {
    format!("\"{}_locks\"", table.as_str())
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

        /// A lease row in the table `<sessions table>_locks`: an `INSERT .. ON CONFLICT DO
        /// UPDATE .. WHERE expires_at <= now` that takes the key if it is free or its lease
        /// has run out, with the holder's random token and a deadline `lease` from now;
        /// released by deleting the row if it still holds this token. No connection is held
        /// between the statements, so locked requests need no more connections than unlocked
        /// ones and cannot drain the pool. A waiting request tries again with a growing pause
        /// (2 ms to 25 ms) until `wait` runs out. A holder that stalls past its lease loses
        /// the lock to the next request; lapsed rows are removed by the purge.
        async fn lock(
            &self,
            key: &StoreKey,
            lease: Duration,
            wait: Duration,
        ) -> Result<Option<SessionLock>, StoreError> {
            self.lease_lock(key, lease, wait).await
        }
    }
}

/// Gives a lease back: deletes its row if it still holds this holder's token.
struct PgUnlease {
    pool: PgPool,
    statement: String,
    key: StoreKey,
    token: String,
}

#[async_trait]
impl Release for PgUnlease {
    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        sqlx::query(&self.statement)
            .bind(self.key.as_str())
            .bind(&self.token)
            .execute(&self.pool)
            .await
            .map_err(backend_error)?;
        Ok(())
    }
}
