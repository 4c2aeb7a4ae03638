//! The store conformance suite against the MySQL/MariaDB store, and what is particular to it:
//! the table, collision checks without `ON DUPLICATE KEY UPDATE` row counts, expiry before
//! the purge, corrupt rows, several instances on one database, and errors instead of panics
//! when the server is not there.
//!
//! The server is `SESSION_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`).
//! Without one the tests print why and pass, unless `SESSIONS_REQUIRE_SERVERS=1`.

mod common;

use std::time::{Duration, Instant};

use session_core::conformance::{key, record};
use session_core::store::sqlx::mysql::MySqlPoolOptions;
use session_core::store::sqlx::{self, MySqlPool};
use session_core::store::{MySqlStore, Store};
use session_core::{Record, SaveMode, StoreError, StoreKey, Timestamp};

const MINUTE: Duration = Duration::from_secs(60);

fn url() -> String {
    std::env::var("SESSION_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A store on the test server's default table, or `None` (skip) without a server.
async fn store() -> Option<MySqlStore> {
    common::server_or_skip("MySQL/MariaDB", MySqlStore::connect(&url()).await)
}

/// A store on a table of the test's own, dropped first so each run starts empty.
async fn store_on(table: &str) -> Option<MySqlStore> {
    let store = store().await?;
    sqlx::query(&format!("DROP TABLE IF EXISTS `{table}`"))
        .execute(store.pool())
        .await
        .unwrap();
    Some(store.with_table_name(table).unwrap())
}

async fn drop_table(store: &MySqlStore) {
    let table = store.table_name();
    sqlx::query(&format!("DROP TABLE IF EXISTS `{table}`"))
        .execute(store.pool())
        .await
        .unwrap();
}

session_core::store_conformance_tests!(store());

/// A record that expired a second ago.
fn expired(fields: &[(&str, &str)]) -> Record {
    let mut record = record(fields, MINUTE);
    let now = Timestamp::now();
    record.created_at = Timestamp::from_millis(now.as_millis() - 60_000);
    record.expires_at = Timestamp::from_millis(now.as_millis() - 1_000);
    record
}

async fn rows(pool: &MySqlPool, table: &str) -> i64 {
    let (count,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM `{table}`"))
        .fetch_one(pool)
        .await
        .unwrap();
    count
}

async fn table_exists(pool: &MySqlPool, table: &str) -> bool {
    let (found,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name = ?",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .unwrap();
    found == 1
}

async fn index_exists(pool: &MySqlPool, table: &str, index: &str) -> bool {
    let (found,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.statistics \
         WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ?",
    )
    .bind(table)
    .bind(index)
    .fetch_one(pool)
    .await
    .unwrap();
    found > 0
}

async fn insert_raw(store: &MySqlStore, key: &StoreKey, data: &str) {
    let expires = Timestamp::now().as_millis() as i64 + 60_000;
    sqlx::query(&format!(
        "INSERT INTO `{}` (`key`, data, created_at, expires_at) VALUES (?, ?, 0, ?)",
        store.table_name()
    ))
    .bind(key.as_str())
    .bind(data)
    .bind(expires)
    .execute(store.pool())
    .await
    .unwrap();
}

/// Polls `futures` concurrently in this task (they may borrow the store) and returns their
/// outputs in order.
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test]
async fn table_name_is_configurable_and_the_table_is_created_on_first_use() {
    let Some(setup) = store_on("my_first_use_sessions").await else {
        return;
    };
    let pool = MySqlPool::connect(&url()).await.unwrap();
    let store = MySqlStore::from_pool(pool.clone())
        .with_table_name("my_first_use_sessions")
        .unwrap();
    assert!(
        !table_exists(&pool, "my_first_use_sessions").await,
        "from_pool does no I/O"
    );

    let key = key();
    assert!(store
        .create(&key, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap());
    assert!(table_exists(&pool, "my_first_use_sessions").await);
    assert!(
        index_exists(
            &pool,
            "my_first_use_sessions",
            "my_first_use_sessions_expires_at_idx"
        )
        .await
    );
    assert_eq!(rows(&pool, "my_first_use_sessions").await, 1);
    assert!(store.load(&key).await.unwrap().is_some());
    drop_table(&setup).await;
}

#[tokio::test]
async fn instances_starting_together_create_the_table_once() {
    let Some(setup) = store_on("my_race_sessions").await else {
        return;
    };
    let stores: Vec<MySqlStore> = (0..6)
        .map(|_| {
            MySqlStore::from_pool(setup.pool().clone())
                .with_table_name("my_race_sessions")
                .unwrap()
        })
        .collect();
    let results = join_all(stores.iter().map(|s| s.migrate())).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    drop_table(&setup).await;
}

#[tokio::test]
async fn expired_rows_are_invisible_before_the_purge_and_purge_removes_them() {
    let Some(store) = store_on("my_purge_sessions").await else {
        return;
    };
    let dead = key();
    store
        .save(&dead, &expired(&[("a", "1")]), SaveMode::Replace)
        .await
        .unwrap();
    let live = key();
    store
        .create(&live, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap();

    assert_eq!(rows(store.pool(), "my_purge_sessions").await, 2);
    assert!(store.load(&dead).await.unwrap().is_none());
    store
        .touch(&dead, Timestamp::now().saturating_add(MINUTE))
        .await
        .unwrap();
    assert!(
        store.load(&dead).await.unwrap().is_none(),
        "touch does not revive a row"
    );

    assert_eq!(store.purge_expired().await.unwrap(), 1);
    assert_eq!(rows(store.pool(), "my_purge_sessions").await, 1);
    assert!(store.load(&live).await.unwrap().is_some());
    drop_table(&store).await;
}

#[tokio::test]
async fn purge_task_purges_in_the_background() {
    let Some(store) = store_on("my_purge_task_sessions").await else {
        return;
    };
    for _ in 0..3 {
        store
            .save(&key(), &expired(&[("a", "1")]), SaveMode::Replace)
            .await
            .unwrap();
    }
    let _task = store.spawn_purge_task(Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(5);
    while rows(store.pool(), "my_purge_task_sessions").await > 0 {
        assert!(Instant::now() < deadline, "the purge task did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop_table(&store).await;
}

#[tokio::test]
async fn merge_into_an_expired_row_replaces_it_whole() {
    let Some(store) = store().await else { return };
    let key = key();
    store
        .save(
            &key,
            &expired(&[("old", "1"), ("a", "1")]),
            SaveMode::Replace,
        )
        .await
        .unwrap();
    store
        .save(&key, &record(&[("a", "2")], MINUTE), SaveMode::Merge)
        .await
        .unwrap();
    let loaded = store.load(&key).await.unwrap().unwrap();
    let names: Vec<&str> = loaded.fields.keys().map(|k| &**k).collect();
    assert_eq!(
        names,
        ["a"],
        "fields of the expired session do not come back"
    );
}

#[tokio::test]
async fn create_takes_over_an_expired_key_exactly_once() {
    let Some(store) = store().await else { return };
    let key = key();
    store
        .save(&key, &expired(&[("owner", "\"old\"")]), SaveMode::Replace)
        .await
        .unwrap();
    let store = &store;
    let won = join_all((0..8).map(|i| async move {
        let value = format!("\"{i}\"");
        store
            .create(&key, &record(&[("owner", value.as_str())], MINUTE))
            .await
            .unwrap()
    }))
    .await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let owner = store.load(&key).await.unwrap().unwrap().fields["owner"].clone();
    assert_ne!(&*owner, "\"old\"");
}

#[tokio::test]
async fn merged_values_round_trip_byte_exact() {
    let Some(store) = store().await else { return };
    let key = key();
    store
        .create(
            &key,
            &record(
                &[("n", "1.50"), ("keep", "{ \"b\" : 1, \"a\": 2 }")],
                MINUTE,
            ),
        )
        .await
        .unwrap();
    let tricky = record(
        &[
            ("名前", "\"Dhruv 🧠 \\\"quoted\\\" \\\\ back\""),
            ("n", "1e2"),
            ("escaped", "\"\\u00e9\\u0000\""),
        ],
        MINUTE,
    );
    store.save(&key, &tricky, SaveMode::Merge).await.unwrap();
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        &*loaded.fields["名前"],
        "\"Dhruv 🧠 \\\"quoted\\\" \\\\ back\""
    );
    assert_eq!(&*loaded.fields["n"], "1e2");
    assert_eq!(&*loaded.fields["escaped"], "\"\\u00e9\\u0000\"");
    assert_eq!(
        &*loaded.fields["keep"], "{ \"b\" : 1, \"a\": 2 }",
        "JSON did not normalise it"
    );
}

#[tokio::test]
async fn a_row_whose_data_is_not_an_object_is_corrupt() {
    let Some(store) = store().await else { return };
    for data in ["[1,2]", "\"text\"", "42", "null"] {
        let key = key();
        insert_raw(&store, &key, data).await;
        match store.load(&key).await {
            Err(StoreError::Corrupt(message)) => assert!(!message.is_empty()),
            other => panic!("{data:?} loaded as {other:?}"),
        }
        store.delete(&key).await.unwrap();
    }
}

#[tokio::test]
async fn fields_that_are_not_strings_are_skipped_and_kept_in_the_row() {
    let Some(store) = store().await else { return };
    let key = key();
    insert_raw(&store, &key, r#"{"good":"1","bad":2,"worse":{"x":"y"}}"#).await;
    let loaded = store.load(&key).await.unwrap().unwrap();
    let names: Vec<&str> = loaded.fields.keys().map(|k| &**k).collect();
    assert_eq!(names, ["good"]);

    store
        .save(&key, &record(&[("good", "2")], MINUTE), SaveMode::Merge)
        .await
        .unwrap();
    let (bad, good): (String, String) = sqlx::query_as(
        "SELECT CAST(JSON_UNQUOTE(JSON_EXTRACT(data, '$.bad')) AS CHAR), \
         CAST(JSON_UNQUOTE(JSON_EXTRACT(data, '$.good')) AS CHAR) FROM sessions WHERE `key` = ?",
    )
    .bind(key.as_str())
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        (bad.as_str(), good.as_str()),
        ("2", "2"),
        "the undecodable field is not lost"
    );
    store.delete(&key).await.unwrap();
}

#[tokio::test]
async fn two_instances_lose_no_concurrent_merge() {
    let (Some(first), Some(second)) = (store().await, store().await) else {
        return;
    };
    let key = key();
    first
        .create(&key, &record(&[("base", "0")], MINUTE))
        .await
        .unwrap();
    let stores = [&first, &second];
    let results = join_all((0..60).map(|i| {
        let store = stores[i % 2];
        async move {
            let name = format!("f{i}");
            store
                .save(
                    &key,
                    &record(&[(name.as_str(), "1")], MINUTE),
                    SaveMode::Merge,
                )
                .await
        }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(second.load(&key).await.unwrap().unwrap().fields.len(), 61);
}

#[tokio::test]
async fn a_refused_connection_is_a_store_error_not_a_panic() {
    let started = Instant::now();
    let result = MySqlStore::connect("mysql://root@127.0.0.1:1/test").await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // A pool that cannot reach its server times out instead.
    let pool = MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("mysql://root@127.0.0.1:1/test")
        .unwrap();
    let store = MySqlStore::from_pool(pool);
    let key = key();
    assert!(matches!(store.load(&key).await, Err(StoreError::Timeout)));
    assert!(store
        .save(&key, &record(&[], MINUTE), SaveMode::Merge)
        .await
        .is_err());
    assert!(store.purge_expired().await.is_err());
}

#[tokio::test]
async fn a_malformed_url_is_a_store_error() {
    let result = MySqlStore::connect("mysql://[not-a-host").await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
}

#[tokio::test]
async fn create_of_an_identical_record_over_a_live_one_is_a_collision() {
    // With CLIENT_FOUND_ROWS (always on in sqlx), an upsert that leaves a row as it was
    // reports 1 row, like an insert: `create` must not rely on that count.
    let Some(store) = store().await else { return };
    let key = key();
    let same = record(&[("a", "1")], MINUTE);
    assert!(store.create(&key, &same).await.unwrap());
    assert!(!store.create(&key, &same).await.unwrap());
    assert!(!store
        .create(&key, &record(&[("a", "2")], MINUTE))
        .await
        .unwrap());
    assert_eq!(&*store.load(&key).await.unwrap().unwrap().fields["a"], "1");
}
