//! connect-pg-simple's table, shared with a Node app: [`ConnectPgStore`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{not_express, ExpressObject, DEFAULT_TTL};
use crate::id::StoreKey;
use crate::record::{Record, SaveMode, Timestamp};
use crate::store::sql::{backend_error, TableName};
use crate::store::{InvalidTableName, Store, StoreError};

/// connect-pg-simple's default table.
const DEFAULT_TABLE: &str = "session";
/// How long a call waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sessions in PostgreSQL as connect-pg-simple keeps them, so an express-session app and this
/// one share them: use it with [`SessionLayer::express`](crate::SessionLayer::express).
///
/// ```no_run
/// use session_core::store::ConnectPgStore;
/// use session_core::{ExpressSecrets, SessionLayer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // `new (require('connect-pg-simple')(session))({ pool })` on the Node side:
/// let store = ConnectPgStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// let layer = SessionLayer::express(store, ExpressSecrets::new("keyboard cat")?).check()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// The table is connect-pg-simple's `table.sql` (created by [`connect`](Self::connect) if it
/// is missing, as connect-pg-simple's `createTableIfMissing` does):
///
/// ```sql
/// CREATE TABLE "session" (
///   "sid" varchar NOT NULL COLLATE "default" PRIMARY KEY,
///   "sess" json NOT NULL,
///   "expire" timestamp(6) NOT NULL
/// );
/// CREATE INDEX "IDX_session_expire" ON "session" ("expire");
/// ```
///
/// - `sid` is the session id itself, `sess` the JSON of the session object (see the
///   [module docs](super)); the `json` type keeps the text as written.
/// - `expire` is `cookie.expires` rounded up to the second, or a day from now when the cookie
///   has none, as connect-pg-simple computes it; rows past it are never read. The timestamp
///   has no time zone: both apps must use the same session `TimeZone` (UTC; this store's
///   connections use UTC).
/// - A save reads the row `FOR UPDATE`, sets its changed keys on what it read and writes it
///   back in one transaction: the Node app's write of the same session waits for it, and a
///   change the Node app made before is built on, not undone.
/// - A touch updates `expire` only. Expired rows are deleted by
///   [`purge_expired`](Store::purge_expired) (connect-pg-simple prunes on its own timer too).
#[derive(Clone)]
pub struct ConnectPgStore {
    pool: PgPool,
    table: TableName,
}

impl ConnectPgStore {
    /// Connects to PostgreSQL and creates the `session` table if it is missing.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the URL is malformed or the server refuses the connection
    /// or the statements.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(backend_error)?;
        let pool = PgPoolOptions::new()
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(backend_error)?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// The store on a pool you configured yourself (no table is created: call
    /// [`migrate`](Self::migrate)).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            table: TableName::new(DEFAULT_TABLE).unwrap_or_else(|_| TableName::default_name()),
        }
    }

    /// The same pool with table `name`: connect-pg-simple's `tableName` option. Call
    /// [`migrate`](Self::migrate) to create it.
    ///
    /// # Errors
    /// [`InvalidTableName`] unless `name` is 1 to 48 ASCII letters, digits and underscores,
    /// not starting with a digit.
    pub fn with_table_name(mut self, name: &str) -> Result<Self, InvalidTableName> {
        self.table = TableName::new(name)?;
        Ok(self)
    }

    /// The table's name.
    pub fn table_name(&self) -> &str {
        self.table.as_str()
    }

    /// Creates the table and its index if they are missing, under an advisory lock so that
    /// instances starting together do not race.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the statements fail.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let table = self.table.as_str();
        let mut tx = self.pool.begin().await.map_err(backend_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("connect-pg-simple:{table}"))
            .execute(&mut *tx)
            .await
            .map_err(backend_error)?;
        sqlx::query(&format!(
            r#"CREATE TABLE IF NOT EXISTS "{table}" (
                "sid" varchar NOT NULL COLLATE "default",
                "sess" json NOT NULL,
                "expire" timestamp(6) NOT NULL,
                CONSTRAINT "{table}_pkey" PRIMARY KEY ("sid"))"#
        ))
        .execute(&mut *tx)
        .await
        .map_err(backend_error)?;
        sqlx::query(&format!(
            r#"CREATE INDEX IF NOT EXISTS "IDX_{table}_expire" ON "{table}" ("expire")"#
        ))
        .execute(&mut *tx)
        .await
        .map_err(backend_error)?;
        tx.commit().await.map_err(backend_error)
    }

    fn sid(key: &StoreKey) -> Result<String, StoreError> {
        Ok(key
            .unhashed_id()
            .ok_or_else(not_express)?
            .as_str()
            .to_owned())
    }
}

/// Seconds since the epoch, as `to_timestamp` takes them.
fn epoch_seconds(time: Timestamp) -> f64 {
    // Milliseconds fit a double exactly until the year 287 396.
    time.as_millis() as f64 / 1000.0
}

/// The `expire` connect-pg-simple writes for `object`: `cookie.expires` rounded up to the
/// second, or a day from `now`.
fn expire_of(object: &ExpressObject, now: Timestamp) -> f64 {
    let expires = object
        .cookie_expires()
        .unwrap_or_else(|| now.saturating_add(DEFAULT_TTL));
    (expires.as_millis().div_ceil(1000)) as f64
}

#[async_trait]
impl Store for ConnectPgStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let sid = Self::sid(key)?;
        let now = Timestamp::now();
        let row: Option<(String, i64)> = sqlx::query_as(&format!(
            r#"SELECT sess::text, (EXTRACT(EPOCH FROM expire::timestamptz) * 1000)::bigint
               FROM "{}" WHERE sid = $1 AND expire >= to_timestamp($2)"#,
            self.table.as_str()
        ))
        .bind(&sid)
        .bind(epoch_seconds(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend_error)?;
        let Some((text, expire)) = row else {
            return Ok(None);
        };
        let object = ExpressObject::parse(&text)?;
        let expires_at = Timestamp::from_millis(u64::try_from(expire).unwrap_or(0));
        Ok(Some(object.to_record(expires_at)))
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        let sid = Self::sid(key)?;
        let now = Timestamp::now();
        let object = ExpressObject::from_record(record)?;
        let table = self.table.as_str();
        // An expired row under the same id may be taken over; a live one is a collision.
        let created = sqlx::query(&format!(
            r#"INSERT INTO "{table}" (sid, sess, expire) VALUES ($1, $2::json, to_timestamp($3))
               ON CONFLICT (sid) DO UPDATE SET sess = EXCLUDED.sess, expire = EXCLUDED.expire
               WHERE "{table}".expire < to_timestamp($4)"#
        ))
        .bind(&sid)
        .bind(object.to_json())
        .bind(expire_of(&object, now))
        .bind(epoch_seconds(now))
        .execute(&self.pool)
        .await
        .map_err(backend_error)?;
        Ok(created.rows_affected() == 1)
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        let sid = Self::sid(key)?;
        let table = self.table.as_str();
        let now = Timestamp::now();
        // The row stays locked from the read to the write: the Node app's upsert of the same
        // session waits for it, so the keys it changed before are the ones this save builds on.
        let mut tx = self.pool.begin().await.map_err(backend_error)?;
        let read: Option<(String,)> = sqlx::query_as(&format!(
            r#"SELECT sess::text FROM "{table}" WHERE sid = $1 AND expire >= to_timestamp($2) FOR UPDATE"#
        ))
        .bind(&sid)
        .bind(epoch_seconds(now))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend_error)?;
        let Some((read,)) = read else {
            return Ok(false);
        };
        let mut object = ExpressObject::parse(&read)?;
        object.apply(record, mode)?;
        sqlx::query(&format!(
            r#"UPDATE "{table}" SET sess = $2::json, expire = to_timestamp($3) WHERE sid = $1"#
        ))
        .bind(&sid)
        .bind(object.to_json())
        .bind(expire_of(&object, now))
        .execute(&mut *tx)
        .await
        .map_err(backend_error)?;
        tx.commit().await.map_err(backend_error)?;
        Ok(true)
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        let sid = Self::sid(key)?;
        let touched = sqlx::query(&format!(
            r#"UPDATE "{}" SET expire = to_timestamp($1) WHERE sid = $2 AND expire >= to_timestamp($3)"#,
            self.table.as_str()
        ))
        .bind((expires_at.as_millis().div_ceil(1000)) as f64)
        .bind(&sid)
        .bind(epoch_seconds(Timestamp::now()))
        .execute(&self.pool)
        .await
        .map_err(backend_error)?;
        Ok(touched.rows_affected() == 1)
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        let sid = Self::sid(key)?;
        sqlx::query(&format!(
            r#"DELETE FROM "{}" WHERE sid = $1"#,
            self.table.as_str()
        ))
        .bind(&sid)
        .execute(&self.pool)
        .await
        .map_err(backend_error)?;
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let purged = sqlx::query(&format!(
            r#"DELETE FROM "{}" WHERE expire < to_timestamp($1)"#,
            self.table.as_str()
        ))
        .bind(epoch_seconds(Timestamp::now()))
        .execute(&self.pool)
        .await
        .map_err(backend_error)?;
        Ok(purged.rows_affected())
    }
}

impl fmt::Debug for ConnectPgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectPgStore")
            .field("table", &self.table.as_str())
            .finish_non_exhaustive()
    }
}
