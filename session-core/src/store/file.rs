//! The file store: one file per session in a folder.
//!
//! ```
//! use std::time::Duration;
//! use session_core::store::{FileStore, Store};
//! use session_core::{Record, SessionId, Timestamp};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("session-core-doc-{}", std::process::id()));
//! // Creates the folder (and its parents) if needed.
//! let store = FileStore::open(&dir).await?;
//!
//! // The layer makes keys from session ids; a store is called with them.
//! let key = SessionId::generate().map_err(|e| e.to_string())?.store_key();
//! let now = Timestamp::now();
//! let record = Record::new(now, now.saturating_add(Duration::from_secs(15 * 60)));
//! assert!(store.create(&key, &record).await?);
//! assert!(store.load(&key).await?.is_some());
//! # drop(store);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! Give it to the layer like any store (`SessionLayer::new(store, key)`), or pick it at run
//! time and share it as `Arc<dyn Store>`.
//!
//! # Layout
//!
//! - `DIR/<key>.json`: one session. `<key>` is the session's [`StoreKey`] (64 hex characters
//!   of a SHA-256 hash, never the cookie's id), so names are safe on every file system.
//! - `DIR/.<key>.<pid>.<n>.tmp`: a write in progress. It is renamed over `<key>.json` when
//!   complete; one left behind by a crash is removed by the reaper once it is five minutes old.
//! - `DIR/.locks/00` … `DIR/.locks/ff`: 256 lock files, never removed (see *Locking*).
//! - `DIR/.index/<entry>/<key>`: one member of a session index (see *Indexes*).
//!
//! Every other name in the folder is ignored: reads never look at it and the reaper never
//! removes it. Files and folders the store creates are private to their owner on Unix
//! (`0600` and `0700`).
//!
//! # File format
//!
//! Compact JSON, versioned so that a later release can read what an earlier one wrote:
//!
//! ```text
//! {"v":1,"expires_at":1767225600000,"created_at":1767224700000,"fields":{"views":"3"}}
//! ```
//!
//! Times are milliseconds since the Unix epoch. Each field's value is its encoded JSON text
//! kept as a JSON *string*, so it loads back byte for byte, whatever its spacing. `expires_at`
//! comes first so that the reaper can read a file's first bytes instead of the whole file.
//! A file that cannot be read as this format (truncated by hand, another version, not JSON)
//! makes calls on its key fail with [`StoreError::Corrupt`]; a replacing save overwrites it.
//!
//! # Writes
//!
//! Every write goes to a new temporary file in the same folder, is flushed to disk
//! (`fsync`), then renamed over the session's file. A rename within a folder is atomic, so a
//! reader, or a crash, sees the old file or the new one, never a torn or empty one. The folder
//! itself is not flushed after the rename: after a power cut a session may come back as it was
//! one write earlier, which for sessions is an acceptable trade for one `fsync` per write.
//!
//! # Locking
//!
//! Reads take no lock: the rename makes them safe. Writes are read-modify-write (a
//! [`SaveMode::Merge`] keeps the stored fields it is not given, [`touch`](Store::touch) keeps
//! every field, [`create`](Store::create) first checks for a live record), so the writes to
//! one key are serialised, within a process and across processes sharing the folder:
//!
//! 1. keys are spread over 256 stripes by their first two hex characters;
//! 2. in this process, a Tokio mutex per stripe queues writers without blocking a thread;
//! 3. across processes, the writer then holds an exclusive advisory lock (`flock` on Unix,
//!    `LockFileEx` on Windows) on the stripe's lock file in `DIR/.locks/` for the duration of
//!    the read-modify-write.
//!
//! The lock files are fixed and never removed: a lock on the session file itself would not
//! work (each write renames a new file over it), and per-session lock files would have to be
//! deleted, which races with a process that has just opened one. Two sessions in one stripe
//! wait for each other, but only for the few milliseconds one write takes. Advisory locks
//! protect only processes that use them: every process writing the folder must be a
//! `FileStore`. On network file systems, whether locks reach other machines depends on the
//! server; share a local folder, or use a database store, across machines.
//!
//! # Expiry
//!
//! A file whose deadline has passed is never loaded, even before it is removed. A background
//! task, the reaper, removes expired files every five minutes (or as
//! [`with_reap_interval`](FileStore::with_reap_interval) says), each wait randomised
//! between half and one and a half times the interval so that processes sharing a folder do
//! not scan it together. It starts on the first write made inside a Tokio runtime, and stops
//! when the last clone of the store is dropped. [`purge_expired`](Store::purge_expired) runs
//! the same sweep on demand.
//!
//! # Indexes
//!
//! Each [`IndexEntry`] is a folder `DIR/.index/<digest>/` holding one file per member, named
//! by its store key, whose content is the time it was added (Unix milliseconds, as text). An
//! add writes a temporary file `.<key>.<pid>.<n>.tmp` in the entry's folder and renames it
//! over the member's file, so a reader sees a whole time or none, and adding again refreshes
//! it. Members of one entry are different files: adding them takes no lock on the entry, and
//! concurrent adds from any number of processes all survive. A remove deletes the member's
//! file; listing reads the entry's folder (never the sessions).
//!
//! The reaper removes, under the member's stripe lock, the members whose session is gone or
//! expired once they are older than [`PRUNE_GRACE`](crate::index::PRUNE_GRACE) (a younger one
//! may belong to a write whose record is not stored yet), temporary files left by crashed
//! adds, and entry folders left empty. An add whose folder the reaper removed between its
//! two steps makes the folder again.
//!
//! All file system work runs on Tokio's blocking thread pool, one hop per store call.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use tokio::sync::{Mutex, Notify};

use super::{IndexEntry, IndexMember, Store, StoreError};
use crate::id::StoreKey;
use crate::index::PRUNE_GRACE;
use crate::record::{Fields, Record, SaveMode, Timestamp};

/// The version written in every file; files of any other version are reported as corrupt.
const FORMAT_VERSION: u64 = 1;
/// How every file of this version starts; the reaper reads the deadline right after it.
const HEAD_PREFIX: &[u8] = b"{\"v\":1,\"expires_at\":";
/// Enough bytes for the prefix and a 20-digit deadline.
const HEAD_LEN: u64 = 64;
const DATA_SUFFIX: &str = ".json";
const TEMP_SUFFIX: &str = ".tmp";
const LOCK_DIR: &str = ".locks";
const INDEX_DIR: &str = ".index";
/// Tries of an index add whose entry folder the reaper removes under it.
const INDEX_ADD_ATTEMPTS: usize = 4;
const STRIPES: usize = 256;
const DEFAULT_REAP_INTERVAL: Duration = Duration::from_secs(5 * 60);
const MIN_REAP_INTERVAL: Duration = Duration::from_millis(10);
/// A temporary file lives for one write (milliseconds); one this old was left by a crash.
const STALE_TEMP_AGE: Duration = Duration::from_secs(5 * 60);

/// Numbers temporary files, so that no two writes in this process share one.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Sessions kept as files, one per session, in a folder.
///
/// - **Atomic writes**: each write goes to a temporary file that is flushed and renamed over
///   the session's file, so no reader or crash ever sees a torn or empty file.
/// - **Serialised writes**: writes to one key are queued, within the process and (with an
///   advisory file lock) across processes sharing the folder, so concurrent partial saves of
///   different fields all keep their change.
/// - **Expiry on read**: an expired file is never loaded, even before it is removed.
/// - **Reaped**: a background task removes expired files (every five minutes by default,
///   randomised) and stops when the last clone of the store is dropped.
/// - **Indexes** (`#[session(index)]`): one file per member in `DIR/.index/<entry>/`, written
///   by rename; the reaper removes the members of ended sessions.
///
/// Each session is `DIR/<key>.json`, versioned JSON; other names in the folder are ignored.
/// Several processes may share the folder: writes take an advisory lock (`flock`) on one of
/// 256 lock files in `DIR/.locks/`, so every process writing it must be a `FileStore`, and the
/// folder should be local (locks on network file systems depend on the server). After a power
/// cut a session may come back as it was one write earlier, never torn. A file that cannot be
/// read makes calls on its key fail with [`StoreError::Corrupt`]. The source of this module
/// documents the layout, the format and the locking in full.
///
/// ```
/// use session_core::store::FileStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), session_core::StoreError> {
/// # let dir = std::env::temp_dir().join(format!("session-core-doc-type-{}", std::process::id()));
/// let store = FileStore::open(&dir).await?;
/// assert_eq!(store.dir(), dir.canonicalize().unwrap());
/// # drop(store);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    lock_dir: PathBuf,
    index_dir: PathBuf,
    /// In-process queues for writers, one per stripe of keys.
    stripes: Box<[Mutex<()>]>,
    reap_interval: Duration,
    reaper_started: AtomicBool,
    /// Wakes the reaper when the store is dropped, so it stops at once.
    stop_reaper: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // `notify_one` keeps a permit if the reaper is not waiting yet, so it is never missed.
        self.stop_reaper.notify_one();
    }
}

impl FileStore {
    /// Opens the store in `dir`, creating the folder and its parents if needed.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the folder cannot be created or written to.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let dir = run_blocking(move || prepare_dir(&dir)).await?;
        Ok(Self::build(dir, DEFAULT_REAP_INTERVAL))
    }

    /// Sets how often, on average, the reaper removes expired files (five minutes by
    /// default, at least 10 ms). Call it before the store is shared: clones made earlier keep
    /// the old interval.
    #[must_use]
    pub fn with_reap_interval(self, interval: Duration) -> Self {
        Self::build(self.inner.dir.clone(), interval)
    }

    fn build(dir: PathBuf, reap_interval: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                lock_dir: dir.join(LOCK_DIR),
                index_dir: dir.join(INDEX_DIR),
                dir,
                stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
                reap_interval: reap_interval.max(MIN_REAP_INTERVAL),
                reaper_started: AtomicBool::new(false),
                stop_reaper: Arc::new(Notify::new()),
            }),
        }
    }

    /// The folder the sessions are kept in, as an absolute path.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Runs `op` on the blocking pool while holding the write lock of `key`'s stripe.
    async fn locked<T, F>(&self, key: &StoreKey, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &StoreKey) -> Result<T, StoreError> + Send + 'static,
    {
        let stripe = stripe_of(key);
        // Queue here, without holding a thread, so that only the holder of the in-process
        // lock can block a thread on the file lock (and only while another process writes).
        let _queued = self.inner.stripes[stripe].lock().await;
        let inner = Arc::clone(&self.inner);
        let key = *key;
        run_blocking(move || {
            let _locked = inner.lock_stripe(stripe)?;
            op(&inner, &key)
        })
        .await
    }

    fn start_reaper(&self) {
        if self.inner.reaper_started.load(Ordering::Relaxed)
            || self.inner.reaper_started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Nothing to run the task on; expiry on read still holds. Try on a later write.
            self.inner.reaper_started.store(false, Ordering::Relaxed);
            return;
        };
        runtime.spawn(reap(
            Arc::downgrade(&self.inner),
            Arc::clone(&self.inner.stop_reaper),
            self.inner.reap_interval,
        ));
    }
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.inner.dir)
            .field("reap_interval", &self.inner.reap_interval)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for FileStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let key = *key;
        run_blocking(move || inner.read_live(&key, Timestamp::now())).await
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        self.start_reaper();
        let record = record.clone();
        self.locked(key, move |inner, key| {
            if inner.read_live(key, Timestamp::now())?.is_some() {
                return Ok(false);
            }
            inner.write(key, &record)?;
            Ok(true)
        })
        .await
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        self.start_reaper();
        let record = record.clone();
        self.locked(key, move |inner, key| {
            // Only a live record is written over; a missing or expired one stays gone.
            let Some(mut stored) = inner.read_live(key, Timestamp::now())? else {
                return Ok(false);
            };
            stored.apply(&record, mode);
            inner.write(key, &stored)?;
            Ok(true)
        })
        .await
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        self.start_reaper();
        self.locked(key, move |inner, key| {
            let Some(mut stored) = inner.read_live(key, Timestamp::now())? else {
                return Ok(false);
            };
            stored.expires_at = expires_at;
            inner.write(key, &stored)?;
            Ok(true)
        })
        .await
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.locked(key, |inner, key| inner.remove(key).map(drop))
            .await
    }

    /// Also removes stale index members: see *Indexes* in the module docs.
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let inner = Arc::clone(&self.inner);
        let swept = run_blocking(move || inner.sweep(Timestamp::now())).await?;
        Ok(swept.expired)
    }

    fn supports_index(&self) -> bool {
        true
    }

    /// Writes the member's file (its content the time now) with a rename, under the
    /// member's stripe lock so the reaper cannot remove it between a check and its removal.
    /// Files do not expire: `until` is not needed, the reaper prunes.
    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let _ = until;
        self.start_reaper();
        let digest = entry.name();
        self.locked(key, move |inner, key| {
            inner.write_member(&digest, key, Timestamp::now())
        })
        .await
    }

    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        let path = self.inner.member_path(&entry.name(), key);
        run_blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(fs_error("remove", &path, error)),
        })
        .await
    }

    /// Reads the entry's folder. A member file whose content is not a time (written by
    /// something else) counts as added when it was last modified.
    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let digest = entry.name();
        run_blocking(move || inner.members(&digest)).await
    }

    /// All in one hop to the blocking pool, rather than one per key.
    async fn load_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Record>>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let keys = keys.to_vec();
        run_blocking(move || {
            let now = Timestamp::now();
            keys.iter()
                .map(|key| match inner.read_live(key, now) {
                    Err(StoreError::Corrupt(_)) => Ok(None),
                    read => read,
                })
                .collect()
        })
        .await
    }
}

/// The reaper: sweeps every `interval` (randomised) until the store is dropped.
async fn reap(store: Weak<Inner>, stop: Arc<Notify>, interval: Duration) {
    loop {
        if tokio::time::timeout(jittered(interval), stop.notified())
            .await
            .is_ok()
        {
            break;
        }
        let Some(inner) = store.upgrade() else { break };
        let dir = inner.dir.clone();
        match run_blocking(move || inner.sweep(Timestamp::now())).await {
            Ok(swept) => {
                if swept.expired > 0 || swept.temporary > 0 || swept.members > 0 {
                    tracing::debug!(
                        dir = %dir.display(),
                        expired = swept.expired,
                        temporary = swept.temporary,
                        index_members = swept.members,
                        "removed expired session files"
                    );
                }
                if swept.corrupt > 0 {
                    tracing::warn!(
                        dir = %dir.display(),
                        corrupt = swept.corrupt,
                        "session folder holds files that cannot be read; they are left in place"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "could not sweep session folder");
            }
        }
    }
}

/// `interval` times a random factor in [0.5, 1.5).
fn jittered(interval: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    let random = match getrandom::fill(&mut bytes) {
        Ok(()) => u32::from_le_bytes(bytes),
        Err(_) => u32::MAX / 2,
    };
    interval.mul_f64(0.5 + f64::from(random) / (f64::from(u32::MAX) + 1.0))
}

/// What one sweep removed, or left alone.
struct Swept {
    expired: u64,
    temporary: u64,
    corrupt: u64,
    /// Index members of ended sessions.
    members: u64,
}

impl Inner {
    fn data_path(&self, key: &StoreKey) -> PathBuf {
        self.dir.join(format!("{key}{DATA_SUFFIX}"))
    }

    /// Takes the cross-process lock of `stripe`; it is released when the file is dropped.
    fn lock_stripe(&self, stripe: usize) -> Result<File, StoreError> {
        let path = self.lock_dir.join(format!("{stripe:02x}"));
        let file = match open_lock_file(&path) {
            // Someone removed the lock folder: make it again rather than fail every write.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                create_private_dir(&self.lock_dir)
                    .and_then(|()| open_lock_file(&path))
                    .map_err(|error| fs_error("open lock file", &path, error))?
            }
            opened => opened.map_err(|error| fs_error("open lock file", &path, error))?,
        };
        // Called through the trait: `File::lock` in std (Rust 1.89) is newer than our MSRV.
        fs4::FileExt::lock(&file).map_err(|error| fs_error("lock", &path, error))?;
        Ok(file)
    }

    fn read(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let path = self.data_path(key);
        match fs::read(&path) {
            Ok(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|why| StoreError::Corrupt(format!("{}: {why}", path.display()))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(fs_error("read", &path, error)),
        }
    }

    fn read_live(&self, key: &StoreKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        Ok(self.read(key)?.filter(|record| !record.is_expired(now)))
    }

    /// The deadline of the file under `key`, from its first bytes when they are in the
    /// expected form, from the whole file otherwise.
    fn expiry(&self, key: &StoreKey) -> Result<Option<Timestamp>, StoreError> {
        let path = self.data_path(key);
        let mut head = Vec::new();
        match File::open(&path).and_then(|file| file.take(HEAD_LEN).read_to_end(&mut head)) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(fs_error("read", &path, error)),
        }
        match peek_expiry(&head) {
            Some(expires_at) => Ok(Some(expires_at)),
            None => Ok(self.read(key)?.map(|record| record.expires_at)),
        }
    }

    /// Writes `record` to a temporary file, flushes it and renames it over `key`'s file.
    fn write(&self, key: &StoreKey, record: &Record) -> Result<(), StoreError> {
        let bytes = encode(record)?;
        let (temp, mut file) = self.create_temp(key)?;
        let written = file.write_all(&bytes).and_then(|()| file.sync_data());
        drop(file);
        if let Err(error) = written {
            let _ = fs::remove_file(&temp);
            return Err(fs_error("write", &temp, error));
        }
        let path = self.data_path(key);
        if let Err(error) = fs::rename(&temp, &path) {
            let _ = fs::remove_file(&temp);
            return Err(fs_error("rename into", &path, error));
        }
        Ok(())
    }

    /// Creates a new temporary file for a write to `key`.
    fn create_temp(&self, key: &StoreKey) -> Result<(PathBuf, File), StoreError> {
        let pid = std::process::id();
        let mut attempts = 0;
        loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let temp = self.dir.join(format!(".{key}.{pid}.{n}{TEMP_SUFFIX}"));
            match create_private_file(&temp) {
                Ok(file) => return Ok((temp, file)),
                // Left by a crashed process that had our pid (as in another container):
                // not ours to remove while it may be young, so take the next name.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1;
                }
                Err(error) => return Err(fs_error("create", &temp, error)),
            }
        }
    }

    /// Removes `key`'s file; `false` if there was none.
    fn remove(&self, key: &StoreKey) -> Result<bool, StoreError> {
        let path = self.data_path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(fs_error("remove", &path, error)),
        }
    }

    /// Removes the expired session files and our stale temporary files. A file that cannot
    /// be handled is logged and skipped; only an unreadable folder fails the sweep.
    fn sweep(&self, now: Timestamp) -> Result<Swept, StoreError> {
        let entries =
            fs::read_dir(&self.dir).map_err(|error| fs_error("list", &self.dir, error))?;
        let mut swept = Swept {
            expired: 0,
            temporary: 0,
            corrupt: 0,
            members: 0,
        };
        let wall_now = SystemTime::from(now);
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    tracing::debug!(%error, "skipping unreadable entry in session folder");
                    continue;
                }
            };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let outcome = if let Some(key) = data_file_key(name) {
                self.sweep_session(&key, now).map(|removed| {
                    swept.expired += u64::from(removed == Some(true));
                    swept.corrupt += u64::from(removed.is_none());
                })
            } else if let Some(key) = temp_file_key(name) {
                let stale = entry
                    .metadata()
                    .and_then(|meta| meta.modified())
                    .ok()
                    .and_then(|modified| wall_now.duration_since(modified).ok())
                    .is_some_and(|age| age >= STALE_TEMP_AGE);
                if !stale {
                    continue;
                }
                self.sweep_temp(&key, &entry.path())
                    .map(|removed| swept.temporary += u64::from(removed))
            } else {
                continue;
            };
            if let Err(error) = outcome {
                tracing::warn!(file = name, %error, "could not sweep session file");
            }
        }
        swept.members = self.sweep_indexes(now);
        Ok(swept)
    }

    fn entry_dir(&self, digest: &StoreKey) -> PathBuf {
        self.index_dir.join(digest.as_str())
    }

    fn member_path(&self, digest: &StoreKey, key: &StoreKey) -> PathBuf {
        self.entry_dir(digest).join(key.as_str())
    }

    /// Writes the member `key` of the entry `digest`, added at `added`, with a rename. The
    /// caller holds `key`'s stripe lock.
    fn write_member(
        &self,
        digest: &StoreKey,
        key: &StoreKey,
        added: Timestamp,
    ) -> Result<(), StoreError> {
        let dir = self.entry_dir(digest);
        let pid = std::process::id();
        let content = added.as_millis().to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            create_private_dir(&dir).map_err(|error| fs_error("create", &dir, error))?;
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let temp = dir.join(format!(".{key}.{pid}.{n}{TEMP_SUFFIX}"));
            let mut file = match create_private_file(&temp) {
                Ok(file) => file,
                // The reaper removed the folder, empty, after it was made: make it again.
                Err(error)
                    if error.kind() == io::ErrorKind::NotFound && attempt < INDEX_ADD_ATTEMPTS =>
                {
                    continue
                }
                Err(error) => return Err(fs_error("create", &temp, error)),
            };
            // Flushed like a session: a live session missing from its index after a power cut
            // would survive a "sign out everywhere".
            let written = file
                .write_all(content.as_bytes())
                .and_then(|()| file.sync_data());
            drop(file);
            let path = dir.join(key.as_str());
            if let Err(error) = written.and_then(|()| fs::rename(&temp, &path)) {
                let _ = fs::remove_file(&temp);
                return Err(fs_error("write", &path, error));
            }
            return Ok(());
        }
    }

    /// The members of the entry `digest`: its folder's member files.
    fn members(&self, digest: &StoreKey) -> Result<Vec<IndexMember>, StoreError> {
        let dir = self.entry_dir(digest);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(fs_error("list", &dir, error)),
        };
        let mut members = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| fs_error("list", &dir, error))?;
            let Some(key) = entry.file_name().to_str().and_then(StoreKey::parse) else {
                continue;
            };
            // Gone since the listing (removed): not a member any more.
            if let Some(added) = member_added(&entry.path()) {
                members.push(IndexMember { key, added });
            }
        }
        Ok(members)
    }

    /// Removes the members of ended sessions older than the grace, the temporary files of
    /// crashed adds, and empty entry folders. Returns how many members it removed; what it
    /// cannot handle is logged and left.
    fn sweep_indexes(&self, now: Timestamp) -> u64 {
        let grace = u64::try_from(PRUNE_GRACE.as_millis()).unwrap_or(u64::MAX);
        let stale_before = Timestamp::from_millis(now.as_millis().saturating_sub(grace));
        let Ok(entries) = fs::read_dir(&self.index_dir) else {
            return 0; // No index yet (or unreadable: the next sweep tries again).
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let Some(digest) = entry.file_name().to_str().and_then(StoreKey::parse) else {
                continue;
            };
            match self.sweep_entry(&digest, now, stale_before) {
                Ok(count) => removed += count,
                Err(error) => tracing::warn!(%error, "could not sweep a session index entry"),
            }
            // Only an empty folder goes; an add that lost it makes it again.
            let _ = fs::remove_dir(entry.path());
        }
        removed
    }

    fn sweep_entry(
        &self,
        digest: &StoreKey,
        now: Timestamp,
        stale_before: Timestamp,
    ) -> Result<u64, StoreError> {
        let dir = self.entry_dir(digest);
        let entries = fs::read_dir(&dir).map_err(|error| fs_error("list", &dir, error))?;
        let wall_now = SystemTime::from(now);
        let mut removed = 0;
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some(key) = StoreKey::parse(&name) {
                // Old, and its session gone or expired; an unreadable session is left alone.
                let stale = |path: &Path| {
                    member_added(path).is_some_and(|added| added < stale_before)
                        && match self.expiry(&key) {
                            Ok(None) => true,
                            Ok(Some(expires_at)) => expires_at <= now,
                            Err(_) => false,
                        }
                };
                let path = entry.path();
                if !stale(&path) {
                    continue;
                }
                let stripe = stripe_of(&key);
                let _queued = self.stripes[stripe].blocking_lock();
                let _locked = self.lock_stripe(stripe)?;
                // An add may have refreshed it since the first look.
                if stale(&path) {
                    match fs::remove_file(&path) {
                        Ok(()) => removed += 1,
                        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                        Err(error) => return Err(fs_error("remove", &path, error)),
                    }
                }
            } else if let Some(key) = temp_file_key(&name) {
                let old = entry
                    .metadata()
                    .and_then(|meta| meta.modified())
                    .ok()
                    .and_then(|modified| wall_now.duration_since(modified).ok())
                    .is_some_and(|age| age >= STALE_TEMP_AGE);
                if old {
                    self.sweep_temp(&key, &entry.path())?;
                }
            }
        }
        Ok(removed)
    }

    /// Removes `key`'s file if it has expired: `Some(true)` if removed, `Some(false)` if
    /// live or gone, `None` if it cannot be read as a session.
    fn sweep_session(&self, key: &StoreKey, now: Timestamp) -> Result<Option<bool>, StoreError> {
        // Look first without the lock: most files are live and need nothing.
        match self.expiry(key) {
            Ok(Some(expires_at)) if expires_at <= now => {}
            Ok(_) => return Ok(Some(false)),
            Err(StoreError::Corrupt(_)) => return Ok(None),
            Err(error) => return Err(error),
        }
        let stripe = stripe_of(key);
        // This runs on a blocking thread, where waiting for a Tokio mutex is allowed.
        let _queued = self.stripes[stripe].blocking_lock();
        let _locked = self.lock_stripe(stripe)?;
        // A writer may have brought the session back to life since the first look.
        match self.expiry(key)? {
            Some(expires_at) if expires_at <= now => self.remove(key).map(Some),
            _ => Ok(Some(false)),
        }
    }

    /// Removes a temporary file left by a crashed write.
    fn sweep_temp(&self, key: &StoreKey, path: &Path) -> Result<bool, StoreError> {
        // Writers create and rename temporary files while holding the stripe's lock, so
        // holding it here guarantees that no write is using this one.
        let stripe = stripe_of(key);
        let _queued = self.stripes[stripe].blocking_lock();
        let _locked = self.lock_stripe(stripe)?;
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(fs_error("remove", path, error)),
        }
    }
}

/// When the member file at `path` was added: its content, or its modification time if the
/// content is not a time. `None` when it is gone.
fn member_added(path: &Path) -> Option<Timestamp> {
    let content = fs::read(path).ok()?;
    let written = std::str::from_utf8(&content)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    match written {
        Some(millis) => Some(Timestamp::from_millis(millis)),
        None => {
            let modified = fs::metadata(path).and_then(|meta| meta.modified()).ok()?;
            let millis = modified
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| {
                    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                });
            Some(Timestamp::from_millis(millis))
        }
    }
}

/// Runs blocking file system work on Tokio's blocking pool.
async fn run_blocking<T, F>(work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(StoreError::backend)?
}

/// The stripe of `key`: its first byte, from its first two hex characters.
fn stripe_of(key: &StoreKey) -> usize {
    let hex = key.as_str().as_bytes();
    (usize::from(hex_value(hex[0])) << 4 | usize::from(hex_value(hex[1]))) % STRIPES
}

fn hex_value(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        _ => 0,
    }
}

/// The key of a session file name (`<key>.json`).
fn data_file_key(name: &str) -> Option<StoreKey> {
    StoreKey::parse(name.strip_suffix(DATA_SUFFIX)?)
}

/// The key of one of our temporary file names (`.<key>.<pid>.<n>.tmp`).
fn temp_file_key(name: &str) -> Option<StoreKey> {
    let rest = name.strip_prefix('.')?.strip_suffix(TEMP_SUFFIX)?;
    let (key, suffix) = rest.split_once('.')?;
    let (pid, n) = suffix.split_once('.')?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !numeric(pid) || !numeric(n) {
        return None;
    }
    StoreKey::parse(key)
}

/// Makes the store's folder and lock folder; returns the folder as an absolute path.
fn prepare_dir(dir: &Path) -> Result<PathBuf, StoreError> {
    create_private_dir(dir).map_err(|error| fs_error("create session folder", dir, error))?;
    let dir = fs::canonicalize(dir).map_err(|error| fs_error("open session folder", dir, error))?;
    let lock_dir = dir.join(LOCK_DIR);
    create_private_dir(&lock_dir)
        .map_err(|error| fs_error("create lock folder", &lock_dir, error))?;
    // Fail now, not on the first request, if the folder cannot be written.
    let probe = lock_dir.join("00");
    open_lock_file(&probe).map_err(|error| fs_error("open lock file", &probe, error))?;
    Ok(dir)
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn create_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    // Write access: Windows locks need a handle opened for reading or writing.
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// A file system call that failed, with what was being done and to which path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {error}", path.display())]
struct FsError {
    action: &'static str,
    path: PathBuf,
    error: io::Error,
}

fn fs_error(action: &'static str, path: &Path, error: io::Error) -> StoreError {
    StoreError::backend(FsError {
        action,
        path: path.to_path_buf(),
        error,
    })
}

/// A record as it is written: `{"v":1,"expires_at":..,"created_at":..,"fields":{..}}`.
struct Encoded<'a>(&'a Record);

impl Serialize for Encoded<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("v", &FORMAT_VERSION)?;
        map.serialize_entry("expires_at", &self.0.expires_at.as_millis())?;
        map.serialize_entry("created_at", &self.0.created_at.as_millis())?;
        map.serialize_entry("fields", &EncodedFields(&self.0.fields))?;
        map.end()
    }
}

struct EncodedFields<'a>(&'a Fields);

impl Serialize for EncodedFields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(&**name, &**value)?;
        }
        map.end()
    }
}

fn encode(record: &Record) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&Encoded(record)).map_err(StoreError::backend)
}

fn decode(bytes: &[u8]) -> Result<Record, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|error| format!("not JSON: {error}"))?;
    let Value::Object(mut object) = value else {
        return Err("not a JSON object".to_owned());
    };
    match object.get("v").and_then(Value::as_u64) {
        Some(FORMAT_VERSION) => {}
        Some(other) => return Err(format!("unsupported format version {other}")),
        None => return Err("no format version `v`".to_owned()),
    }
    let time = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_u64)
            .map(Timestamp::from_millis)
            .ok_or_else(|| format!("`{name}` is missing or not a timestamp"))
    };
    let created_at = time("created_at")?;
    let expires_at = time("expires_at")?;
    // The reaper reads the deadline from the first bytes; a file whose parsed deadline says
    // otherwise (a repeated key, written by something else) is not one of ours.
    if peek_expiry(bytes).is_some_and(|head| head != expires_at) {
        return Err("`expires_at` is given twice with different values".to_owned());
    }
    let Some(Value::Object(encoded)) = object.remove("fields") else {
        return Err("`fields` is missing or not an object".to_owned());
    };
    let mut fields = Fields::new();
    for (name, value) in encoded {
        let Value::String(value) = value else {
            return Err(format!("field `{name}` is not a string"));
        };
        fields.insert(Arc::from(name), Arc::from(value));
    }
    Ok(Record {
        fields,
        created_at,
        expires_at,
    })
}

/// The deadline from a file's first bytes, if they are `{"v":1,"expires_at":<digits>,`.
fn peek_expiry(head: &[u8]) -> Option<Timestamp> {
    let rest = head.strip_prefix(HEAD_PREFIX)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // The comma proves the number was read whole, not cut off by the end of `head`.
    if digits == 0 || rest.get(digits) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..digits])
        .ok()?
        .parse()
        .ok()
        .map(Timestamp::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;

    fn record(fields: &[(&str, &str)]) -> Record {
        Record {
            fields: fields
                .iter()
                .map(|(k, v)| (Arc::from(*k), Arc::from(*v)))
                .collect(),
            created_at: Timestamp::from_millis(1_767_224_700_000),
            expires_at: Timestamp::from_millis(1_767_225_600_000),
        }
    }

    #[test]
    fn encoding_is_versioned_json_with_the_deadline_first() {
        let bytes = encode(&record(&[("views", "3"), ("user", "{\"name\": \"ada\"}")])).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"expires_at":1767225600000,"created_at":1767224700000,"fields":{"user":"{\"name\": \"ada\"}","views":"3"}}"#
        );
        assert_eq!(
            peek_expiry(&bytes),
            Some(Timestamp::from_millis(1_767_225_600_000))
        );
    }

    #[test]
    fn values_round_trip_byte_for_byte() {
        let written = record(&[
            ("spaced", "[ 1,\t2 ]"),
            ("nul", "\"\u{0}\""),
            ("名前", "\"🧠\\\"\""),
        ]);
        assert_eq!(decode(&encode(&written).unwrap()).unwrap(), written);
    }

    #[test]
    fn malformed_files_are_reported_not_panicked_on() {
        for bad in [
            &b""[..],
            b"\0\0\0",
            b"{\"v\":1,\"expires_at\":1,",
            b"[1,2]",
            b"{\"v\":2,\"expires_at\":1,\"created_at\":1,\"fields\":{}}",
            b"{\"expires_at\":1,\"created_at\":1,\"fields\":{}}",
            b"{\"v\":1,\"expires_at\":-1,\"created_at\":1,\"fields\":{}}",
            b"{\"v\":1,\"expires_at\":1,\"created_at\":1,\"fields\":[]}",
            b"{\"v\":1,\"expires_at\":1,\"created_at\":1,\"fields\":{\"a\":1}}",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn peek_needs_the_whole_number() {
        assert_eq!(peek_expiry(b"{\"v\":1,\"expires_at\":123"), None);
        assert_eq!(peek_expiry(b"{\"v\":1,\"expires_at\":,"), None);
        assert_eq!(peek_expiry(b"{\"v\":2,\"expires_at\":5,"), None);
        assert_eq!(
            peek_expiry(b"{\"v\":1,\"expires_at\":5,"),
            Some(Timestamp::from_millis(5))
        );
        assert_eq!(
            peek_expiry(b"{\"v\":1,\"expires_at\":99999999999999999999999,"),
            None
        );
    }

    #[test]
    fn only_our_file_names_are_recognised() {
        let key = SessionId::generate().unwrap().store_key();
        assert_eq!(data_file_key(&format!("{key}.json")), Some(key));
        assert_eq!(temp_file_key(&format!(".{key}.12.3.tmp")), Some(key));
        for stray in [
            format!("{key}.json.bak"),
            format!("{key}"),
            format!(".{key}.json"),
            format!(".{key}.tmp"),
            format!(".{key}.x.3.tmp"),
            format!("{}.json", key.as_str().to_uppercase()),
            "notes.txt".to_owned(),
            ".locks".to_owned(),
        ] {
            assert_eq!(data_file_key(&stray), None, "{stray}");
            assert_eq!(temp_file_key(&stray), None, "{stray}");
        }
    }

    #[test]
    fn stripes_cover_every_index_once() {
        let mut seen = vec![false; STRIPES];
        for byte in 0..=255u8 {
            let hex = format!("{byte:02x}{}", "0".repeat(62));
            seen[stripe_of(&StoreKey::parse(&hex).unwrap())] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn jitter_stays_between_half_and_one_and_a_half() {
        let base = Duration::from_secs(100);
        for _ in 0..1000 {
            let d = jittered(base);
            assert!(d >= base / 2 && d < base * 3 / 2, "{d:?}");
        }
    }
}
