//! connect-redis's records, shared with a Node app: [`ConnectRedisStore`].

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Script;
use async_trait::async_trait;

use super::{back_off, not_express, ExpressObject, DEFAULT_TTL, SAVE_ATTEMPTS};
use crate::id::StoreKey;
use crate::record::{Record, SaveMode, Timestamp};
use crate::store::{RedisStore, Store, StoreError};

/// connect-redis's default key prefix.
const DEFAULT_PREFIX: &str = "sess:";

/// `KEYS[1]` the session; `ARGV[1]` the record as read; `ARGV[2]` the record to write;
/// `ARGV[3]` its lifetime in seconds. Writes only if the record is still the one read: 1
/// written (or deleted, for a lifetime that is over), 0 gone, -1 changed since it was read.
static COMPARE_AND_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if current ~= ARGV[1] then return -1 end
if tonumber(ARGV[3]) <= 0 then redis.call('DEL', KEYS[1]); return 1 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1",
    )
});

/// Sessions in Redis as connect-redis (v7 to v9) keeps them, so an express-session app and
/// this one share them: use it with [`SessionLayer::express`](crate::SessionLayer::express).
///
/// ```no_run
/// use session_core::store::ConnectRedisStore;
/// use session_core::{ExpressSecrets, SessionLayer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // `new RedisStore({ client, prefix: "sess:" })` on the Node side:
/// let store = ConnectRedisStore::connect("redis://127.0.0.1:6379").await?;
/// let layer = SessionLayer::express(store, ExpressSecrets::new("keyboard cat")?).check()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// | operation | what runs | connect-redis |
/// |---|---|---|
/// | `load` | `GET key`, `PTTL key` (one `MULTI`) | `GET key` |
/// | `create` | `SET key json EX ttl NX` | `SET key json EX ttl` |
/// | `save` | `GET key`, then a script: `SET key json EX ttl` if the key still holds what was read, else read again | `SET key json EX ttl` |
/// | `touch` | `EXPIRE key ttl` | `EXPIRE key ttl` |
/// | `delete` | `DEL key` | `DEL key` |
///
/// The key is the prefix (`sess:` unless [`with_prefix`](Self::with_prefix) says otherwise)
/// and the session id itself; the value the JSON of the session object (see the
/// [module docs](super)); the lifetime connect-redis's rule: until `cookie.expires`, rounded
/// up to the second, or a day when the cookie has none. A session is live while Redis keeps
/// its key: a touch from either app moves the key's expiry, not `cookie.expires`.
///
/// Connections, timeouts and reconnection are [`RedisStore`]'s (one server or a cluster).
#[derive(Clone)]
pub struct ConnectRedisStore {
    redis: RedisStore,
}

impl ConnectRedisStore {
    /// Connects to one Redis server, such as `redis://127.0.0.1:6379`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the URL is invalid or the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self::from_redis_store(RedisStore::connect(url).await?))
    }

    /// The store on the connection of `redis` (its prefix is replaced by `sess:`; set another
    /// with [`with_prefix`](Self::with_prefix)).
    pub fn from_redis_store(redis: RedisStore) -> Self {
        Self {
            redis: redis.with_prefix(DEFAULT_PREFIX),
        }
    }

    /// The text before every session id in a Redis key: connect-redis's `prefix` option
    /// (`sess:` by default).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis = self.redis.with_prefix(prefix);
        self
    }

    /// Sets the longest a store call may take (3 s by default).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.redis = self.redis.with_timeout(timeout);
        self
    }

    /// The prefix of every Redis key this store writes.
    pub fn prefix(&self) -> &str {
        self.redis.prefix()
    }

    /// The Redis key of the session with store key `key`: the prefix and the session id.
    ///
    /// # Errors
    /// [`StoreError::Rejected`] for a hashed key: the layer is not in express mode.
    pub fn redis_key(&self, key: &StoreKey) -> Result<String, StoreError> {
        let id = key.unhashed_id().ok_or_else(not_express)?;
        Ok(format!("{}{}", self.redis.prefix(), id.as_str()))
    }
}

/// Whole seconds of `ttl`, rounded up, as connect-redis computes `EX`.
fn seconds(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

#[async_trait]
impl Store for ConnectRedisStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let redis_key = self.redis_key(key)?;
        let redis_key = redis_key.as_str();
        let (text, pttl): (Option<String>, i64) = self
            .redis
            .call("load", move |mut connection| async move {
                ::redis::pipe()
                    .atomic()
                    .get(redis_key)
                    .pttl(redis_key)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let Some(text) = text else { return Ok(None) };
        let object = ExpressObject::parse(&text)?;
        let now = Timestamp::now();
        let expires_at = match u64::try_from(pttl) {
            Ok(0) => return Ok(None),
            Ok(millis) => now.saturating_add(Duration::from_millis(millis)),
            // No expiry on the key (connect-redis's `disableTTL`): the cookie's, or a day.
            Err(_) if pttl == -1 => object
                .cookie_expires()
                .unwrap_or_else(|| now.saturating_add(DEFAULT_TTL)),
            Err(_) => return Ok(None),
        };
        Ok(Some(object.to_record(expires_at)))
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        let redis_key = self.redis_key(key)?;
        let object = ExpressObject::from_record(record)?;
        let Some(ttl) = object.ttl(Timestamp::now()) else {
            // Over before it began: connect-redis would delete rather than write.
            return Ok(true);
        };
        let (redis_key, json, ttl) = (redis_key.as_str(), object.to_json(), seconds(ttl));
        let json = json.as_str();
        let set: Option<String> = self
            .redis
            .call("create", move |mut connection| async move {
                ::redis::cmd("SET")
                    .arg(redis_key)
                    .arg(json)
                    .arg("EX")
                    .arg(ttl)
                    .arg("NX")
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        let redis_key = self.redis_key(key)?;
        let redis_key = redis_key.as_str();
        for attempt in 0..SAVE_ATTEMPTS {
            if attempt > 0 {
                back_off(attempt).await;
            }
            let read: Option<String> = self
                .redis
                .call("save", move |mut connection| async move {
                    ::redis::cmd("GET")
                        .arg(redis_key)
                        .query_async(&mut connection)
                        .await
                })
                .await?;
            let Some(read) = read else { return Ok(false) };
            let mut object = ExpressObject::parse(&read)?;
            object.apply(record, mode)?;
            let ttl = object.ttl(Timestamp::now()).map_or(0, seconds);
            let (read, json) = (read.as_str(), object.to_json());
            let json = json.as_str();
            let outcome: i64 = self
                .redis
                .call("save", move |mut connection| async move {
                    COMPARE_AND_SET
                        .key(redis_key)
                        .arg(read)
                        .arg(json)
                        .arg(ttl)
                        .invoke_async(&mut connection)
                        .await
                })
                .await?;
            match outcome {
                1 => return Ok(true),
                0 => return Ok(false),
                // The other app wrote the record since we read it: apply our change to its.
                _ => tracing::debug!(
                    "express session record changed during a save; reading it again"
                ),
            }
        }
        Err(StoreError::Rejected(format!(
            "the express session record kept changing during {SAVE_ATTEMPTS} attempts to save it"
        )))
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        let redis_key = self.redis_key(key)?;
        let redis_key = redis_key.as_str();
        let ttl = seconds(expires_at.saturating_since(Timestamp::now()));
        let touched: i64 = self
            .redis
            .call("touch", move |mut connection| async move {
                ::redis::cmd("EXPIRE")
                    .arg(redis_key)
                    .arg(ttl)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(touched == 1)
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        let redis_key = self.redis_key(key)?;
        let redis_key = redis_key.as_str();
        let _: i64 = self
            .redis
            .call("delete", move |mut connection| async move {
                ::redis::cmd("DEL")
                    .arg(redis_key)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(())
    }
}

impl fmt::Debug for ConnectRedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectRedisStore")
            .field("prefix", &self.redis.prefix())
            .finish_non_exhaustive()
    }
}
