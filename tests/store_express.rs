//! The express-session stores (`ConnectRedisStore`, `ConnectPgStore`) against their servers,
//! and what express compatibility mode refuses: records written by another app kept byte for
//! byte, unreadable records left alone, connect-redis's TTL rule, touch, and saves that never
//! undo an atomic change another app made meanwhile.
//!
//! Redis (`SESSION_TEST_REDIS_URL`) and PostgreSQL (`SESSION_TEST_POSTGRES_URL`); without one
//! its tests print why and pass, unless `SESSIONS_REQUIRE_SERVERS=1`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::express::{store_key, unique, SECRET};
use common::{get, send, server_or_skip};
use session_core::store::sqlx::{self, PgPool};
use session_core::store::{ConnectPgStore, ConnectRedisStore, MemoryStore};
use session_core::{
    ConfigError, ExpressSecrets, Key, Record, SaveMode, SessionId, SessionLayer, Store, Timestamp,
    Transport,
};
use typed_sessions::counter;

fn redis_url() -> String {
    std::env::var("SESSION_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn postgres_url() -> String {
    std::env::var("SESSION_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A store on its own prefix or table, with raw access to what it holds.
enum Backend {
    Redis {
        store: ConnectRedisStore,
        redis: redis::aio::ConnectionManager,
        prefix: String,
    },
    Postgres {
        store: ConnectPgStore,
        pool: PgPool,
        table: String,
    },
}

impl Backend {
    async fn redis() -> Option<Backend> {
        let prefix = format!("{}:", unique("express_store"));
        let store = server_or_skip("Redis", ConnectRedisStore::connect(&redis_url()).await)?
            .with_prefix(prefix.clone());
        let client = redis::Client::open(redis_url()).unwrap();
        let redis = redis::aio::ConnectionManager::new(client).await.unwrap();
        Some(Backend::Redis {
            store,
            redis,
            prefix,
        })
    }

    async fn postgres() -> Option<Backend> {
        let table = unique("express_store");
        let pool = server_or_skip("PostgreSQL", PgPool::connect(&postgres_url()).await)?;
        let store = ConnectPgStore::from_pool(pool.clone())
            .with_table_name(&table)
            .unwrap();
        store.migrate().await.unwrap();
        Some(Backend::Postgres { store, pool, table })
    }

    fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Redis { store, .. } => Arc::new(store.clone()),
            Backend::Postgres { store, .. } => Arc::new(store.clone()),
        }
    }

    /// Writes `json` as the record of `id`, as the Node app would, for 15 minutes.
    async fn put(&self, id: &str, json: &str) {
        match self {
            Backend::Redis { redis, prefix, .. } => {
                let mut redis = redis.clone();
                let _: () = redis::cmd("SET")
                    .arg(format!("{prefix}{id}"))
                    .arg(json)
                    .arg("EX")
                    .arg(900)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
            }
            Backend::Postgres { pool, table, .. } => {
                sqlx::query(&format!(
                    r#"INSERT INTO "{table}" (sid, sess, expire) VALUES ($1, $2::json, now() + interval '15 minutes')"#
                ))
                .bind(id)
                .bind(json)
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }

    async fn raw(&self, id: &str) -> Option<String> {
        match self {
            Backend::Redis { redis, prefix, .. } => {
                let mut redis = redis.clone();
                redis::cmd("GET")
                    .arg(format!("{prefix}{id}"))
                    .query_async(&mut redis)
                    .await
                    .unwrap()
            }
            Backend::Postgres { pool, table, .. } => sqlx::query_scalar(&format!(
                r#"SELECT sess::text FROM "{table}" WHERE sid = $1"#
            ))
            .bind(id)
            .fetch_optional(pool)
            .await
            .unwrap(),
        }
    }

    /// Adds one to the record's `other` key atomically, as another app's atomic write would.
    async fn increment_other(&self, id: &str) {
        match self {
            Backend::Redis { redis, prefix, .. } => {
                let mut redis = redis.clone();
                let _: () = redis::Script::new(
                    "local v = cjson.decode(redis.call('GET', KEYS[1]))
v.other = v.other + 1
redis.call('SET', KEYS[1], cjson.encode(v), 'KEEPTTL')",
                )
                .key(format!("{prefix}{id}"))
                .invoke_async(&mut redis)
                .await
                .unwrap();
            }
            Backend::Postgres { pool, table, .. } => {
                sqlx::query(&format!(
                    r#"UPDATE "{table}" SET sess = jsonb_set(sess::jsonb, '{{other}}', to_jsonb((sess->>'other')::int + 1))::json WHERE sid = $1"#
                ))
                .bind(id)
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }

    async fn drop_table(&self) {
        if let Backend::Postgres { pool, table, .. } = self {
            let _ = sqlx::query(&format!(r#"DROP TABLE IF EXISTS "{table}""#))
                .execute(pool)
                .await;
        }
    }
}

fn app(store: Arc<dyn Store>) -> axum::Router {
    let layer = counter::express_layer(store, ExpressSecrets::new(SECRET).unwrap())
        .check()
        .unwrap();
    counter::app_with(layer)
}

fn cookie_for(id: &str) -> String {
    format!(
        "connect.sid={}",
        ExpressSecrets::new(SECRET).unwrap().sign_value(id)
    )
}

fn new_id() -> String {
    SessionId::generate().unwrap().as_str().to_owned()
}

fn in_minutes(minutes: u64) -> String {
    let millis = Timestamp::now()
        .saturating_add(Duration::from_secs(minutes * 60))
        .as_millis();
    let secs = millis / 1000;
    // `toISOString` of `millis`, computed with the same civil-date rules as the store's.
    let days = secs / 86_400;
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
        millis % 1000
    )
}

fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

async fn unknown_keys_are_kept_byte_for_byte(backend: Backend) {
    let id = new_id();
    let expires = in_minutes(10);
    let before = format!(
        r#"{{"cookie":{{"originalMaxAge":900000,"expires":"{expires}","httpOnly":true,"path":"/"}},"views":1,"legacy":{{ "spaced" : [1, 2.50, "é"] }},"user":{{ "name" : "ada" }}}}"#
    );
    backend.put(&id, &before).await;
    let app = app(backend.store());
    let reply = send(&app, get("/", Some(&cookie_for(&id)))).await;
    assert_eq!(reply.body, "You visited 2 times");
    let after = backend.raw(&id).await.unwrap();
    // Only `views` and the cookie's expiry (moved to the new deadline) changed.
    let expected_tail =
        r#""views":2,"legacy":{ "spaced" : [1, 2.50, "é"] },"user":{ "name" : "ada" }}"#;
    assert!(after.ends_with(expected_tail), "{after}");
    assert!(
        after.starts_with(r#"{"cookie":{"originalMaxAge":900000,"expires":""#),
        "{after}"
    );
    assert_ne!(after, before);
    let me = send(&app, get("/me", Some(&cookie_for(&id)))).await;
    assert_eq!(me.body, "user: ada");
    backend.drop_table().await;
}

async fn unreadable_records_are_left_alone(backend: Backend) {
    let app = app(backend.store());
    for stored in [
        "not json",
        "[1,2,3]",
        "\"a string\"",
        "{\"cookie\":",
        r#"{"cookie":{"originalMaxAge":900000,"expires":null,"httpOnly":true,"path":"/"},"views":"many"}"#,
    ] {
        let id = new_id();
        // PostgreSQL's `json` column takes only JSON: the bad texts go to Redis alone.
        if matches!(backend, Backend::Postgres { .. })
            && serde_json::from_str::<serde_json::Value>(stored).is_err()
        {
            continue;
        }
        backend.put(&id, stored).await;
        let peek = send(&app, get("/peek", Some(&cookie_for(&id)))).await;
        assert_eq!(peek.status, 200, "{stored}");
        assert_eq!(peek.body, "views: 0", "{stored}");
        let visit = send(&app, get("/", Some(&cookie_for(&id)))).await;
        assert_eq!(visit.status, 200, "{stored}");
        assert_eq!(visit.body, "You visited 1 times", "{stored}");
        let cookie = visit.cookie_pair("connect.sid");
        if stored.contains("many") {
            // A readable record with an undecodable field: the field is replaced only
            // because the visit wrote it; the session keeps its id.
            assert_eq!(cookie, Some(cookie_for(&id)), "{stored}");
            assert!(backend.raw(&id).await.unwrap().contains(r#""views":1"#));
        } else {
            // An unreadable record: a new session under a new id; the record is untouched.
            let cookie = cookie.expect("a new session cookie");
            assert_ne!(cookie, cookie_for(&id), "{stored}");
            assert_eq!(backend.raw(&id).await.as_deref(), Some(stored));
        }
    }
    backend.drop_table().await;
}

/// Another app's atomic change to one key, racing this side's saves of another: none is
/// lost, because each save is a compare-and-set that re-applies its keys to a newer record.
async fn saves_keep_concurrent_atomic_changes(backend: Backend) {
    const ROUNDS: u32 = 150;
    let id = new_id();
    let expires = in_minutes(10);
    backend
        .put(
            &id,
            &format!(
                r#"{{"cookie":{{"originalMaxAge":900000,"expires":"{expires}","httpOnly":true,"path":"/"}},"views":0,"other":0}}"#
            ),
        )
        .await;
    let backend = Arc::new(backend);
    let store = backend.store();
    let key = store_key(&id);
    let other = {
        let (backend, id) = (backend.clone(), id.clone());
        tokio::spawn(async move {
            for _ in 0..ROUNDS {
                backend.increment_other(&id).await;
            }
        })
    };
    for views in 1..=ROUNDS {
        let mut write = Record::new(
            Timestamp::now(),
            Timestamp::now().saturating_add(Duration::from_secs(600)),
        );
        write
            .fields
            .insert(Arc::from("views"), Arc::from(views.to_string()));
        assert!(store.save(&key, &write, SaveMode::Merge).await.unwrap());
    }
    other.await.unwrap();
    let record: serde_json::Value = serde_json::from_str(&backend.raw(&id).await.unwrap()).unwrap();
    assert_eq!(record["views"], ROUNDS);
    assert_eq!(
        record["other"], ROUNDS,
        "a save undid the other app's change"
    );
    backend.drop_table().await;
}

/// Each scenario runs on Redis and on PostgreSQL as two tests, each skipped (or, in CI, failed)
/// when its server is absent.
macro_rules! on_redis_and_postgres {
    ($(#[$test:meta] $scenario:ident => $on_redis:ident, $on_postgres:ident;)*) => {$(
        #[$test]
        async fn $on_redis() {
            if let Some(backend) = Backend::redis().await {
                $scenario(backend).await;
            }
        }

        #[$test]
        async fn $on_postgres() {
            if let Some(backend) = Backend::postgres().await {
                $scenario(backend).await;
            }
        }
    )*};
}

on_redis_and_postgres! {
    #[tokio::test]
    unknown_keys_are_kept_byte_for_byte =>
        unknown_keys_and_untouched_values_are_kept_byte_for_byte_on_redis,
        unknown_keys_and_untouched_values_are_kept_byte_for_byte_on_postgres;
    #[tokio::test]
    unreadable_records_are_left_alone =>
        unreadable_records_start_a_new_session_and_stay_as_they_were_on_redis,
        unreadable_records_start_a_new_session_and_stay_as_they_were_on_postgres;
    #[tokio::test(flavor = "multi_thread")]
    saves_keep_concurrent_atomic_changes =>
        saves_never_undo_another_apps_atomic_change_to_another_key_on_redis,
        saves_never_undo_another_apps_atomic_change_to_another_key_on_postgres;
}

#[tokio::test]
async fn redis_ttl_follows_cookie_expires_and_touch_only_moves_the_expiry() {
    let Some(backend) = Backend::redis().await else {
        return;
    };
    let Backend::Redis { redis, prefix, .. } = &backend else {
        unreachable!()
    };
    let app = app(backend.store());
    let reply = send(&app, get("/", None)).await;
    let cookie = reply.cookie_pair("connect.sid").unwrap();
    let id = ExpressSecrets::new(SECRET)
        .unwrap()
        .unsign_value(cookie.trim_start_matches("connect.sid="))
        .unwrap();
    let mut redis = redis.clone();
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}{id}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    // connect-redis: ceil((cookie.expires - now) / 1 s), the 15 minutes of the counter.
    assert!((899..=900).contains(&ttl), "{ttl}");
    let stored = backend.raw(&id).await.unwrap();
    assert!(
        stored.starts_with(r#"{"cookie":{"originalMaxAge":900000,"expires":""#),
        "{stored}"
    );
    assert!(
        stored.ends_with(r#","httpOnly":true,"path":"/","sameSite":"lax"},"views":1}"#),
        "{stored}"
    );

    let later = Timestamp::now().saturating_add(Duration::from_secs(3600));
    assert!(backend.store().touch(&store_key(&id), later).await.unwrap());
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}{id}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((3599..=3600).contains(&ttl), "{ttl}");
    assert_eq!(
        backend.raw(&id).await.unwrap(),
        stored,
        "touch is EXPIRE only"
    );
    // A touch or save of a session that is gone writes nothing.
    let gone = store_key(&new_id());
    assert!(!backend.store().touch(&gone, later).await.unwrap());
    let write = Record::new(Timestamp::now(), later);
    assert!(!backend
        .store()
        .save(&gone, &write, SaveMode::Merge)
        .await
        .unwrap());
}

#[tokio::test]
async fn postgres_expire_is_cookie_expires_rounded_up_to_the_second() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    let Backend::Postgres { pool, table, .. } = &backend else {
        unreachable!()
    };
    let app = app(backend.store());
    let reply = send(&app, get("/", None)).await;
    let cookie = reply.cookie_pair("connect.sid").unwrap();
    let id = ExpressSecrets::new(SECRET)
        .unwrap()
        .unsign_value(cookie.trim_start_matches("connect.sid="))
        .unwrap();
    let (expires, expire): (String, f64) = sqlx::query_as(&format!(
        r#"SELECT sess->'cookie'->>'expires', EXTRACT(EPOCH FROM expire::timestamptz)::float8 FROM "{table}" WHERE sid = $1"#
    ))
    .bind(&id)
    .fetch_one(pool)
    .await
    .unwrap();
    let millis: f64 =
        sqlx::query_scalar("SELECT EXTRACT(EPOCH FROM $1::timestamptz)::float8 * 1000")
            .bind(&expires)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(expire, (millis / 1000.0).ceil(), "{expires}");
    let gone = store_key(&new_id());
    let later = Timestamp::now().saturating_add(Duration::from_secs(3600));
    assert!(!backend.store().touch(&gone, later).await.unwrap());
    backend.drop_table().await;
}

#[test]
fn compat_mode_refuses_what_it_cannot_honour() {
    let express =
        || SessionLayer::express(MemoryStore::new(), ExpressSecrets::new(SECRET).unwrap());
    assert!(express().check().is_ok());
    let refused = [
        express().with_absolute_timeout(Duration::from_secs(3600)),
        express().with_session_lock(Duration::from_secs(5)),
        express().with_transport(Transport::Header),
        express().with_old_key(Key::generate().unwrap()),
        express().with_express_upgrade(MemoryStore::new(), ExpressSecrets::new(SECRET).unwrap()),
        SessionLayer::new(MemoryStore::new(), Key::generate().unwrap())
            .with_express_upgrade(MemoryStore::new(), ExpressSecrets::new(SECRET).unwrap())
            .with_transport(Transport::Both),
    ];
    for layer in refused {
        match layer.check() {
            Err(ConfigError::ExpressCompat(reason)) => assert!(!reason.is_empty()),
            other => panic!("expected an express compat refusal, got {:?}", other.err()),
        }
    }
    assert!(ExpressSecrets::new("").is_err());
}

#[tokio::test]
async fn a_native_layer_cannot_use_an_express_store_by_mistake() {
    let Some(backend) = Backend::redis().await else {
        return;
    };
    // The counter's indexed `user` needs an index the express store does not keep: refused
    // before any request.
    let refused = counter::layer(backend.store(), common::key()).check();
    assert!(
        matches!(refused, Err(session_core::ConfigError::IndexUnsupported(_))),
        "{refused:?}"
    );
    let layer = counter::layer(backend.store(), common::key())
        .without_indexes()
        .check()
        .unwrap();
    let app = counter::app_with(layer);
    let reply = send(&app, get("/", None)).await;
    // The store refuses hashed keys: an error response, not a record Node cannot read.
    assert_eq!(reply.status, 500);
}

#[test]
fn the_counter_user_is_written_in_express_shape_and_reads_a_bare_name_too() {
    let ada = counter::User {
        name: "ada".to_owned(),
    };
    assert_eq!(serde_json::to_string(&ada).unwrap(), r#"{"name":"ada"}"#);
    assert_eq!(
        serde_json::from_str::<counter::User>(r#"{"name":"ada"}"#).unwrap(),
        ada
    );
    assert_eq!(
        serde_json::from_str::<counter::User>(r#""ada""#).unwrap(),
        ada
    );
    assert!(serde_json::from_str::<counter::User>("3").is_err());
}

#[test]
fn session_compat_and_express_store_specs_are_read() {
    assert_eq!(counter::compat_from_spec("").unwrap(), None);
    assert_eq!(
        counter::compat_from_spec(" Express ").unwrap(),
        Some(counter::Compat::Express)
    );
    assert!(counter::compat_from_spec("koa")
        .unwrap_err()
        .contains("express"));
    assert!(counter::is_express_store("connect-redis://127.0.0.1:6379"));
    assert!(counter::is_express_store(
        "connect-pg://postgres@127.0.0.1:5432/test"
    ));
    assert!(!counter::is_express_store("redis://127.0.0.1:6379"));
    assert!(counter::KNOWN_STORES.contains(&"connect-redis://HOST:PORT"));
}

/// (`connect-pg://` is left out: it would create connect-pg-simple's default table in the
/// shared test database, which other tests do not expect.)
#[tokio::test]
async fn the_counter_opens_a_connect_redis_spec() {
    let address = redis_url().trim_start_matches("redis://").to_owned();
    server_or_skip(
        "Redis",
        counter::store_from_spec(&format!("connect-redis://{address}")).await,
    );
}

/// express-session's decision rules hold in compat mode too (the lifecycle is the same code):
/// for every combination of `resave`, `save_uninitialized` and `rolling`, with a
/// browser-session cookie and a touch on every request as express does, whether
/// `connect.sid` is sent and which store calls happen.
#[tokio::test]
async fn express_decision_rules_hold_in_compat_mode() {
    use axum::routing::get as route_get;
    use common::RecordingStore;

    for combination in 0..8u8 {
        let (resave, save_uninit, rolling) = (
            combination & 4 != 0,
            combination & 2 != 0,
            combination & 1 != 0,
        );
        let store = RecordingStore::new();
        let layer = SessionLayer::express(store.clone(), ExpressSecrets::new(SECRET).unwrap())
            .with_resave(resave)
            .with_save_uninitialized(save_uninit)
            .with_rolling(rolling)
            .with_touch_after(Duration::ZERO)
            .check()
            .unwrap();
        let app = counter::routes()
            .route("/noop", route_get(|| async { "ok" }))
            .layer(layer);
        let cell = |what: &str| {
            format!("resave={resave} save_uninit={save_uninit} rolling={rolling}: {what}")
        };

        // New session, unmodified (`/peek` reads only).
        let reply = send(&app, get("/peek", None)).await;
        assert_eq!(
            reply.cookie_pair("connect.sid").is_some(),
            save_uninit,
            "{}",
            cell("new/unmod cookie")
        );
        let expected: &[&str] = if save_uninit { &["create"] } else { &[] };
        assert_eq!(store.ops(), expected, "{}", cell("new/unmod calls"));
        store.clear();

        // New session, modified.
        let reply = send(&app, get("/", None)).await;
        let pair = reply
            .cookie_pair("connect.sid")
            .expect("new/mod sends the cookie");
        assert!(pair.starts_with("connect.sid=s%3A"), "{pair}");
        assert_eq!(store.ops(), ["create"], "{}", cell("new/mod calls"));
        store.clear();

        // Existing session, unmodified.
        let reply = send(&app, get("/peek", Some(&pair))).await;
        assert_eq!(reply.body, "views: 1");
        assert_eq!(
            reply.cookie_pair("connect.sid").is_some(),
            rolling,
            "{}",
            cell("exist/unmod cookie")
        );
        let expected = if resave {
            ["load", "save"]
        } else {
            ["load", "touch"]
        };
        assert_eq!(store.ops(), expected, "{}", cell("exist/unmod calls"));
        store.clear();

        // Existing session, modified.
        let reply = send(&app, get("/", Some(&pair))).await;
        assert_eq!(reply.body, "You visited 2 times");
        assert_eq!(
            reply.cookie_pair("connect.sid").is_some(),
            rolling,
            "{}",
            cell("exist/mod cookie")
        );
        assert_eq!(store.ops(), ["load", "save"], "{}", cell("exist/mod calls"));
        store.clear();

        // A handler that does not take the session costs nothing.
        let reply = send(&app, get("/noop", Some(&pair))).await;
        assert_eq!(reply.cookie_pair("connect.sid"), None);
        assert!(store.ops().is_empty(), "{}", cell("no session taken"));
    }
}
