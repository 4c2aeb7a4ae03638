//! Sessions on the file store survive a restart of the app: a new store on the same folder
//! and a new app with the same key carry on where the old ones stopped.

#![cfg(feature = "file")]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::Client;
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
    for n in 1..=3 {
        assert_eq!(before.get("/").await.body, format!("You visited {n} times"));
    }
    assert_eq!(before.post("/cart", "item=tea").await.status, 303);
    let cookie = before.cookie.clone().expect("the app set a session cookie");
    // Dropping the client drops the app, its layer and the only handle on the store.
    drop(before);
    assert_eq!(session_files(dir.path()), 1);

    let mut after = start(dir.path()).await;
    after.cookie = Some(cookie);
    assert_eq!(after.get("/peek").await.body, "views: 3");
    assert_eq!(after.get("/").await.body, "You visited 4 times");
    assert_eq!(after.get("/").await.body, "You visited 5 times");
    assert_eq!(after.get("/cart").await.body, "tea\n");
    assert_eq!(session_files(dir.path()), 1);
}

#[tokio::test]
async fn a_logged_out_session_stays_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();

    let mut before = start(dir.path()).await;
    before.get("/").await;
    assert_eq!(before.post("/login", "name=ada").await.status, 303);
    assert_eq!(before.get("/me").await.body, "user: ada");
    let logged_in = before.cookie.clone().expect("the app set a session cookie");
    assert_eq!(before.post("/logout", "").await.status, 303);
    drop(before);
    assert_eq!(
        session_files(dir.path()),
        0,
        "logout removed the session file"
    );

    // Replaying the old cookie after the restart finds nothing.
    let mut after = start(dir.path()).await;
    after.cookie = Some(logged_in);
    assert_eq!(after.get("/me").await.body, "user: none");
    assert_eq!(after.get("/peek").await.body, "views: 0");
}
