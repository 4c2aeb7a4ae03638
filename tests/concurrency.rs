//! Concurrent requests on one session: different fields never lose a change; with the
//! per-session lock, neither does the same field.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::cart::{cart_app, concurrent_appends, session_with_one_item};
use common::{get as get_req, send};
use session_core::store::{MemoryStore, SessionLock};
use session_core::{Record, SaveMode, SessionLayer, Store, StoreError, StoreKey, Timestamp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_on_different_fields_lose_nothing() {
    common::wide::hundred_fields_concurrently(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lock_same_field_appends_overwrite_each_other() {
    // The behaviour the lock exists for: last writer of one field wins.
    let app = cart_app(Arc::new(MemoryStore::new()), None);
    let cookie = session_with_one_item(&app).await;
    let stored = concurrent_appends(&app, &cookie, 20).await;
    assert!(
        stored < 21,
        "{stored} items: some appends must have been overwritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_lock_hundred_concurrent_appends_leave_exactly_hundred_items() {
    let app = cart_app(Arc::new(MemoryStore::new()), Some(Duration::from_secs(10)));
    let cookie = session_with_one_item(&app).await;
    assert_eq!(concurrent_appends(&app, &cookie, 100).await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_wait_that_runs_out_gives_the_error_status() {
    let store = LockSignal::default();
    let app = cart_app(Arc::new(store.clone()), Some(Duration::from_millis(50)));
    let cookie = session_with_one_item(&app).await;
    let granted = store.granted.notified();
    let holder = {
        let app = app.clone();
        let cookie = cookie.clone();
        tokio::spawn(async move { send(&app, get_req("/hold", Some(&cookie))).await })
    };
    // The holder has the lock (and keeps it 400 ms in its handler).
    granted.await;
    let blocked = send(&app, get_req("/count", Some(&cookie))).await;
    assert_eq!(blocked.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(holder.await.unwrap().status, StatusCode::OK);
    // Released after the holder's save: the next request goes through.
    assert_eq!(send(&app, get_req("/count", Some(&cookie))).await.body, "2");
}

#[test]
fn lock_on_a_store_without_locks_is_a_configuration_error() {
    let error = SessionLayer::new(common::BareStore::default(), common::key())
        .without_indexes()
        .with_session_lock(Duration::from_secs(1))
        .check()
        .unwrap_err();
    assert!(error.to_string().contains("per-session locks"), "{error}");
}

/// The memory store, telling each time it grants a per-session lock.
#[derive(Clone, Default)]
struct LockSignal {
    inner: MemoryStore,
    granted: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl Store for LockSignal {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.inner.load(key).await
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        self.inner.create(key, record).await
    }
    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        self.inner.save(key, record, mode).await
    }
    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        self.inner.touch(key, expires_at).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    fn supports_locks(&self) -> bool {
        true
    }
    async fn lock(
        &self,
        key: &StoreKey,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        let lock = self.inner.lock(key, lease, wait).await?;
        if lock.is_some() {
            self.granted.notify_waiters();
        }
        Ok(lock)
    }
}
