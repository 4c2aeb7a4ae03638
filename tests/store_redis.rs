//! The store conformance suite, and what is particular to Redis, against one Redis server
//! (`SESSION_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`).

#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use session_core::conformance::{key, record};
use session_core::store::{RedisStore, Store};
use session_core::{SaveMode, StoreError, Timestamp};

fn url() -> String {
    std::env::var("SESSION_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn store() -> Option<RedisStore> {
    let url = url();
    common::server_or_skip(&format!("Redis at {url}"), RedisStore::connect(&url).await)
}

/// A plain connection, to look at what the store wrote.
async fn raw() -> MultiplexedConnection {
    redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn query<T: redis::FromRedisValue>(
    connection: &mut MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query_async(connection).await.unwrap()
}

const MINUTE: Duration = Duration::from_secs(60);

session_core::store_conformance_tests!(store());

#[tokio::test]
async fn keys_carry_the_configured_prefix() {
    let Some(store) = store().await else { return };
    let prefix = format!("typed-sessions-test:{}:", std::process::id());
    let store = store.with_prefix(prefix.clone());
    let key = key();
    store
        .create(&key, &record(&[("views", "1")], MINUTE))
        .await
        .unwrap();

    let mut raw = raw().await;
    let prefixed = format!("{prefix}{key}");
    assert_eq!(store.redis_key(&key), prefixed);
    assert_eq!(query::<i64>(&mut raw, &["EXISTS", &prefixed]).await, 1);
    assert_eq!(
        query::<i64>(&mut raw, &["EXISTS", &format!("session:{key}")]).await,
        0
    );
    assert_eq!(
        query::<String>(&mut raw, &["TYPE", &prefixed]).await,
        "hash"
    );
    store.delete(&key).await.unwrap();
    assert_eq!(query::<i64>(&mut raw, &["EXISTS", &prefixed]).await, 0);
}

#[tokio::test]
async fn a_merge_writes_only_the_changed_fields() {
    let Some(store) = store().await else { return };
    let key = key();
    let redis_key = store.redis_key(&key);
    store
        .create(&key, &record(&[("views", "1"), ("cart", "[]")], MINUTE))
        .await
        .unwrap();
    // Another writer changes `cart` behind the store's back ...
    let mut raw = raw().await;
    let _: i64 = query(&mut raw, &["HSET", &redis_key, "cart", "[\"raw\"]"]).await;
    // ... and a merge of `views` alone leaves that change in place.
    store
        .save(&key, &record(&[("views", "2")], MINUTE), SaveMode::Merge)
        .await
        .unwrap();
    let stored: Vec<(String, String)> = query(&mut raw, &["HGETALL", &redis_key]).await;
    let field = |name: &str| {
        stored
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(field("views"), Some("2"));
    assert_eq!(field("cart"), Some("[\"raw\"]"));
    assert!(field(RedisStore::CREATED_FIELD).is_some());
    assert!(field(RedisStore::EXPIRES_FIELD).is_some());
    assert_eq!(stored.len(), 4, "{stored:?}");
}

#[tokio::test]
async fn every_write_sets_the_native_expiry() {
    let Some(store) = store().await else { return };
    let key = key();
    let redis_key = store.redis_key(&key);
    let mut raw = raw().await;
    store
        .create(&key, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap();
    let ttl: i64 = query(&mut raw, &["PTTL", &redis_key]).await;
    assert!((58_000..=60_000).contains(&ttl), "PTTL after create: {ttl}");

    store
        .save(
            &key,
            &record(&[("a", "2")], Duration::from_secs(30)),
            SaveMode::Merge,
        )
        .await
        .unwrap();
    let ttl: i64 = query(&mut raw, &["PTTL", &redis_key]).await;
    assert!((28_000..=30_000).contains(&ttl), "PTTL after merge: {ttl}");

    store
        .touch(
            &key,
            Timestamp::now().saturating_add(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    let ttl: i64 = query(&mut raw, &["PTTL", &redis_key]).await;
    assert!(
        (118_000..=120_000).contains(&ttl),
        "PTTL after touch: {ttl}"
    );
    let expires: String = query(&mut raw, &["HGET", &redis_key, RedisStore::EXPIRES_FIELD]).await;
    let expires: u64 = expires.parse().unwrap();
    let deadline = Timestamp::now().as_millis() + 120_000;
    assert!(
        expires.abs_diff(deadline) < 2_000,
        "stored deadline {expires}, expected about {deadline}"
    );
}

#[tokio::test]
async fn touch_never_creates_a_record() {
    let Some(store) = store().await else { return };
    let mut raw = raw().await;
    let later = Timestamp::now().saturating_add(MINUTE);

    let absent = key();
    store.touch(&absent, later).await.unwrap();
    assert_eq!(
        query::<i64>(&mut raw, &["EXISTS", &store.redis_key(&absent)]).await,
        0
    );

    // A touch to a passed deadline ends the record instead of leaving it without expiry.
    let present = key();
    store
        .create(&present, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap();
    let past = Timestamp::from_millis(Timestamp::now().as_millis() - 1_000);
    store.touch(&present, past).await.unwrap();
    assert_eq!(
        query::<i64>(&mut raw, &["EXISTS", &store.redis_key(&present)]).await,
        0
    );
    assert!(store.load(&present).await.unwrap().is_none());
}

#[tokio::test]
async fn metadata_field_names_cannot_be_written() {
    let Some(store) = store().await else { return };
    let key = key();
    let hostile = record(&[(RedisStore::EXPIRES_FIELD, "0")], MINUTE);
    let error = store.create(&key, &hostile).await.unwrap_err();
    assert!(matches!(error, StoreError::Rejected(_)), "{error:?}");
    assert!(store.load(&key).await.unwrap().is_none());
}

#[tokio::test]
async fn a_hash_without_metadata_is_reported_corrupt() {
    let Some(store) = store().await else { return };
    let key = key();
    let redis_key = store.redis_key(&key);
    let mut raw = raw().await;
    let _: i64 = query(&mut raw, &["HSET", &redis_key, "views", "3"]).await;
    let _: i64 = query(&mut raw, &["PEXPIRE", &redis_key, "60000"]).await;
    let error = store.load(&key).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    store.delete(&key).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_fails_fast() {
    let started = Instant::now();
    // Nothing listens on port 1.
    let result = RedisStore::connect("redis://127.0.0.1:1").await;
    assert!(result.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}
