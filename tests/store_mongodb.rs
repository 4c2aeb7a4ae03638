//! The store conformance suite, and what is particular to MongoDB, against one server
//! (`SESSION_TEST_MONGODB_URL`, default `mongodb://127.0.0.1:27017/test`). CI runs it on
//! SecantusDB, which speaks MongoDB's wire protocol; point the variable at a real `mongod`
//! to run it there.

#![cfg(feature = "mongodb")]

mod common;

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, DateTime, Document};
use session_core::conformance::{key, record};
use session_core::store::{MongoStore, Store};
use session_core::{SaveMode, StoreError, Timestamp};

fn url() -> String {
    std::env::var("SESSION_TEST_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/test".to_owned())
}

async fn store() -> Option<MongoStore> {
    let url = url();
    common::server_or_skip(
        &format!("MongoDB at {url}"),
        MongoStore::connect(&url).await,
    )
}

/// The stored document of `key`, as the server holds it.
async fn raw(store: &MongoStore, key: &session_core::StoreKey) -> Option<Document> {
    store
        .collection()
        .find_one(doc! { "_id": key.as_str() })
        .await
        .unwrap()
}

const MINUTE: Duration = Duration::from_secs(60);

session_core::store_conformance_tests!(store());

#[tokio::test]
async fn a_session_is_one_document_with_its_fields_as_entries() {
    let Some(store) = store().await else { return };
    let key = key();
    let written = record(&[("views", "1"), ("cart", "[\"tea\"]")], MINUTE);
    store.create(&key, &written).await.unwrap();
    let document = raw(&store, &key).await.expect("the session's document");
    assert_eq!(document.get_str("_id").unwrap(), key.as_str());
    let fields = document.get_document("fields").unwrap();
    assert_eq!(fields.get_str("views").unwrap(), "1");
    assert_eq!(fields.get_str("cart").unwrap(), "[\"tea\"]");
    assert_eq!(fields.len(), 2);
    let expires_at = document.get_datetime("expires_at").unwrap();
    assert_eq!(
        expires_at.timestamp_millis() as u64,
        written.expires_at.as_millis()
    );
    assert!(document.get_datetime("created_at").is_ok());
}

#[tokio::test]
async fn a_merge_writes_only_the_changed_fields() {
    let Some(store) = store().await else { return };
    let key = key();
    store
        .create(&key, &record(&[("views", "1"), ("cart", "[]")], MINUTE))
        .await
        .unwrap();
    // Another writer changes `cart` behind the store's back ...
    store
        .collection()
        .update_one(
            doc! { "_id": key.as_str() },
            doc! { "$set": { "fields.cart": "[\"raw\"]" } },
        )
        .await
        .unwrap();
    // ... and a merge of `views` alone leaves that change in place.
    store
        .save(&key, &record(&[("views", "2")], MINUTE), SaveMode::Merge)
        .await
        .unwrap();
    let document = raw(&store, &key).await.unwrap();
    let fields = document.get_document("fields").unwrap();
    assert_eq!(fields.get_str("views").unwrap(), "2");
    assert_eq!(fields.get_str("cart").unwrap(), "[\"raw\"]");
    assert_eq!(fields.len(), 2, "{fields:?}");
}

#[tokio::test]
async fn field_names_with_dots_or_dollars_address_only_themselves() {
    let Some(store) = store().await else { return };
    let key = key();
    store
        .create(&key, &record(&[("a", "1"), ("fields", "2")], MINUTE))
        .await
        .unwrap();
    let hostile = record(
        &[
            ("a.b", "3"),
            ("$set", "4"),
            ("..", "5"),
            ("%2E", "6"),
            ("", "7"),
        ],
        MINUTE,
    );
    store.save(&key, &hostile, SaveMode::Merge).await.unwrap();

    let loaded = store.load(&key).await.unwrap().unwrap();
    let names: Vec<&str> = loaded.fields.keys().map(|name| &**name).collect();
    assert_eq!(names, ["", "$set", "%2E", "..", "a", "a.b", "fields"]);
    assert_eq!(&*loaded.fields["a"], "1", "`a.b` did not write into `a`");
    assert_eq!(&*loaded.fields["a.b"], "3");

    // On the server: flat entries, none of them a path into another.
    let document = raw(&store, &key).await.unwrap();
    let stored = document.get_document("fields").unwrap();
    let stored_names: Vec<&str> = stored.keys().map(String::as_str).collect();
    for name in &stored_names {
        assert!(!name.contains('.') && !name.starts_with('$'), "{name:?}");
    }
    assert!(stored
        .values()
        .all(|value| matches!(value, Bson::String(_))));
    assert_eq!(stored.len(), 7, "{stored_names:?}");
    assert_eq!(stored.get_str("a").unwrap(), "1");

    // A replace writes them the same way.
    store.save(&key, &hostile, SaveMode::Replace).await.unwrap();
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(loaded.fields, hostile.fields);
}

/// How long after its `expires_at` the TTL index of `collection` lets a document live.
async fn ttl_of(collection: &mongodb::Collection<Document>) -> Option<Duration> {
    let mut cursor = collection.list_indexes().await.unwrap();
    while cursor.advance().await.unwrap() {
        let index = cursor.deserialize_current().unwrap();
        if index.keys == doc! { "expires_at": 1 } {
            return index.options.and_then(|options| options.expire_after);
        }
    }
    None
}

#[tokio::test]
async fn the_deadline_has_a_ttl_index() {
    let Some(store) = store().await else { return };
    assert_eq!(ttl_of(store.collection()).await, Some(Duration::ZERO));
}

#[tokio::test]
async fn a_collection_of_its_own_gets_its_indexes_on_first_use() {
    let Some(store) = store().await else { return };
    let name = format!("sessions_own_{}", std::process::id());
    let store = store.with_collection(&name);
    let key = key();
    assert!(store
        .create(&key, &record(&[("a", "1")], MINUTE))
        .await
        .unwrap());
    let lock = store.lock(&key, MINUTE, MINUTE).await.unwrap().unwrap();
    lock.release().await.unwrap();

    let database = store.collection().namespace().db;
    assert_eq!(store.collection().name(), name);
    assert_eq!(ttl_of(store.collection()).await, Some(Duration::ZERO));
    let client = store.collection().client().clone();
    let locks = client
        .database(&database)
        .collection::<Document>(&format!("{name}_locks"));
    // Lock documents stay an hour past their lease, so no clock skew lets the TTL monitor
    // remove a lease its holder still counts on.
    assert_eq!(ttl_of(&locks).await, Some(Duration::from_secs(3600)));
    store.collection().drop().await.unwrap();
    locks.drop().await.unwrap();
}

#[tokio::test]
async fn an_expired_document_not_yet_deleted_is_not_brought_back() {
    let Some(store) = store().await else { return };
    let key = key();
    // Past its deadline, but not yet removed by the TTL monitor (which runs once a minute).
    let past = Timestamp::now().as_millis() as i64 - 5_000;
    store
        .collection()
        .insert_one(doc! {
            "_id": key.as_str(),
            "fields": { "a": "1" },
            "created_at": DateTime::from_millis(past - 60_000),
            "expires_at": DateTime::from_millis(past),
        })
        .await
        .unwrap();
    assert!(store.load(&key).await.unwrap().is_none());

    let change = record(&[("a", "2"), ("b", "3")], MINUTE);
    assert!(!store.save(&key, &change, SaveMode::Merge).await.unwrap());
    assert!(!store.save(&key, &change, SaveMode::Replace).await.unwrap());
    let later = Timestamp::now().saturating_add(MINUTE);
    assert!(!store.touch(&key, later).await.unwrap());
    assert!(store.load(&key).await.unwrap().is_none());
    // Nothing was written to it.
    if let Some(document) = raw(&store, &key).await {
        assert_eq!(
            document
                .get_datetime("expires_at")
                .unwrap()
                .timestamp_millis(),
            past
        );
        assert_eq!(document.get_document("fields").unwrap(), &doc! { "a": "1" });
    }

    // Its key is free for a new session, which does not inherit its fields.
    let fresh = record(&[("b", "2")], MINUTE);
    assert!(store.create(&key, &fresh).await.unwrap());
    assert_eq!(
        store.load(&key).await.unwrap().unwrap().fields,
        fresh.fields
    );
}

#[tokio::test]
async fn a_lock_is_exclusive_until_released() {
    let Some(store) = store().await else { return };
    assert!(store.supports_locks());
    let key = key();
    let lease = Duration::from_secs(20);
    let held = store
        .lock(&key, lease, Duration::from_millis(100))
        .await
        .unwrap()
        .expect("a free lock is taken");
    let started = Instant::now();
    let second = store
        .lock(&key, lease, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(second.is_none(), "a held lock is not taken twice");
    assert!(started.elapsed() >= Duration::from_millis(200));
    held.release().await.unwrap();
    let third = store
        .lock(&key, lease, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(third.is_some(), "a released lock is taken again");
    third.unwrap().release().await.unwrap();
}

#[tokio::test]
async fn a_lapsed_lease_is_taken_over_and_its_old_holder_cannot_free_it() {
    let Some(store) = store().await else { return };
    let key = key();
    let wait = Duration::from_millis(100);
    let stale = store
        .lock(&key, Duration::from_millis(200), wait)
        .await
        .unwrap()
        .expect("a free lock is taken");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let current = store
        .lock(&key, Duration::from_secs(20), wait)
        .await
        .unwrap()
        .expect("a lapsed lease is taken over");
    // The old holder finishing late leaves the new holder's lease alone.
    stale.release().await.unwrap();
    assert!(store.lock(&key, MINUTE, wait).await.unwrap().is_none());
    current.release().await.unwrap();
}

#[tokio::test]
async fn a_document_without_its_times_is_reported_corrupt() {
    let Some(store) = store().await else { return };
    let key = key();
    store
        .collection()
        .insert_one(doc! {
            "_id": key.as_str(),
            "fields": { "views": "3" },
            "expires_at": DateTime::from_millis(Timestamp::now().as_millis() as i64 + 60_000),
        })
        .await
        .unwrap();
    let error = store.load(&key).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    store.delete(&key).await.unwrap();
    assert!(raw(&store, &key).await.is_none());
}

#[tokio::test]
async fn an_unreachable_server_fails_fast() {
    let started = Instant::now();
    // Nothing listens on port 1.
    let result = MongoStore::connect("mongodb://127.0.0.1:1/test").await;
    assert!(result.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
}
