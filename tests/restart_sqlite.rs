//! Sessions on the SQLite store survive a restart of the app: a new store on the same
//! database file and a new app with the same key carry on where the old ones stopped.

#![cfg(feature = "sqlite")]

mod common;

use std::sync::Arc;

use common::{restart, Client};
use session_core::store::sqlx;
use session_core::store::SqliteStore;
use typed_sessions::counter;

/// The `sqlite:` URL of a database file in `dir`.
fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite:{}", dir.path().join("sessions.db").display())
}

/// The counter app on a fresh `SqliteStore` opened on `url`, as a restarted process builds
/// it, and a handle on the store to shut it down with.
async fn start(url: &str) -> (Client, SqliteStore) {
    let store = SqliteStore::connect(url).await.unwrap();
    let client = Client::new(counter::app(Arc::new(store.clone()), common::key()));
    (client, store)
}

async fn rows(store: &SqliteStore) -> i64 {
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM sessions")
        .fetch_one(store.pool())
        .await
        .unwrap();
    count
}

#[tokio::test]
async fn visit_count_and_cart_continue_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir);

    let (mut before, store) = start(&url).await;
    let cookie = restart::visit_three_times_and_add_tea(&mut before).await;
    assert_eq!(rows(&store).await, 1);
    // Shut down: the app goes, then the pool is closed and the store dropped.
    drop(before);
    store.close().await;
    assert!(store.pool().is_closed());
    drop(store);

    let (mut after, store) = start(&url).await;
    restart::assert_visits_carry_on(&mut after, cookie).await;
    assert_eq!(rows(&store).await, 1, "the same session row carried on");
}

#[tokio::test]
async fn a_logged_out_session_stays_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir);

    // Opened the way the example opens it from SESSION_STORE.
    let store = counter::store_from_spec(&url).await.unwrap();
    let mut before = Client::new(counter::app(store, common::key()));
    let logged_in = restart::log_in_and_out(&mut before).await;
    // Dropping the client drops the app, its layer and the only handle on the store.
    drop(before);

    // Replaying the old cookie after the restart finds nothing.
    let (mut after, store) = start(&url).await;
    assert_eq!(
        rows(&store).await,
        1,
        "logout deleted the row; only the \"Signed out\" flash session is left"
    );
    restart::assert_logged_out(&mut after, logged_in).await;
}
