//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`). Not public API: the
//! names and behaviour may change in any release.
//!
//! Each function feeds arbitrary bytes to one decoder of untrusted input and checks what that
//! decoder promises. A panic here is a finding: either the decoder panicked or it broke one
//! of the invariants asserted below.
//!
//! - [`cookie_header`]: the `Cookie` header scan, with a fixed key ring (a current and an old
//!   key). Some control bytes in the input stand for valid signed values, so the fuzzer can
//!   reach the "a valid cookie among junk" paths without forging a MAC.
//! - [`field`]: the per-field decoder, with the input as stored JSON text, as several field
//!   types and through a derived view.
//! - [`file_record`] (feature `file`): the file store's record parser, reached through the
//!   public `FileStore` API (a record file holding the bytes, then a load and a sweep).
//! - [`redis_record`] (feature `redis`): the Redis store's reading of an `HGETALL` reply, the
//!   input being the reply's RESP bytes.
//! - [`sql_record`] (a SQL store's feature): the SQL stores' row decoder, the input being the
//!   two time columns (8 bytes each) and the `data` column.
//! - [`memcached_record`] (feature `memcached`): the memcached store's item decoder. Its reply
//!   parser reads from a socket; `tests/hostile_memcached.rs` feeds it hostile replies
//!   through a fake server.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cookie::{CookieLookup, Key, KeyRing};
use crate::data::{collect_field, decode_field, FieldState, SessionData, SessionView};
use crate::id::SessionId;
use crate::record::Fields;

/// The cookie name the scan looks for.
pub const COOKIE_NAME: &str = "sid";

/// Bytes of [`cookie_header`]'s input that are replaced before the scan.
pub mod token {
    /// A value signed with the current key, for id [`super::ID_A`].
    pub const CURRENT: u8 = 0x01;
    /// A value signed with the old key, for id [`super::ID_B`].
    pub const OLD: u8 = 0x02;
    /// A value signed with a key the ring does not hold, for id [`super::ID_A`].
    pub const FOREIGN: u8 = 0x03;
    /// A current-key value for [`super::ID_B`] missing its last character.
    pub const TRUNCATED: u8 = 0x04;
}

/// The id inside [`token::CURRENT`] and [`token::FOREIGN`] values.
pub const ID_A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
/// The id inside [`token::OLD`] and [`token::TRUNCATED`] values.
pub const ID_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

struct Cookies {
    ring: KeyRing,
    current_only: KeyRing,
    old_only: KeyRing,
    current: String,
    old: String,
    foreign: String,
    truncated: String,
}

fn cookies() -> &'static Cookies {
    static COOKIES: OnceLock<Cookies> = OnceLock::new();
    COOKIES.get_or_init(|| {
        let key = |byte: u8| Key::from_bytes(&[byte; 32]).expect("32-byte key");
        let id = |text: &str| SessionId::parse(text).expect("valid fixed id");
        let current_only = KeyRing::new(key(1));
        let old_only = KeyRing::new(key(2));
        let mut ring = KeyRing::new(key(1));
        ring.push(key(2));
        let mut truncated = current_only.sign(&id(ID_B));
        truncated.pop();
        Cookies {
            current: current_only.sign(&id(ID_A)),
            old: old_only.sign(&id(ID_B)),
            foreign: KeyRing::new(key(3)).sign(&id(ID_A)),
            truncated,
            ring,
            current_only,
            old_only,
        }
    })
}

/// The input with its token bytes replaced by the values they stand for.
pub fn expand_tokens(bytes: &[u8]) -> Vec<u8> {
    let c = cookies();
    let mut out = Vec::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            token::CURRENT => out.extend_from_slice(c.current.as_bytes()),
            token::OLD => out.extend_from_slice(c.old.as_bytes()),
            token::FOREIGN => out.extend_from_slice(c.foreign.as_bytes()),
            token::TRUNCATED => out.extend_from_slice(c.truncated.as_bytes()),
            other => out.push(other),
        }
    }
    out
}

/// Runs the `Cookie` header scan on `bytes` (tokens expanded, `\n` separating header
/// values) and checks:
///
/// - a found id implies a cookie of that name was present;
/// - a found id is one whose signed value is in the input, and `old_key` tells which key
///   signed it;
/// - splitting the headers further at every `;` changes nothing (the scan is per pair);
/// - a ring holding only the current key finds the same current-key cookie, or nothing.
pub fn cookie_header(bytes: &[u8]) {
    let c = cookies();
    let input = expand_tokens(bytes);
    let headers = || input.split(|b| *b == b'\n');
    let lookup = c.ring.find(COOKIE_NAME, headers());

    if let Some(id) = lookup.id {
        assert!(lookup.present, "found an id without a cookie: {lookup:?}");
        let signer = if lookup.old_key {
            &c.old_only
        } else {
            &c.current_only
        };
        let value = signer.sign(&id);
        assert!(
            contains(&input, value.as_bytes()),
            "found an id whose signed value is not in the input"
        );
    } else if !lookup.present {
        assert_eq!(lookup, CookieLookup::default());
    }

    let pairs = input.split(|b| *b == b'\n' || *b == b';');
    assert_eq!(
        c.ring.find(COOKIE_NAME, pairs),
        lookup,
        "splitting the header at `;` changed the result"
    );

    let current = c.current_only.find(COOKIE_NAME, headers());
    assert_eq!(current.present, lookup.present);
    assert!(!current.old_key);
    if !lookup.old_key {
        // The first cookie that verifies with the full ring verified with the current key,
        // and no earlier one verifies with the current key alone.
        assert_eq!(current.id, lookup.id);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Decodes `bytes` (as UTF-8, lossily: stores only hold text) as stored JSON for several field
/// types, and as a whole record through a derived view, checking that:
///
/// - a field decodes to what `serde_json` says, or to its default when it does not decode;
/// - a field touched but not changed is written only if it decoded (a stored value that does
///   not decode is kept until the application writes the field), and what is written decodes
///   back to the same value, floats included;
/// - an untouched view writes nothing.
pub fn field(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    one_field::<u32>(&text);
    one_field::<i64>(&text);
    one_field::<u64>(&text);
    one_field::<f64>(&text);
    one_field::<bool>(&text);
    one_field::<String>(&text);
    one_field::<Option<String>>(&text);
    one_field::<Vec<u32>>(&text);
    one_field::<Vec<String>>(&text);
    one_field::<Option<Vec<Option<bool>>>>(&text);
    one_field::<BTreeMap<String, i64>>(&text);
    one_field::<BTreeMap<u32, String>>(&text);
    one_field::<(u8, String, Vec<f64>)>(&text);
    one_field::<serde_json::Value>(&text);
    view(&text);
}

/// Decodes `text` as one field of type `F` and checks the field contract.
pub fn one_field<F>(text: &str)
where
    F: Serialize + DeserializeOwned + Default + PartialEq + Debug,
{
    let stored = Fields::from([(Arc::<str>::from("f"), Arc::<str>::from(text))]);
    let mut state = FieldState::NEW;
    let value: F = decode_field(&stored, &Fields::new(), "f", &mut state, F::default);
    let decodes = match serde_json::from_str::<F>(text) {
        Ok(expected) => {
            assert_eq!(value, expected, "decoded value differs from serde_json's");
            true
        }
        Err(_) => {
            assert_eq!(
                value,
                F::default(),
                "an undecodable field must take its default"
            );
            false
        }
    };
    state.touch(&value);
    let mut out = Fields::new();
    let written = collect_field(&value, "f", &mut state, &mut out)
        .expect("a decoded value (or a default) encodes");
    if !decodes {
        assert!(
            !written,
            "an undecodable stored value was overwritten without a change"
        );
    }
    if let Some(encoded) = out.get("f") {
        let again: F = serde_json::from_str(encoded).expect("what is written decodes");
        assert!(
            same_value(&again, &value),
            "a touched, unchanged field changed value when written: {value:?} became {again:?}"
        );
    }
}

/// Equal as JSON values. Floats compare exactly: serde_json's `float_roundtrip` feature
/// makes every finite float load back as itself.
fn same_value<F: Serialize>(a: &F, b: &F) -> bool {
    matches!(
        (serde_json::to_value(a), serde_json::to_value(b)),
        (Ok(a), Ok(b)) if a == b
    )
}

fn seven() -> i64 {
    7
}

/// The struct the derived-view check decodes into.
#[derive(crate::Session)]
#[session(crate = "crate")]
struct Fuzzed {
    views: u32,
    user: Option<String>,
    cart: Vec<String>,
    #[session(rename = "p")]
    prefs: BTreeMap<String, bool>,
    #[session(default = seven)]
    score: i64,
    ratio: f64,
}

type View = <Fuzzed as SessionData>::View;

/// Splits `text` at `\n` into stored values for the view's keys, in order; segments past the
/// last key are pending values, again in key order.
fn view(text: &str) {
    let mut stored = Fields::new();
    let mut pending = Fields::new();
    for (i, segment) in text.split('\n').enumerate() {
        let key = View::KEYS[i % View::KEYS.len()];
        let target = if i < View::KEYS.len() {
            &mut stored
        } else {
            &mut pending
        };
        target.insert(Arc::from(key), Arc::from(segment));
    }
    let raw = |key: &str| pending.get(key).or_else(|| stored.get(key)).cloned();

    let mut view = View::decode(&stored, &pending);
    let mut out = Fields::new();
    assert!(!view.collect(&mut out).expect("untouched view collects"));
    assert!(out.is_empty(), "an untouched view wrote {out:?}");

    let data = view.data();
    expect_field(raw("views"), &data.views, u32::default);
    expect_field(raw("user"), &data.user, Option::default);
    expect_field(raw("cart"), &data.cart, Vec::default);
    expect_field(raw("p"), &data.prefs, BTreeMap::default);
    expect_field(raw("score"), &data.score, seven);
    expect_field(raw("ratio"), &data.ratio, f64::default);

    let _ = view.views_mut();
    let _ = view.user_mut();
    let _ = view.cart_mut();
    let _ = view.prefs_mut();
    let _ = view.score_mut();
    let _ = view.ratio_mut();
    view.collect(&mut out).expect("touched view collects");
    for (key, encoded) in &out {
        let original = raw(key).expect("only stored fields can differ from their encoding");
        assert_ne!(original, *encoded, "an unchanged encoding was written");
    }
    let reread = View::decode(&out, &Fields::new());
    for key in out.keys() {
        let (a, b) = (view.data(), reread.data());
        let same = match &**key {
            "views" => a.views == b.views,
            "user" => a.user == b.user,
            "cart" => a.cart == b.cart,
            "p" => a.prefs == b.prefs,
            "score" => a.score == b.score,
            "ratio" => same_value(&a.ratio, &b.ratio),
            other => panic!("wrote a key the view does not have: {other}"),
        };
        assert!(same, "field `{key}` changed value when written back");
    }
}

fn expect_field<F>(raw: Option<Arc<str>>, value: &F, default: fn() -> F)
where
    F: DeserializeOwned + PartialEq + Debug,
{
    let expected = raw
        .and_then(|raw| serde_json::from_str::<F>(&raw).ok())
        .unwrap_or_else(default);
    assert_eq!(*value, expected);
}

#[cfg(feature = "file")]
pub use self::file::file_record;

#[cfg(feature = "file")]
mod file {
    use std::path::PathBuf;
    use std::sync::{Mutex, MutexGuard, OnceLock};

    use crate::record::Timestamp;
    use crate::store::{FileStore, Store, StoreError};
    use crate::StoreKey;

    struct Harness {
        runtime: tokio::runtime::Runtime,
        store: FileStore,
        key: StoreKey,
        path: PathBuf,
        /// The harness has one record file: callers on several threads (two tests of one
        /// test binary) take turns.
        turn: Mutex<()>,
    }

    impl Harness {
        fn turn(&self) -> MutexGuard<'_, ()> {
            self.turn
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }

    fn harness() -> &'static Harness {
        static HARNESS: OnceLock<Harness> = OnceLock::new();
        HARNESS.get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a Tokio runtime");
            let dir =
                std::env::temp_dir().join(format!("session-core-fuzzing-{}", std::process::id()));
            let store = runtime
                .block_on(FileStore::open(&dir))
                .expect("a temporary folder for the file store");
            let key = StoreKey::parse(&"0".repeat(64)).expect("a valid key");
            let path = store.dir().join(format!("{key}.json"));
            Harness {
                runtime,
                store,
                key,
                path,
                turn: Mutex::new(()),
            }
        })
    }

    /// The folder [`file_record`] keeps its one record file in, under the system's temporary
    /// directory and named after the process (created on first use). Remove it when done,
    /// with [`remove_file_record_dir`].
    pub fn file_record_dir() -> PathBuf {
        harness().store.dir().to_path_buf()
    }

    /// Removes [`file_record_dir`], waiting for a [`file_record`] call on another thread to
    /// finish first.
    pub fn remove_file_record_dir() {
        let h = harness();
        let _turn = h.turn();
        let _ = std::fs::remove_dir_all(h.store.dir());
    }

    /// Writes `bytes` as a session's record file, loads it and sweeps the folder, checking
    /// that:
    ///
    /// - a load gives a live record, nothing (expired), or [`StoreError::Corrupt`], never
    ///   another error or a panic, and never an expired record;
    /// - the sweep never fails;
    /// - the sweep keeps a live file and an unreadable one, and removes an expired one,
    ///   except where it has read a different deadline from the file's first bytes than a
    ///   load reads from the whole file (a duplicate `expires_at`; see
    ///   `proptests::file_store_reaper_and_reader_agree_on_duplicate_deadlines`).
    ///
    /// Not for use inside a Tokio runtime (it blocks on its own).
    pub fn file_record(bytes: &[u8]) {
        let h = harness();
        let _turn = h.turn();
        if let Err(error) = std::fs::write(&h.path, bytes) {
            // The folder was removed under us (by a cleanup): make it again.
            assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
            std::fs::create_dir_all(h.store.dir()).expect("recreate the folder");
            std::fs::write(&h.path, bytes).expect("write the record file");
        }
        let before = Timestamp::now();
        let loaded = h.runtime.block_on(h.store.load(&h.key));
        let deadline = match &loaded {
            Ok(Some(record)) => {
                assert!(!record.is_expired(before), "an expired record was loaded");
                Some(record.expires_at)
            }
            Ok(None) | Err(StoreError::Corrupt(_)) => None,
            Err(other) => panic!("a record file gave {other}, not a record or Corrupt"),
        };
        h.runtime
            .block_on(h.store.purge_expired())
            .expect("a sweep does not fail on a bad file");
        let after = Timestamp::now();
        let kept = h.path.exists();
        let head = head_expiry(bytes);
        // What the sweep goes by: the first bytes if they hold the deadline, else the file.
        let seen = head.or(deadline);
        let disagree = head.is_some() && deadline.is_some() && head != deadline;
        match &loaded {
            Ok(Some(record)) if record.expires_at > after && !disagree => {
                assert!(kept, "the sweep removed a live file");
            }
            Ok(None) if head.is_none_or(|head| head <= before) => {
                assert!(!kept, "the sweep kept an expired file");
            }
            Err(_) if !kept => assert!(
                seen.is_some_and(|seen| seen <= after),
                "the sweep removed an unreadable file that does not start with a past deadline"
            ),
            _ => {}
        }
        if kept {
            std::fs::remove_file(&h.path).expect("remove the record file");
        }
    }

    /// The deadline the sweep reads from a file's first 64 bytes, if they start
    /// `{"v":1,"expires_at":<digits>,`.
    fn head_expiry(bytes: &[u8]) -> Option<Timestamp> {
        let head = &bytes[..bytes.len().min(64)];
        let rest = head.strip_prefix(b"{\"v\":1,\"expires_at\":".as_slice())?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || rest.get(digits) != Some(&b',') {
            return None;
        }
        std::str::from_utf8(&rest[..digits])
            .ok()?
            .parse()
            .ok()
            .map(Timestamp::from_millis)
    }
}

#[cfg(feature = "file")]
pub use self::file::{file_record_dir, remove_file_record_dir};

/// The Redis store's reading of an `HGETALL` reply, from the reply's RESP bytes: an error or
/// a live record, never a panic; a record it returns has both times and no metadata field.
#[cfg(feature = "redis")]
pub fn redis_record(bytes: &[u8]) {
    use crate::record::Timestamp;
    let Ok(reply) = ::redis::parse_redis_value(bytes) else {
        return;
    };
    let now = Timestamp::now();
    if let Ok(Some(record)) = crate::store::redis::parse_record(reply, now) {
        assert!(!record.is_expired(now), "an expired record was returned");
        assert!(
            record.fields.keys().all(|name| !name.starts_with('\0')),
            "a metadata field was returned as a session field"
        );
    }
}

/// The SQL stores' row decoder: the first 16 bytes are the `created_at` and `expires_at`
/// columns (little-endian `i64`s, zero-padded), the rest the `data` column. Never a panic;
/// a decoded record holds only the object's string members.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub fn sql_record(bytes: &[u8]) {
    let mut times = [0u8; 16];
    let split = bytes.len().min(16);
    times[..split].copy_from_slice(&bytes[..split]);
    let created = i64::from_le_bytes(times[..8].try_into().unwrap_or_default());
    let expires = i64::from_le_bytes(times[8..].try_into().unwrap_or_default());
    let data = String::from_utf8_lossy(&bytes[split..]);
    let key = SessionId::generate().expect("OS randomness").store_key();
    if let Ok(record) = crate::store::sql::decode_record(&key, &data, created, expires) {
        let Ok(serde_json::Value::Object(object)) = serde_json::from_str(&data) else {
            panic!("a record decoded from a data column that is not a JSON object");
        };
        for (name, value) in &record.fields {
            assert_eq!(
                object.get(&**name).and_then(serde_json::Value::as_str),
                Some(&**value),
                "field {name:?} is not the object's string member"
            );
        }
    }
}

/// The memcached store's item decoder: an error or a record, never a panic.
#[cfg(feature = "memcached")]
pub fn memcached_record(bytes: &[u8]) {
    let _ = crate::store::memcached::decode(bytes);
}
