//! The store conformance suite and the SQL store checks (`common::sql`) against the
//! PostgreSQL store: the table, expiry before the purge, corrupt rows, several instances on one
//! database, and errors instead of panics when the server is not there.
//!
//! The server is `SESSION_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Without one the tests print why and pass, unless `SESSIONS_REQUIRE_SERVERS=1`.

#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use async_trait::async_trait;
use common::sql::SqlTestStore;
use session_core::store::sqlx::{self, PgPool};
use session_core::store::{IndexEntry, PostgresStore};
use session_core::{StoreError, StoreKey, Timestamp};
use tokio::task::JoinHandle;

fn url() -> String {
    std::env::var("SESSION_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A store on the test server's default table, or `None` (skip) without a server.
async fn store() -> Option<PostgresStore> {
    common::server_or_skip("PostgreSQL", PostgresStore::connect(&url()).await)
}

/// A store made with `from_pool` on table `pg_{name}`, dropped first so each run starts
/// without it.
async fn store_on(name: &str) -> Option<PostgresStore> {
    let pool = store().await?.pool().clone();
    let store = PostgresStore::from_pool(pool)
        .with_table_name(&format!("pg_{name}"))
        .unwrap();
    store.drop_table().await;
    Some(store)
}

// Includes `a_holder_that_stalls_past_its_lease_loses_the_lock`: the lock is a lease row.
session_core::store_conformance_tests!(store());

sql_store_tests! {
    store: store(),
    fresh_table: store_on,
    server: PostgresStore {
        refused: "postgres://postgres@127.0.0.1:1/test",
        malformed: "postgres://[not-a-host",
    },
}

/// Whether `relation` (a table or an index) exists.
async fn relation_exists(pool: &PgPool, relation: &str) -> bool {
    let (found,): (Option<String>,) = sqlx::query_as("SELECT to_regclass($1)::text")
        .bind(format!("\"{relation}\""))
        .fetch_one(pool)
        .await
        .unwrap();
    found.is_some()
}

#[async_trait]
impl SqlTestStore for PostgresStore {
    const DATA_IS_ANY_TEXT: bool = false;

    async fn another_instance(&self) -> Self {
        let other = PostgresStore::connect(&url()).await.unwrap();
        other.with_table_name(self.table_name()).unwrap()
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        PostgresStore::migrate(self).await
    }

    fn spawn_purge_task(&self, interval: Duration) -> JoinHandle<()> {
        PostgresStore::spawn_purge_task(self, interval)
    }

    async fn rows(&self) -> i64 {
        let statement = format!("SELECT count(*) FROM \"{}\"", self.table_name());
        let (count,): (i64,) = sqlx::query_as(&statement)
            .fetch_one(self.pool())
            .await
            .unwrap();
        count
    }

    async fn table_exists(&self) -> bool {
        relation_exists(self.pool(), self.table_name()).await
    }

    async fn index_exists(&self) -> bool {
        let index = format!("{}_expires_at_idx", self.table_name());
        relation_exists(self.pool(), &index).await
    }

    async fn insert_raw(&self, key: &StoreKey, data: &str) {
        let expires = Timestamp::now().as_millis() as i64 + 60_000;
        sqlx::query(&format!(
            "INSERT INTO \"{}\" (\"key\", data, created_at, expires_at) VALUES ($1, $2::jsonb, 0, $3)",
            self.table_name()
        ))
        .bind(key.as_str())
        .bind(data)
        .bind(expires)
        .execute(self.pool())
        .await
        .unwrap();
    }

    async fn raw_field(&self, key: &StoreKey, name: &str) -> String {
        let statement = format!(
            "SELECT data->>$2 FROM \"{}\" WHERE \"key\" = $1",
            self.table_name()
        );
        let (value,): (String,) = sqlx::query_as(&statement)
            .bind(key.as_str())
            .bind(name)
            .fetch_one(self.pool())
            .await
            .unwrap();
        value
    }

    async fn set_index_added(&self, entry: &IndexEntry, key: &StoreKey, added: i64) {
        let statement = format!(
            "UPDATE \"{}_index\" SET added_at = $1 WHERE entry = $2 AND session_key = $3",
            self.table_name()
        );
        let done = sqlx::query(&statement)
            .bind(added)
            .bind(entry.digest())
            .bind(key.as_str())
            .execute(self.pool())
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
    }

    async fn drop_table(&self) {
        for table in [
            self.table_name().to_owned(),
            format!("{}_index", self.table_name()),
        ] {
            let statement = format!("DROP TABLE IF EXISTS \"{table}\"");
            sqlx::query(&statement).execute(self.pool()).await.unwrap();
        }
    }
}

/// With a pool of 3 connections, 8 concurrent locked requests on 8 sessions, each holding its
/// lock for 400 ms, all finish: a lock holds no connection between its statements. (With a
/// lock that kept a connection for the whole request, each request needed a second one for
/// its load, and the requests deadlocked on the pool until the store timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_requests_beyond_the_pool_size_all_finish() {
    use common::cart::{cart_app, session_with_one_item};
    use std::sync::Arc;

    let Some(shared) = store().await else { return };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&url())
        .await
        .unwrap();
    let _ = shared;
    let store = PostgresStore::from_pool(pool);
    store.migrate().await.unwrap();
    let app = cart_app(Arc::new(store), Some(Duration::from_secs(5)));
    let mut cookies = Vec::new();
    for _ in 0..8 {
        cookies.push(session_with_one_item(&app).await);
    }
    let started = std::time::Instant::now();
    let tasks: Vec<_> = cookies
        .iter()
        .map(|cookie| {
            let app = app.clone();
            let cookie = cookie.clone();
            tokio::spawn(
                async move { common::send(&app, common::get("/hold", Some(&cookie))).await },
            )
        })
        .collect();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // Each request sleeps 400 ms holding its lock; they overlap instead of queueing on
    // the pool (which would take 8 × 400 ms or fail at the 3 s acquire timeout).
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "took {:?}",
        started.elapsed()
    );
}
