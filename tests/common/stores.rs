//! Every store, connected to the test servers, for tests that run against all of them.
//! Each returns `None` (and prints why) when its server is absent, unless
//! `SESSIONS_REQUIRE_SERVERS=1`.

use std::sync::Arc;

use session_core::store::{
    FileStore, MemcachedStore, MemoryStore, MongoStore, MySqlStore, PostgresStore, RedisStore,
    SqliteStore,
};
use session_core::Store;

use super::server_or_skip;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub async fn memory() -> Option<Arc<dyn Store>> {
    Some(Arc::new(MemoryStore::new()))
}

pub async fn file() -> Option<Arc<dyn Store>> {
    let dir = tempfile::tempdir().unwrap().keep();
    Some(Arc::new(FileStore::open(dir).await.unwrap()))
}

pub async fn sqlite() -> Option<Arc<dyn Store>> {
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite:{}", dir.join("sessions.db").display());
    Some(Arc::new(SqliteStore::connect(&url).await.unwrap()))
}

pub async fn postgres() -> Option<Arc<dyn Store>> {
    let url = env_or(
        "SESSION_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    let store = server_or_skip("PostgreSQL", PostgresStore::connect(&url).await)?;
    Some(Arc::new(store))
}

pub async fn mysql() -> Option<Arc<dyn Store>> {
    let url = env_or("SESSION_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
    let store = server_or_skip("MySQL", MySqlStore::connect(&url).await)?;
    Some(Arc::new(store))
}

pub async fn redis() -> Option<Arc<dyn Store>> {
    let url = env_or("SESSION_TEST_REDIS_URL", "redis://127.0.0.1:6379");
    let store = server_or_skip("Redis", RedisStore::connect(&url).await)?;
    Some(Arc::new(store))
}

pub async fn redis_cluster() -> Option<Arc<dyn Store>> {
    let spec = env_or(
        "SESSION_TEST_REDIS_CLUSTER",
        "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
    );
    let store = server_or_skip("Redis Cluster", RedisStore::connect_cluster(&spec).await)?;
    Some(Arc::new(store))
}

pub async fn memcached() -> Option<Arc<dyn Store>> {
    let url = env_or("SESSION_TEST_MEMCACHED_URL", "memcache://127.0.0.1:11211");
    let store = server_or_skip("memcached", MemcachedStore::connect(&url).await)?;
    Some(Arc::new(store))
}

/// Redis behind an in-process cache, as the counter app's `SESSION_CACHE` sets it up.
pub async fn cached_redis() -> Option<Arc<dyn Store>> {
    let backing = redis().await?;
    Some(Arc::new(
        session_core::store::CachingStore::new(backing)
            .with_max_staleness(std::time::Duration::from_millis(500)),
    ))
}

pub async fn mongodb() -> Option<Arc<dyn Store>> {
    let url = env_or("SESSION_TEST_MONGODB_URL", "mongodb://127.0.0.1:27017/test");
    let store = server_or_skip("MongoDB", MongoStore::connect(&url).await)?;
    Some(Arc::new(store))
}

/// Runs each scenario on every store: one module per store (`memory`, `file`, `sqlite`,
/// `postgres`, `mysql`, `redis`, `redis_cluster`, `memcached`, `mongodb`, `cached_redis`), one
/// multi-thread test per scenario in each, skipped (failed with `SESSIONS_REQUIRE_SERVERS=1`)
/// when the store's server is absent. A scenario is written
/// `test_name => |store| call(store).await` or, to get the store's name as well,
/// `test_name => |store, name| call(store, name).await`.
// Only some of the test binaries that share this module use it.
#[allow(unused_macros)]
macro_rules! on_every_store {
    (@stores $tests:tt $($store:ident)*) => {$(
        mod $store {
            use super::*;

            crate::common::stores::on_every_store!(@tests $store $tests);
        }
    )*};
    (@tests $store:ident [$($test:ident => |$s:ident $(, $n:ident)?| $run:expr;)*]) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            if let Some($s) = crate::common::stores::$store().await {
                $(let $n = stringify!($store);)?
                $run;
            }
        }
    )*};
    ($($tests:tt)*) => {
        crate::common::stores::on_every_store!(@stores [$($tests)*]
            memory file sqlite postgres mysql redis redis_cluster memcached mongodb cached_redis);
    };
}

#[allow(unused_imports)]
pub(crate) use on_every_store;
