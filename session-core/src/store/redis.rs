//! Sessions in Redis, or in a Redis Cluster (feature `redis`): [`RedisStore`].

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Script, Value};
use async_trait::async_trait;

use super::lock::{lock_token, retry_lock};
use super::{IndexEntry, IndexMember, Release, SessionLock, Store, StoreError};
use crate::id::StoreKey;
use crate::record::{Fields, Record, SaveMode, Timestamp};

const DEFAULT_PREFIX: &str = "session:";
/// The longest a store call may take, reconnection and retry included.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one attempt to open a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the server may take to answer one command of a cluster.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes the field/value pairs `ARGV[first..]` into hash `key`, in slices small enough for
/// Lua's `unpack`, which fails beyond a few thousand values.
const HSET_PAIRS: &str = r"
local function hset_pairs(key, first)
  for i = first, #ARGV, 1000 do
    redis.call('HSET', key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
";

/// `KEYS[1]` the session; `ARGV[1]` the deadline in ms; `ARGV[2..]` field/value pairs,
/// metadata included. Returns 1 if the record was created, 0 if the key was taken.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HSET_PAIRS}
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
hset_pairs(KEYS[1], 2)
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1"
    ))
});

/// Like [`CREATE`], but writes over whatever fields are stored and keeps the others, and only
/// if the record exists: returns 0 and writes nothing when it is gone (deleted or expired), so
/// a save never brings a session back. `PEXPIREAT` comes last, so a deadline in the past
/// removes the record.
static MERGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HSET_PAIRS}
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
hset_pairs(KEYS[1], 2)
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1"
    ))
});

/// Like [`MERGE`], but drops every stored field first.
static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HSET_PAIRS}
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1])
hset_pairs(KEYS[1], 2)
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1"
    ))
});

/// `KEYS[1]` the session; `ARGV[1]` the new deadline in ms; `ARGV[2]` the name of the expiry
/// field. Does nothing to an absent key, so a touch never brings a record back.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1",
    )
});

/// `KEYS[1]` an index entry (a sorted set of store keys scored by when they were added);
/// `ARGV[1]` now in ms; `ARGV[2]` the store key; `ARGV[3]` the latest deadline of any member in
/// ms, or empty for none. The set expires with its last possible member.
static INDEX_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local existed = redis.call('EXISTS', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '' then
  redis.call('PERSIST', KEYS[1])
else
  local at = redis.call('PEXPIRETIME', KEYS[1])
  if existed == 0 or (at > 0 and at < tonumber(ARGV[3])) then
    redis.call('PEXPIREAT', KEYS[1], ARGV[3])
  end
end
return 1",
    )
});

/// `KEYS[1]` a session lock; `ARGV[1]` the holder's token. Deletes the lock only if that
/// holder still has it, so a lock whose lease ran out and was taken by another request is
/// left alone.
static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
    )
});

/// Sessions in Redis or Redis Cluster: a hash per session, partial writes, native expiry.
///
/// ```no_run
/// use std::sync::Arc;
/// use session_core::store::{RedisStore, Store};
///
/// # async fn run() -> Result<(), session_core::StoreError> {
/// // One server:
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// // A cluster, given some of its nodes:
/// let cluster = RedisStore::connect_cluster("redis+cluster://10.0.0.1:7001,10.0.0.2:7001")
///     .await?
///     .with_prefix("myapp:session:");
/// let store: Arc<dyn Store> = Arc::new(store);
/// # let _ = cluster;
/// # Ok(())
/// # }
/// ```
///
/// # How a session is kept
///
/// One session is one Redis **hash** under `PREFIX + store key` (the prefix is `session:` unless
/// [`with_prefix`](RedisStore::with_prefix) says otherwise). Each session field is one hash
/// field holding its JSON text, so a save that changed one field sends that field only.
/// Two more hash fields hold the metadata, as decimal milliseconds since the Unix epoch:
/// [`RedisStore::CREATED_FIELD`] (`"\0created"`) and [`RedisStore::EXPIRES_FIELD`]
/// (`"\0expires"`). Their names start with a NUL byte, which no Rust identifier can, so they
/// cannot clash with a field of a `#[derive(Session)]` struct; a write of a field whose name
/// starts with NUL (only possible through `rename`) is refused with
/// [`StoreError::Rejected`].
///
/// Expiry is Redis's own: every write ends with `PEXPIREAT` to the record's `expires_at`, so
/// Redis drops the session at its deadline and [`purge_expired`](Store::purge_expired) has
/// nothing to do.
///
/// | operation | what runs (atomically: each is one Lua script on one key) |
/// |---|---|
/// | `load` | `HGETALL key` |
/// | `create` | `EXISTS key`; if absent `HSET key f v ...` + `PEXPIREAT key ms`; else nothing |
/// | `save` (merge) | `HSET key` the changed fields and the metadata, `PEXPIREAT key ms` |
/// | `save` (replace) | `DEL key`, `HSET key` every field and the metadata, `PEXPIREAT key ms` |
/// | `touch` | if `EXISTS key`: `HSET key "\0expires" ms`, `PEXPIREAT key ms` |
/// | `delete` | `DEL key` |
///
/// Scripts are sent with `EVALSHA` (loaded on first use, on every node of a cluster). Each
/// touches one key, so in a Redis Cluster a session lives in one slot and every script runs on
/// the node that owns it.
///
/// # Failures
///
/// Every call returns within the store's [timeout](RedisStore::with_timeout) (3 s by default):
/// a server that is down or does not answer gives a [`StoreError`], never a hang or a panic.
/// The connection heals by itself: after the server comes back the next call reconnects.
/// A call whose connection turns out to be broken is retried once on a fresh connection.
///
/// # Cloning
///
/// Cloning is cheap and clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    prefix: Arc<str>,
    timeout: Duration,
}

/// A connection to one server or to a cluster; both reconnect by themselves.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

impl RedisStore {
    /// The hash field holding the creation time, in decimal milliseconds since the Unix epoch.
    /// It starts with a NUL byte, so no session field can be named like it.
    pub const CREATED_FIELD: &'static str = "\0created";
    /// The hash field holding the deadline, in decimal milliseconds since the Unix epoch; the
    /// key's Redis expiry is set to the same instant.
    pub const EXPIRES_FIELD: &'static str = "\0expires";

    /// Connects to one Redis server, such as `redis://127.0.0.1:6379` or
    /// `redis://:password@host:6379/2`.
    ///
    /// The connection is a [`ConnectionManager`] that reconnects by itself. Opening it gives up
    /// after 1 s, a call after the store's [timeout](Self::with_timeout) (3 s by default), and
    /// a broken connection is reopened with one quick retry, so that calls fail fast while the
    /// server is down. (The connection sets no timeout of its own per command: the store's
    /// bounds every call already, and a second timer per command would cost every request
    /// for nothing; a command that timed out does not make redis-rs reconnect either way.)
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the URL is invalid or the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = ::redis::Client::open(url).map_err(redis_error)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(redis_error)?;
        Ok(Self::from_connection_manager(manager))
    }

    /// Connects to a Redis Cluster given some of its nodes, as
    /// `redis+cluster://HOST:PORT,HOST:PORT,...` (the scheme may be left out). The other nodes
    /// and the slot map are discovered from these. A password goes on the first node:
    /// `redis+cluster://:secret@HOST:PORT,HOST:PORT`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if a node address is invalid or no node can be reached.
    pub async fn connect_cluster(spec: &str) -> Result<Self, StoreError> {
        let nodes = cluster_nodes(spec)?;
        let client = ClusterClient::builder(nodes)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .overall_response_timeout(Some(DEFAULT_TIMEOUT))
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(500)
            .build()
            .map_err(redis_error)?;
        let connection = client.get_async_connection().await.map_err(redis_error)?;
        Ok(Self::from_cluster_connection(connection))
    }

    /// A store on a connection you configured yourself.
    pub fn from_connection_manager(manager: ConnectionManager) -> Self {
        Self::with_connection(Connection::Single(manager))
    }

    /// A store on a cluster connection you configured yourself.
    pub fn from_cluster_connection(connection: ClusterConnection) -> Self {
        Self::with_connection(Connection::Cluster(connection))
    }

    fn with_connection(connection: Connection) -> Self {
        Self {
            connection,
            prefix: Arc::from(DEFAULT_PREFIX),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the text put before every store key to make the Redis key (`session:` by
    /// default), so that several applications can share one database.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// Sets the longest a store call may take, reconnection and retry included (3 s by
    /// default). A call that takes longer fails with [`StoreError::Timeout`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The prefix of every Redis key this store writes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key under which the session with store key `key` is kept.
    pub fn redis_key(&self, key: &StoreKey) -> String {
        let mut redis_key = String::with_capacity(self.prefix.len() + 64);
        redis_key.push_str(&self.prefix);
        redis_key.push_str(key.as_str());
        redis_key
    }

    /// Runs `attempt` on the connection within the store's timeout. An attempt that fails
    /// because the connection is broken is made once more: the connection has started to
    /// reconnect by then, and the first call after a server restart should not be the one
    /// that fails.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        attempt: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Connection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let attempts = async {
            match attempt(self.connection.clone()).await {
                Err(error) if is_broken_connection(&error) => {
                    tracing::debug!(%error, operation, "redis connection broken; retrying once");
                    attempt(self.connection.clone()).await
                }
                result => result,
            }
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(result) => result.map_err(redis_error),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// The Redis key of an index entry: its own key (and, on a cluster, its own slot), so
    /// updating it is one single-key command.
    fn index_key(&self, entry: &IndexEntry) -> String {
        format!("{}index:{}", self.prefix, entry.digest())
    }

    /// Runs `script` on the session's key with the deadline and field pairs as arguments.
    async fn run_write(
        &self,
        operation: &'static str,
        script: &Script,
        key: &StoreKey,
        record: &Record,
        fields: &Fields,
    ) -> Result<i64, StoreError> {
        check_field_names(fields)?;
        let deadline = record.expires_at.as_millis();
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.redis_key(key))
            .arg(deadline)
            .arg(Self::CREATED_FIELD)
            .arg(record.created_at.as_millis())
            .arg(Self::EXPIRES_FIELD)
            .arg(deadline);
        for (name, value) in fields {
            invocation.arg(name.as_bytes()).arg(value.as_bytes());
        }
        let invocation = &invocation;
        self.call(operation, move |mut connection| async move {
            invocation.invoke_async(&mut connection).await
        })
        .await
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.connection {
            Connection::Single(_) => "server",
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let mut command = ::redis::cmd("HGETALL");
        command.arg(self.redis_key(key));
        let command = &command;
        let reply: Value = self
            .call("load", move |mut connection| async move {
                command.query_async(&mut connection).await
            })
            .await?;
        parse_record(reply, Timestamp::now())
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        let created = self
            .run_write("create", &CREATE, key, record, &record.fields)
            .await?;
        Ok(created == 1)
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        let script: &Script = match mode {
            SaveMode::Merge => &MERGE,
            SaveMode::Replace => &REPLACE,
        };
        let saved = self
            .run_write("save", script, key, record, &record.fields)
            .await?;
        Ok(saved == 1)
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        let mut invocation = TOUCH.prepare_invoke();
        invocation
            .key(self.redis_key(key))
            .arg(expires_at.as_millis())
            .arg(Self::EXPIRES_FIELD);
        let invocation = &invocation;
        let touched: i64 = self
            .call("touch", move |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        Ok(touched == 1)
    }

    fn supports_locks(&self) -> bool {
        true
    }

    /// A lease lock: `SET <key>:lock TOKEN NX PX lease`, tried with a growing pause (2 ms to
    /// 25 ms) until `wait` runs out, and released by a script that deletes the lock only if
    /// it still holds this request's random token.
    async fn lock(
        &self,
        key: &StoreKey,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        let lock_key = format!("{}:lock", self.redis_key(key));
        let token = lock_token()?;
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        retry_lock(wait, || async {
            let mut command = ::redis::cmd("SET");
            command
                .arg(&lock_key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(lease_ms);
            let command = &command;
            let reply: Value = self
                .call("lock", move |mut connection| async move {
                    command.query_async(&mut connection).await
                })
                .await?;
            Ok((!matches!(reply, Value::Nil)).then(|| {
                SessionLock::new(RedisUnlock {
                    store: self.clone(),
                    lock_key: lock_key.clone(),
                    token: token.clone(),
                })
            }))
        })
        .await
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        let mut command = ::redis::cmd("DEL");
        command.arg(self.redis_key(key));
        let command = &command;
        let _removed: i64 = self
            .call("delete", move |mut connection| async move {
                command.query_async(&mut connection).await
            })
            .await?;
        Ok(())
    }

    fn supports_index(&self) -> bool {
        true
    }

    /// `ZADD` to the entry's sorted set (scored by the time added), which expires with the
    /// latest deadline any of its sessions can reach.
    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let mut invocation = INDEX_ADD.prepare_invoke();
        invocation
            .key(self.index_key(entry))
            .arg(Timestamp::now().as_millis())
            .arg(key.as_str())
            .arg(until.map_or_else(String::new, |t| t.as_millis().to_string()));
        let invocation = &invocation;
        let _: i64 = self
            .call("index_add", move |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        Ok(())
    }

    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        let mut command = ::redis::cmd("ZREM");
        command.arg(self.index_key(entry)).arg(key.as_str());
        let command = &command;
        let _removed: i64 = self
            .call("index_remove", move |mut connection| async move {
                command.query_async(&mut connection).await
            })
            .await?;
        Ok(())
    }

    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        let mut command = ::redis::cmd("ZRANGE");
        command
            .arg(self.index_key(entry))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        let command = &command;
        let pairs: Vec<(String, f64)> = self
            .call("index_members", move |mut connection| async move {
                command.query_async(&mut connection).await
            })
            .await?;
        Ok(pairs
            .into_iter()
            .filter_map(|(member, added)| {
                Some(IndexMember {
                    key: StoreKey::parse(&member)?,
                    // Scores are whole milliseconds, well inside f64's exact range.
                    added: Timestamp::from_millis(added.max(0.0) as u64),
                })
            })
            .collect())
    }

    /// All at once: the loads go out together on the multiplexed connection (pipelined), in
    /// batches of 256, so a thousand sessions cost a few round trips, not a thousand.
    async fn load_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Record>>, StoreError> {
        let mut records = Vec::with_capacity(keys.len());
        for batch in keys.chunks(256) {
            let mut loads = tokio::task::JoinSet::new();
            for (position, key) in batch.iter().enumerate() {
                let (store, key) = (self.clone(), *key);
                loads.spawn(async move { (position, store.load(&key).await) });
            }
            let mut batch_records = vec![None; batch.len()];
            while let Some(joined) = loads.join_next().await {
                let (position, loaded) = joined.map_err(StoreError::backend)?;
                batch_records[position] = match loaded {
                    Ok(record) => record,
                    Err(StoreError::Corrupt(_)) => None,
                    Err(error) => return Err(error),
                };
            }
            records.extend(batch_records);
        }
        Ok(records)
    }
}

/// Gives a Redis session lock back.
struct RedisUnlock {
    store: RedisStore,
    lock_key: String,
    token: String,
}

#[async_trait]
impl Release for RedisUnlock {
    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        let mut invocation = UNLOCK.prepare_invoke();
        invocation.key(&self.lock_key).arg(&self.token);
        let invocation = &invocation;
        let _released: i64 = self
            .store
            .call("unlock", move |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        Ok(())
    }
}

/// Whether `error` says the connection broke (so a fresh one may succeed), as opposed to a
/// server's answer or a timeout (after which the command may still be running).
fn is_broken_connection(error: &RedisError) -> bool {
    (error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal())
        && !error.is_timeout()
}

fn redis_error(error: RedisError) -> StoreError {
    if error.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::backend(error)
    }
}

/// Refuses field names that could be taken for the metadata fields.
fn check_field_names(fields: &Fields) -> Result<(), StoreError> {
    match fields.keys().find(|name| name.starts_with('\0')) {
        Some(name) => Err(StoreError::Rejected(format!(
            "session field name {name:?} starts with a NUL byte, which the Redis store reserves for its metadata"
        ))),
        None => Ok(()),
    }
}

/// `redis+cluster://a:1,b:2` as `["redis://a:1", "redis://b:2"]`.
fn cluster_nodes(spec: &str) -> Result<Vec<String>, StoreError> {
    let spec = spec.trim();
    let list = spec.strip_prefix("redis+cluster://").unwrap_or(spec);
    let nodes: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .map(|node| {
            if node.contains("://") {
                node.to_owned()
            } else {
                format!("redis://{node}")
            }
        })
        .collect();
    if nodes.is_empty() {
        return Err(StoreError::backend(format!(
            "no cluster nodes in {spec:?}; expected redis+cluster://HOST:PORT,HOST:PORT,..."
        )));
    }
    Ok(nodes)
}

/// Reads an `HGETALL` reply: `None` for an absent or expired session.
pub(crate) fn parse_record(reply: Value, now: Timestamp) -> Result<Option<Record>, StoreError> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(None),
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(StoreError::Corrupt(
                    "HGETALL answered an odd number of values".to_owned(),
                ));
            }
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(name), Some(value)) = (items.next(), items.next()) {
                pairs.push((name, value));
            }
            pairs
        }
        other => {
            return Err(StoreError::Corrupt(format!(
                "HGETALL answered {other:?} instead of a hash"
            )))
        }
    };
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut fields = Fields::new();
    let mut created_at = None;
    let mut expires_at = None;
    for (name, value) in pairs {
        let name = bulk_text(name, "field name")?;
        let value = bulk_text(value, "field value")?;
        if name == RedisStore::CREATED_FIELD {
            created_at = Some(parse_millis(&value, "creation time")?);
        } else if name == RedisStore::EXPIRES_FIELD {
            expires_at = Some(parse_millis(&value, "deadline")?);
        } else if name.starts_with('\0') {
            // Metadata a later version may add: not a session field.
        } else {
            fields.insert(Arc::from(name), Arc::from(value));
        }
    }
    let (Some(created_at), Some(expires_at)) = (created_at, expires_at) else {
        return Err(StoreError::Corrupt(
            "session hash lacks its creation time or deadline field".to_owned(),
        ));
    };
    let record = Record {
        fields,
        created_at,
        expires_at,
    };
    Ok((!record.is_expired(now)).then_some(record))
}

fn bulk_text(value: Value, what: &str) -> Result<String, StoreError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes)
            .map_err(|_| StoreError::Corrupt(format!("session {what} is not UTF-8"))),
        Value::SimpleString(text) => Ok(text),
        other => Err(StoreError::Corrupt(format!(
            "session {what} is {other:?}, not a string"
        ))),
    }
}

fn parse_millis(text: &str, what: &str) -> Result<Timestamp, StoreError> {
    text.parse::<u64>()
        .map(Timestamp::from_millis)
        .map_err(|_| StoreError::Corrupt(format!("session {what} {text:?} is not a number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn cluster_spec_lists_every_node() {
        assert_eq!(
            cluster_nodes("redis+cluster://127.0.0.1:7001, 127.0.0.1:7002").unwrap(),
            ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002"]
        );
        assert_eq!(cluster_nodes("h:1").unwrap(), ["redis://h:1"]);
        assert!(cluster_nodes("redis+cluster://").is_err());
    }

    #[test]
    fn hash_reply_parses_into_a_record() {
        let reply = Value::Array(vec![
            bulk("views"),
            bulk("3"),
            bulk(RedisStore::CREATED_FIELD),
            bulk("1000"),
            bulk(RedisStore::EXPIRES_FIELD),
            bulk("5000"),
        ]);
        let record = parse_record(reply, Timestamp::from_millis(2000))
            .unwrap()
            .unwrap();
        assert_eq!(record.created_at, Timestamp::from_millis(1000));
        assert_eq!(record.expires_at, Timestamp::from_millis(5000));
        assert_eq!(record.fields.len(), 1);
        assert_eq!(&*record.fields["views"], "3");
    }

    #[test]
    fn expired_or_empty_hashes_load_as_absent() {
        let reply = Value::Map(vec![
            (bulk(RedisStore::CREATED_FIELD), bulk("1000")),
            (bulk(RedisStore::EXPIRES_FIELD), bulk("5000")),
        ]);
        assert!(parse_record(reply, Timestamp::from_millis(5000))
            .unwrap()
            .is_none());
        assert!(parse_record(Value::Array(vec![]), Timestamp::now())
            .unwrap()
            .is_none());
    }

    #[test]
    fn hashes_without_metadata_are_corrupt() {
        let reply = Value::Array(vec![bulk("views"), bulk("3")]);
        assert!(matches!(
            parse_record(reply, Timestamp::now()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn field_names_starting_with_nul_are_refused() {
        let mut fields = Fields::new();
        fields.insert(Arc::from("\0expires"), Arc::from("1"));
        assert!(matches!(
            check_field_names(&fields),
            Err(StoreError::Rejected(_))
        ));
    }
}
