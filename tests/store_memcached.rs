//! The store conformance suite, and what is particular to memcached, against one memcached
//! server (`SESSION_TEST_MEMCACHED_URL`, default `memcache://127.0.0.1:11211`; the suite's
//! 1 MB record needs the server started with `-I 2m` or more, as `.ci/cluster-and-memcached`
//! does).

#![cfg(feature = "memcached")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use session_core::conformance::{key, record};
use session_core::store::{IndexEntry, IndexMember, MemcachedStore, Store};
use session_core::{SaveMode, StoreError, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn url() -> String {
    std::env::var("SESSION_TEST_MEMCACHED_URL")
        .unwrap_or_else(|_| "memcache://127.0.0.1:11211".to_owned())
}

async fn store() -> Option<MemcachedStore> {
    let url = url();
    common::server_or_skip(
        &format!("memcached at {url}"),
        MemcachedStore::connect(&url).await,
    )
}

/// Sends one raw command line and reads the answer up to a line that ends it.
async fn raw(command: &str) -> String {
    let address = url().trim_start_matches("memcache://").to_owned();
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "memcached closed the connection");
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer);
        let last = text
            .trim_end_matches("\r\n")
            .rsplit("\r\n")
            .next()
            .unwrap_or("");
        if text.ends_with("\r\n")
            && (["END", "EN", "STORED", "NOT_STORED"].contains(&last)
                || last.starts_with("HD")
                || last.contains("ERROR"))
        {
            return text.into_owned();
        }
    }
}

/// The item's remaining lifetime in seconds, from the meta command `mg KEY t`.
async fn ttl_seconds(item_key: &str) -> Option<i64> {
    let answer = raw(&format!("mg {item_key} t")).await;
    let flag = answer
        .split_whitespace()
        .find(|word| word.starts_with('t'))?;
    flag[1..].parse().ok()
}

const MINUTE: Duration = Duration::from_secs(60);

session_core::store_conformance_tests!(store());

#[tokio::test]
async fn items_carry_the_prefix_and_a_versioned_encoding() {
    let Some(store) = store().await else { return };
    let prefix = format!("typed-sessions-test:{}:", std::process::id());
    let store = store.with_prefix(prefix.clone());
    let key = key();
    store
        .create(&key, &record(&[("views", "1")], MINUTE))
        .await
        .unwrap();
    assert_eq!(store.memcached_key(&key), format!("{prefix}{key}"));

    let item = raw(&format!("get {prefix}{key}")).await;
    assert!(item.starts_with(&format!("VALUE {prefix}{key} ")), "{item}");
    assert!(item.contains("{\"v\":1,\"created\":"), "{item}");
    assert!(item.contains("\"fields\":{\"views\":\"1\"}"), "{item}");
    assert_eq!(raw(&format!("get session:{key}")).await, "END\r\n");
}

#[tokio::test]
async fn writes_set_the_native_expiry() {
    let Some(store) = store().await else { return };
    let key = key();
    store
        .create(&key, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap();
    let ttl = ttl_seconds(&store.memcached_key(&key)).await.unwrap();
    assert!((59..=62).contains(&ttl), "TTL after create: {ttl}");

    store
        .touch(
            &key,
            Timestamp::now().saturating_add(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    let ttl = ttl_seconds(&store.memcached_key(&key)).await.unwrap();
    assert!((119..=122).contains(&ttl), "TTL after touch: {ttl}");

    // Beyond 30 days memcached wants an absolute time; the lifetime must still come out right.
    let forty_days = Duration::from_secs(40 * 24 * 3600);
    store
        .save(&key, &record(&[("a", "2")], forty_days), SaveMode::Merge)
        .await
        .unwrap();
    let ttl = ttl_seconds(&store.memcached_key(&key)).await.unwrap();
    // memcached turns an absolute time into its own clock, which is a few seconds coarse.
    let expected = forty_days.as_secs() as i64;
    assert!(
        (expected - 2..=expected + 5).contains(&ttl),
        "TTL for 40 days: {ttl}"
    );
}

#[tokio::test]
async fn touch_never_creates_a_record() {
    let Some(store) = store().await else { return };
    let absent = key();
    store
        .touch(&absent, Timestamp::now().saturating_add(MINUTE))
        .await
        .unwrap();
    assert_eq!(
        raw(&format!("get {}", store.memcached_key(&absent))).await,
        "END\r\n"
    );
    assert!(store.load(&absent).await.unwrap().is_none());
}

#[tokio::test]
async fn concurrent_writers_on_two_connections_keep_both_fields() {
    let Some(first) = store().await else { return };
    // A second store has its own connections, like another app instance.
    let Some(second) = store().await else { return };
    let key = key();
    first
        .create(&key, &record(&[("base", "0")], MINUTE))
        .await
        .unwrap();

    let writer = |store: MemcachedStore, name: &'static str| {
        tokio::spawn(async move {
            for i in 0..50 {
                let field = format!("{name}{i}");
                let write = record(&[(field.as_str(), &i.to_string())], MINUTE);
                store.save(&key, &write, SaveMode::Merge).await.unwrap();
            }
        })
    };
    let (a, b) = tokio::join!(writer(first.clone(), "a"), writer(second, "b"));
    a.unwrap();
    b.unwrap();

    let loaded = first.load(&key).await.unwrap().unwrap();
    assert_eq!(
        loaded.fields.len(),
        101,
        "fields kept: {:?}",
        loaded.fields.keys()
    );
    for i in 0..50 {
        assert_eq!(&*loaded.fields[format!("a{i}").as_str()], i.to_string());
        assert_eq!(&*loaded.fields[format!("b{i}").as_str()], i.to_string());
    }
}

#[tokio::test]
async fn a_record_over_the_item_limit_is_rejected_and_nothing_is_written() {
    let Some(store) = store().await else { return };
    let limit = store.item_size_max().unwrap_or(1 << 20);
    let key = key();
    store
        .create(&key, &record(&[("n", "1")], MINUTE))
        .await
        .unwrap();

    let huge = format!("\"{}\"", "x".repeat(limit + 1));
    let too_big = record(&[("blob", huge.as_str())], MINUTE);
    for mode in [SaveMode::Merge, SaveMode::Replace] {
        let error = store.save(&key, &too_big, mode).await.unwrap_err();
        match error {
            StoreError::Rejected(message) => {
                assert!(message.contains("item size limit"), "{message}")
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }
    let error = store.create(&self::key(), &too_big).await.unwrap_err();
    assert!(matches!(error, StoreError::Rejected(_)), "{error:?}");
    let kept = store.load(&key).await.unwrap().unwrap();
    assert_eq!(kept.fields.len(), 1);
    assert_eq!(&*kept.fields["n"], "1");
}

#[tokio::test]
async fn an_unreadable_item_is_reported_corrupt_and_never_overwritten_by_a_merge() {
    let Some(store) = store().await else { return };
    let key = key();
    let item_key = store.memcached_key(&key);
    assert_eq!(
        raw(&format!("set {item_key} 0 60 7\r\ngarbage")).await,
        "STORED\r\n"
    );
    let error = store.load(&key).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");

    let error = store
        .save(&key, &record(&[("views", "1")], MINUTE), SaveMode::Merge)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    assert!(
        raw(&format!("get {item_key}")).await.contains("garbage"),
        "the stored item is kept for inspection"
    );
}

#[tokio::test]
async fn an_unreachable_server_fails_fast() {
    let started = Instant::now();
    // Nothing listens on port 1.
    assert!(MemcachedStore::connect("memcache://127.0.0.1:1")
        .await
        .is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn many_clones_share_one_bounded_pool() {
    let Some(store) = store().await else { return };
    let store = Arc::new(store.with_max_connections(4));
    let key = key();
    store
        .create(&key, &record(&[("base", "0")], MINUTE))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let field = format!("f{i}");
                let write = record(&[(field.as_str(), "1")], MINUTE);
                store.save(&key, &write, SaveMode::Merge).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.load(&key).await.unwrap().unwrap().fields.len(), 41);
}

/// An index entry holding lines that are not members (written by hand) lists the lines that
/// are, and the next add rewrites it as a list that keeps them.
#[tokio::test]
async fn an_index_entry_with_unreadable_lines_keeps_its_members() {
    let Some(store) = store().await else { return };
    let entry = IndexEntry::new("user", &format!("\"{}\"", key()));
    let (member, other) = (key(), key());
    // The entry's item for `member`'s bucket (its first hex digit).
    let item_key = format!(
        "{}index:{}:{}",
        store.prefix(),
        entry.digest(),
        &member.as_str()[..1]
    );
    let value = format!(
        "garbage\nnot-a-key 12\n{member} 1700000000000\n{} soon\n\u{0}\n",
        key()
    );
    let stored = raw(&format!("set {item_key} 0 60 {}\r\n{value}", value.len())).await;
    assert!(stored.contains("STORED"), "{stored}");
    let listed = store.index_members(&entry).await.unwrap();
    assert_eq!(
        listed,
        [IndexMember {
            key: member,
            added: Timestamp::from_millis(1_700_000_000_000),
        }]
    );
    store.index_add(&entry, &other, None).await.unwrap();
    let mut keys: Vec<_> = store
        .index_members(&entry)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    keys.sort();
    let mut expected = vec![member, other];
    expected.sort();
    assert_eq!(keys, expected);
}

/// The entry's item expires at the latest bound of its adds, and never once an add gave none.
#[tokio::test]
async fn an_index_entry_expires_with_its_latest_bound() {
    let Some(store) = store().await else { return };
    let entry = IndexEntry::new("user", &format!("\"{}\"", key()));
    // One member, added three times: its bucket's item is the one whose bound moves.
    let member = key();
    let item_key = format!(
        "{}index:{}:{}",
        store.prefix(),
        entry.digest(),
        &member.as_str()[..1]
    );
    let now = Timestamp::now();
    let later = now.saturating_add(Duration::from_secs(600));
    store.index_add(&entry, &member, Some(later)).await.unwrap();
    store
        .index_add(
            &entry,
            &member,
            Some(now.saturating_add(Duration::from_secs(60))),
        )
        .await
        .unwrap();
    let ttl = ttl_seconds(&item_key).await.expect("the entry is stored");
    assert!((595..=602).contains(&ttl), "expires in {ttl} s");
    store.index_add(&entry, &member, None).await.unwrap();
    assert_eq!(
        ttl_seconds(&item_key).await,
        Some(-1),
        "no bound: no expiry"
    );
}
