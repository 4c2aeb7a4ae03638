//! The store conformance suite and the SQL store checks (`common::sql`) against the
//! MySQL/MariaDB store, and what is particular to it: collision checks without
//! `ON DUPLICATE KEY UPDATE` row counts.
//!
//! The server is `SESSION_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`).
//! Without one the tests print why and pass, unless `SESSIONS_REQUIRE_SERVERS=1`.

#![cfg(feature = "mysql")]

mod common;

use std::time::Duration;

use async_trait::async_trait;
use common::sql::{SqlTestStore, MINUTE};
use session_core::conformance::{key, record};
use session_core::store::sqlx::{self, MySqlPool};
use session_core::store::{IndexEntry, MySqlStore, Store};
use session_core::{StoreError, StoreKey, Timestamp};
use tokio::task::JoinHandle;

fn url() -> String {
    std::env::var("SESSION_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A store on the test server's default table, or `None` (skip) without a server.
async fn store() -> Option<MySqlStore> {
    common::server_or_skip("MySQL/MariaDB", MySqlStore::connect(&url()).await)
}

/// A store made with `from_pool` on table `my_{name}`, dropped first so each run starts
/// without it.
async fn store_on(name: &str) -> Option<MySqlStore> {
    let pool = store().await?.pool().clone();
    let store = MySqlStore::from_pool(pool)
        .with_table_name(&format!("my_{name}"))
        .unwrap();
    store.drop_table().await;
    Some(store)
}

session_core::store_conformance_tests!(store());

sql_store_tests! {
    store: store(),
    fresh_table: store_on,
    server: MySqlStore {
        refused: "mysql://root@127.0.0.1:1/test",
        malformed: "mysql://[not-a-host",
    },
}

#[tokio::test]
async fn create_of_an_identical_record_over_a_live_one_is_a_collision() {
    // With CLIENT_FOUND_ROWS (always on in sqlx), an upsert that leaves a row as it was
    // reports 1 row, like an insert: `create` must not rely on that count.
    let Some(store) = store().await else { return };
    let key = key();
    let same = record(&[("a", "1")], MINUTE);
    assert!(store.create(&key, &same).await.unwrap());
    assert!(!store.create(&key, &same).await.unwrap());
    assert!(!store
        .create(&key, &record(&[("a", "2")], MINUTE))
        .await
        .unwrap());
    assert_eq!(&*store.load(&key).await.unwrap().unwrap().fields["a"], "1");
}

async fn table_exists(pool: &MySqlPool, table: &str) -> bool {
    let (found,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name = ?",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .unwrap();
    found == 1
}

async fn index_exists(pool: &MySqlPool, table: &str, index: &str) -> bool {
    let (found,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.statistics \
         WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ?",
    )
    .bind(table)
    .bind(index)
    .fetch_one(pool)
    .await
    .unwrap();
    found > 0
}

#[async_trait]
impl SqlTestStore for MySqlStore {
    const DATA_IS_ANY_TEXT: bool = false;

    async fn another_instance(&self) -> Self {
        let other = MySqlStore::connect(&url()).await.unwrap();
        other.with_table_name(self.table_name()).unwrap()
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MySqlStore::migrate(self).await
    }

    fn spawn_purge_task(&self, interval: Duration) -> JoinHandle<()> {
        MySqlStore::spawn_purge_task(self, interval)
    }

    async fn rows(&self) -> i64 {
        let statement = format!("SELECT count(*) FROM `{}`", self.table_name());
        let (count,): (i64,) = sqlx::query_as(&statement)
            .fetch_one(self.pool())
            .await
            .unwrap();
        count
    }

    async fn table_exists(&self) -> bool {
        table_exists(self.pool(), self.table_name()).await
    }

    async fn index_exists(&self) -> bool {
        let index = format!("{}_expires_at_idx", self.table_name());
        index_exists(self.pool(), self.table_name(), &index).await
    }

    async fn insert_raw(&self, key: &StoreKey, data: &str) {
        let expires = Timestamp::now().as_millis() as i64 + 60_000;
        sqlx::query(&format!(
            "INSERT INTO `{}` (`key`, data, created_at, expires_at) VALUES (?, ?, 0, ?)",
            self.table_name()
        ))
        .bind(key.as_str())
        .bind(data)
        .bind(expires)
        .execute(self.pool())
        .await
        .unwrap();
    }

    async fn raw_field(&self, key: &StoreKey, name: &str) -> String {
        let statement = format!(
            "SELECT CAST(JSON_UNQUOTE(JSON_EXTRACT(data, ?)) AS CHAR) FROM `{}` WHERE `key` = ?",
            self.table_name()
        );
        let (value,): (String,) = sqlx::query_as(&statement)
            .bind(format!("$.{name}"))
            .bind(key.as_str())
            .fetch_one(self.pool())
            .await
            .unwrap();
        value
    }

    async fn set_index_added(&self, entry: &IndexEntry, key: &StoreKey, added: i64) {
        let statement = format!(
            "UPDATE `{}_index` SET added_at = ? WHERE entry = ? AND session_key = ?",
            self.table_name()
        );
        let done = sqlx::query(&statement)
            .bind(added)
            .bind(entry.digest())
            .bind(key.as_str())
            .execute(self.pool())
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
    }

    async fn drop_table(&self) {
        for table in [
            self.table_name().to_owned(),
            format!("{}_index", self.table_name()),
        ] {
            let statement = format!("DROP TABLE IF EXISTS `{table}`");
            sqlx::query(&statement).execute(self.pool()).await.unwrap();
        }
    }
}
