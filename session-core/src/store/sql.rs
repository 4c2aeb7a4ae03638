//! What the SQL stores share: the table name, the JSON data column, error mapping and the
//! purge task.
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
//! [`SaveMode::Merge`](crate::SaveMode::Merge) is one upsert statement that merges the given
//! fields into the stored object inside the database (`json_patch`, `jsonb ||`,
//! `JSON_MERGE_PATCH`), so two requests writing different fields at once both keep their
//! change: the database serialises the two statements on the row and each sees the other's
//! result.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::ser::{Serialize, Serializer};
use tokio::task::{AbortHandle, JoinHandle};

use super::StoreError;
use crate::id::StoreKey;
use crate::record::{Fields, Record, Timestamp};

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
