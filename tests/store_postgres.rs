//! The store conformance suite against the PostgreSQL store, and what is particular to it:
//! the table, expiry before the purge, corrupt rows, several instances on one database, and
//! errors instead of panics when the server is not there.
//!
//! The server is `SESSION_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Without one the tests print why and pass, unless `SESSIONS_REQUIRE_SERVERS=1`.

mod common;

use std::time::{Duration, Instant};

use session_core::conformance::{key, record};
use session_core::store::sqlx::postgres::PgPoolOptions;
use session_core::store::sqlx::{self, PgPool};
use session_core::store::{PostgresStore, Store};
use session_core::{Record, SaveMode, StoreError, StoreKey, Timestamp};

const MINUTE: Duration = Duration::from_secs(60);

fn url() -> String {
    std::env::var("SESSION_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A store on the test server's default table, or `None` (skip) without a server.
async fn store() -> Option<PostgresStore> {
    common::server_or_skip("PostgreSQL", PostgresStore::connect(&url()).await)
}

/// A store on a table of the test's own, dropped first so each run starts empty.
async fn store_on(table: &str) -> Option<PostgresStore> {
    let store = store().await?;
    sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .execute(store.pool())
        .await
        .unwrap();
    Some(store.with_table_name(table).unwrap())
}

async fn drop_table(store: &PostgresStore) {
    let table = store.table_name();
    sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
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

async fn rows(pool: &PgPool, table: &str) -> i64 {
    let (count,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM \"{table}\""))
        .fetch_one(pool)
        .await
        .unwrap();
    count
}

async fn table_exists(pool: &PgPool, table: &str) -> bool {
    let (found,): (Option<String>,) = sqlx::query_as("SELECT to_regclass($1)::text")
        .bind(format!("\"{table}\""))
        .fetch_one(pool)
        .await
        .unwrap();
    found.is_some()
}

async fn insert_raw(store: &PostgresStore, key: &StoreKey, data: &str) {
    let expires = Timestamp::now().as_millis() as i64 + 60_000;
    sqlx::query(&format!(
        "INSERT INTO \"{}\" (\"key\", data, created_at, expires_at) VALUES ($1, $2::jsonb, 0, $3)",
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
    let Some(setup) = store_on("pg_first_use_sessions").await else {
        return;
    };
    let pool = PgPool::connect(&url()).await.unwrap();
    let store = PostgresStore::from_pool(pool.clone())
        .with_table_name("pg_first_use_sessions")
        .unwrap();
    assert!(
        !table_exists(&pool, "pg_first_use_sessions").await,
        "from_pool does no I/O"
    );

    let key = key();
    assert!(store
        .create(&key, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap());
    assert!(table_exists(&pool, "pg_first_use_sessions").await);
    assert!(table_exists(&pool, "pg_first_use_sessions_expires_at_idx").await);
    assert_eq!(rows(&pool, "pg_first_use_sessions").await, 1);
    assert!(store.load(&key).await.unwrap().is_some());
    drop_table(&setup).await;
}

#[tokio::test]
async fn instances_starting_together_create_the_table_once() {
    let Some(setup) = store_on("pg_race_sessions").await else {
        return;
    };
    let stores: Vec<PostgresStore> = (0..6)
        .map(|_| {
            PostgresStore::from_pool(setup.pool().clone())
                .with_table_name("pg_race_sessions")
                .unwrap()
        })
        .collect();
    let results = join_all(stores.iter().map(|s| s.migrate())).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    drop_table(&setup).await;
}

#[tokio::test]
async fn expired_rows_are_invisible_before_the_purge_and_purge_removes_them() {
    let Some(store) = store_on("pg_purge_sessions").await else {
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

    assert_eq!(rows(store.pool(), "pg_purge_sessions").await, 2);
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
    assert_eq!(rows(store.pool(), "pg_purge_sessions").await, 1);
    assert!(store.load(&live).await.unwrap().is_some());
    drop_table(&store).await;
}

#[tokio::test]
async fn purge_task_purges_in_the_background() {
    let Some(store) = store_on("pg_purge_task_sessions").await else {
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
    while rows(store.pool(), "pg_purge_task_sessions").await > 0 {
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
        "jsonb did not normalise it"
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
    let (bad, good): (String, String) =
        sqlx::query_as("SELECT data->>'bad', data->>'good' FROM sessions WHERE \"key\" = $1")
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
    let result = PostgresStore::connect("postgres://postgres@127.0.0.1:1/test").await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // A pool that cannot reach its server times out instead.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .unwrap();
    let store = PostgresStore::from_pool(pool);
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
    let result = PostgresStore::connect("postgres://[not-a-host").await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
}
