//! The store conformance suite against the in-process cache in front of Redis
//! (`SESSION_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`): the two-tier store must keep
//! the same contract as the store behind it.
//!
//! The suite writes through one `CachingStore` and reads through a second one over the same
//! Redis, as another app instance would, checking on every load that the writer's own cached
//! copy and Redis itself agree with it: a write kept only in the writer's cache, or a cache
//! that serves what Redis no longer holds, fails the checks instead of reading back its own copy.

#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use async_trait::async_trait;
use session_core::store::{CachingStore, IndexEntry, IndexMember, RedisStore, SessionLock};
use session_core::{Record, SaveMode, Store, StoreError, StoreKey, Timestamp};

/// Two app instances, each with its own cache, over one Redis.
struct TwoInstances {
    writer: CachingStore<RedisStore>,
    reader: CachingStore<RedisStore>,
    backing: RedisStore,
}

async fn store() -> Option<TwoInstances> {
    let url = std::env::var("SESSION_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let redis =
        common::server_or_skip(&format!("Redis at {url}"), RedisStore::connect(&url).await)?;
    Some(TwoInstances {
        writer: CachingStore::new(redis.clone()),
        // It caches what it reads, but never serves a copy older than a load: the suite
        // writes and reads back within milliseconds, far inside any useful staleness.
        reader: CachingStore::new(redis.clone()).with_max_staleness(Duration::ZERO),
        backing: redis,
    })
}

fn same(what: &str, a: &Option<Record>, b: &Option<Record>) {
    let view = |r: &Option<Record>| {
        r.as_ref().map(|r| {
            (
                r.fields.clone(),
                r.created_at.as_millis() / 1000,
                r.expires_at.as_millis() / 1000,
            )
        })
    };
    let (a, b) = (view(a), view(b));
    // Times are compared to the second: stores may round them.
    let close = match (&a, &b) {
        (Some(a), Some(b)) => a.0 == b.0 && a.1.abs_diff(b.1) <= 1 && a.2.abs_diff(b.2) <= 1,
        (None, None) => true,
        _ => false,
    };
    assert!(close, "{what} disagree: {a:?} against {b:?}");
}

#[async_trait]
impl Store for TwoInstances {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let seen = self.reader.load(key).await?;
        same(
            "Redis and another instance",
            &self.backing.load(key).await?,
            &seen,
        );
        same(
            "the writer's cache and another instance",
            &self.writer.load(key).await?,
            &seen,
        );
        Ok(seen)
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        self.writer.create(key, record).await
    }
    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        self.writer.save(key, record, mode).await
    }
    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        self.writer.touch(key, expires_at).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.writer.delete(key).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.writer.purge_expired().await
    }
    fn supports_locks(&self) -> bool {
        self.writer.supports_locks()
    }
    async fn lock(
        &self,
        key: &StoreKey,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        self.writer.lock(key, lease, wait).await
    }
    fn supports_index(&self) -> bool {
        self.writer.supports_index()
    }
    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.writer.index_add(entry, key, until).await
    }
    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        self.writer.index_remove(entry, key).await
    }
    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        self.writer.index_members(entry).await
    }
    /// Read through the other instance, checked against Redis itself.
    async fn load_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Record>>, StoreError> {
        let seen = self.reader.load_many(keys).await?;
        let backing = self.backing.load_many(keys).await?;
        for (seen, backing) in seen.iter().zip(&backing) {
            same("Redis and another instance's load_many", backing, seen);
        }
        Ok(seen)
    }
}

session_core::store_conformance_tests!(store());
