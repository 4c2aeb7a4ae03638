//! The store conformance suite against the file store, and what is particular to files:
//! atomic writes, corrupt and stray files, the reaper, and writers sharing one folder.

#![cfg(feature = "file")]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use session_core::conformance::{key, record};
use session_core::store::{FileStore, IndexEntry, IndexMember, Store};
use session_core::{Record, SaveMode, StoreError, StoreKey, Timestamp};
use tempfile::TempDir;

const MINUTE: Duration = Duration::from_secs(60);

/// A file store in a temporary folder of its own, removed (after the store) when dropped.
struct TempFileStore {
    store: FileStore,
    _dir: TempDir,
}

impl TempFileStore {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).await.unwrap();
        Self { store, _dir: dir }
    }
}

#[async_trait]
impl Store for TempFileStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.store.load(key).await
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        self.store.create(key, record).await
    }
    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        self.store.save(key, record, mode).await
    }
    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        self.store.touch(key, expires_at).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.store.delete(key).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.store.purge_expired().await
    }
    fn supports_index(&self) -> bool {
        self.store.supports_index()
    }
    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.store.index_add(entry, key, until).await
    }
    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        self.store.index_remove(entry, key).await
    }
    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        self.store.index_members(entry).await
    }
    async fn load_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Record>>, StoreError> {
        self.store.load_many(keys).await
    }
}

session_core::store_conformance_tests!(async { Some(TempFileStore::new().await) });

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// The names of the session files in `dir`.
fn session_files(dir: &Path) -> BTreeSet<String> {
    names_in(dir)
        .into_iter()
        .filter(|name| name.len() == 69 && name.ends_with(".json"))
        .collect()
}

fn session_file(dir: &Path, key: &StoreKey) -> std::path::PathBuf {
    dir.join(format!("{key}.json"))
}

async fn open(dir: &TempDir) -> FileStore {
    FileStore::open(dir.path()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_leave_no_temporary_files_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let keys: Vec<StoreKey> = (0..10).map(|_| key()).collect();
    let mut tasks = Vec::new();
    for key in keys.clone() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            assert!(store
                .create(&key, &record(&[("a", "1")], MINUTE))
                .await
                .unwrap());
            let merges: Vec<_> = (0..10)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let name = format!("f{i}");
                        let rec = record(&[(name.as_str(), "1")], MINUTE);
                        store.save(&key, &rec, SaveMode::Merge).await.unwrap();
                    })
                })
                .collect();
            for merge in merges {
                merge.await.unwrap();
            }
            let later = Timestamp::now().saturating_add(MINUTE * 2);
            store.touch(&key, later).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut expected: BTreeSet<String> = keys.iter().map(|k| format!("{k}.json")).collect();
    expected.insert(".locks".to_owned());
    assert_eq!(names_in(dir.path()), expected);
    for key in &keys {
        assert_eq!(store.load(key).await.unwrap().unwrap().fields.len(), 11);
    }
}

#[tokio::test]
async fn session_file_is_versioned_json_with_values_as_strings() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let key = key();
    let written = record(&[("views", "3"), ("user", "{ \"name\": \"ada\" }")], MINUTE);
    store.create(&key, &written).await.unwrap();
    let text = std::fs::read_to_string(session_file(dir.path(), &key)).unwrap();
    let head = format!(
        "{{\"v\":1,\"expires_at\":{},",
        written.expires_at.as_millis()
    );
    assert!(text.starts_with(&head), "{text}");
    assert!(
        text.ends_with(r#""fields":{"user":"{ \"name\": \"ada\" }","views":"3"}}"#),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(session_file(dir.path(), &key)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}

#[tokio::test]
async fn unreadable_file_is_reported_as_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;

    // A real file cut in half, as a crash without atomic writes would leave it.
    let donor = key();
    store
        .create(&donor, &record(&[("blob", "\"0123456789abcdef\"")], MINUTE))
        .await
        .unwrap();
    let whole = std::fs::read(session_file(dir.path(), &donor)).unwrap();
    let half = whole[..whole.len() / 2].to_vec();

    let contents: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"not json at all".to_vec(),
        vec![0xff, 0xfe, 0x00],
        half,
        br#"{"v":2,"expires_at":99999999999999,"created_at":1,"fields":{}}"#.to_vec(),
        br#"{"v":1,"expires_at":99999999999999,"created_at":1,"fields":{"a":1}}"#.to_vec(),
    ];
    for content in contents {
        let key = key();
        let path = session_file(dir.path(), &key);
        std::fs::write(&path, &content).unwrap();
        let shown = String::from_utf8_lossy(&content).into_owned();

        assert!(
            matches!(store.load(&key).await, Err(StoreError::Corrupt(_))),
            "load of {shown:?}"
        );
        let change = record(&[("b", "2")], MINUTE);
        assert!(
            matches!(
                store.save(&key, &change, SaveMode::Merge).await,
                Err(StoreError::Corrupt(_))
            ),
            "merge into {shown:?}"
        );
        assert!(
            matches!(
                store.touch(&key, Timestamp::now()).await,
                Err(StoreError::Corrupt(_))
            ),
            "touch of {shown:?}"
        );
        assert!(
            matches!(
                store.create(&key, &change).await,
                Err(StoreError::Corrupt(_))
            ),
            "create over {shown:?}"
        );
        // A replacing save must know the record is live (saves never create), so it is
        // refused too.
        assert!(
            matches!(
                store.save(&key, &change, SaveMode::Replace).await,
                Err(StoreError::Corrupt(_))
            ),
            "replace over {shown:?}"
        );
        // Nothing failed wrote over the file: what was stored is kept for inspection.
        assert_eq!(std::fs::read(&path).unwrap(), content);
    }

    let purged = store.purge_expired().await.unwrap();
    assert_eq!(purged, 0);
    let key = key();
    std::fs::write(session_file(dir.path(), &key), b"{").unwrap();
    store.delete(&key).await.unwrap();
    assert!(!session_file(dir.path(), &key).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaper_removes_expired_files_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir)
        .await
        .with_reap_interval(Duration::from_millis(50));
    let live = key();
    store
        .create(&live, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap();
    for _ in 0..5 {
        let short = record(&[("a", "1")], Duration::from_millis(300));
        store.create(&key(), &short).await.unwrap();
    }
    assert_eq!(session_files(dir.path()).len(), 6);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while session_files(dir.path()).len() > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        session_files(dir.path()),
        BTreeSet::from([format!("{live}.json")]),
        "the reaper removes expired files, and only those, without purge_expired being called"
    );
    assert!(store.load(&live).await.unwrap().is_some());
}

#[tokio::test]
async fn reaper_stops_when_the_store_is_dropped() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir)
        .await
        .with_reap_interval(Duration::from_secs(3600));
    let clone = store.clone();
    store.create(&key(), &record(&[], MINUTE)).await.unwrap();
    assert_eq!(
        metrics.num_alive_tasks(),
        before + 1,
        "the first write starts the reaper"
    );
    clone.create(&key(), &record(&[], MINUTE)).await.unwrap();
    assert_eq!(
        metrics.num_alive_tasks(),
        before + 1,
        "one reaper per store"
    );

    drop(store);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        metrics.num_alive_tasks(),
        before + 1,
        "a clone keeps the reaper"
    );
    drop(clone);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while metrics.num_alive_tasks() > before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        before,
        "the reaper stops long before its hour-long wait ends"
    );
}

#[tokio::test]
async fn stray_files_are_ignored_and_only_our_old_temporary_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let live = key();
    store
        .create(&live, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap();
    let expired = key();
    store
        .create(&expired, &record(&[("a", "1")], Duration::from_millis(100)))
        .await
        .unwrap();
    let expired_text = std::fs::read(session_file(dir.path(), &expired)).unwrap();

    let other = key();
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let old_temp = format!(".{other}.1234.5.tmp");
    let fresh_temp = format!(".{other}.1234.6.tmp");
    let strays = [
        "notes.txt".to_owned(),
        "README".to_owned(),
        // Expired contents under names that are not ours: never touched.
        format!("{other}.json.bak"),
        format!("{}.json", other.as_str().to_uppercase()),
        format!("{other}"),
        format!(".{other}.tmp"),
        format!(".{other}.x.1.tmp"),
    ];
    for name in &strays {
        std::fs::write(dir.path().join(name), &expired_text).unwrap();
        set_modified(&dir.path().join(name), an_hour_ago);
    }
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    std::fs::write(dir.path().join(&old_temp), b"half a wri").unwrap();
    set_modified(&dir.path().join(&old_temp), an_hour_ago);
    std::fs::write(dir.path().join(&fresh_temp), b"half a wri").unwrap();

    // Reads look only at `<key>.json`.
    assert!(store.load(&other).await.unwrap().is_none());
    assert!(store.load(&live).await.unwrap().is_some());

    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(store.purge_expired().await.unwrap(), 1);

    let names = names_in(dir.path());
    assert!(
        !names.contains(&format!("{expired}.json")),
        "expired session removed"
    );
    assert!(
        !names.contains(&old_temp),
        "our temporary file from a crash removed"
    );
    assert!(
        names.contains(&fresh_temp),
        "a temporary file that may be in use kept"
    );
    assert!(names.contains("nested"));
    for name in &strays {
        assert_eq!(
            std::fs::read(dir.path().join(name)).unwrap(),
            expired_text,
            "{name}"
        );
    }
    assert!(store.load(&live).await.unwrap().is_some());
}

fn set_modified(path: &Path, time: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_from_two_stores_on_one_folder_have_one_winner() {
    // Two stores on one folder have separate in-process locks, as two processes would: only
    // the file lock keeps their creates apart.
    let dir = tempfile::tempdir().unwrap();
    let stores = [open(&dir).await, open(&dir).await];
    for _ in 0..5 {
        let key = key();
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let store = stores[i % 2].clone();
                tokio::spawn(async move {
                    let rec = record(&[("winner", &i.to_string())], MINUTE);
                    store.create(&key, &rec).await.unwrap().then_some(i)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            winners.extend(task.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        let loaded = stores[1].load(&key).await.unwrap().unwrap();
        assert_eq!(&*loaded.fields["winner"], winners[0].to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_from_two_stores_on_one_folder_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stores = [open(&dir).await, open(&dir).await];
    let key = key();
    stores[0]
        .create(&key, &record(&[("base", "0")], MINUTE))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move {
                let name = format!("f{i}");
                let rec = record(&[(name.as_str(), &i.to_string())], MINUTE);
                store.save(&key, &rec, SaveMode::Merge).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let loaded = stores[0].load(&key).await.unwrap().unwrap();
    assert_eq!(loaded.fields.len(), 101);
}

/// Set in a child process started by `merges_from_processes_sharing_a_folder_lose_nothing`.
const CHILD_DIR: &str = "FILE_STORE_TEST_CHILD_DIR";
const CHILD_KEY: &str = "FILE_STORE_TEST_CHILD_KEY";
const CHILD_NAME: &str = "FILE_STORE_TEST_CHILD_NAME";
const MERGES_PER_PROCESS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_from_processes_sharing_a_folder_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let key = key();
    store
        .create(&key, &record(&[("base", "0")], MINUTE))
        .await
        .unwrap();

    // This test binary, run again, with only `child_process_merges` selected.
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = ["p", "q", "r"]
        .iter()
        .map(|name| {
            Command::new(&exe)
                .args([
                    "child_process_merges",
                    "--exact",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR, dir.path())
                .env(CHILD_KEY, key.as_str())
                .env(CHILD_NAME, name)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // This process writes too, at the same time.
    merge_fields(&store, &key, "here").await;
    for child in children {
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "a child process failed or ran nothing:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(loaded.fields.len(), 1 + 4 * MERGES_PER_PROCESS);
    for name in ["p", "q", "r", "here"] {
        for i in 0..MERGES_PER_PROCESS {
            assert!(
                loaded.fields.contains_key(format!("{name}{i}").as_str()),
                "{name}{i} lost"
            );
        }
    }
}

/// The writer half of `merges_from_processes_sharing_a_folder_lose_nothing`, run only as its
/// child process (with `--ignored`), never as a test of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child half of merges_from_processes_sharing_a_folder_lose_nothing, which runs it"]
async fn child_process_merges() {
    let var =
        |name| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent test"));
    let (dir, key, name) = (var(CHILD_DIR), var(CHILD_KEY), var(CHILD_NAME));
    let store = FileStore::open(dir).await.unwrap();
    merge_fields(&store, &StoreKey::parse(&key).unwrap(), &name).await;
}

/// Saves fields `{prefix}0`..`{prefix}N` into `key`, each in its own concurrent merge.
async fn merge_fields(store: &FileStore, key: &StoreKey, prefix: &str) {
    let tasks: Vec<_> = (0..MERGES_PER_PROCESS)
        .map(|i| {
            let store = store.clone();
            let key = *key;
            let name = format!("{prefix}{i}");
            tokio::spawn(async move {
                let rec = record(&[(name.as_str(), "1")], MINUTE);
                store.save(&key, &rec, SaveMode::Merge).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn open_creates_missing_folders_and_refuses_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let store = FileStore::open(&nested).await.unwrap();
    assert!(nested.is_dir());
    assert_eq!(store.dir(), nested.canonicalize().unwrap());

    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let error = FileStore::open(&file).await.unwrap_err();
    assert!(matches!(error, StoreError::Backend(_)), "{error:?}");
}

/// The folder of the index entry `entry`, as the module docs lay it out.
fn entry_dir(dir: &Path, entry: &IndexEntry) -> std::path::PathBuf {
    dir.join(".index").join(entry.digest())
}

/// The sweep (`purge_expired`, which the reaper runs) removes index members older than the
/// grace whose session is gone or expired, keeps live sessions' members and young ones, and
/// removes the entry's folder once it is empty.
#[tokio::test]
async fn purge_removes_old_index_members_of_ended_sessions_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let entry = IndexEntry::new("user", "42");
    let (old_live, old_gone, old_expired, young_gone) = (key(), key(), key(), key());
    assert!(store.create(&old_live, &record(&[], MINUTE)).await.unwrap());
    assert!(store
        .create(&old_expired, &record(&[], Duration::from_millis(200)))
        .await
        .unwrap());
    for key in [&old_live, &old_gone, &old_expired, &young_gone] {
        store.index_add(&entry, key, None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let two_minutes_ago = (Timestamp::now().as_millis() - 120_000).to_string();
    for key in [&old_live, &old_gone, &old_expired] {
        std::fs::write(
            entry_dir(dir.path(), &entry).join(key.as_str()),
            &two_minutes_ago,
        )
        .unwrap();
    }
    store.purge_expired().await.unwrap();
    let mut left: Vec<StoreKey> = store
        .index_members(&entry)
        .await
        .unwrap()
        .into_iter()
        .map(|member| member.key)
        .collect();
    left.sort();
    let mut expected = vec![old_live, young_gone];
    expected.sort();
    assert_eq!(left, expected);

    for key in [&old_live, &young_gone] {
        store.index_remove(&entry, key).await.unwrap();
    }
    store.purge_expired().await.unwrap();
    assert!(
        !entry_dir(dir.path(), &entry).exists(),
        "an empty entry folder is removed"
    );
    // And made again by the next add.
    store.index_add(&entry, &old_live, None).await.unwrap();
    assert_eq!(store.index_members(&entry).await.unwrap().len(), 1);
}

/// A member file holding something other than a time (written by hand) is still listed, as
/// added when it was last modified, and leaves no temporary files behind.
#[tokio::test]
async fn a_member_file_that_is_not_a_time_is_listed_by_its_modification_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let entry = IndexEntry::new("user", "\"ada\"");
    let member = key();
    store.index_add(&entry, &member, None).await.unwrap();
    let path = entry_dir(dir.path(), &entry).join(member.as_str());
    std::fs::write(&path, "not a time \u{0}").unwrap();
    std::fs::write(entry_dir(dir.path(), &entry).join("stray.txt"), "x").unwrap();
    let listed = store.index_members(&entry).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, member);
    let age = Timestamp::now().saturating_since(listed[0].added);
    assert!(age < Duration::from_secs(10), "added {age:?} ago");
    let names = names_in(&entry_dir(dir.path(), &entry));
    assert!(
        names.iter().all(|name| !name.ends_with(".tmp")),
        "{names:?}"
    );
}
