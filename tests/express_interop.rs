//! The Rust counter in express compatibility mode beside the real express-session app
//! (`tests/express-app/`: express 4, express-session 1.19, connect-redis 9, connect-pg-simple
//! 10), on one Redis and on one PostgreSQL, with one cookie jar: what a user moving between a
//! Node app and its Rust replacement behind a proxy sees.
//!
//! Needs Node.js and npm (the app is installed with `npm ci` when `node_modules` is missing),
//! Redis (`SESSION_TEST_REDIS_URL`) and PostgreSQL (`SESSION_TEST_POSTGRES_URL`); without one
//! the tests print why and pass, unless `SESSIONS_REQUIRE_SERVERS=1`.

mod common;

use std::sync::Arc;

use common::express::{install, serve_rust, unique, Jar, NodeApp, SECRET};
use common::server_or_skip;
use session_core::store::sqlx::PgPool;
use session_core::store::{ConnectPgStore, ConnectRedisStore};
use session_core::{ExpressSecrets, Store};

fn redis_url() -> String {
    std::env::var("SESSION_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn postgres_url() -> String {
    std::env::var("SESSION_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Which shared store a rig runs on.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Redis,
    Postgres,
}

/// Both apps on one store, each test with its own Redis prefix or table.
struct Rig {
    node: NodeApp,
    rust: String,
    raw: Raw,
}

/// Direct access to what the stores hold.
enum Raw {
    Redis {
        connection: redis::aio::ConnectionManager,
        prefix: String,
    },
    Postgres {
        pool: PgPool,
        table: String,
    },
}

impl Raw {
    /// The stored JSON of session `id`.
    async fn record(&self, id: &str) -> Option<String> {
        match self {
            Raw::Redis { connection, prefix } => {
                let mut connection = connection.clone();
                redis::cmd("GET")
                    .arg(format!("{prefix}{id}"))
                    .query_async(&mut connection)
                    .await
                    .unwrap()
            }
            Raw::Postgres { pool, table } => {
                sqlx_text(
                    pool,
                    &format!(r#"SELECT sess::text FROM "{table}" WHERE sid = $1"#),
                    id,
                )
                .await
            }
        }
    }
}

async fn sqlx_text(pool: &PgPool, sql: &str, id: &str) -> Option<String> {
    use session_core::store::sqlx;
    sqlx::query_scalar::<_, String>(sql)
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

impl Rig {
    async fn start(backend: Backend) -> Option<Rig> {
        install()?;
        match backend {
            Backend::Redis => {
                let prefix = format!("{}:", unique("express_test"));
                let store =
                    server_or_skip("Redis", ConnectRedisStore::connect(&redis_url()).await)?
                        .with_prefix(prefix.clone());
                let client = redis::Client::open(redis_url()).unwrap();
                let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
                let address = redis_url().trim_start_matches("redis://").to_owned();
                let node = NodeApp::start(&format!("connect-redis://{address}"), &prefix, "").await;
                let rust = serve_rust(Arc::new(store)).await;
                Some(Rig {
                    node,
                    rust,
                    raw: Raw::Redis { connection, prefix },
                })
            }
            Backend::Postgres => {
                let table = unique("express_test");
                let pool = server_or_skip("PostgreSQL", PgPool::connect(&postgres_url()).await)?;
                let store = ConnectPgStore::from_pool(pool.clone())
                    .with_table_name(&table)
                    .unwrap();
                store.migrate().await.unwrap();
                let address = postgres_url().trim_start_matches("postgres://").to_owned();
                let node = NodeApp::start(&format!("connect-pg://{address}"), "", &table).await;
                let rust = serve_rust(Arc::new(store)).await;
                Some(Rig {
                    node,
                    rust,
                    raw: Raw::Postgres { pool, table },
                })
            }
        }
    }

    fn node(&self, path: &str) -> String {
        format!("{}{path}", self.node.base)
    }

    fn rust(&self, path: &str) -> String {
        format!("{}{path}", self.rust)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Raw::Postgres { pool, table } = &self.raw {
            let (pool, sql) = (pool.clone(), format!(r#"DROP TABLE IF EXISTS "{table}""#));
            // Best effort, on a thread of its own: the test's runtime is ending.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    use session_core::store::sqlx;
                    let _ = sqlx::query(&sql).execute(&pool).await;
                });
            })
            .join();
        }
    }
}

/// The session id in the jar's `connect.sid`.
fn session_id(jar: &Jar) -> String {
    let cookie = jar
        .cookies
        .get("connect.sid")
        .expect("a connect.sid cookie");
    ExpressSecrets::new(SECRET)
        .unwrap()
        .unsign_value(cookie)
        .expect("a cookie signed with the shared secret")
}

async fn alternating_counts_from_one_to_a_hundred(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else {
        return;
    };
    let mut jar = Jar::new();
    for visit in 1..=100 {
        let url = if visit % 2 == 1 {
            rig.node("/")
        } else {
            rig.rust("/")
        };
        let answer = jar.get(&url).await;
        assert_eq!(answer.status, 200, "{url}: {answer:?}");
        assert_eq!(answer.body, format!("You visited {visit} times"), "{url}");
    }
    let record = rig.raw.record(&session_id(&jar)).await.unwrap();
    // The visit that created it was Node's, whose `originalMaxAge` is the 15 minutes less the
    // milliseconds express-session took between setting and reading it (900000 or 899999).
    assert!(
        record.starts_with(r#"{"cookie":{"originalMaxAge":"#),
        "{record}"
    );
    assert!(record.ends_with(r#""views":100}"#), "{record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn alternating_between_node_and_rust_counts_from_one_to_a_hundred_on_redis() {
    alternating_counts_from_one_to_a_hundred(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn alternating_between_node_and_rust_counts_from_one_to_a_hundred_on_postgres() {
    alternating_counts_from_one_to_a_hundred(Backend::Postgres).await;
}

async fn logins_carts_and_logouts_cross_over(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else {
        return;
    };
    let mut jar = Jar::new();
    jar.get(&rig.rust("/")).await;

    // A login on Node shows on Rust, read into the typed `user` field.
    let login = jar.post(&rig.node("/login"), "name=ada").await;
    assert_eq!(login.status, 303);
    assert_eq!(jar.get(&rig.rust("/me")).await.body, "user: ada");
    let id = session_id(&jar);
    let record = rig.raw.record(&id).await.unwrap();
    assert!(record.contains(r#""user":{"name":"ada"}"#), "{record}");

    // A cart item added on Rust shows on Node, and Node's keys are kept.
    assert_eq!(jar.post(&rig.rust("/cart"), "item=tea").await.status, 303);
    assert_eq!(jar.get(&rig.node("/cart")).await.body, "tea\n");
    assert_eq!(jar.post(&rig.node("/cart"), "item=jam").await.status, 303);
    assert_eq!(jar.get(&rig.rust("/cart")).await.body, "tea\njam\n");
    assert_eq!(jar.get(&rig.node("/me")).await.body, "user: ada");
    assert_eq!(jar.get(&rig.rust("/peek")).await.body, "views: 1");

    // Logout on Rust ends the session on both, even for a client that kept the cookie.
    let kept = jar.cookie_header();
    assert_eq!(jar.post(&rig.rust("/logout"), "").await.status, 303);
    assert_eq!(rig.raw.record(&id).await, None);
    let mut stale = Jar::new();
    stale.cookies.insert(
        "connect.sid".into(),
        kept.trim_start_matches("connect.sid=").to_owned(),
    );
    assert_eq!(stale.get(&rig.node("/me")).await.body, "user: none");
    assert_eq!(stale.get(&rig.rust("/me")).await.body, "user: none");

    // A login on Rust shows on Node; logout on Node ends it on both.
    let mut jar = Jar::new();
    assert_eq!(
        jar.post(&rig.rust("/login"), "name=grace").await.status,
        303
    );
    assert_eq!(jar.get(&rig.node("/me")).await.body, "user: grace");
    let id = session_id(&jar);
    let record = rig.raw.record(&id).await.unwrap();
    assert!(record.contains(r#""user":{"name":"grace"}"#), "{record}");
    let kept = jar.cookies.get("connect.sid").cloned().unwrap();
    assert_eq!(jar.post(&rig.node("/logout"), "").await.status, 303);
    assert_eq!(rig.raw.record(&id).await, None);
    let mut stale = Jar::new();
    stale.cookies.insert("connect.sid".into(), kept);
    assert_eq!(stale.get(&rig.rust("/me")).await.body, "user: none");
    assert_eq!(stale.get(&rig.node("/me")).await.body, "user: none");
}

#[tokio::test(flavor = "multi_thread")]
async fn logins_carts_and_logouts_cross_between_node_and_rust_on_redis() {
    logins_carts_and_logouts_cross_over(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logins_carts_and_logouts_cross_between_node_and_rust_on_postgres() {
    logins_carts_and_logouts_cross_over(Backend::Postgres).await;
}

async fn forged_cookies_are_refused_by_both(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else {
        return;
    };
    let mut jar = Jar::new();
    for _ in 0..3 {
        jar.get(&rig.node("/")).await;
    }
    let id = session_id(&jar);
    let genuine = jar.cookies.get("connect.sid").cloned().unwrap();
    let stored = rig.raw.record(&id).await.unwrap();

    // The last character of the signature changed.
    let last = if genuine.ends_with('A') { "B" } else { "A" };
    let tampered = format!("{}{last}", &genuine[..genuine.len() - 1]);
    // The right id, signed with another secret.
    let wrong_secret = ExpressSecrets::new("not the shared secret")
        .unwrap()
        .sign_value(&id);
    // The id without any signature.
    let unsigned = id.clone();
    for forged in [tampered, wrong_secret, unsigned] {
        for url in [rig.node("/peek"), rig.rust("/peek")] {
            let mut forger = Jar::new();
            forger.cookies.insert("connect.sid".into(), forged.clone());
            assert_eq!(
                forger.get(&url).await.body,
                "views: 0",
                "{url} took {forged}"
            );
        }
    }
    // Nothing the forgers did touched the session.
    assert_eq!(rig.raw.record(&id).await.unwrap(), stored);
    assert_eq!(jar.get(&rig.rust("/peek")).await.body, "views: 3");
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_and_wrong_secret_cookies_are_refused_by_both_apps_on_redis() {
    forged_cookies_are_refused_by_both(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_and_wrong_secret_cookies_are_refused_by_both_apps_on_postgres() {
    forged_cookies_are_refused_by_both(Backend::Postgres).await;
}

/// A change the Node app makes to one key between this side's load and its save of another
/// is kept: the save is a compare-and-set that re-applies its own keys to the newer record.
async fn a_node_change_between_load_and_save_is_kept(backend: Backend) {
    let Some(rig) = Rig::start(backend).await else {
        return;
    };
    let store: Arc<dyn Store> = match &rig.raw {
        Raw::Redis { prefix, .. } => Arc::new(
            ConnectRedisStore::connect(&redis_url())
                .await
                .unwrap()
                .with_prefix(prefix.clone()),
        ),
        Raw::Postgres { pool, table } => Arc::new(
            ConnectPgStore::from_pool(pool.clone())
                .with_table_name(table)
                .unwrap(),
        ),
    };
    let mut jar = Jar::new();
    jar.get(&rig.node("/")).await;
    let id = session_id(&jar);
    let key = common::express::store_key(&id);

    let loaded = store.load(&key).await.unwrap().expect("the Node session");
    assert_eq!(loaded.fields.get("views").map(|v| &**v), Some("1"));
    // Node writes `cart` meanwhile.
    jar.post(&rig.node("/cart"), "item=tea").await;
    // This side saves its change to `views`, computed from what it loaded.
    let mut write = session_core::Record::new(loaded.created_at, loaded.expires_at);
    write.fields.insert(Arc::from("views"), Arc::from("2"));
    assert!(store
        .save(&key, &write, session_core::SaveMode::Merge)
        .await
        .unwrap());

    assert_eq!(jar.get(&rig.node("/cart")).await.body, "tea\n");
    assert_eq!(jar.get(&rig.rust("/peek")).await.body, "views: 2");
    let record = rig.raw.record(&id).await.unwrap();
    assert!(record.ends_with(r#""views":2,"cart":["tea"]}"#), "{record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_change_to_another_key_between_load_and_save_is_kept_on_redis() {
    a_node_change_between_load_and_save_is_kept(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_change_to_another_key_between_load_and_save_is_kept_on_postgres() {
    a_node_change_between_load_and_save_is_kept(Backend::Postgres).await;
}

/// cookie-signature itself (as express-session 1.19 depends on it) signs random ids with
/// random secrets; this crate writes the same cookie, byte for byte, and reads it back.
#[tokio::test]
async fn cookies_match_cookie_signature_byte_for_byte() {
    if install().is_none() {
        return;
    }
    let mut cases = Vec::new();
    for i in 0..40 {
        let id = session_core::SessionId::generate()
            .unwrap()
            .as_str()
            .to_owned();
        let secret = match i % 4 {
            0 => "keyboard cat".to_owned(),
            1 => format!("ünïcödé secret {i}"),
            2 => session_core::SessionId::generate()
                .unwrap()
                .as_str()
                .repeat(3),
            _ => format!("s{i}"),
        };
        cases.push((id, secret));
    }
    let script = r#"
const sign = require('cookie-signature').sign;
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(cases.map(([id, secret]) => encodeURIComponent('s:' + sign(id, secret)))));
"#;
    let mut child = std::process::Command::new("node")
        .args(["-e", script])
        .current_dir(common::express::app_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let input = serde_json::to_string(&cases).unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let cookies: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(cookies.len(), cases.len());
    for ((id, secret), cookie) in cases.iter().zip(&cookies) {
        let secrets = ExpressSecrets::new(secret).unwrap();
        assert_eq!(&secrets.sign_value(id), cookie, "{secret:?}");
        assert_eq!(secrets.unsign_value(cookie).as_deref(), Some(id.as_str()));
    }
}

/// The way out of compat mode: a native layer with `with_express_upgrade` serves a session
/// an express cookie leads to, in express's formats, until the next login re-issues it
/// natively (hashed key, native cookie), deleting the express record and cookie.
#[tokio::test(flavor = "multi_thread")]
async fn after_the_migration_a_login_reissues_an_express_session_natively() {
    let Some(rig) = Rig::start(Backend::Redis).await else {
        return;
    };
    let Raw::Redis { prefix, connection } = &rig.raw else {
        unreachable!()
    };
    let express = ConnectRedisStore::connect(&redis_url())
        .await
        .unwrap()
        .with_prefix(prefix.clone());
    let native_prefix = format!("{prefix}native:");
    let native = session_core::store::RedisStore::connect(&redis_url())
        .await
        .unwrap()
        .with_prefix(native_prefix.clone());
    let layer = typed_sessions::counter::layer(Arc::new(native), common::key())
        .with_express_upgrade(express, ExpressSecrets::new(SECRET).unwrap())
        .check()
        .unwrap();
    let upgraded = common::express::serve_router(typed_sessions::counter::app_with(layer)).await;
    let native_url = |path: &str| format!("{upgraded}{path}");

    // A session started on Node, before the migration.
    let mut jar = Jar::new();
    jar.get(&rig.node("/")).await;
    jar.post(&rig.node("/login"), "name=ada").await;
    let express_id = session_id(&jar);

    // The native app serves it as it is, in express's formats, shared with Node still.
    assert_eq!(jar.get(&native_url("/me")).await.body, "user: ada");
    let counted = jar.get(&native_url("/")).await;
    assert_eq!(counted.body, "You visited 2 times");
    assert!(
        !jar.cookies.contains_key("sid"),
        "{:?}",
        counted.set_cookies
    );
    assert_eq!(jar.get(&rig.node("/peek")).await.body, "views: 2");
    let record = rig.raw.record(&express_id).await.unwrap();
    assert!(
        record.ends_with(r#""views":2,"user":{"name":"ada"}}"#),
        "{record}"
    );

    // The next login re-issues it natively: native cookie, express cookie cleared, express
    // record deleted, the data kept under a hashed key.
    let login = jar.post(&native_url("/login"), "name=ada").await;
    assert_eq!(login.status, 303);
    assert!(jar.cookies.contains_key("sid"), "{:?}", login.set_cookies);
    assert!(
        !jar.cookies.contains_key("connect.sid"),
        "{:?}",
        login.set_cookies
    );
    assert_eq!(rig.raw.record(&express_id).await, None);
    assert_eq!(jar.get(&native_url("/me")).await.body, "user: ada");
    assert_eq!(jar.get(&native_url("/")).await.body, "You visited 3 times");
    let mut redis = connection.clone();
    let all_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{native_prefix}*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    // The session, and the index entry of its (indexed) user.
    let index_prefix = format!("{native_prefix}index:");
    let (index_keys, native_keys): (Vec<String>, Vec<String>) = all_keys
        .into_iter()
        .partition(|key| key.starts_with(&index_prefix));
    assert_eq!(native_keys.len(), 1, "{native_keys:?}");
    assert_eq!(index_keys.len(), 1, "{index_keys:?}");
    let hashed = native_keys[0].trim_start_matches(native_prefix.as_str());
    assert_eq!(hashed.len(), 64);
    assert!(!hashed.contains(&express_id));
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&native_keys[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!fields.iter().any(|f| f == "cookie"), "{fields:?}");

    // New visitors get native sessions from the start.
    let mut fresh = Jar::new();
    fresh.get(&native_url("/")).await;
    assert!(fresh.cookies.contains_key("sid"));
    assert!(!fresh.cookies.contains_key("connect.sid"));
}
