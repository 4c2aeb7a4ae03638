//! Sessions on the file store survive a restart of the app: a new store on the same folder
//! and a new app with the same key carry on where the old ones stopped.

#![cfg(feature = "file")]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{restart, Client};
use session_core::store::FileStore;
use typed_sessions::counter;

/// The counter app on a fresh `FileStore` opened on `dir`, as a restarted process builds it.
async fn start(dir: &Path) -> Client {
    let store = FileStore::open(dir).await.unwrap();
    Client::new(counter::app(Arc::new(store), common::key()))
}

fn session_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".json")
        })
        .count()
}

#[tokio::test]
async fn visit_count_and_cart_continue_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();

    let mut before = start(dir.path()).await;
    let cookie = restart::visit_three_times_and_add_tea(&mut before).await;
    // Dropping the client drops the app, its layer and the only handle on the store.
    drop(before);
    assert_eq!(session_files(dir.path()), 1);

    let mut after = start(dir.path()).await;
    restart::assert_visits_carry_on(&mut after, cookie).await;
    assert_eq!(session_files(dir.path()), 1);
}

#[tokio::test]
async fn a_logged_out_session_stays_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();

    let mut before = start(dir.path()).await;
    let logged_in = restart::log_in_and_out(&mut before).await;
    drop(before);
    assert_eq!(
        session_files(dir.path()),
        1,
        "logout removed the session's file; only the \"Signed out\" flash session is left"
    );

    // Replaying the old cookie after the restart finds nothing.
    let mut after = start(dir.path()).await;
    restart::assert_logged_out(&mut after, logged_in).await;
}
