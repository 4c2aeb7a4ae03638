//! Sessions in memcached (feature `memcached`): [`MemcachedStore`].

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::ser::{Serialize, SerializeStruct, Serializer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{IndexEntry, IndexMember, Store, StoreError};
use crate::id::StoreKey;
use crate::record::{Fields, Record, SaveMode, Timestamp};

const DEFAULT_PREFIX: &str = "session:";
const DEFAULT_PORT: u16 = 11211;
/// The longest a store call may take, retries included.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Memcached's longest key.
const MAX_KEY_LEN: usize = 250;
/// A store key is 64 hex characters, so this is the longest prefix.
const MAX_PREFIX_LEN: usize = MAX_KEY_LEN - 64;
/// Beyond this many seconds memcached reads an expiry as an absolute Unix time.
const MAX_RELATIVE_EXPIRY: u64 = 30 * 24 * 60 * 60;
/// The version of the record encoding, stored as `"v"`.
const FORMAT_VERSION: u64 = 1;
/// Attempts of one `gets`/`cas` loop before giving up (the call's timeout usually ends it
/// first).
const MAX_CAS_ATTEMPTS: u32 = 1000;
/// A value length the server announces beyond this is taken for a broken reply.
const MAX_VALUE_LEN: usize = 1 << 30;
/// Keys per multi-key `get` of `load_many`: one command line of about 7 KB.
const GET_BATCH: usize = 100;
/// How many items one index entry is split over, by the first hex digit of the member.
const INDEX_BUCKETS: usize = 16;

/// The buckets' names: the hex digits.
const INDEX_BUCKET_NAMES: [&str; INDEX_BUCKETS] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f",
];

/// The first line of an index entry's value, before its bound (`none` or Unix ms).
const INDEX_HEADER: &str = "index-v1 until ";

/// Sessions in memcached: one JSON item per session, native expiry, `cas` for concurrent
/// writers.
///
/// ```no_run
/// use std::sync::Arc;
/// use session_core::store::{MemcachedStore, Store};
///
/// # async fn run() -> Result<(), session_core::StoreError> {
/// let store = MemcachedStore::connect("memcache://127.0.0.1:11211")
///     .await?
///     .with_prefix("myapp:session:");
/// let store: Arc<dyn Store> = Arc::new(store);
/// # Ok(())
/// # }
/// ```
///
/// # How a session is kept
///
/// One session is one memcached item under `PREFIX + store key` (`session:` unless
/// [`with_prefix`](MemcachedStore::with_prefix) says otherwise), holding the whole record as
/// versioned JSON:
///
/// ```text
/// {"v":1,"created":1700000000000,"expires":1700000900000,"fields":{"views":"3","user":"null"}}
/// ```
///
/// `created` and `expires` are milliseconds since the Unix epoch; each field's value is its
/// JSON text, as a string. Memcached has no partial writes, so every write sends the whole
/// record, but none loses another writer's change:
///
/// | operation | memcached commands |
/// |---|---|
/// | `load` | `gets` (the value; its deadline is checked here) |
/// | `create` | `add`; if the key is taken by a record past its deadline, `gets` + `cas` |
/// | `save` (merge) | `gets`, merge in memory, `cas`; retried (with jitter) until no one wrote in between; `add` if absent |
/// | `save` (replace) | `set` |
/// | `touch` | `gets`, new deadline, `cas`, retried likewise; nothing if absent |
/// | `delete` | `delete` |
///
/// # Indexes
///
/// Memcached has no sets, so each index entry is 16 items, `PREFIX + "index:" + digest + ":"
/// + hex digit`, a member going to the item of its store key's first digit (so concurrent
/// writers of one entry rarely meet, and each item stays small; listing is one multi-key
/// `get`). Each item holds a list, one line per member after a header giving the bound:
///
/// ```text
/// index-v1 until 1700003600000
/// 3f2a…(store key) 1700000000000
/// 9c41…(store key) 1700000012345
/// ```
///
/// Each member is a store key and the time it was added (Unix ms). The item expires at the
/// bound: the latest `until` of any add (`none`, and no expiry, once an add gave none), so it
/// is never dropped while one of its sessions can be live. An add or a remove is a
/// `gets`, the change in memory, and a `cas` (an `add` when the entry is absent), retried
/// with a growing random pause while another writer got in between, so concurrent adds from
/// any number of processes all land; a remove of the last member expires the item (a `cas`
/// with a past expiry). When writers keep colliding for the whole call timeout, or 1 000
/// rounds, the call fails with [`StoreError::Backend`] saying so, and nothing is lost: the
/// layer fails the write that needed the add. Lines that do not read as a member are
/// skipped. One entry holds about 12 000 members within memcached's default 1 MB item limit;
/// an add beyond the limit fails with [`StoreError::Rejected`]. `load_many` is one multi-key
/// `get` per 100 sessions.
///
/// # Expiry
///
/// Memcached expires items by itself: each write sets the item's expiry to the record's
/// deadline, rounded up to whole seconds plus one second of slack for memcached's coarse
/// clock (relative seconds up to 30 days, an absolute Unix time beyond). The exact deadline
/// is kept in the record and checked on every load, so a record is never returned after it,
/// and [`purge_expired`](Store::purge_expired) has nothing to do.
///
/// # Size limit
///
/// Memcached refuses items over its item size limit: **1 MB by default**, raised with
/// `memcached -I 4m` (for example). A record over the limit fails with
/// [`StoreError::Rejected`] saying so; nothing is written.
///
/// # Connections
///
/// The store keeps a pool of connections to one memcached server (64 at most by default,
/// [`with_max_connections`](MemcachedStore::with_max_connections)); a connection that fails or
/// whose call is abandoned is closed, and a call that finds a pooled connection closed by the
/// server (after a restart, say) is retried once on a new one. Every call returns within the
/// store's [timeout](MemcachedStore::with_timeout) (3 s by default).
///
/// The client speaks memcached's text protocol itself, over Tokio: it needs `add`, `gets`,
/// `cas`, a pool and per-call deadlines, which is a few hundred lines, less than adapting a
/// client crate that lacks some of them.
///
/// # Cloning
///
/// Cloning is cheap and clones share the connection pool.
#[derive(Clone)]
pub struct MemcachedStore {
    pool: Arc<Pool>,
    prefix: Arc<str>,
    timeout: Duration,
}

impl MemcachedStore {
    /// Connects to the memcached server at `url`: `memcache://HOST:PORT` (port 11211 if left
    /// out; `memcached://` and a bare `HOST:PORT` work too).
    ///
    /// Opens one connection to check the server is there and to read its item size limit.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the URL is not of that form or the server cannot be reached,
    /// [`StoreError::Timeout`] if it does not answer within a second.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let address = parse_address(url)?;
        let mut connection = Connection::open(&address).await?;
        // Not every memcached-speaking server has `stats settings`; without it the server's
        // own refusal reports records over the limit.
        let item_size_max = tokio::time::timeout(CONNECT_TIMEOUT, connection.item_size_max())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let pool = Pool::new(address, item_size_max, DEFAULT_MAX_CONNECTIONS);
        if !connection.in_flight {
            pool.put(connection);
        }
        Ok(Self {
            pool: Arc::new(pool),
            prefix: Arc::from(DEFAULT_PREFIX),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the text put before every store key to make the memcached key (`session:` by
    /// default).
    ///
    /// # Panics
    /// If `prefix` is longer than 186 bytes or holds a space or a control character, which
    /// memcached keys cannot.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        assert!(
            prefix.len() <= MAX_PREFIX_LEN
                && !prefix.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()),
            "memcached key prefix {prefix:?} must be at most {MAX_PREFIX_LEN} bytes without spaces or control characters"
        );
        self.prefix = Arc::from(prefix);
        self
    }

    /// Sets the longest a store call may take, retries included (3 s by default). A call that
    /// takes longer fails with [`StoreError::Timeout`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the most connections open at once (64 by default, at least 1). Calls beyond it
    /// wait for a free connection. Starts a new pool, shared by the clones made after this.
    #[must_use]
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.pool = Arc::new(Pool::new(
            self.pool.address.clone(),
            self.pool.item_size_max,
            max,
        ));
        self
    }

    /// The prefix of every memcached key this store writes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The memcached key under which the session with store key `key` is kept.
    pub fn memcached_key(&self, key: &StoreKey) -> String {
        let mut item_key = String::with_capacity(self.prefix.len() + 64);
        item_key.push_str(&self.prefix);
        item_key.push_str(key.as_str());
        item_key
    }

    /// The memcached key of the bucket of index entry `entry` that holds `member`: the
    /// entry is split over [`INDEX_BUCKETS`] items by the member's first hex digit, so
    /// concurrent writers of one entry (a user logging in on many devices at once) rarely
    /// collide, and each item stays small.
    fn index_key(&self, entry: &IndexEntry, member: &StoreKey) -> String {
        let bucket = member.as_str().get(..1).unwrap_or("0");
        self.bucket_key(entry, bucket)
    }

    fn bucket_key(&self, entry: &IndexEntry, bucket: &str) -> String {
        format!("{}index:{}:{bucket}", self.prefix, entry.digest())
    }

    /// Reads the index entry under `item_key`, lets `change` edit it, and writes it with
    /// `cas` (or `add` when there was none) only if no one wrote in between, until that
    /// succeeds. `change` returns whether there is anything to write.
    async fn update_index(
        &self,
        item_key: &str,
        until: Option<Timestamp>,
        change: impl Fn(&mut IndexList, Timestamp) -> bool,
    ) -> Result<(), StoreError> {
        for attempt in 0..MAX_CAS_ATTEMPTS {
            backoff(attempt).await;
            let stored = self.pool.gets(item_key).await?;
            let now = Timestamp::now();
            let (mut list, cas) = match &stored {
                Some((bytes, cas)) => (IndexList::decode(bytes), Some(*cas)),
                None => (IndexList::new(until), None),
            };
            if !change(&mut list, now) {
                return Ok(());
            }
            let data = list.encode();
            if let Some(limit) = self.pool.item_size_max {
                if data.len() > limit {
                    return Err(index_too_large(list.members.len(), data.len(), limit));
                }
            }
            // A list left empty expires at once: an entry with no members is no entry.
            let exptime = if list.members.is_empty() {
                -1
            } else {
                list.until.map_or(0, |until| expiry_seconds(until, now))
            };
            let verb = if cas.is_some() { Verb::Cas } else { Verb::Add };
            let reply = match self.pool.store(verb, item_key, exptime, &data, cas).await {
                Err(StoreError::Rejected(_)) => {
                    let limit = self.pool.item_size_max.unwrap_or(data.len());
                    return Err(index_too_large(list.members.len(), data.len(), limit));
                }
                reply => reply?,
            };
            match reply {
                Reply::Stored => return Ok(()),
                // Someone wrote (or added, or removed) in between: read again.
                Reply::Exists | Reply::NotFound | Reply::NotStored => {}
                other => return Err(unexpected(other)),
            }
        }
        Err(StoreError::backend(format!(
            "gave up updating memcached index entry {item_key} after {MAX_CAS_ATTEMPTS} \
             conflicting writes"
        )))
    }

    /// The server's item size limit in bytes, as it reported at connect time.
    pub fn item_size_max(&self) -> Option<usize> {
        self.pool.item_size_max
    }

    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(StoreError::Timeout))
    }

    /// Encodes `record`, refusing it if it cannot fit in one item.
    fn encode(&self, record: &Record) -> Result<Vec<u8>, StoreError> {
        let bytes = serde_json::to_vec(&Encoded(record)).map_err(StoreError::backend)?;
        match self.pool.item_size_max {
            Some(limit) if bytes.len() > limit => Err(too_large(bytes.len(), Some(limit))),
            _ => Ok(bytes),
        }
    }

    /// `add`, or `cas` over a record that memcached still holds but whose deadline has
    /// passed. Returns whether the record was stored.
    async fn create_once(
        &self,
        item_key: &str,
        record: &Record,
        data: &[u8],
    ) -> Result<bool, StoreError> {
        let exptime = expiry_seconds(record.expires_at, Timestamp::now());
        for attempt in 0..MAX_CAS_ATTEMPTS {
            backoff(attempt).await;
            match self
                .pool
                .store(Verb::Add, item_key, exptime, data, None)
                .await?
            {
                Reply::Stored => return Ok(true),
                Reply::NotStored => {}
                other => return Err(unexpected(other)),
            }
            let Some((stored, cas)) = self.pool.gets(item_key).await? else {
                continue; // gone in between: try `add` again
            };
            match decode(&stored) {
                Ok(existing) if !existing.is_expired(Timestamp::now()) => return Ok(false),
                // Past its deadline (memcached's clock is coarser than ours) or unreadable:
                // the key is free.
                _ => {}
            }
            match self
                .pool
                .store(Verb::Cas, item_key, exptime, data, Some(cas))
                .await?
            {
                Reply::Stored => return Ok(true),
                Reply::Exists | Reply::NotFound => {}
                other => return Err(unexpected(other)),
            }
        }
        Err(contended(item_key))
    }

    /// Reads the item, lets `change` compute what to write, and writes it with `cas` only if no
    /// one wrote in between, until that succeeds. `change` gets the stored record (`None` if
    /// past its deadline, `Err` if unreadable) and returns the record to write, or `None` to
    /// write nothing. An absent item is never written: this only updates. Returns whether it
    /// wrote.
    async fn update(
        &self,
        item_key: &str,
        change: impl Fn(Option<Result<Record, StoreError>>) -> Result<Option<Record>, StoreError>,
    ) -> Result<bool, StoreError> {
        for attempt in 0..MAX_CAS_ATTEMPTS {
            backoff(attempt).await;
            let Some((bytes, cas)) = self.pool.gets(item_key).await? else {
                return Ok(false);
            };
            let now = Timestamp::now();
            let current = match decode(&bytes) {
                Ok(record) if record.is_expired(now) => None,
                Ok(record) => Some(Ok(record)),
                Err(error) => Some(Err(error)),
            };
            let Some(write) = change(current)? else {
                return Ok(false);
            };
            let data = self.encode(&write)?;
            let exptime = expiry_seconds(write.expires_at, now);
            match self
                .pool
                .store(Verb::Cas, item_key, exptime, &data, Some(cas))
                .await?
            {
                Reply::Stored => return Ok(true),
                // Someone wrote in between: read again. An item deleted or expired in between
                // answers NOT_FOUND, and the next read finds it gone.
                Reply::Exists | Reply::NotFound | Reply::NotStored => {}
                other => return Err(unexpected(other)),
            }
        }
        Err(contended(item_key))
    }
}

impl fmt::Debug for MemcachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcachedStore")
            .field("address", &self.pool.address)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("item_size_max", &self.pool.item_size_max)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for MemcachedStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let item_key = self.memcached_key(key);
        self.within(async {
            let Some((data, _cas)) = self.pool.gets(&item_key).await? else {
                return Ok(None);
            };
            let record = decode(&data)?;
            Ok((!record.is_expired(Timestamp::now())).then_some(record))
        })
        .await
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        let item_key = self.memcached_key(key);
        let data = self.encode(record)?;
        self.within(self.create_once(&item_key, record, &data))
            .await
    }

    /// Both modes are a `gets`/`cas` loop over a live item: an absent or expired one is never
    /// written again (saves never create), and an unreadable one is left as it is on a merge.
    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        let item_key = self.memcached_key(key);
        self.within(self.update(&item_key, |current| match (current, mode) {
            (None, _) => Ok(None),
            (Some(Ok(mut stored)), _) => {
                stored.apply(record, mode);
                Ok(Some(stored))
            }
            // The whole record is given: nothing stored needs reading.
            (Some(Err(_)), SaveMode::Replace) => Ok(Some(record.clone())),
            (Some(Err(error)), SaveMode::Merge) => Err(error),
        }))
        .await
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        let item_key = self.memcached_key(key);
        self.within(self.update(&item_key, |current| match current {
            Some(Ok(mut stored)) => {
                stored.expires_at = expires_at;
                Ok(Some(stored))
            }
            Some(Err(error)) => Err(error),
            // Absent or past its deadline: a touch brings nothing back.
            None => Ok(None),
        }))
        .await
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        let item_key = self.memcached_key(key);
        self.within(async { self.pool.delete(&item_key).await.map(|_| ()) })
            .await
    }

    fn supports_index(&self) -> bool {
        true
    }

    /// A `gets`/`cas` round on the entry's list (see *Indexes* on the type): the member is
    /// added or its time refreshed, and the entry's bound becomes the later of its bound and
    /// `until` (none if either is none).
    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let item_key = self.index_key(entry, key);
        self.within(self.update_index(&item_key, until, |list, now| {
            list.until = match (list.until, until) {
                (Some(bound), Some(until)) => Some(bound.max(until)),
                _ => None,
            };
            match list.members.iter_mut().find(|(member, _)| member == key) {
                Some((_, added)) => *added = now,
                None => list.members.push((*key, now)),
            }
            true
        }))
        .await
    }

    /// A `gets`/`cas` round that writes only if the member is there.
    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        let item_key = self.index_key(entry, key);
        self.within(async {
            // Nothing to remove from an absent entry: no `add` of an empty one.
            if self.pool.gets(&item_key).await?.is_none() {
                return Ok(());
            }
            self.update_index(&item_key, None, |list, _| {
                let before = list.members.len();
                list.members.retain(|(member, _)| member != key);
                // An entry that vanished in between reads as a new one, with nothing to remove.
                list.members.len() < before
            })
            .await
        })
        .await
    }

    /// One multi-key `get` of the entry's buckets.
    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        let item_keys: Vec<String> = INDEX_BUCKET_NAMES
            .iter()
            .map(|bucket| self.bucket_key(entry, bucket))
            .collect();
        self.within(async {
            let values = match self.pool.run(Command::GetMany(&item_keys)).await? {
                Reply::Values(values) => values,
                other => return Err(unexpected(other)),
            };
            Ok(item_keys
                .iter()
                .filter_map(|item_key| values.get(item_key))
                .flat_map(|bytes| IndexList::decode(bytes).members)
                .map(|(key, added)| IndexMember { key, added })
                .collect())
        })
        .await
    }

    /// One multi-key `get` per 100 keys, each within the store's timeout.
    async fn load_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Record>>, StoreError> {
        let mut records = Vec::with_capacity(keys.len());
        for batch in keys.chunks(GET_BATCH) {
            let item_keys: Vec<String> = batch.iter().map(|key| self.memcached_key(key)).collect();
            let mut values = self
                .within(async {
                    match self.pool.run(Command::GetMany(&item_keys)).await? {
                        Reply::Values(values) => Ok(values),
                        other => Err(unexpected(other)),
                    }
                })
                .await?;
            let now = Timestamp::now();
            for item_key in &item_keys {
                let record = values
                    .remove(item_key)
                    .and_then(|data| decode(&data).ok())
                    .filter(|record| !record.is_expired(now));
                records.push(record);
            }
        }
        Ok(records)
    }
}

/// An index entry's list: its bound (`None`: none) and its members with when each was added.
struct IndexList {
    until: Option<Timestamp>,
    members: Vec<(StoreKey, Timestamp)>,
}

impl IndexList {
    fn new(until: Option<Timestamp>) -> Self {
        Self {
            until,
            members: Vec::new(),
        }
    }

    /// Reads a stored list. A line that is not a member is skipped; a missing or unreadable
    /// header reads as no bound, so the entry is never made to expire early.
    fn decode(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let mut list = Self::new(None);
        let mut skipped = 0;
        for (number, line) in text.lines().enumerate() {
            if number == 0 {
                if let Some(bound) = line.strip_prefix(INDEX_HEADER) {
                    list.until = bound.parse().ok().map(Timestamp::from_millis);
                    continue;
                }
            }
            let member = line.split_once(' ').and_then(|(key, added)| {
                Some((
                    StoreKey::parse(key)?,
                    added.parse().ok().map(Timestamp::from_millis)?,
                ))
            });
            match member {
                // A key listed twice (never written so) keeps its first time.
                Some((key, added)) if !list.members.iter().any(|(k, _)| *k == key) => {
                    list.members.push((key, added));
                }
                Some(_) => {}
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "skipping memcached index lines that are not members"
            );
        }
        list
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = String::with_capacity(32 + self.members.len() * 80);
        out.push_str(INDEX_HEADER);
        match self.until {
            Some(until) => out.push_str(&until.as_millis().to_string()),
            None => out.push_str("none"),
        }
        out.push('\n');
        for (key, added) in &self.members {
            out.push_str(key.as_str());
            out.push(' ');
            out.push_str(&added.as_millis().to_string());
            out.push('\n');
        }
        out.into_bytes()
    }
}

fn index_too_large(members: usize, bytes: usize, limit: usize) -> StoreError {
    StoreError::Rejected(format!(
        "the session index entry would hold {members} members in {bytes} bytes, over \
         memcached's item size limit of {limit} bytes (memcached -I raises it)"
    ))
}

// --- record encoding ------------------------------------------------------------------------

/// A record as the JSON object memcached keeps.
struct Encoded<'a>(&'a Record);

impl Serialize for Encoded<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut record = serializer.serialize_struct("Record", 4)?;
        record.serialize_field("v", &FORMAT_VERSION)?;
        record.serialize_field("created", &self.0.created_at.as_millis())?;
        record.serialize_field("expires", &self.0.expires_at.as_millis())?;
        record.serialize_field("fields", &EncodedFields(&self.0.fields))?;
        record.end()
    }
}

struct EncodedFields<'a>(&'a Fields);

impl Serialize for EncodedFields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (&**name, &**value)))
    }
}

pub(crate) fn decode(data: &[u8]) -> Result<Record, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("memcached session record {what}"));
    let value: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| corrupt(&format!("is not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| corrupt("is not an object"))?;
    match object.get("v").and_then(serde_json::Value::as_u64) {
        Some(FORMAT_VERSION) => {}
        Some(other) => return Err(corrupt(&format!("has unknown format version {other}"))),
        None => return Err(corrupt("has no format version")),
    }
    let millis = |name: &str| {
        object
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .map(Timestamp::from_millis)
            .ok_or_else(|| corrupt(&format!("has no `{name}` time")))
    };
    let created_at = millis("created")?;
    let expires_at = millis("expires")?;
    let encoded = object
        .get("fields")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| corrupt("has no `fields` object"))?;
    let mut fields = Fields::new();
    for (name, value) in encoded {
        let value = value
            .as_str()
            .ok_or_else(|| corrupt(&format!("field {name:?} is not a string")))?;
        fields.insert(Arc::from(name.as_str()), Arc::from(value));
    }
    Ok(Record {
        fields,
        created_at,
        expires_at,
    })
}

/// Memcached's expiry for a record due at `expires_at`: relative seconds up to 30 days, an
/// absolute Unix time beyond, rounded up and one second late rather than early (memcached
/// counts whole seconds from a clock that lags up to one). Negative (expired at once) for a
/// deadline that has passed; 0 would mean "never".
fn expiry_seconds(expires_at: Timestamp, now: Timestamp) -> i64 {
    if expires_at <= now {
        return -1;
    }
    let remaining = expires_at.as_millis() - now.as_millis();
    let relative = remaining.div_ceil(1000) + 1;
    let seconds = if relative <= MAX_RELATIVE_EXPIRY {
        relative
    } else {
        expires_at.as_millis().div_ceil(1000) + 1
    };
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

/// Waits a little before another `gets`/`cas` round, longer (at random) the more rounds were
/// lost, so that many writers of one session do not keep colliding.
async fn backoff(attempt: u32) {
    if attempt == 0 {
        return;
    }
    let ceiling_micros = 100u64 << attempt.min(8); // 200 µs .. 25.6 ms
    let jitter = getrandom::u64().unwrap_or(u64::from(attempt) * 7919) % ceiling_micros;
    tokio::time::sleep(Duration::from_micros(jitter)).await;
}

fn too_large(bytes: usize, limit: Option<usize>) -> StoreError {
    let limit = match limit {
        Some(limit) => format!("{limit} bytes"),
        None => "its limit".to_owned(),
    };
    StoreError::Rejected(format!(
        "the session record is {bytes} bytes, over memcached's item size limit of {limit}; \
         keep less in the session or raise the limit (memcached -I, 1 MB by default)"
    ))
}

fn unexpected(reply: Reply) -> StoreError {
    StoreError::backend(format!("memcached answered {reply:?} unexpectedly"))
}

fn contended(item_key: &str) -> StoreError {
    StoreError::backend(format!(
        "gave up writing memcached item {item_key} after {MAX_CAS_ATTEMPTS} conflicting writes"
    ))
}

fn parse_address(url: &str) -> Result<String, StoreError> {
    let trimmed = url.trim();
    let rest = ["memcache://", "memcached://", "tcp://"]
        .iter()
        .find_map(|scheme| trimmed.strip_prefix(scheme))
        .unwrap_or(trimmed);
    let authority = rest.trim_end_matches('/');
    let invalid = || {
        StoreError::backend(format!(
            "invalid memcached address {url:?}; expected memcache://HOST:PORT"
        ))
    };
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(invalid());
    }
    // `[::1]:11211`, `[::1]`, `host:11211`, `host`.
    let has_port = match authority.rfind(':') {
        Some(colon) => !authority[colon..].contains(']'),
        None => false,
    };
    if has_port {
        let (host, port) = authority.rsplit_once(':').ok_or_else(invalid)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(invalid());
        }
        Ok(authority.to_owned())
    } else {
        Ok(format!("{authority}:{DEFAULT_PORT}"))
    }
}

// --- connection pool ------------------------------------------------------------------------

/// Idle connections to one server, and a bound on how many are open.
struct Pool {
    address: String,
    item_size_max: Option<usize>,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    max_idle: usize,
}

/// A connection taken from the pool; back into it when dropped, unless a command on it did
/// not finish cleanly.
struct Pooled<'a> {
    connection: Option<Connection>,
    pool: &'a Pool,
    /// Whether the connection was used before (and so may have been closed by the server).
    reused: bool,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            if !connection.in_flight {
                self.pool.put(connection);
            }
        }
    }
}

impl Pooled<'_> {
    async fn run(&mut self, command: &Command<'_>) -> Result<Reply, CommandError> {
        match self.connection.as_mut() {
            Some(connection) => connection.run(command).await,
            // Only `drop` takes the connection out.
            None => Err(CommandError::Protocol(
                "connection already returned".to_owned(),
            )),
        }
    }
}

impl Pool {
    fn new(address: String, item_size_max: Option<usize>, max_connections: usize) -> Self {
        let max_connections = max_connections.max(1);
        Self {
            address,
            item_size_max,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max_connections),
            max_idle: max_connections,
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        // The list is only pushed to and popped from; a panic elsewhere cannot break it.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn put(&self, connection: Connection) {
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push(connection);
        }
    }

    async fn get(&self, fresh: bool) -> Result<Pooled<'_>, StoreError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::backend("memcached connection pool closed"))?;
        let reused = if fresh { None } else { self.idle().pop() };
        let (connection, reused) = match reused {
            Some(connection) => (connection, true),
            None => (Connection::open(&self.address).await?, false),
        };
        Ok(Pooled {
            connection: Some(connection),
            pool: self,
            reused,
            _permit: permit,
        })
    }

    /// Runs one command. A pooled connection the server has closed fails at once; then every
    /// idle connection is suspect, so they are dropped and the command is sent again on a new
    /// connection. (It did not run: the server had closed the connection before it came.)
    async fn run(&self, command: Command<'_>) -> Result<Reply, StoreError> {
        let mut pooled = self.get(false).await?;
        match pooled.run(&command).await {
            Err(CommandError::Io(error)) if pooled.reused => {
                tracing::debug!(%error, "pooled memcached connection failed; retrying on a new one");
                drop(pooled);
                self.idle().clear();
                let mut pooled = self.get(true).await?;
                pooled.run(&command).await.map_err(StoreError::from)
            }
            result => result.map_err(StoreError::from),
        }
    }

    async fn gets(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        match self.run(Command::Gets(key)).await? {
            Reply::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    async fn store(
        &self,
        verb: Verb,
        key: &str,
        exptime: i64,
        data: &[u8],
        cas: Option<u64>,
    ) -> Result<Reply, StoreError> {
        match self
            .run(Command::Store {
                verb,
                key,
                exptime,
                data,
                cas,
            })
            .await
        {
            Err(StoreError::Rejected(_)) => Err(too_large(data.len(), self.item_size_max)),
            result => result,
        }
    }

    async fn delete(&self, key: &str) -> Result<Reply, StoreError> {
        self.run(Command::Delete(key)).await
    }
}

// --- text protocol --------------------------------------------------------------------------

/// A storage command.
#[derive(Clone, Copy, Debug)]
enum Verb {
    Add,
    Cas,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Cas => "cas",
        }
    }
}

enum Command<'a> {
    Gets(&'a str),
    /// A multi-key `get`, for `load_many`.
    GetMany(&'a [String]),
    Store {
        verb: Verb,
        key: &'a str,
        exptime: i64,
        data: &'a [u8],
        cas: Option<u64>,
    },
    Delete(&'a str),
}

/// What the server answered.
#[derive(Debug)]
enum Reply {
    /// A retrieval: the value and its cas unique, if the key was there.
    Value(Option<(Vec<u8>, u64)>),
    /// A multi-key retrieval: the values of the keys that were there.
    Values(std::collections::HashMap<String, Vec<u8>>),
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
}

enum CommandError {
    /// The connection failed.
    Io(io::Error),
    /// The server answered something this client does not understand.
    Protocol(String),
    /// The server refused the item as too large.
    TooLarge,
    /// The server reported an error.
    Server(String),
}

impl From<CommandError> for StoreError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Io(error) if error.kind() == io::ErrorKind::TimedOut => {
                StoreError::Timeout
            }
            CommandError::Io(error) => StoreError::backend(error),
            CommandError::Protocol(message) => {
                StoreError::backend(format!("unexpected memcached reply: {message}"))
            }
            CommandError::TooLarge => StoreError::Rejected("item too large".to_owned()),
            CommandError::Server(message) => {
                StoreError::backend(format!("memcached error: {message}"))
            }
        }
    }
}

impl From<io::Error> for CommandError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

/// One connection speaking memcached's text protocol.
struct Connection {
    stream: BufReader<TcpStream>,
    line: Vec<u8>,
    /// Set while a command is under way: a connection whose command was abandoned (timed out,
    /// failed) is out of step with the server and must not be used again.
    in_flight: bool,
}

impl Connection {
    async fn open(address: &str) -> Result<Self, StoreError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(|error| {
                StoreError::backend(io::Error::new(
                    error.kind(),
                    format!("cannot connect to memcached at {address}: {error}"),
                ))
            })?;
        stream.set_nodelay(true).map_err(StoreError::backend)?;
        Ok(Self {
            stream: BufReader::new(stream),
            line: Vec::with_capacity(128),
            in_flight: false,
        })
    }

    async fn run(&mut self, command: &Command<'_>) -> Result<Reply, CommandError> {
        self.in_flight = true;
        let reply = match *command {
            Command::Gets(key) => {
                check_key(key)?;
                self.send(&[b"gets ", key.as_bytes(), b"\r\n"]).await?;
                Reply::Value(self.read_value(key).await?)
            }
            Command::GetMany(keys) => {
                let mut line = Vec::with_capacity(4 + keys.len() * 80);
                line.extend_from_slice(b"get");
                for key in keys {
                    check_key(key)?;
                    line.push(b' ');
                    line.extend_from_slice(key.as_bytes());
                }
                line.extend_from_slice(b"\r\n");
                self.send(&[&line]).await?;
                Reply::Values(self.read_values(keys).await?)
            }
            Command::Store {
                verb,
                key,
                exptime,
                data,
                cas,
            } => {
                check_key(key)?;
                let mut header = format!("{} {key} 0 {exptime} {}", verb.as_str(), data.len());
                if let Some(cas) = cas {
                    header.push_str(&format!(" {cas}"));
                }
                header.push_str("\r\n");
                self.send(&[header.as_bytes(), data, b"\r\n"]).await?;
                match self.read_line().await? {
                    b"STORED" => Reply::Stored,
                    b"NOT_STORED" => Reply::NotStored,
                    b"EXISTS" => Reply::Exists,
                    b"NOT_FOUND" => Reply::NotFound,
                    other => return Err(error_reply(other)),
                }
            }
            Command::Delete(key) => {
                check_key(key)?;
                self.send(&[b"delete ", key.as_bytes(), b"\r\n"]).await?;
                match self.read_line().await? {
                    b"DELETED" => Reply::Deleted,
                    b"NOT_FOUND" => Reply::NotFound,
                    other => return Err(error_reply(other)),
                }
            }
        };
        self.in_flight = false;
        Ok(reply)
    }

    /// The server's `item_size_max`, from `stats settings`.
    async fn item_size_max(&mut self) -> Result<Option<usize>, CommandError> {
        self.in_flight = true;
        self.send(&[b"stats settings\r\n"]).await?;
        let mut limit = None;
        loop {
            let line = self.read_line().await?;
            if line == b"END" {
                break;
            }
            if let Some(value) = line.strip_prefix(b"STAT item_size_max ") {
                limit = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            } else if !line.starts_with(b"STAT ") {
                return Err(error_reply(line));
            }
        }
        self.in_flight = false;
        Ok(limit)
    }

    async fn send(&mut self, parts: &[&[u8]]) -> Result<(), CommandError> {
        let stream = self.stream.get_mut();
        if parts.iter().map(|p| p.len()).sum::<usize>() <= 16 * 1024 {
            // One write, one packet for the common small command.
            stream.write_all(&parts.concat()).await?;
        } else {
            for part in parts {
                stream.write_all(part).await?;
            }
        }
        Ok(())
    }

    /// The next reply line, without its `\r\n`.
    async fn read_line(&mut self) -> Result<&[u8], CommandError> {
        self.line.clear();
        let read = self.stream.read_until(b'\n', &mut self.line).await?;
        if read == 0 {
            return Err(CommandError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "memcached closed the connection",
            )));
        }
        match self.line.strip_suffix(b"\r\n") {
            Some(line) => Ok(line),
            None => Err(CommandError::Protocol("reply line without CRLF".to_owned())),
        }
    }

    /// Reads a `gets` answer: `VALUE <key> <flags> <bytes> <cas>`, the data, `END`; or `END`.
    async fn read_value(&mut self, key: &str) -> Result<Option<(Vec<u8>, u64)>, CommandError> {
        let line = self.read_line().await?;
        if line == b"END" {
            return Ok(None);
        }
        let header = std::str::from_utf8(line)
            .map_err(|_| CommandError::Protocol("reply header is not UTF-8".to_owned()))?;
        let mut words = header.split(' ');
        let (Some("VALUE"), Some(found), Some(_flags), Some(len), Some(cas), None) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            return Err(error_reply(line));
        };
        if found != key {
            return Err(CommandError::Protocol(format!(
                "asked for {key}, got {found}"
            )));
        }
        let bad = || CommandError::Protocol(format!("bad value header {header:?}"));
        let len: usize = len.parse().map_err(|_| bad())?;
        let cas: u64 = cas.parse().map_err(|_| bad())?;
        if len > MAX_VALUE_LEN {
            return Err(bad());
        }
        let data = self.read_data(len).await?;
        if self.read_line().await? != b"END" {
            return Err(CommandError::Protocol(
                "value not followed by END".to_owned(),
            ));
        }
        Ok(Some((data, cas)))
    }
}

impl Connection {
    /// Reads a multi-key `get` answer: `VALUE <key> <flags> <bytes>` and the data for each
    /// key that is there, then `END`. A key not asked for is a protocol error.
    async fn read_values(
        &mut self,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<u8>>, CommandError> {
        let mut values = std::collections::HashMap::new();
        loop {
            let line = self.read_line().await?;
            if line == b"END" {
                return Ok(values);
            }
            let header = std::str::from_utf8(line)
                .map_err(|_| CommandError::Protocol("reply header is not UTF-8".to_owned()))?;
            let mut words = header.split(' ');
            let (Some("VALUE"), Some(found), Some(_flags), Some(len)) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(error_reply(line));
            };
            let bad = || CommandError::Protocol(format!("bad value header {header:?}"));
            if words.count() > 1 || values.contains_key(found) || !keys.iter().any(|k| k == found) {
                return Err(bad());
            }
            let found = found.to_owned();
            let len: usize = len.parse().map_err(|_| bad())?;
            if len > MAX_VALUE_LEN {
                return Err(bad());
            }
            let data = self.read_data(len).await?;
            values.insert(found, data);
        }
    }

    /// Reads `len` bytes of a value and the CRLF after them, growing the buffer as the bytes
    /// arrive rather than allocating what the header claims: a hostile or broken server must
    /// not make one header cost a gigabyte.
    async fn read_data(&mut self, len: usize) -> Result<Vec<u8>, CommandError> {
        let mut data = Vec::with_capacity(len.min(64 * 1024) + 2);
        (&mut self.stream)
            .take(len as u64 + 2)
            .read_to_end(&mut data)
            .await?;
        if data.len() < len + 2 {
            return Err(CommandError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "memcached closed the connection inside a value",
            )));
        }
        if data.split_off(len) != b"\r\n" {
            return Err(CommandError::Protocol(
                "value not followed by CRLF".to_owned(),
            ));
        }
        Ok(data)
    }
}

fn check_key(key: &str) -> Result<(), CommandError> {
    if key.is_empty()
        || key.len() > MAX_KEY_LEN
        || key
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(CommandError::Protocol(format!(
            "{key:?} is not a valid memcached key"
        )));
    }
    Ok(())
}

/// An error line (or anything else unexpected) as an error.
fn error_reply(line: &[u8]) -> CommandError {
    let text = String::from_utf8_lossy(line).into_owned();
    if text.starts_with("SERVER_ERROR object too large") {
        CommandError::TooLarge
    } else if text.starts_with("SERVER_ERROR") || text.starts_with("CLIENT_ERROR") {
        CommandError::Server(text)
    } else if text == "ERROR" {
        CommandError::Server("unknown command".to_owned())
    } else {
        CommandError::Protocol(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: u64) -> Timestamp {
        Timestamp::from_millis(millis)
    }

    #[test]
    fn expiry_is_relative_rounded_up_then_absolute() {
        let now = 1_700_000_000_000;
        assert_eq!(expiry_seconds(at(now + 1), at(now)), 2);
        assert_eq!(expiry_seconds(at(now + 1000), at(now)), 2);
        assert_eq!(expiry_seconds(at(now + 1001), at(now)), 3);
        let thirty_days = MAX_RELATIVE_EXPIRY * 1000;
        assert_eq!(
            expiry_seconds(at(now + thirty_days - 1000), at(now)),
            MAX_RELATIVE_EXPIRY as i64
        );
        let far = now + 40 * 24 * 3600 * 1000 + 1;
        assert_eq!(expiry_seconds(at(far), at(now)), (far / 1000 + 2) as i64);
        assert_eq!(expiry_seconds(at(now), at(now)), -1);
        assert_eq!(expiry_seconds(at(now - 5), at(now)), -1);
    }

    #[test]
    fn records_round_trip_through_the_encoding() {
        let mut record = Record::new(at(1000), at(2000));
        record
            .fields
            .insert(Arc::from("名前"), Arc::from("\"a \\\" \\u0000 🍪\""));
        record.fields.insert(Arc::from("views"), Arc::from("3"));
        let data = serde_json::to_vec(&Encoded(&record)).unwrap();
        assert!(data.starts_with(b"{\"v\":1,"));
        assert_eq!(decode(&data).unwrap(), record);
    }

    #[test]
    fn unknown_versions_and_garbage_are_corrupt() {
        for data in [
            &b"not json"[..],
            b"[]",
            b"{\"v\":2,\"created\":1,\"expires\":2,\"fields\":{}}",
            b"{\"created\":1,\"expires\":2,\"fields\":{}}",
            b"{\"v\":1,\"created\":1,\"fields\":{}}",
            b"{\"v\":1,\"created\":1,\"expires\":2,\"fields\":{\"a\":1}}",
        ] {
            assert!(matches!(decode(data), Err(StoreError::Corrupt(_))));
        }
    }

    #[test]
    fn addresses_parse_with_or_without_scheme_and_port() {
        assert_eq!(
            parse_address("memcache://127.0.0.1:11211").unwrap(),
            "127.0.0.1:11211"
        );
        assert_eq!(parse_address("memcached://cache/").unwrap(), "cache:11211");
        assert_eq!(parse_address("[::1]:4000").unwrap(), "[::1]:4000");
        assert_eq!(parse_address("[::1]").unwrap(), "[::1]:11211");
        assert!(parse_address("memcache://").is_err());
        assert!(parse_address("memcache://host:port").is_err());
        assert!(parse_address("memcache://u@host:1").is_err());
    }

    #[test]
    fn invalid_keys_are_refused_before_sending() {
        assert!(check_key("session:abc").is_ok());
        assert!(check_key("has space").is_err());
        assert!(check_key(&"k".repeat(251)).is_err());
    }

    #[test]
    #[should_panic(expected = "memcached key prefix")]
    fn prefixes_with_spaces_are_refused() {
        let pool = Pool::new("127.0.0.1:1".to_owned(), None, 1);
        let store = MemcachedStore {
            pool: Arc::new(pool),
            prefix: Arc::from(DEFAULT_PREFIX),
            timeout: DEFAULT_TIMEOUT,
        };
        let _ = store.with_prefix("my app:");
    }
}
