//! Sessions on the MongoDB store survive a restart of the app: a new store connected to the
//! same database and a new app with the same key carry on where the old ones stopped.

#![cfg(feature = "mongodb")]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::{restart, Client};
use mongodb::bson::doc;
use session_core::store::MongoStore;
use typed_sessions::counter;

fn url() -> String {
    std::env::var("SESSION_TEST_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/test".to_owned())
}

/// A collection of its own for each test, so its documents can be counted.
fn collection_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("restart_test_{}_{n}", std::process::id())
}

/// The counter app on a freshly connected `MongoStore`, as a restarted process builds it.
async fn start(collection: &str) -> Option<(Client, MongoStore)> {
    let url = url();
    let store = common::server_or_skip(
        &format!("MongoDB at {url}"),
        MongoStore::connect(&url).await,
    )?
    .with_collection(collection);
    let client = Client::new(counter::app(Arc::new(store.clone()), common::key()));
    Some((client, store))
}

async fn documents(store: &MongoStore) -> u64 {
    store.collection().count_documents(doc! {}).await.unwrap()
}

#[tokio::test]
async fn visit_count_and_cart_continue_after_a_restart() {
    let collection = collection_name();
    let Some((mut before, store)) = start(&collection).await else {
        return;
    };
    let cookie = restart::visit_three_times_and_add_tea(&mut before).await;
    assert_eq!(documents(&store).await, 1);
    // Shut down: the app and every handle on the store (and its connection pool) go.
    drop(before);
    drop(store);

    let (mut after, store) = start(&collection).await.unwrap();
    restart::assert_visits_carry_on(&mut after, cookie).await;
    assert_eq!(
        documents(&store).await,
        1,
        "the same session document carried on"
    );
    store.collection().drop().await.unwrap();
}

#[tokio::test]
async fn a_logged_out_session_stays_gone_after_a_restart() {
    let url = url();
    // Opened the way the example opens it from SESSION_STORE.
    let opened = counter::store_from_spec(&url).await;
    let Some(store) = common::server_or_skip(&format!("MongoDB at {url}"), opened) else {
        return;
    };
    let mut before = Client::new(counter::app(store, common::key()));
    let logged_in = restart::log_in_and_out(&mut before).await;
    drop(before);

    // Replaying the old cookie after the restart finds nothing.
    let opened = counter::store_from_spec(&url).await.unwrap();
    let mut after = Client::new(counter::app(opened, common::key()));
    restart::assert_logged_out(&mut after, logged_in).await;
}
