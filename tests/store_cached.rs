//! The store conformance suite against the in-process cache in front of Redis
//! (`SESSION_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`): the two-tier store must keep
//! the same contract as the store behind it.

#![cfg(feature = "redis")]

mod common;

use session_core::store::{CachingStore, RedisStore};

async fn store() -> Option<CachingStore<RedisStore>> {
    let url = std::env::var("SESSION_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let redis =
        common::server_or_skip(&format!("Redis at {url}"), RedisStore::connect(&url).await)?;
    Some(CachingStore::new(redis))
}

session_core::store_conformance_tests!(store());
