//! Sessions in MongoDB (feature `mongodb`): [`MongoStore`].

use std::borrow::Cow;
use std::fmt;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use ::mongodb::bson::{doc, Bson, DateTime, Document};
use ::mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use ::mongodb::options::{ClientOptions, IndexOptions};
use ::mongodb::{Client, Collection, Database, IndexModel};
use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::lock::{lock_token, retry_lock};
use super::{IndexEntry, IndexMember, Release, SessionLock, Store, StoreError};
use crate::id::StoreKey;
use crate::record::{Fields, Record, SaveMode, Timestamp};

/// The database used when the URL names none.
const DEFAULT_DATABASE: &str = "sessions";
const DEFAULT_COLLECTION: &str = "sessions";
/// The longest a store call may take, server selection and the driver's retry included.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the driver looks for a server to send a command to, unless the URL says
/// (`serverSelectionTimeoutMS`). The driver's own default is 30 s.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(3);
/// How long opening one connection may take, unless the URL says (`connectTimeoutMS`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a lock document stays after its lease ran out before the TTL monitor removes
/// it. Expired leases are taken over by the next request anyway; the delay only keeps the
/// server's clock (which the TTL monitor follows) from removing a lease the app still holds.
const LOCK_LEFTOVER: Duration = Duration::from_secs(3600);
/// Keys per `find` of `load_many`.
const LOAD_BATCH: usize = 100;
/// MongoDB's error code for a write that would break a unique index.
const DUPLICATE_KEY: i32 = 11000;

/// Document fields.
const ID: &str = "_id";
const FIELDS: &str = "fields";
const CREATED_AT: &str = "created_at";
const EXPIRES_AT: &str = "expires_at";
const TOKEN: &str = "token";
/// Index member document fields.
const ENTRY: &str = "entry";
const SESSION_KEY: &str = "session_key";
const ADDED: &str = "added";
const UNTIL: &str = "until";

/// Sessions in MongoDB: one document per session, partial writes with one `$set`, expiry by
/// a TTL index and a filter on every read.
///
/// ```no_run
/// use std::sync::Arc;
/// use session_core::store::{MongoStore, Store};
///
/// # async fn run() -> Result<(), session_core::StoreError> {
/// let store = MongoStore::connect("mongodb://127.0.0.1:27017/app").await?;
/// let store: Arc<dyn Store> = Arc::new(store);
/// # Ok(())
/// # }
/// ```
///
/// # How a session is kept
///
/// One document per session in a collection (`sessions` unless
/// [`with_collection`](MongoStore::with_collection) says otherwise), keyed by the store key:
///
/// ```text
/// { _id: "<store key: 64 hex characters>",
///   fields: { "<field name>": "<the field's JSON text>", ... },
///   created_at: ISODate(...),
///   expires_at: ISODate(...) }
/// ```
///
/// Each value is kept as a string holding its JSON text, so it comes back byte for byte.
/// Field names are escaped so that none can address another path in an update: `%`, `.`, `$`
/// and NUL become `%25`, `%2E`, `%24` and `%00`, and the empty name becomes `%`.
///
/// | operation | what runs |
/// |---|---|
/// | `load` | `find_one({_id, expires_at: {$gt: now}})` |
/// | `create` | `replace_one({_id, expires_at: {$lte: now}}, record, upsert)`: replaces an expired document or inserts; on a live one the insert breaks the unique `_id` and that duplicate-key error is the collision |
/// | `save` (merge) | `update_one({_id, expires_at: {$gt: now}}, {$set: {"fields.<name>": value, ..., created_at, expires_at}})` |
/// | `save` (replace) | the same filter, `{$set: {fields: {...}, created_at, expires_at}}` |
/// | `touch` | the same filter, `{$set: {expires_at}}` |
/// | `delete` | `delete_one({_id})` |
///
/// Only `create` creates: a save or touch whose filter matches nothing (no document, or only an
/// expired one the TTL monitor has not removed yet) writes nothing and returns `false`.
///
/// # Expiry
///
/// A TTL index on `expires_at` (`expireAfterSeconds: 0`) lets the server delete documents
/// past their deadline. Its monitor runs only once a minute, so every read and write also
/// filters on `expires_at` against the application's clock: an expired document is invisible
/// before it is deleted. Keep the clocks of the app instances and the server in sync (NTP).
/// [`purge_expired`](Store::purge_expired) has nothing to do.
///
/// The indexes are created by [`connect`](MongoStore::connect), by
/// [`migrate`](MongoStore::migrate), or before the first call of a store made with
/// [`from_database`](MongoStore::from_database).
///
/// # Per-session lock
///
/// A lease document per locked session in a second collection (`<collection>_locks`), taken
/// with `update_one({_id, expires_at: {$lte: now}}, {$set: {token, expires_at: now + lease}},
/// upsert)`: it takes over an expired lease or inserts a new one, and a live lease makes the
/// insert fail on the unique `_id`. Released by `delete_one({_id, token})`, so a request
/// whose lease ran out and was taken over does not free the new holder's lock.
///
/// # Indexes
///
/// One document per index member in a third collection (`<collection>_index`):
///
/// ```text
/// { entry: "<index entry digest: 64 hex characters>",
///   session_key: "<store key>",
///   added: ISODate(...),
///   until: ISODate(...) }   // absent when the add gave no bound
/// ```
///
/// A unique index on `(entry, session_key)` makes an add one upsert
/// (`update_one({entry, session_key}, {$set: {added, until}}, upsert)`, retried once when two
/// first adds of one member race on the unique index) and serves the listing
/// (`find({entry})`), which never reads the sessions. Members of one entry are separate
/// documents, so concurrent adds never lose one another. A TTL index on `until` lets the
/// server drop a member once no session under it can be live; members of ended sessions are
/// otherwise left to the readers, which prune them. `load_many` is one
/// `find({_id: {$in: keys}, expires_at: {$gt: now}})` per 100 keys.
///
/// # Failures
///
/// Every call returns within the store's [timeout](MongoStore::with_timeout) (5 s by
/// default): a server that is down or does not answer gives a [`StoreError`], never a hang.
/// The driver reconnects by itself.
///
/// # Cloning
///
/// Cloning is cheap and clones share the driver's connection pool.
#[derive(Clone)]
pub struct MongoStore {
    database: Database,
    sessions: Collection<Document>,
    locks: Collection<Document>,
    index: Collection<Document>,
    timeout: Duration,
    /// Set once the indexes exist (or were found to exist).
    indexed: Arc<OnceCell<()>>,
}

impl MongoStore {
    /// Connects to MongoDB at `url` (`mongodb://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/DB`)
    /// and creates the indexes if needed. Sessions go to the database named in the URL
    /// (`sessions` if it names none), collection `sessions`.
    ///
    /// Unless the URL sets them, finding a server gives up after 3 s
    /// (`serverSelectionTimeoutMS`) and opening a connection after 2 s (`connectTimeoutMS`).
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the URL is invalid, no server can be reached or the server
    /// refuses to create the indexes.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(url).await.map_err(mongo_error)?;
        options
            .server_selection_timeout
            .get_or_insert(SERVER_SELECTION_TIMEOUT);
        options.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
        options
            .app_name
            .get_or_insert_with(|| "session-core".to_owned());
        let database = options
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
        let client = Client::with_options(options).map_err(mongo_error)?;
        let store = Self::from_database(client.database(&database));
        store.migrate().await?;
        Ok(store)
    }

    /// A store in `database`, on a client you configured yourself. The indexes are created
    /// before its first call (or call [`migrate`](Self::migrate)).
    pub fn from_database(database: Database) -> Self {
        Self::with_collections(database, DEFAULT_COLLECTION, DEFAULT_TIMEOUT)
    }

    fn with_collections(database: Database, name: &str, timeout: Duration) -> Self {
        Self {
            sessions: database.collection(name),
            locks: database.collection(&format!("{name}_locks")),
            index: database.collection(&format!("{name}_index")),
            database,
            timeout,
            indexed: Arc::new(OnceCell::new()),
        }
    }

    /// Keeps sessions in the collection `name` (lock leases in `<name>_locks`, index members
    /// in `<name>_index`) instead of `sessions`. Its indexes are created before the first call.
    #[must_use]
    pub fn with_collection(self, name: &str) -> Self {
        Self::with_collections(self.database, name, self.timeout)
    }

    /// Sets the longest a store call may take (5 s by default). A call that takes longer
    /// fails with [`StoreError::Timeout`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The collection holding the sessions.
    pub fn collection(&self) -> &Collection<Document> {
        &self.sessions
    }

    /// Creates the TTL indexes on `expires_at` of the session and lock collections, and the
    /// unique and TTL indexes of the index member collection, if they are not there yet.
    ///
    /// # Errors
    /// [`StoreError`] if the server cannot be reached or refuses, for example because an
    /// index on `expires_at` with other options exists.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.indexed
            .get_or_try_init(|| async {
                tokio::time::timeout(self.timeout, self.create_indexes())
                    .await
                    .map_err(|_| StoreError::Timeout)?
                    .map_err(mongo_error)
            })
            .await
            .map(|&()| ())
    }

    async fn create_indexes(&self) -> Result<(), MongoError> {
        let ttl = |name: &str, after: Duration| {
            IndexModel::builder()
                .keys(doc! { EXPIRES_AT: 1 })
                .options(
                    IndexOptions::builder()
                        .name(name.to_owned())
                        .expire_after(after)
                        .build(),
                )
                .build()
        };
        self.sessions
            .create_index(ttl("expires_at_ttl", Duration::ZERO))
            .await?;
        self.locks
            .create_index(ttl("expires_at_ttl", LOCK_LEFTOVER))
            .await?;
        let members = IndexModel::builder()
            .keys(doc! { ENTRY: 1, SESSION_KEY: 1 })
            .options(
                IndexOptions::builder()
                    .name("entry_session_key".to_owned())
                    .unique(true)
                    .build(),
            )
            .build();
        self.index.create_index(members).await?;
        let until = IndexModel::builder()
            .keys(doc! { UNTIL: 1 })
            .options(
                IndexOptions::builder()
                    .name("until_ttl".to_owned())
                    .expire_after(Duration::ZERO)
                    .build(),
            )
            .build();
        self.index.create_index(until).await?;
        Ok(())
    }

    /// Runs `operation` once the indexes exist, within the store's timeout.
    async fn call<T>(
        &self,
        operation: impl IntoFuture<Output = Result<T, MongoError>>,
    ) -> Result<T, StoreError> {
        self.migrate().await?;
        match tokio::time::timeout(self.timeout, operation.into_future()).await {
            Ok(result) => result.map_err(mongo_error),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Applies `update` to the live document of `key`. Returns whether there was one: an
    /// expired document not yet removed by the TTL monitor does not match, so it is never
    /// brought back.
    async fn update_live(&self, key: &StoreKey, update: Document) -> Result<bool, StoreError> {
        let filter = doc! { ID: key.as_str(), EXPIRES_AT: { "$gt": now() } };
        let result = self.call(self.sessions.update_one(filter, update)).await?;
        Ok(result.matched_count > 0)
    }
}

impl fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.database.name())
            .field("collection", &self.sessions.name())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let filter = doc! { ID: key.as_str(), EXPIRES_AT: { "$gt": now() } };
        let found = self.call(self.sessions.find_one(filter)).await?;
        found
            .map(|document| parse_record(key, &document))
            .transpose()
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        let filter = doc! { ID: key.as_str(), EXPIRES_AT: { "$lte": now() } };
        let document = doc! {
            ID: key.as_str(),
            FIELDS: fields_document(&record.fields),
            CREATED_AT: to_bson(record.created_at),
            EXPIRES_AT: to_bson(record.expires_at),
        };
        self.call(unless_duplicate(
            self.sessions.replace_one(filter, document).upsert(true),
        ))
        .await
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        let mut set = Document::new();
        match mode {
            SaveMode::Merge => {
                for (name, value) in &record.fields {
                    set.insert(format!("{FIELDS}.{}", escape_field(name)), &**value);
                }
            }
            SaveMode::Replace => {
                set.insert(FIELDS, fields_document(&record.fields));
            }
        }
        set.insert(CREATED_AT, to_bson(record.created_at));
        set.insert(EXPIRES_AT, to_bson(record.expires_at));
        self.update_live(key, doc! { "$set": set }).await
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        let update = doc! { "$set": { EXPIRES_AT: to_bson(expires_at) } };
        self.update_live(key, update).await
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        let filter = doc! { ID: key.as_str() };
        self.call(self.sessions.delete_one(filter)).await?;
        Ok(())
    }

    fn supports_locks(&self) -> bool {
        true
    }

    fn supports_index(&self) -> bool {
        true
    }

    /// An upsert of the member's document (see *Indexes* on the type), with `until` as its
    /// TTL field.
    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let filter = doc! { ENTRY: entry.digest(), SESSION_KEY: key.as_str() };
        let update = match until {
            Some(until) => doc! { "$set": { ADDED: now(), UNTIL: to_bson(until) } },
            None => doc! { "$set": { ADDED: now() }, "$unset": { UNTIL: "" } },
        };
        // Two first adds of one member can both insert; the loser finds the winner's
        // document on its second try and updates it.
        for _ in 0..2 {
            let upsert = self
                .index
                .update_one(filter.clone(), update.clone())
                .upsert(true);
            if self.call(unless_duplicate(upsert)).await? {
                return Ok(());
            }
        }
        Err(StoreError::backend(
            "index member upsert kept meeting a duplicate key",
        ))
    }

    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        let filter = doc! { ENTRY: entry.digest(), SESSION_KEY: key.as_str() };
        self.call(self.index.delete_one(filter)).await?;
        Ok(())
    }

    /// `find({entry})` on the unique index. A document without a store key or a date (not
    /// written by this store) is skipped with a warning.
    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        let filter = doc! { ENTRY: entry.digest() };
        let documents = self
            .call(async {
                let mut cursor = self
                    .index
                    .find(filter)
                    .projection(doc! { SESSION_KEY: 1, ADDED: 1, ID: 0 })
                    .await?;
                let mut documents = Vec::new();
                while cursor.advance().await? {
                    documents.push(cursor.deserialize_current()?);
                }
                Ok(documents)
            })
            .await?;
        Ok(documents
            .iter()
            .filter_map(|document| {
                let key = document.get_str(SESSION_KEY).ok().and_then(StoreKey::parse);
                let added = document.get_datetime(ADDED).ok();
                match (key, added) {
                    (Some(key), Some(added)) => Some(IndexMember {
                        key,
                        added: from_bson(*added),
                    }),
                    _ => {
                        tracing::warn!(
                            ?entry,
                            "skipping an index member document this store did not write"
                        );
                        None
                    }
                }
            })
            .collect())
    }

    /// One `find({_id: {$in: keys}, expires_at: {$gt: now}})` per 100 keys.
    async fn load_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Record>>, StoreError> {
        let mut found = std::collections::HashMap::with_capacity(keys.len());
        // Not all 1 000 at once: some servers answer a long `$in` list in more than linear
        // time (SecantusDB takes 1.4 s for 1 000 keys, 0.2 s for ten lists of 100).
        for batch in keys.chunks(LOAD_BATCH) {
            let ids: Vec<&str> = batch.iter().map(StoreKey::as_str).collect();
            let filter = doc! { ID: { "$in": ids }, EXPIRES_AT: { "$gt": now() } };
            let documents = self
                .call(async {
                    let mut cursor = self.sessions.find(filter).await?;
                    let mut documents = Vec::new();
                    while cursor.advance().await? {
                        documents.push(cursor.deserialize_current()?);
                    }
                    Ok(documents)
                })
                .await?;
            for document in documents {
                let Some(key) = document.get_str(ID).ok().and_then(StoreKey::parse) else {
                    continue;
                };
                // Unreadable: `None`, as the layer treats it.
                if let Ok(record) = parse_record(&key, &document) {
                    found.insert(key, record);
                }
            }
        }
        Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
    }

    /// A lease document (see the type's docs), tried with a growing pause (2 ms to 25 ms)
    /// until `wait` runs out.
    async fn lock(
        &self,
        key: &StoreKey,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        let token = lock_token()?;
        retry_lock(wait, || async {
            let now = Timestamp::now();
            let filter = doc! { ID: key.as_str(), EXPIRES_AT: { "$lte": to_bson(now) } };
            let update = doc! { "$set": {
                TOKEN: &token,
                EXPIRES_AT: to_bson(now.saturating_add(lease)),
            } };
            let taken = self
                .call(unless_duplicate(
                    self.locks.update_one(filter, update).upsert(true),
                ))
                .await?;
            Ok(taken.then(|| {
                SessionLock::new(MongoUnlock {
                    store: self.clone(),
                    key: *key,
                    token: token.clone(),
                })
            }))
        })
        .await
    }
}

/// Gives a MongoDB session lock back.
struct MongoUnlock {
    store: MongoStore,
    key: StoreKey,
    token: String,
}

#[async_trait]
impl Release for MongoUnlock {
    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        let filter = doc! { ID: self.key.as_str(), TOKEN: &self.token };
        self.store.call(self.store.locks.delete_one(filter)).await?;
        Ok(())
    }
}

fn now() -> DateTime {
    to_bson(Timestamp::now())
}

/// Milliseconds as a BSON date; deadlines past the year 292 million saturate.
fn to_bson(time: Timestamp) -> DateTime {
    DateTime::from_millis(i64::try_from(time.as_millis()).unwrap_or(i64::MAX))
}

/// A BSON date back to a timestamp; a date before 1970 (never written by us) reads as the
/// epoch, which is in the past.
fn from_bson(time: DateTime) -> Timestamp {
    Timestamp::from_millis(u64::try_from(time.timestamp_millis()).unwrap_or(0))
}

/// Runs an upsert that may only insert: `true` if it wrote, `false` if the insert broke the
/// unique `_id` because a live document holds the key.
async fn unless_duplicate<T>(
    upsert: impl IntoFuture<Output = Result<T, MongoError>>,
) -> Result<bool, MongoError> {
    match upsert.await {
        Ok(_) => Ok(true),
        Err(error) if is_duplicate_key(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

fn is_duplicate_key(error: &MongoError) -> bool {
    match &*error.kind {
        ErrorKind::Write(WriteFailure::WriteError(failure)) => failure.code == DUPLICATE_KEY,
        ErrorKind::Command(failure) => failure.code == DUPLICATE_KEY,
        _ => false,
    }
}

fn mongo_error(error: MongoError) -> StoreError {
    StoreError::backend(error)
}

/// The `fields` sub-document: escaped name → JSON text.
fn fields_document(fields: &Fields) -> Document {
    fields
        .iter()
        .map(|(name, value)| (escape_field(name).into_owned(), Bson::from(&**value)))
        .collect()
}

/// `name` as a key that addresses nothing but itself in an update path: `%`, `.`, `$` and NUL
/// are percent-encoded, the empty name is `%` (which no encoding produces otherwise).
fn escape_field(name: &str) -> Cow<'_, str> {
    if name.is_empty() {
        return Cow::Borrowed("%");
    }
    if !name.contains(['%', '.', '$', '\0']) {
        return Cow::Borrowed(name);
    }
    let mut escaped = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '%' => escaped.push_str("%25"),
            '.' => escaped.push_str("%2E"),
            '$' => escaped.push_str("%24"),
            '\0' => escaped.push_str("%00"),
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// The field name `escape_field` made `key` from, or `None` if no name escapes to `key`.
fn unescape_field(key: &str) -> Option<Cow<'_, str>> {
    if key == "%" {
        return Some(Cow::Borrowed(""));
    }
    if !key.contains('%') {
        return (!key.contains(['.', '$', '\0'])).then_some(Cow::Borrowed(key));
    }
    let mut name = String::with_capacity(key.len());
    let mut rest = key;
    while let Some(at) = rest.find('%') {
        name.push_str(&rest[..at]);
        let c = match rest.get(at + 1..at + 3)? {
            "25" => '%',
            "2E" => '.',
            "24" => '$',
            "00" => '\0',
            _ => return None,
        };
        name.push(c);
        rest = &rest[at + 3..];
    }
    name.push_str(rest);
    Some(Cow::Owned(name))
}

/// A session document back to a record.
///
/// A document without its times or its `fields` sub-document is [`StoreError::Corrupt`]; a
/// field whose value is not a string, or whose name no field name escapes to, is skipped with
/// a warning, so the session keeps every field that still reads.
fn parse_record(key: &StoreKey, document: &Document) -> Result<Record, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("session {key:?}: {what}"));
    let time = |name: &str| match document.get(name) {
        Some(Bson::DateTime(time)) => Ok(from_bson(*time)),
        Some(other) => Err(corrupt(&format!(
            "{name} is a {:?}, not a date",
            other.element_type()
        ))),
        None => Err(corrupt(&format!("{name} is missing"))),
    };
    let created_at = time(CREATED_AT)?;
    let expires_at = time(EXPIRES_AT)?;
    let stored = match document.get(FIELDS) {
        Some(Bson::Document(stored)) => stored,
        Some(other) => {
            return Err(corrupt(&format!(
                "{FIELDS} is a {:?}, not a document",
                other.element_type()
            )))
        }
        None => return Err(corrupt(&format!("{FIELDS} is missing"))),
    };
    let mut fields = Fields::new();
    for (stored_name, value) in stored {
        let (Some(name), Bson::String(text)) = (unescape_field(stored_name), value) else {
            tracing::warn!(
                session = ?key,
                field = %stored_name,
                "skipping a stored session field that this store did not write"
            );
            continue;
        };
        fields.insert(Arc::from(name), Arc::from(text.as_str()));
    }
    Ok(Record {
        fields,
        created_at,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_field_names_address_only_themselves() {
        for (name, escaped) in [
            ("views", "views"),
            ("a.b", "a%2Eb"),
            ("$set", "%24set"),
            ("100%", "100%25"),
            ("%2E", "%252E"),
            ("nul\0", "nul%00"),
            ("", "%"),
            ("名前.🍪", "名前%2E🍪"),
        ] {
            assert_eq!(escape_field(name), escaped);
            assert!(!escape_field(name).contains(['.', '$', '\0']));
            assert_eq!(unescape_field(escaped).as_deref(), Some(name));
        }
    }

    #[test]
    fn keys_no_field_name_escapes_to_are_refused() {
        for key in ["a.b", "$x", "%2", "%41", "a%zz", "%2e"] {
            assert_eq!(unescape_field(key), None, "{key:?}");
        }
    }

    #[test]
    fn documents_parse_into_records() {
        let key = crate::id::SessionId::generate().unwrap().store_key();
        let document = doc! {
            ID: key.as_str(),
            FIELDS: { "views": "3", "a%2Eb": "[]", "number": 4, "bad.key": "x" },
            CREATED_AT: DateTime::from_millis(1_000),
            EXPIRES_AT: DateTime::from_millis(5_000),
        };
        let record = parse_record(&key, &document).unwrap();
        assert_eq!(record.created_at, Timestamp::from_millis(1_000));
        assert_eq!(record.expires_at, Timestamp::from_millis(5_000));
        let names: Vec<&str> = record.fields.keys().map(|name| &**name).collect();
        assert_eq!(names, ["a.b", "views"]);
    }

    #[test]
    fn documents_without_times_or_fields_are_corrupt() {
        let key = crate::id::SessionId::generate().unwrap().store_key();
        for document in [
            doc! { FIELDS: {}, EXPIRES_AT: DateTime::from_millis(5_000) },
            doc! { FIELDS: {}, CREATED_AT: DateTime::from_millis(1), EXPIRES_AT: 5_000_i64 },
            doc! { CREATED_AT: DateTime::from_millis(1), EXPIRES_AT: DateTime::from_millis(5) },
        ] {
            assert!(matches!(
                parse_record(&key, &document),
                Err(StoreError::Corrupt(_))
            ));
        }
    }
}
