//! PostgreSQL connections killed under traffic: requests fail cleanly while it happens (an
//! error status, never a panic), the pool reconnects by itself, and no visit is lost or
//! counted twice.

#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Client;
use session_core::store::sqlx;
use session_core::store::PostgresStore;
use typed_sessions::counter;

fn url() -> String {
    std::env::var("SESSION_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_replaced_and_no_visit_is_lost() {
    let Some(store) = common::server_or_skip("PostgreSQL", PostgresStore::connect(&url()).await)
    else {
        return;
    };
    let admin = common::server_or_skip("PostgreSQL", sqlx::PgPool::connect(&url()).await).unwrap();
    let app = counter::app(Arc::new(store.clone()), common::key());
    let mut client = Client::new(app);
    assert_eq!(client.get("/").await.body, "You visited 1 times");

    let mut counted = 1u32;
    let mut failures = 0u32;
    let mut last_failure: Option<Instant> = None;
    let mut recovered_after = None;
    for round in 0..200 {
        if round % 40 == 20 {
            // Kill every other connection to the database: the store's pool included.
            let (killed,): (i64,) = sqlx::query_as(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_one(&admin)
            .await
            .unwrap();
            assert!(killed >= 1, "the store's connections were found and killed");
            last_failure = Some(Instant::now());
        }
        let reply = client.get("/").await;
        match reply.status.as_u16() {
            200 => {
                counted += 1;
                assert_eq!(reply.body, format!("You visited {counted} times"));
                if let Some(since) = last_failure.take() {
                    recovered_after = Some(
                        recovered_after
                            .unwrap_or(Duration::ZERO)
                            .max(since.elapsed()),
                    );
                }
            }
            500 => failures += 1,
            other => panic!("unexpected status {other}: {}", reply.body),
        }
    }
    println!(
        "postgres faults: {counted} visits counted, {failures} requests failed, worst recovery {recovered_after:?}"
    );
    assert!(
        counted > 150,
        "the store came back after each kill ({counted} of 201 counted)"
    );
    assert_eq!(client.get("/peek").await.body, format!("views: {counted}"));
}
