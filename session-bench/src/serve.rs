//! The server side: one process per variant, started by the benchmark as
//! `session-bench serve VARIANT`.
//!
//! Every variant serves the same routes with the same handlers and payloads; only the session
//! machinery differs:
//!
//! | route | handler |
//! |---|---|
//! | `GET /lazy` | `"ok"`, never touching the session |
//! | `GET /` | counts the visit: `views += 1`, answers `You visited N times` |
//! | `GET /peek` | `views: N`, changing nothing |
//! | `GET /__bigcart` | setup: puts a 64 KB `cart` in the session |
//! | `GET /__stats` | the store counters (outside the session layer) |
//! | `GET /__cleanup` | deletes what the variant wrote to Redis (outside the session layer) |
//!
//! The process prints `listening ADDR` once it accepts connections, and exits when its
//! standard input closes, so a benchmark that dies takes its servers with it.

use std::io::{BufRead, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;

use crate::counting::{CountingStore, CountingTowerStore, CreatedIds, Stats};
use crate::variant::Variant;

/// The prefix of every Redis key session-core's store writes in the benchmark.
pub const OURS_REDIS_PREFIX: &str = "session-bench:";
/// Items in the large cart, and the length of each: the cart encodes to 64 KiB of JSON.
const CART_ITEMS: usize = 1024;
const CART_ITEM_LEN: usize = 61;

/// The 64 KiB cart of the large-session scenario.
fn big_cart() -> Vec<String> {
    (0..CART_ITEMS)
        .map(|i| {
            let mut item = format!("item-{i:04}-");
            while item.len() < CART_ITEM_LEN {
                item.push('x');
            }
            item
        })
        .collect()
}

/// The handlers on session-core: `#[derive(Session)]` and `Session<Visit>`.
mod ours {
    use session_core::Session;

    #[derive(Session)]
    pub struct Visit {
        views: u32,
        cart: Vec<String>,
    }

    pub async fn home(mut visit: Session<Visit>) -> String {
        *visit.views_mut() += 1;
        format!("You visited {} times", visit.views())
    }

    pub async fn peek(visit: Session<Visit>) -> String {
        format!("views: {}", visit.views())
    }

    pub async fn big_cart(mut visit: Session<Visit>) -> &'static str {
        visit.set_cart(super::big_cart());
        "ok"
    }
}

/// The same handlers on tower-sessions, with its idiomatic `get` / `insert`; the cart under
/// its own key, so both sides keep the same data shape.
mod tower {
    use axum::http::StatusCode;
    use tower_sessions::Session;

    fn internal(error: tower_sessions::session::Error) -> StatusCode {
        eprintln!("session error: {error}");
        StatusCode::INTERNAL_SERVER_ERROR
    }

    pub async fn home(session: Session) -> Result<String, StatusCode> {
        let views = session
            .get::<u32>("views")
            .await
            .map_err(internal)?
            .unwrap_or(0)
            + 1;
        session.insert("views", views).await.map_err(internal)?;
        Ok(format!("You visited {views} times"))
    }

    pub async fn peek(session: Session) -> Result<String, StatusCode> {
        let views = session
            .get::<u32>("views")
            .await
            .map_err(internal)?
            .unwrap_or(0);
        Ok(format!("views: {views}"))
    }

    pub async fn big_cart(session: Session) -> Result<&'static str, StatusCode> {
        session
            .insert("cart", super::big_cart())
            .await
            .map_err(internal)?;
        Ok("ok")
    }
}

/// Bare axum: the same answers, with no session.
mod bare {
    pub async fn home() -> String {
        format!("You visited {} times", 1)
    }

    pub async fn peek() -> String {
        format!("views: {}", 1)
    }

    pub async fn big_cart() -> &'static str {
        "ok"
    }
}

async fn lazy() -> &'static str {
    "ok"
}

/// What the bookkeeping routes need.
#[derive(Clone)]
struct Admin {
    stats: Arc<Stats>,
    sessions: Arc<dyn Fn() -> u64 + Send + Sync>,
    cleanup: Cleanup,
    redis_url: Arc<str>,
}

/// What `/__cleanup` deletes.
#[derive(Clone)]
enum Cleanup {
    Nothing,
    /// session-core's Redis keys: everything under [`OURS_REDIS_PREFIX`].
    Prefix(String),
    /// tower-sessions' Redis keys: the ids the counting store saw created.
    TowerIds(CreatedIds),
}

async fn stats_route(State(admin): State<Admin>) -> String {
    admin.stats.render((admin.sessions)())
}

async fn cleanup_route(State(admin): State<Admin>) -> String {
    let redis_url = &*admin.redis_url;
    let result = match &admin.cleanup {
        Cleanup::Nothing => Ok(0),
        Cleanup::Prefix(prefix) => delete_prefix(redis_url, prefix).await,
        Cleanup::TowerIds(ids) => {
            let ids = std::mem::take(&mut *ids.lock().unwrap_or_else(|p| p.into_inner()));
            let keys: Vec<String> = ids.iter().map(ToString::to_string).collect();
            delete_keys(redis_url, keys).await
        }
    };
    match result {
        Ok(deleted) => format!("deleted={deleted}"),
        Err(error) => format!("error={error}"),
    }
}

/// Deletes every Redis key starting with `prefix`; returns how many there were.
pub async fn delete_prefix(url: &str, prefix: &str) -> redis::RedisResult<u64> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut connection)
                .await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// Deletes `keys` from Redis in batches; returns how many existed.
async fn delete_keys(url: &str, keys: Vec<String>) -> redis::RedisResult<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut deleted = 0;
    for batch in keys.chunks(1000) {
        let n: u64 = redis::cmd("UNLINK")
            .arg(batch)
            .query_async(&mut connection)
            .await?;
        deleted += n;
    }
    Ok(deleted)
}

/// The app of `variant`: its session routes behind its session layer, and the bookkeeping
/// routes outside it.
async fn app(variant: Variant, redis_url: &str) -> Result<Router, String> {
    let stats = Arc::new(Stats::default());
    let counted = {
        let stats = stats.clone();
        Arc::new(move || {
            let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            n(&stats.creates).saturating_sub(n(&stats.deletes))
        })
    };
    let key = session_core::Key::from_bytes(&[0x5a; 64]).map_err(|e| e.to_string())?;
    let (routes, sessions, cleanup): (Router, Arc<dyn Fn() -> u64 + Send + Sync>, Cleanup) =
        match variant {
            Variant::Bare => (
                Router::new()
                    .route("/", get(bare::home))
                    .route("/peek", get(bare::peek))
                    .route("/__bigcart", get(bare::big_cart))
                    .route("/lazy", get(lazy)),
                Arc::new(|| 0),
                Cleanup::Nothing,
            ),
            Variant::OursMem
            | Variant::OursRedis
            | Variant::OursMemLocked
            | Variant::OursRedisLocked
            | Variant::OursMemMaxAge
            | Variant::OursRedisMaxAge => {
                let locked = |layer: session_core::SessionLayer| match variant {
                    Variant::OursMemLocked | Variant::OursRedisLocked => {
                        layer.with_session_lock(std::time::Duration::from_secs(5))
                    }
                    // The counter app's setting.
                    Variant::OursMemMaxAge | Variant::OursRedisMaxAge => {
                        layer.with_max_age(std::time::Duration::from_secs(15 * 60))
                    }
                    _ => layer,
                };
                let routes = Router::new()
                    .route("/", get(ours::home))
                    .route("/peek", get(ours::peek))
                    .route("/__bigcart", get(ours::big_cart))
                    .route("/lazy", get(lazy));
                if !variant.uses_redis() {
                    let memory = session_core::store::MemoryStore::new();
                    let len = memory.clone();
                    let layer = locked(session_core::SessionLayer::new(
                        CountingStore::new(memory, stats.clone()),
                        key,
                    ))
                    .check()
                    .map_err(|e| e.to_string())?;
                    (
                        routes.layer(layer),
                        Arc::new(move || len.len() as u64),
                        Cleanup::Nothing,
                    )
                } else {
                    let store = session_core::store::RedisStore::connect(redis_url)
                        .await
                        .map_err(|e| format!("session-core RedisStore: {e}"))?
                        .with_prefix(OURS_REDIS_PREFIX);
                    let layer = locked(session_core::SessionLayer::new(
                        CountingStore::new(store, stats.clone()),
                        key,
                    ))
                    .check()
                    .map_err(|e| e.to_string())?;
                    (
                        routes.layer(layer),
                        counted,
                        Cleanup::Prefix(OURS_REDIS_PREFIX.to_owned()),
                    )
                }
            }
            Variant::TowerMem | Variant::TowerRedis => {
                let routes = Router::new()
                    .route("/", get(tower::home))
                    .route("/peek", get(tower::peek))
                    .route("/__bigcart", get(tower::big_cart))
                    .route("/lazy", get(lazy));
                if variant == Variant::TowerMem {
                    let store = CountingTowerStore::new(
                        tower_sessions::MemoryStore::default(),
                        stats.clone(),
                        false,
                    );
                    let layer = tower_sessions::SessionManagerLayer::new(store).with_secure(false);
                    (routes.layer(layer), counted, Cleanup::Nothing)
                } else {
                    use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
                    // As tower-sessions-redis-store's own example sets it up.
                    let config = Config::from_url(redis_url).map_err(|e| e.to_string())?;
                    let pool = Pool::new(config, None, None, None, 6).map_err(|e| e.to_string())?;
                    pool.init()
                        .await
                        .map_err(|e| format!("tower-sessions RedisStore: {e}"))?;
                    let store = CountingTowerStore::new(
                        tower_sessions_redis_store::RedisStore::new(pool),
                        stats.clone(),
                        true,
                    );
                    let ids = store.created().unwrap_or_default();
                    let layer = tower_sessions::SessionManagerLayer::new(store).with_secure(false);
                    (routes.layer(layer), counted, Cleanup::TowerIds(ids))
                }
            }
        };
    let admin = Admin {
        stats,
        sessions,
        cleanup,
        redis_url: Arc::from(redis_url),
    };
    let bookkeeping = Router::new()
        .route("/__stats", get(stats_route))
        .route("/__cleanup", get(cleanup_route))
        .with_state(admin);
    Ok(routes.merge(bookkeeping))
}

/// Runs the server of `variant` until standard input closes. The runtime has a worker per
/// core, as `#[tokio::main]` would give it.
pub fn serve(variant: Variant, redis_url: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let app = app(variant, redis_url).await?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening {addr}");
        let _ = stdout.flush();
        std::thread::spawn(|| {
            // Parent gone (or done with us): stdin reaches end of file.
            for line in std::io::stdin().lock().lines() {
                if line.is_err() {
                    break;
                }
            }
            std::process::exit(0);
        });
        axum::serve(listener, app).await.map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_big_cart_encodes_to_64_kib() {
        let json = serde_json::to_string(&super::big_cart()).unwrap();
        assert!((65_000..=66_000).contains(&json.len()), "{}", json.len());
    }
}
