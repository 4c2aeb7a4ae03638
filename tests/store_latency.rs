//! Latency of `create`, `load` and a one-field merge `save` on each server-backed store, one
//! call at a time from one client. Not a pass/fail test: run it by hand and read the table,
//!
//! ```sh
//! cargo test --test store_latency -- --ignored --nocapture
//! ```
//!
//! `STORE_LATENCY_CALLS` sets the calls per operation (default 500). The numbers include the
//! client's own work, so compare stores within one run and one build profile.
//!
//! `one_user_with_1000_sessions_lists_in_one_call_per_store` times what listing a user's
//! sessions costs the store: the members of one index entry holding 1 000 sessions, then
//! `load_many` of those 1 000 sessions (`STORE_INDEX_MEMBERS` changes the count).

#![cfg(all(
    feature = "file",
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "memcached",
    feature = "mongodb"
))]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stores;
use session_core::conformance::{key, record};
use session_core::store::IndexEntry;
use session_core::{SaveMode, Store, StoreKey};

/// Median and 99th percentile of `samples`, in microseconds.
fn percentiles(samples: &mut [Duration]) -> (u128, u128) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_micros();
    (at(0.5), at(0.99))
}

/// Times `calls` creates, then loads, then merges of one field, on fresh keys.
async fn measure(store: &dyn Store, calls: usize) -> [(u128, u128); 3] {
    let session = record(
        &[
            ("views", "12"),
            ("user", "\"ada\""),
            ("cart", "[\"tea\",\"milk\",\"bread\"]"),
        ],
        Duration::from_secs(600),
    );
    let change = record(&[("views", "13")], Duration::from_secs(600));
    let keys: Vec<StoreKey> = (0..calls).map(|_| key()).collect();
    let (mut creates, mut loads, mut merges) = (Vec::new(), Vec::new(), Vec::new());
    for key in &keys {
        let started = Instant::now();
        assert!(store.create(key, &session).await.unwrap());
        creates.push(started.elapsed());
    }
    for key in &keys {
        let started = Instant::now();
        assert!(store.load(key).await.unwrap().is_some());
        loads.push(started.elapsed());
    }
    for key in &keys {
        let started = Instant::now();
        assert!(store.save(key, &change, SaveMode::Merge).await.unwrap());
        merges.push(started.elapsed());
    }
    for key in &keys {
        store.delete(key).await.unwrap();
    }
    [
        percentiles(&mut creates),
        percentiles(&mut loads),
        percentiles(&mut merges),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn create_load_and_merge_latency_per_store() {
    let calls: usize = std::env::var("STORE_LATENCY_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let candidates: [(&str, Option<Arc<dyn Store>>); 5] = [
        ("SQLite (file)", stores::sqlite().await),
        ("PostgreSQL", stores::postgres().await),
        ("MySQL / MariaDB", stores::mysql().await),
        ("Redis", stores::redis().await),
        ("MongoDB", stores::mongodb().await),
    ];
    println!("{calls} calls per operation, one at a time; µs, p50 / p99");
    println!("| store | create | load | merge (1 field) |");
    println!("|---|--:|--:|--:|");
    for (name, store) in candidates {
        let Some(store) = store else { continue };
        // Warm up connections and statement caches.
        measure(&*store, 20).await;
        let [create, load, merge] = measure(&*store, calls).await;
        println!(
            "| {name} | {} / {} | {} / {} | {} / {} |",
            create.0, create.1, load.0, load.1, merge.0, merge.1
        );
    }
}

/// Fills one index entry with `count` live sessions, then times listing its members and
/// loading them: the best and the median of `runs` tries, in ms, each as
/// (members, load_many, both); and, once, the same loads one `load` at a time, in ms.
async fn measure_listing(store: &dyn Store, count: usize, runs: usize) -> ([(f64, f64); 3], f64) {
    let entry = IndexEntry::new("user", &format!("\"{}\"", key()));
    let session = record(
        &[("user", entry.value()), ("views", "1")],
        Duration::from_secs(600),
    );
    let keys: Vec<StoreKey> = (0..count).map(|_| key()).collect();
    for key in &keys {
        store.index_add(&entry, key, None).await.unwrap();
        assert!(store.create(key, &session).await.unwrap());
    }
    let (mut listing, mut loading, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let started = Instant::now();
        let members = store.index_members(&entry).await.unwrap();
        let listed = started.elapsed();
        let member_keys: Vec<StoreKey> = members.iter().map(|m| m.key).collect();
        let loaded_at = Instant::now();
        let records = store.load_many(&member_keys).await.unwrap();
        let loaded = loaded_at.elapsed();
        assert_eq!(members.len(), count);
        assert!(records.iter().all(Option::is_some));
        listing.push(listed);
        loading.push(loaded);
        both.push(listed + loaded);
    }
    let started = Instant::now();
    for key in &keys {
        assert!(store.load(key).await.unwrap().is_some());
    }
    let one_by_one = started.elapsed().as_secs_f64() * 1000.0;
    for key in &keys {
        store.index_remove(&entry, key).await.unwrap();
        store.delete(key).await.unwrap();
    }
    let ms = |samples: &mut Vec<Duration>| {
        samples.sort_unstable();
        let at = |d: Duration| d.as_secs_f64() * 1000.0;
        (at(samples[0]), at(samples[samples.len() / 2]))
    };
    (
        [ms(&mut listing), ms(&mut loading), ms(&mut both)],
        one_by_one,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn one_user_with_1000_sessions_lists_in_one_call_per_store() {
    let count: usize = std::env::var("STORE_INDEX_MEMBERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let candidates: [(&str, Option<Arc<dyn Store>>); 10] = [
        ("memory", stores::memory().await),
        ("file", stores::file().await),
        ("SQLite (file)", stores::sqlite().await),
        ("PostgreSQL", stores::postgres().await),
        ("MySQL / MariaDB", stores::mysql().await),
        ("Redis", stores::redis().await),
        ("Redis Cluster", stores::redis_cluster().await),
        ("memcached", stores::memcached().await),
        ("MongoDB", stores::mongodb().await),
        ("cache over Redis", stores::cached_redis().await),
    ];
    println!("one entry of {count} sessions, 5 runs; ms, best / median");
    println!("| store | index_members | load_many | list total | {count} loads one by one |");
    println!("|---|--:|--:|--:|--:|");
    for (name, store) in candidates {
        let Some(store) = store else { continue };
        let ([members, loads, both], one_by_one) = measure_listing(&*store, count, 5).await;
        println!(
            "| {name} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {one_by_one:.1} |",
            members.0, members.1, loads.0, loads.1, both.0, both.1
        );
    }
}
