//! The store conformance suite, and what is particular to a cluster, against a Redis Cluster
//! (`SESSION_TEST_REDIS_CLUSTER`, default
//! `redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003`; `.ci/cluster-and-memcached`
//! starts one).

#![cfg(feature = "redis")]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use session_core::conformance::{key, record};
use session_core::store::{RedisStore, Store};
use session_core::SaveMode;

fn spec() -> String {
    std::env::var("SESSION_TEST_REDIS_CLUSTER").unwrap_or_else(|_| {
        "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".to_owned()
    })
}

/// `redis://HOST:PORT` for each node named in the spec.
fn nodes() -> Vec<String> {
    let spec = spec();
    spec.trim_start_matches("redis+cluster://")
        .split(',')
        .map(|node| format!("redis://{}", node.trim()))
        .collect()
}

async fn store() -> Option<RedisStore> {
    let spec = spec();
    common::server_or_skip(
        &format!("Redis Cluster at {spec}"),
        RedisStore::connect_cluster(&spec).await,
    )
}

/// A plain cluster connection, to look at what the store wrote.
async fn raw() -> ClusterConnection {
    ClusterClient::new(nodes())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

const MINUTE: Duration = Duration::from_secs(60);

session_core::store_conformance_tests!(store());

#[tokio::test]
async fn sessions_spread_over_the_masters_one_key_each() {
    let Some(store) = store().await else { return };
    let prefix = format!("typed-sessions-spread:{}:", std::process::id());
    let store = store.with_prefix(prefix.clone());
    let keys: Vec<_> = (0..30).map(|_| key()).collect();
    for key in &keys {
        store
            .create(key, &record(&[("n", "1")], MINUTE))
            .await
            .unwrap();
    }

    // Ask every master, directly, which of these sessions it holds.
    let mut holders = HashSet::new();
    let mut found = 0;
    for node in nodes() {
        let mut direct = redis::Client::open(node.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut direct)
                .await
                .unwrap();
            if !batch.is_empty() {
                holders.insert(node.clone());
            }
            found += batch.len();
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    assert_eq!(found, keys.len(), "each session is one key on one node");
    assert!(holders.len() >= 2, "30 sessions all on {holders:?}");
    for key in &keys {
        store.delete(key).await.unwrap();
    }
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
    let mut raw = raw().await;
    let _: i64 = redis::cmd("HSET")
        .arg(&redis_key)
        .arg("cart")
        .arg("[\"raw\"]")
        .query_async(&mut raw)
        .await
        .unwrap();
    store
        .save(&key, &record(&[("views", "2")], MINUTE), SaveMode::Merge)
        .await
        .unwrap();
    let stored: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&redis_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    let field = |name: &str| {
        stored
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(field("views"), Some("2"));
    assert_eq!(field("cart"), Some("[\"raw\"]"));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&redis_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((58_000..=60_000).contains(&ttl), "PTTL {ttl}");
}

#[tokio::test]
async fn touch_never_creates_a_record() {
    let Some(store) = store().await else { return };
    let absent = key();
    store
        .touch(
            &absent,
            session_core::Timestamp::now().saturating_add(MINUTE),
        )
        .await
        .unwrap();
    let mut raw = raw().await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(store.redis_key(&absent))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}
