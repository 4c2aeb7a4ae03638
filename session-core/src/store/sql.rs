//! What the SQL stores share: the table name, the JSON data column, error mapping, the purge
//! task, and the store itself.
//!
//! [`SqlStore`] holds everything the SQLite, PostgreSQL and MySQL stores do alike, generic over
//! the backend's [`Dialect`]: the SQL text of each statement and the hooks where a backend
//! behaves differently. [`sql_store_api!`] writes each public store type's methods (besides
//! `connect`), its `Debug` and its `Store` implementation as calls into its `SqlStore`, with
//! their shared documentation.
//!
//! # Schema
//!
//! Every SQL store keeps one row per session:
//!
//! | column | holds |
//! |---|---|
//! | `key` | the [`StoreKey`]: 64 lowercase hex characters, the primary key |
//! | `data` | a JSON object mapping each field name to its encoded value, as a JSON **string** |
//! | `created_at` | when the session was first stored, in Unix milliseconds (`BIGINT`) |
//! | `expires_at` | the deadline, in Unix milliseconds (`BIGINT`), indexed for the purge |
//!
//! Index members (see [`Store::index_add`](super::Store::index_add)) are rows of a side table
//! `<table>_index`:
//!
//! | column | holds |
//! |---|---|
//! | `entry` | the [`IndexEntry`]'s digest: 64 lowercase hex characters |
//! | `session_key` | the member's [`StoreKey`] |
//! | `added_at` | when it was last added, in Unix milliseconds (`BIGINT`) |
//!
//! with the primary key `(entry, session_key)`, so listing an entry reads one range of the
//! primary key and never scans the sessions. An add is one upsert (concurrent adds of
//! different members to one entry are different rows and never conflict), a remove one
//! `DELETE`. The purge also deletes the members whose session is gone or expired once they
//! are older than [`PRUNE_GRACE`](crate::index::PRUNE_GRACE), one statement joining the two
//! tables on the primary key of the sessions.
//!
//! Each field's value is stored as a string holding its JSON text, not as nested JSON, so it
//! comes back byte for byte: PostgreSQL's `jsonb` and MySQL's `JSON` would otherwise reorder
//! object keys, drop whitespace or rewrite numbers.
//!
//! # Expiry
//!
//! Reads, touches and the collision check of `create` compare `expires_at` with the
//! application's clock (not the database's), so an expired row is invisible before any purge.
//! The purge task deletes expired rows on a randomised interval.
//!
//! # Partial writes
//!
//! [`SaveMode::Merge`] is one `UPDATE` statement that merges the given fields into the stored
//! object inside the database (`json_patch`, `jsonb ||`, `JSON_MERGE_PATCH`), so two requests
//! writing different fields at once both keep their change: the database serialises the two
//! statements on the row and each sees the other's result.
//!
//! # Saves never create
//!
//! Both save modes are `UPDATE .. WHERE key = ? AND expires_at > now`: a row that was deleted
//! (a logout, a regeneration) or has expired is never written again, and the save reports
//! that it changed no row. Only `create` inserts.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::ser::{Serialize, Serializer};
use sqlx::database::HasStatementCache;
use sqlx::{Arguments, Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};
use tokio::sync::OnceCell;
use tokio::task::{AbortHandle, JoinHandle};

use super::{IndexEntry, IndexMember, StoreError};
use crate::id::StoreKey;
use crate::index::PRUNE_GRACE;
use crate::record::{Fields, Record, SaveMode, Timestamp};

/// How long a pool built by `connect` waits for a free connection (or for a new one to open)
/// before the call fails with [`StoreError::Timeout`].
pub(crate) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default interval of the purge task that `connect` starts.
pub(crate) const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// The shortest purge interval; shorter ones are raised to it so a task cannot spin.
const MIN_PURGE_INTERVAL: Duration = Duration::from_millis(10);

/// The longest table name accepted: PostgreSQL cuts identifiers at 63 bytes, and the index
/// name adds `_expires_at_idx` (15 bytes) to the table name.
const MAX_TABLE_NAME: usize = 48;

/// The sizes of the `load_many` statements: a batch of keys is padded (with repeats of its
/// last key) to the smallest that holds it, so each backend prepares two statements, not one
/// per batch length.
pub(crate) const LOAD_BATCHES: [usize; 2] = [16, 256];

/// A table name that a SQL store's `with_table_name` refused.
///
/// Names are 1 to 48 ASCII letters, digits and underscores, not starting with a digit, so
/// they can be quoted into SQL safely and keep their case on every backend.
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use session_core::store::SqliteStore;
///
/// let store = SqliteStore::connect("sqlite::memory:").await?;
/// let error = store.with_table_name("sessions; drop table users").unwrap_err();
/// assert_eq!(error.name(), "sessions; drop table users");
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid session table name {name:?}: use 1 to 48 ASCII letters, digits and underscores, \
     not starting with a digit"
)]
pub struct InvalidTableName {
    name: String,
}

impl InvalidTableName {
    /// The name that was refused.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A validated table name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableName(Arc<str>);

impl TableName {
    pub(crate) const DEFAULT: &'static str = "sessions";

    pub(crate) fn new(name: &str) -> Result<Self, InvalidTableName> {
        let bytes = name.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_TABLE_NAME
            && !bytes[0].is_ascii_digit()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if valid {
            Ok(Self(Arc::from(name)))
        } else {
            Err(InvalidTableName {
                name: name.to_owned(),
            })
        }
    }

    pub(crate) fn default_name() -> Self {
        Self(Arc::from(Self::DEFAULT))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of the index on `expires_at`.
    pub(crate) fn index_name(&self) -> String {
        format!("{}_expires_at_idx", self.0)
    }

    /// The name of the side table holding the session index members.
    pub(crate) fn members_table(&self) -> String {
        format!("{}_index", self.0)
    }
}

/// Milliseconds for a `BIGINT` column; deadlines past the year 292 million saturate.
pub(crate) fn to_sql(time: Timestamp) -> i64 {
    i64::try_from(time.as_millis()).unwrap_or(i64::MAX)
}

/// A `BIGINT` column back to a timestamp; a negative value (never written by us) reads as the
/// epoch, which is in the past, so the record counts as expired rather than failing.
pub(crate) fn from_sql(millis: i64) -> Timestamp {
    Timestamp::from_millis(u64::try_from(millis).unwrap_or(0))
}

/// The `data` column for `fields`: a JSON object of strings.
pub(crate) fn encode_fields(fields: &Fields) -> Result<String, StoreError> {
    struct DataColumn<'a>(&'a Fields);

    impl Serialize for DataColumn<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().map(|(name, value)| (&**name, &**value)))
        }
    }

    // Each value grows by its quotes and escapes; most need few.
    let estimate = fields
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .sum::<usize>()
        + 2;
    let mut out = Vec::with_capacity(estimate);
    serde_json::to_writer(&mut out, &DataColumn(fields))
        .map_err(|error| StoreError::Rejected(format!("cannot encode session fields: {error}")))?;
    String::from_utf8(out)
        .map_err(|error| StoreError::Rejected(format!("cannot encode session fields: {error}")))
}

/// A row back to a record.
///
/// A `data` column that is not a JSON object makes the whole record [`StoreError::Corrupt`];
/// a field whose value is not a JSON string is skipped with a warning, so the session keeps
/// every field that still reads and the skipped one falls back to its default. The stored
/// value stays in the row until the application writes that field.
pub(crate) fn decode_record(
    key: &StoreKey,
    data: &str,
    created_at: i64,
    expires_at: i64,
) -> Result<Record, StoreError> {
    let value: serde_json::Value = serde_json::from_str(data).map_err(|error| {
        StoreError::Corrupt(format!("session {key:?}: data column is not JSON: {error}"))
    })?;
    let serde_json::Value::Object(object) = value else {
        return Err(StoreError::Corrupt(format!(
            "session {key:?}: data column is a JSON {}, not an object",
            json_kind(&value)
        )));
    };
    let mut fields = Fields::new();
    for (name, value) in object {
        match value {
            serde_json::Value::String(text) => {
                fields.insert(Arc::from(name), Arc::from(text));
            }
            other => tracing::warn!(
                ?key,
                field = %name,
                found = json_kind(&other),
                "skipping a stored session field whose value is not a JSON string"
            ),
        }
    }
    Ok(Record {
        fields,
        created_at: from_sql(created_at),
        expires_at: from_sql(expires_at),
    })
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Maps a database error to a [`StoreError`].
pub(crate) fn backend_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::PoolTimedOut => StoreError::Timeout,
        sqlx::Error::Io(ref io) if io.kind() == std::io::ErrorKind::TimedOut => StoreError::Timeout,
        // PostgreSQL's query_canceled, raised by `statement_timeout`.
        sqlx::Error::Database(ref db) if db.code().as_deref() == Some("57014") => {
            StoreError::Timeout
        }
        // A column that does not hold what the schema says: the row is damaged.
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(error.to_string())
        }
        other => StoreError::backend(other),
    }
}

/// The handle of a store's purge task, if it has one. Dropping it (with the store) stops the
/// task at once rather than at its next wake-up.
#[derive(Default)]
pub(crate) struct PurgeSlot(Mutex<Option<(Duration, AbortHandle)>>);

impl PurgeSlot {
    fn lock(&self) -> MutexGuard<'_, Option<(Duration, AbortHandle)>> {
        // The slot only ever holds a complete value, so a poisoned lock is still consistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The interval of the running task.
    pub(crate) fn interval(&self) -> Option<Duration> {
        self.lock().as_ref().map(|(interval, _)| *interval)
    }

    /// Records a new task, stopping the one it replaces.
    fn replace(&self, interval: Duration, task: AbortHandle) {
        if let Some((_, old)) = self.lock().replace((interval, task)) {
            old.abort();
        }
    }

    /// Stops the running task, if any.
    pub(crate) fn stop(&self) {
        if let Some((_, task)) = self.lock().take() {
            task.abort();
        }
    }
}

impl Drop for PurgeSlot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Something with a purge slot: the inner state of a SQL store.
pub(crate) trait HasPurgeSlot: Send + Sync + 'static {
    fn purge_slot(&self) -> &PurgeSlot;
}

/// Starts the purge task of `store`, replacing the one it had.
///
/// The task sleeps for a random 50 to 150 % of `interval`, so that many app instances started
/// together do not all purge at once, then calls `purge`. It holds only a weak reference
/// between runs and ends when the store is dropped.
///
/// # Panics
/// Outside a Tokio runtime, like [`tokio::spawn`].
pub(crate) fn spawn_purge_task<T, F, Fut>(
    store: &Arc<T>,
    interval: Duration,
    backend: &'static str,
    purge: F,
) -> JoinHandle<()>
where
    T: HasPurgeSlot,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<u64, StoreError>> + Send + 'static,
{
    let interval = interval.max(MIN_PURGE_INTERVAL);
    let weak = Arc::downgrade(store);
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(jittered(interval, random_u32())).await;
            let Some(store) = weak.upgrade() else { break };
            match purge(store).await {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, backend, "purged expired sessions"),
                Err(error) => {
                    tracing::warn!(%error, backend, "purging expired sessions failed; will retry")
                }
            }
        }
    });
    store.purge_slot().replace(interval, task.abort_handle());
    task
}

/// `interval` scaled by a factor from 0.5 to 1.5 chosen by `random`.
pub(crate) fn jittered(interval: Duration, random: u32) -> Duration {
    let factor = 0.5 + f64::from(random) / f64::from(u32::MAX);
    Duration::try_from_secs_f64(interval.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u32::from_le_bytes(bytes),
        // Spreading purges out needs no secrecy: the clock will do.
        Err(_) => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0),
    }
}

/// A value for one placeholder of a statement: the stores bind only text and integers.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// How many rows a statement changed: each sqlx driver's query result has `rows_affected`,
/// but no trait declares it, so each backend implements this for its type.
pub(crate) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

/// The sqlx calls the shared code makes, for any driver.
///
/// The sqlx bounds these calls need are spelled out once, on the blanket implementation, so
/// the generic code only names `Driver` (through [`Dialect`]).
#[async_trait]
pub(crate) trait Driver: Database {
    /// Runs `statement` with `args` and returns how many rows it changed.
    async fn execute(
        pool: &Pool<Self>,
        statement: &str,
        args: &[Arg<'_>],
    ) -> Result<u64, sqlx::Error>;

    /// Runs a `SELECT data, created_at, expires_at` with `args` and returns its row, if any.
    async fn fetch_record(
        pool: &Pool<Self>,
        statement: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<(String, i64, i64)>, sqlx::Error>;

    /// Runs a `SELECT session_key, added_at` with `args` and returns its rows.
    async fn fetch_members(
        pool: &Pool<Self>,
        statement: &str,
        args: &[Arg<'_>],
    ) -> Result<Vec<(String, i64)>, sqlx::Error>;

    /// Runs a `SELECT key, data, created_at, expires_at` with `args` and returns its rows.
    async fn fetch_records(
        pool: &Pool<Self>,
        statement: &str,
        args: &[Arg<'_>],
    ) -> Result<Vec<(String, String, i64, i64)>, sqlx::Error>;

    /// Runs `statement`, which takes no arguments, on `conn` without keeping it as a prepared
    /// statement: for the `CREATE` statements, which run once.
    async fn execute_once(conn: &mut Self::Connection, statement: &str) -> Result<(), sqlx::Error>;
}

#[async_trait]
impl<DB> Driver for DB
where
    DB: Database + HasStatementCache,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    for<'r> (String, i64, i64): FromRow<'r, DB::Row>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64, i64): FromRow<'r, DB::Row>,
{
    async fn execute(
        pool: &Pool<Self>,
        statement: &str,
        args: &[Arg<'_>],
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query_with(statement, arguments::<DB>(args)?)
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn fetch_record(
        pool: &Pool<Self>,
        statement: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<(String, i64, i64)>, sqlx::Error> {
        sqlx::query_as_with(statement, arguments::<DB>(args)?)
            .fetch_optional(pool)
            .await
    }

    async fn fetch_members(
        pool: &Pool<Self>,
        statement: &str,
        args: &[Arg<'_>],
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as_with(statement, arguments::<DB>(args)?)
            .fetch_all(pool)
            .await
    }

    async fn fetch_records(
        pool: &Pool<Self>,
        statement: &str,
        args: &[Arg<'_>],
    ) -> Result<Vec<(String, String, i64, i64)>, sqlx::Error> {
        sqlx::query_as_with(statement, arguments::<DB>(args)?)
            .fetch_all(pool)
            .await
    }

    async fn execute_once(conn: &mut Self::Connection, statement: &str) -> Result<(), sqlx::Error> {
        sqlx::query(statement)
            .persistent(false)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// `args` as a driver's arguments; a value it cannot encode is an [`sqlx::Error::Encode`], as
/// with `Query::bind`.
fn arguments<'q, DB>(args: &[Arg<'q>]) -> Result<DB::Arguments<'q>, sqlx::Error>
where
    DB: Database,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    i64: for<'a> Encode<'a, DB> + Type<DB>,
{
    let mut arguments = DB::Arguments::default();
    for arg in args {
        match *arg {
            Arg::Text(text) => arguments.add(text),
            Arg::Int(number) => arguments.add(number),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(arguments)
}

/// The arguments of the statements that create a row: `key, data, created_at, expires_at,
/// now`. Those that take no `now` use the first four.
pub(crate) fn write_args<'a>(key: &'a StoreKey, data: &'a str, record: &Record) -> [Arg<'a>; 5] {
    [
        Arg::Text(key.as_str()),
        Arg::Text(data),
        Arg::Int(to_sql(record.created_at)),
        Arg::Int(to_sql(record.expires_at)),
        Arg::Int(to_sql(Timestamp::now())),
    ]
}

/// A backend's statements for one table, built once with the store.
///
/// Each is written out in the backend's own SQL (quoting, placeholders, upsert syntax); the
/// comments give the arguments each is run with, in order.
pub(crate) struct Queries {
    /// Creates the table and its expiry index if they do not exist, in this order; no
    /// arguments.
    pub(crate) migrate: Vec<String>,
    /// `key, now`: the `data, created_at, expires_at` of the live row.
    pub(crate) load: String,
    /// `key, data, created_at, expires_at, now`: inserts the row, or overwrites an expired
    /// one, and changes no row when a live one has the key. MySQL's differs: see its
    /// [`Dialect::create`].
    pub(crate) create: String,
    /// `data, created_at, expires_at, key, now`: merges `data` into the live row's object;
    /// changes no row when there is no live row (saves never create).
    pub(crate) merge: String,
    /// `data, created_at, expires_at, key, now`: writes the live row whole; changes no row
    /// when there is none.
    pub(crate) replace: String,
    /// `expires_at, key, now`: moves the deadline of the live row.
    pub(crate) touch: String,
    /// `key`: deletes the row.
    pub(crate) delete: String,
    /// `now`: deletes expired rows, at most [`Dialect::PURGE_BATCH`] of them.
    pub(crate) purge: String,
    /// `entry, session_key, added_at, added_at`: adds a member to the index table, or sets
    /// its `added_at` if it is there.
    pub(crate) index_add: String,
    /// `entry, session_key`: removes a member.
    pub(crate) index_remove: String,
    /// `entry`: the `session_key, added_at` of its members.
    pub(crate) index_members: String,
    /// `before, now`: deletes the members added before `before` whose session has no live
    /// row, at most [`Dialect::PURGE_BATCH`] of them.
    pub(crate) index_purge: String,
    /// For each size in [`LOAD_BATCHES`], in order: `now, key × size`: the
    /// `key, data, created_at, expires_at` of the live rows among the keys.
    pub(crate) load_many: Vec<String>,
}

/// What one SQL backend supplies to [`SqlStore`]: its SQL text and the places where it behaves
/// differently. Implemented by sqlx's database types (`sqlx::Sqlite`, ...); each hook has the
/// behaviour of most backends as its default.
#[async_trait]
pub(crate) trait Dialect: Driver {
    /// The backend's name in log events.
    const BACKEND: &'static str;

    /// The `LIMIT` of the purge statement, if it has one: the purge then repeats it until a
    /// run deletes fewer rows. `None`: the one statement deletes every expired row.
    const PURGE_BATCH: Option<u64> = None;

    /// The statements for `table`.
    fn queries(table: &TableName) -> Queries;

    /// Creates the table and its index on `conn`, if they do not exist: by default the
    /// [`Queries::migrate`] statements, one after the other.
    async fn migrate_on(
        conn: &mut Self::Connection,
        _table: &TableName,
        sql: &Queries,
    ) -> Result<(), StoreError> {
        for statement in &sql.migrate {
            Self::execute_once(conn, statement)
                .await
                .map_err(backend_error)?;
        }
        Ok(())
    }

    /// [`Store::create`](super::Store::create): by default the [`Queries::create`] upsert,
    /// which overwrites only an expired row; a collision when it changed no row.
    async fn create(
        store: &SqlStore<Self>,
        key: &StoreKey,
        record: &Record,
    ) -> Result<bool, StoreError> {
        let data = encode_fields(&record.fields)?;
        let args = write_args(key, &data, record);
        let changed = Self::execute(store.migrated_pool().await?, &store.sql.create, &args)
            .await
            .map_err(backend_error)?;
        Ok(changed == 1)
    }

    /// Whether a save whose try number `attempt` (from 1) failed with `error` is tried
    /// again. By default never.
    fn retry_save(error: &sqlx::Error, attempt: usize) -> bool {
        let _ = (error, attempt);
        false
    }
}

/// A SQL store of any backend: what each public store type holds in an `Arc`. Clones of the
/// public type share it; a new table name makes a new one on the same pool.
pub(crate) struct SqlStore<D: Dialect> {
    pool: Pool<D>,
    table: TableName,
    sql: Queries,
    migrated: OnceCell<()>,
    purge: PurgeSlot,
}

impl<D: Dialect> HasPurgeSlot for SqlStore<D> {
    fn purge_slot(&self) -> &PurgeSlot {
        &self.purge
    }
}

impl<D: Dialect> SqlStore<D> {
    fn new(pool: Pool<D>, table: TableName) -> Arc<Self> {
        Arc::new(Self {
            pool,
            sql: D::queries(&table),
            table,
            migrated: OnceCell::new(),
            purge: PurgeSlot::default(),
        })
    }

    /// A store on the default table of `pool`. Does no I/O.
    pub(crate) fn from_pool(pool: Pool<D>) -> Arc<Self> {
        Self::new(pool, TableName::default_name())
    }

    /// Connects to a database server (PostgreSQL, MySQL): one connection at once, on which
    /// the table is created, then a pool that opens connections as needed, and the purge
    /// task.
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    pub(crate) async fn connect_server(
        options: <D::Connection as sqlx::Connection>::Options,
    ) -> Result<Arc<Self>, StoreError> {
        use sqlx::pool::PoolOptions;
        use sqlx::{ConnectOptions, Connection};

        // Without the pool, a refused connection fails now with its reason instead of being
        // retried until the acquire timeout.
        let mut first = tokio::time::timeout(ACQUIRE_TIMEOUT, options.connect())
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(backend_error)?;
        let store = Self::from_pool(
            PoolOptions::new()
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options),
        );
        let migrated = D::migrate_on(&mut first, &store.table, &store.sql).await;
        // The connection has done its job; a failure to say goodbye changes nothing.
        let _ = first.close().await;
        migrated?;
        let _ = store.migrated.set(());
        store.spawn_purge_task(DEFAULT_PURGE_INTERVAL);
        Ok(store)
    }

    /// The same pool with table `name`; a running purge task moves to it.
    pub(crate) fn with_table_name(&self, name: &str) -> Result<Arc<Self>, InvalidTableName> {
        let store = Self::new(self.pool.clone(), TableName::new(name)?);
        if let Some(interval) = self.purge.interval() {
            if tokio::runtime::Handle::try_current().is_ok() {
                store.spawn_purge_task(interval);
            }
        }
        Ok(store)
    }

    pub(crate) fn table(&self) -> &TableName {
        &self.table
    }

    /// The statements, for a backend's own hooks (MySQL's `create`).
    #[cfg(feature = "mysql")]
    pub(crate) fn sql(&self) -> &Queries {
        &self.sql
    }

    /// The pool, whether or not the table exists yet.
    pub(crate) fn pool(&self) -> &Pool<D> {
        &self.pool
    }

    /// The pool, once the table exists: the first call creates it.
    pub(crate) async fn migrated_pool(&self) -> Result<&Pool<D>, StoreError> {
        self.migrated
            .get_or_try_init(|| self.create_table())
            .await?;
        Ok(&self.pool)
    }

    async fn create_table(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend_error)?;
        D::migrate_on(&mut conn, &self.table, &self.sql).await
    }

    /// Creates the table now, if it does not exist.
    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        self.create_table().await?;
        // Already set if a concurrent call got there first; either way the table exists.
        let _ = self.migrated.set(());
        Ok(())
    }

    pub(crate) fn spawn_purge_task(self: &Arc<Self>, interval: Duration) -> JoinHandle<()> {
        spawn_purge_task(self, interval, D::BACKEND, |store: Arc<Self>| async move {
            store.purge_expired().await
        })
    }

    pub(crate) fn stop_purge_task(&self) {
        self.purge.stop();
    }

    pub(crate) async fn close(&self) {
        self.purge.stop();
        self.pool.close().await;
    }

    /// The `Debug` output of the public store type `name`.
    pub(crate) fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("table", &self.table.as_str())
            .field("purge_interval", &self.purge.interval())
            .finish_non_exhaustive()
    }

    pub(crate) async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let args = [Arg::Text(key.as_str()), Arg::Int(to_sql(Timestamp::now()))];
        let row = D::fetch_record(self.migrated_pool().await?, &self.sql.load, &args)
            .await
            .map_err(backend_error)?;
        row.map(|(data, created_at, expires_at)| decode_record(key, &data, created_at, expires_at))
            .transpose()
    }

    pub(crate) async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        D::create(self, key, record).await
    }

    /// One `UPDATE`: [`Queries::merge`] or [`Queries::replace`], tried again while
    /// [`Dialect::retry_save`] says so. `false` when no live row was there to update.
    pub(crate) async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        let data = encode_fields(&record.fields)?;
        let statement = match mode {
            SaveMode::Merge => &self.sql.merge,
            SaveMode::Replace => &self.sql.replace,
        };
        let pool = self.migrated_pool().await?;
        let mut attempt = 1;
        loop {
            let args = [
                Arg::Text(&data),
                Arg::Int(to_sql(record.created_at)),
                Arg::Int(to_sql(record.expires_at)),
                Arg::Text(key.as_str()),
                Arg::Int(to_sql(Timestamp::now())),
            ];
            match D::execute(pool, statement, &args).await {
                Ok(changed) => return Ok(changed > 0),
                Err(error) if D::retry_save(&error, attempt) => attempt += 1,
                Err(error) => return Err(backend_error(error)),
            }
        }
    }

    pub(crate) async fn touch(
        &self,
        key: &StoreKey,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let args = [
            Arg::Int(to_sql(expires_at)),
            Arg::Text(key.as_str()),
            Arg::Int(to_sql(Timestamp::now())),
        ];
        let changed = D::execute(self.migrated_pool().await?, &self.sql.touch, &args)
            .await
            .map_err(backend_error)?;
        Ok(changed > 0)
    }

    pub(crate) async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        D::execute(
            self.migrated_pool().await?,
            &self.sql.delete,
            &[Arg::Text(key.as_str())],
        )
        .await
        .map_err(backend_error)?;
        Ok(())
    }

    /// Deletes the expired rows, in batches of [`Dialect::PURGE_BATCH`] if it is set.
    pub(crate) async fn purge_expired(&self) -> Result<u64, StoreError> {
        let now = [Arg::Int(to_sql(Timestamp::now()))];
        let pool = self.migrated_pool().await?;
        let mut removed = 0;
        loop {
            let deleted = D::execute(pool, &self.sql.purge, &now)
                .await
                .map_err(backend_error)?;
            removed += deleted;
            if D::PURGE_BATCH.is_none_or(|batch| deleted < batch) {
                break;
            }
        }
        // Members of ended sessions, once no write in flight can still need them. They are
        // not counted: the count is the sessions'.
        let grace = u64::try_from(PRUNE_GRACE.as_millis()).unwrap_or(u64::MAX);
        let before = Timestamp::from_millis(Timestamp::now().as_millis().saturating_sub(grace));
        let args = [Arg::Int(to_sql(before)), now[0]];
        loop {
            let deleted = D::execute(pool, &self.sql.index_purge, &args)
                .await
                .map_err(backend_error)?;
            if D::PURGE_BATCH.is_none_or(|batch| deleted < batch) {
                return Ok(removed);
            }
        }
    }

    /// Runs an index write, tried again while [`Dialect::retry_save`] says so (a MySQL
    /// deadlock victim).
    async fn index_write(&self, statement: &str, args: &[Arg<'_>]) -> Result<(), StoreError> {
        let pool = self.migrated_pool().await?;
        let mut attempt = 1;
        loop {
            match D::execute(pool, statement, args).await {
                Ok(_) => return Ok(()),
                Err(error) if D::retry_save(&error, attempt) => attempt += 1,
                Err(error) => return Err(backend_error(error)),
            }
        }
    }

    /// One upsert into the index table. `until` is not kept: rows do not expire by
    /// themselves, and the purge removes the members of ended sessions.
    pub(crate) async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let _ = until;
        let added = Arg::Int(to_sql(Timestamp::now()));
        let args = [
            Arg::Text(entry.digest()),
            Arg::Text(key.as_str()),
            added,
            added,
        ];
        self.index_write(&self.sql.index_add, &args).await
    }

    pub(crate) async fn index_remove(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
    ) -> Result<(), StoreError> {
        let args = [Arg::Text(entry.digest()), Arg::Text(key.as_str())];
        self.index_write(&self.sql.index_remove, &args).await
    }

    /// The members, by the primary key's range of `entry`. A row whose key is not a store
    /// key (written by something else) is skipped with a warning.
    pub(crate) async fn index_members(
        &self,
        entry: &IndexEntry,
    ) -> Result<Vec<IndexMember>, StoreError> {
        let rows = D::fetch_members(
            self.migrated_pool().await?,
            &self.sql.index_members,
            &[Arg::Text(entry.digest())],
        )
        .await
        .map_err(backend_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, added_at)| match StoreKey::parse(key.trim_end()) {
                Some(key) => Some(IndexMember {
                    key,
                    added: from_sql(added_at),
                }),
                None => {
                    tracing::warn!(
                        ?entry,
                        "skipping an index row whose session key is not a store key"
                    );
                    None
                }
            })
            .collect())
    }

    /// One `SELECT .. WHERE key IN (..)` per batch of up to 256 keys. A row that cannot be
    /// read is `None`, as the layer treats it.
    pub(crate) async fn load_many(
        &self,
        keys: &[StoreKey],
    ) -> Result<Vec<Option<Record>>, StoreError> {
        let pool = self.migrated_pool().await?;
        let now = Arg::Int(to_sql(Timestamp::now()));
        let mut found = std::collections::HashMap::with_capacity(keys.len());
        let largest = LOAD_BATCHES[LOAD_BATCHES.len() - 1];
        for batch in keys.chunks(largest) {
            let (size, statement) = LOAD_BATCHES
                .iter()
                .zip(&self.sql.load_many)
                .find(|(size, _)| **size >= batch.len())
                .unwrap_or((&largest, &self.sql.load_many[LOAD_BATCHES.len() - 1]));
            let mut args = Vec::with_capacity(size + 1);
            args.push(now);
            for i in 0..*size {
                // Padded with the last key, which changes nothing in an `IN` list.
                let key = batch.get(i).or(batch.last()).unwrap_or(&keys[0]);
                args.push(Arg::Text(key.as_str()));
            }
            let rows = D::fetch_records(pool, statement, &args)
                .await
                .map_err(backend_error)?;
            for (key, data, created_at, expires_at) in rows {
                let Some(key) = StoreKey::parse(key.trim_end()) else {
                    continue;
                };
                match decode_record(&key, &data, created_at, expires_at) {
                    Ok(record) => {
                        found.insert(key, record);
                    }
                    Err(error) => tracing::warn!(%error, "skipping an unreadable session row"),
                }
            }
        }
        Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
    }
}

/// `count` placeholders after the first `first - 1`: `$2, $3, ..` (`numbered`, with `sigil`
/// `$` or `?`) or `?, ?, ..`, for an `IN` list.
pub(crate) fn placeholders(sigil: char, numbered: bool, first: usize, count: usize) -> String {
    let mut list = String::with_capacity(count * 5);
    for i in 0..count {
        if i > 0 {
            list.push_str(", ");
        }
        list.push(sigil);
        if numbered {
            list.push_str(&(first + i).to_string());
        }
    }
    list
}

/// Writes what every SQL store type has alike, as calls into its [`SqlStore`]: the inherent
/// methods besides `connect` (with their shared documentation), `Debug` and
/// [`Store`](super::Store).
///
/// The store type is a struct with a field `inner: Arc<SqlStore<Db>>`, defined by its module
/// with its own documentation and `connect`. The invocation names it and its pool type, then
/// gives each method the documentation that is the backend's own (a note and the examples),
/// which follows the shared text. Items in a trailing `impl Store { .. }` are added to the
/// `Store` implementation.
macro_rules! sql_store_api {
    (
        store: $Store:ident,
        pool: $Pool:ty;
        from_pool: $(#[$from_pool:meta])*
        with_table_name: $(#[$with_table_name:meta])*
        migrate: $(#[$migrate:meta])*
        spawn_purge_task: $(#[$spawn_purge_task:meta])*
        stop_purge_task: $(#[$stop_purge_task:meta])*
        pool: $(#[$pool:meta])*
        close: $(#[$close:meta])*
        $(impl Store { $($store_items:tt)* })?
    ) => {
        impl $Store {
            /// How often the purge task started by [`connect`](Self::connect) runs, on average.
            pub const DEFAULT_PURGE_INTERVAL: ::std::time::Duration =
                $crate::store::sql::DEFAULT_PURGE_INTERVAL;

            /// A store on a pool you configured. Does no I/O: the table is created on first use
            /// (or call [`migrate`](Self::migrate)), and no purge task runs until you
            /// [start one](Self::spawn_purge_task).
            ///
            $(#[$from_pool])*
            pub fn from_pool(pool: $Pool) -> Self {
                Self {
                    inner: $crate::store::sql::SqlStore::from_pool(pool),
                }
            }

            /// The same pool, with sessions in table `name` (created on first use, in the
            /// connection's current schema). A running purge task moves to the new table.
            ///
            /// # Errors
            /// [`InvalidTableName`](crate::store::InvalidTableName) unless `name` is 1 to 48
            /// ASCII letters, digits and underscores, not starting with a digit.
            ///
            $(#[$with_table_name])*
            pub fn with_table_name(
                self,
                name: &str,
            ) -> ::std::result::Result<Self, $crate::store::InvalidTableName> {
                ::std::result::Result::Ok(Self {
                    inner: self.inner.with_table_name(name)?,
                })
            }

            /// The table sessions are kept in.
            pub fn table_name(&self) -> &str {
                self.inner.table().as_str()
            }

            /// Creates the table and its expiry index if they do not exist. Stores create them
            /// on first use anyway; call this at startup to surface a problem early.
            ///
            $(#[$migrate])*
            pub async fn migrate(&self) -> ::std::result::Result<(), $crate::store::StoreError> {
                self.inner.migrate().await
            }

            /// Starts deleting expired rows in the background, every `interval` on average.
            ///
            /// Each wait is a random 50 to 150 % of `interval`, so app instances started
            /// together do not all purge at once. A store has at most one purge task: starting
            /// one stops the previous. The task ends when the store and all its clones are
            /// dropped; failures are logged with `tracing` and retried at the next run.
            ///
            /// # Panics
            /// Outside a Tokio runtime, like [`tokio::spawn`].
            ///
            $(#[$spawn_purge_task])*
            pub fn spawn_purge_task(
                &self,
                interval: ::std::time::Duration,
            ) -> ::tokio::task::JoinHandle<()> {
                self.inner.spawn_purge_task(interval)
            }

            /// Stops the purge task, if one runs: for example when a cron job purges instead.
            ///
            $(#[$stop_purge_task])*
            pub fn stop_purge_task(&self) {
                self.inner.stop_purge_task();
            }

            /// The connection pool, for queries of your own.
            ///
            $(#[$pool])*
            pub fn pool(&self) -> &$Pool {
                self.inner.pool()
            }

            /// Stops the purge task and closes the pool, waiting for connections in use to be
            /// returned. Calls made afterwards fail with
            /// [`StoreError::Backend`](crate::store::StoreError::Backend).
            ///
            $(#[$close])*
            pub async fn close(&self) {
                self.inner.close().await;
            }
        }

        impl ::std::fmt::Debug for $Store {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                self.inner.debug(stringify!($Store), f)
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::Store for $Store {
            async fn load(
                &self,
                key: &$crate::id::StoreKey,
            ) -> ::std::result::Result<
                ::std::option::Option<$crate::record::Record>,
                $crate::store::StoreError,
            > {
                self.inner.load(key).await
            }

            async fn create(
                &self,
                key: &$crate::id::StoreKey,
                record: &$crate::record::Record,
            ) -> ::std::result::Result<bool, $crate::store::StoreError> {
                self.inner.create(key, record).await
            }

            async fn save(
                &self,
                key: &$crate::id::StoreKey,
                record: &$crate::record::Record,
                mode: $crate::record::SaveMode,
            ) -> ::std::result::Result<bool, $crate::store::StoreError> {
                self.inner.save(key, record, mode).await
            }

            async fn touch(
                &self,
                key: &$crate::id::StoreKey,
                expires_at: $crate::record::Timestamp,
            ) -> ::std::result::Result<bool, $crate::store::StoreError> {
                self.inner.touch(key, expires_at).await
            }

            async fn delete(
                &self,
                key: &$crate::id::StoreKey,
            ) -> ::std::result::Result<(), $crate::store::StoreError> {
                self.inner.delete(key).await
            }

            async fn purge_expired(&self) -> ::std::result::Result<u64, $crate::store::StoreError> {
                self.inner.purge_expired().await
            }

            fn supports_index(&self) -> bool {
                true
            }

            /// An upsert into the side table `<table>_index`, keyed by the entry's digest and
            /// the store key, setting `added_at` to now. Rows do not expire (`until` is not
            /// needed): the purge deletes the members of ended sessions once they are older
            /// than a minute.
            async fn index_add(
                &self,
                entry: &$crate::store::IndexEntry,
                key: &$crate::id::StoreKey,
                until: ::std::option::Option<$crate::record::Timestamp>,
            ) -> ::std::result::Result<(), $crate::store::StoreError> {
                self.inner.index_add(entry, key, until).await
            }

            async fn index_remove(
                &self,
                entry: &$crate::store::IndexEntry,
                key: &$crate::id::StoreKey,
            ) -> ::std::result::Result<(), $crate::store::StoreError> {
                self.inner.index_remove(entry, key).await
            }

            /// The entry's rows, found by the primary key of `<table>_index`.
            async fn index_members(
                &self,
                entry: &$crate::store::IndexEntry,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::store::IndexMember>,
                $crate::store::StoreError,
            > {
                self.inner.index_members(entry).await
            }

            /// One `SELECT .. WHERE key IN (..)` per 256 keys.
            async fn load_many(
                &self,
                keys: &[$crate::id::StoreKey],
            ) -> ::std::result::Result<
                ::std::vec::Vec<::std::option::Option<$crate::record::Record>>,
                $crate::store::StoreError,
            > {
                self.inner.load_many(keys).await
            }

            $($($store_items)*)?
        }
    };
}

pub(crate) use sql_store_api;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;

    fn key() -> StoreKey {
        SessionId::generate().unwrap().store_key()
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in [
            "sessions",
            "_s",
            "Sessions2",
            "app_sessions_v1",
            &"a".repeat(48),
        ] {
            assert_eq!(TableName::new(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "1sessions",
            "sess ions",
            "sessions;drop",
            "\"sessions\"",
            "schema.sessions",
            "séssions",
            &"a".repeat(49),
        ] {
            let error = TableName::new(bad).unwrap_err();
            assert_eq!(error.name(), bad);
        }
    }

    #[test]
    fn fields_encode_as_an_object_of_strings_and_decode_byte_exact() {
        let fields: Fields = [
            ("views", "3"),
            ("user", "{\"name\": \"ada\",  \"n\": 1.50}"),
            ("名前", "\"🧠 \\\"q\\\" \\\\ \\u0000\""),
        ]
        .into_iter()
        .map(|(k, v)| (Arc::from(k), Arc::from(v)))
        .collect();
        let data = encode_fields(&fields).unwrap();
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&data).unwrap();
        assert!(object.values().all(|v| v.is_string()));
        let record = decode_record(&key(), &data, 1, 2).unwrap();
        assert_eq!(record.fields, fields);
        assert_eq!(record.created_at, Timestamp::from_millis(1));
        assert_eq!(record.expires_at, Timestamp::from_millis(2));
    }

    #[test]
    fn data_that_is_not_an_object_is_corrupt() {
        for data in ["not json", "[1,2]", "\"text\"", "null", "42", ""] {
            let result = decode_record(&key(), data, 0, 0);
            assert!(
                matches!(result, Err(StoreError::Corrupt(_))),
                "{data:?}: {result:?}"
            );
        }
    }

    #[test]
    fn fields_that_are_not_strings_are_skipped_and_the_rest_kept() {
        let data = r#"{"good":"1","number":2,"nested":{"a":"b"},"null":null,"also":"\"x\""}"#;
        let record = decode_record(&key(), data, 0, 0).unwrap();
        let names: Vec<&str> = record.fields.keys().map(|k| &**k).collect();
        assert_eq!(names, ["also", "good"]);
        assert_eq!(&*record.fields["also"], "\"x\"");
    }

    #[test]
    fn timestamps_clamp_instead_of_wrapping() {
        assert_eq!(to_sql(Timestamp::from_millis(u64::MAX)), i64::MAX);
        assert_eq!(from_sql(-5), Timestamp::from_millis(0));
        assert_eq!(
            from_sql(to_sql(Timestamp::from_millis(123))),
            Timestamp::from_millis(123)
        );
    }

    #[test]
    fn purge_interval_is_randomised_between_half_and_one_and_a_half() {
        let interval = Duration::from_secs(15 * 60);
        assert_eq!(jittered(interval, 0), interval / 2);
        assert_eq!(jittered(interval, u32::MAX), interval * 3 / 2);
        let middle = jittered(interval, u32::MAX / 2);
        assert!(
            middle.abs_diff(interval) < Duration::from_millis(1),
            "{middle:?}"
        );

        let samples: Vec<Duration> = (0..200).map(|_| jittered(interval, random_u32())).collect();
        assert!(samples
            .iter()
            .all(|d| *d >= interval / 2 && *d <= interval * 3 / 2));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(
            distinct.len() > 150,
            "only {} distinct intervals",
            distinct.len()
        );
        assert!(samples.iter().any(|d| *d < interval) && samples.iter().any(|d| *d > interval));
        // A huge interval saturates instead of panicking.
        assert_eq!(jittered(Duration::MAX, u32::MAX), Duration::MAX);
    }

    struct Counter {
        slot: PurgeSlot,
        runs: std::sync::atomic::AtomicU64,
    }

    impl HasPurgeSlot for Counter {
        fn purge_slot(&self) -> &PurgeSlot {
            &self.slot
        }
    }

    fn counter() -> Arc<Counter> {
        Arc::new(Counter {
            slot: PurgeSlot::default(),
            runs: 0.into(),
        })
    }

    async fn count(counter: Arc<Counter>) -> Result<u64, StoreError> {
        counter
            .runs
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(1)
    }

    #[tokio::test]
    async fn purge_task_runs_repeatedly_and_stops_when_the_store_is_dropped() {
        let store = counter();
        let task = spawn_purge_task(&store, Duration::from_millis(20), "test", count);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let runs = store.runs.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            runs >= 3,
            "ran {runs} times in 200 ms at a 10-30 ms interval"
        );
        drop(store);
        // Aborted by the store's drop, or ended at its next wake-up if it was mid-purge.
        let ended = tokio::time::timeout(Duration::from_secs(1), task).await;
        assert!(ended.is_ok(), "the task ends once the store is dropped");
    }

    #[tokio::test]
    async fn a_new_purge_task_replaces_the_old_one() {
        let store = counter();
        let first = spawn_purge_task(&store, Duration::from_secs(3600), "test", count);
        let _second = spawn_purge_task(&store, Duration::from_secs(60), "test", count);
        assert!(first.await.unwrap_err().is_cancelled());
        assert_eq!(store.slot.interval(), Some(Duration::from_secs(60)));
        store.slot.stop();
        assert_eq!(store.slot.interval(), None);
    }
}
