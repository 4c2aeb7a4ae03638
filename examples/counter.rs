//! The seed's counter app on the embedded default store.
//!
//! ```sh
//! cargo run --example counter
//! curl -c jar -b jar http://127.0.0.1:3000/     # You visited 1 times
//! curl -c jar -b jar http://127.0.0.1:3000/     # You visited 2 times
//! ```
//!
//! Without a cookie jar, with `SESSION_TRANSPORT=header`:
//!
//! ```sh
//! SESSION_TRANSPORT=header cargo run --example counter
//! TOKEN=$(curl -s -D - -o /dev/null http://127.0.0.1:3000/ | grep -i '^x-session-token:' | cut -d' ' -f2 | tr -d '\r')
//! curl -H "X-Session-Token: $TOKEN" http://127.0.0.1:3000/    # You visited 2 times
//! ```
//!
//! Environment: `PORT` (default 3000), `SESSION_SECRET` (at least 32 bytes; a random key
//! otherwise, so sessions end with the process), `SESSION_STORE` (default `memory`), `SESSION_CACHE` (an in-process cache in front of
//! the store, e.g. `1s`), `SESSION_TRANSPORT` (`cookie`, the default; `header` or `both`
//! for the `X-Session-Token` header), `SESSION_TRUSTED_PROXIES` (proxy addresses or
//! networks whose `Forwarded` / `X-Forwarded-Proto` say whether a request is HTTPS, e.g.
//! `127.0.0.1,10.0.0.0/8`), `RUST_LOG` (default `info`).

use std::net::SocketAddr;

use session_core::Key;
use tracing_subscriber::EnvFilter;
use typed_sessions::counter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT must be a port number, not {port:?}"))?,
        Err(_) => 3000,
    };
    let key = match std::env::var("SESSION_SECRET") {
        Ok(secret) => {
            Key::from_bytes(secret.as_bytes()).map_err(|e| format!("SESSION_SECRET: {e}"))?
        }
        Err(_) => {
            tracing::warn!(
                "SESSION_SECRET is not set: signing with a random key, so sessions end when the process exits"
            );
            Key::generate()?
        }
    };
    let spec = std::env::var("SESSION_STORE").unwrap_or_default();
    let store = counter::store_from_spec(&spec).await?;
    let store = counter::with_cache(store, &std::env::var("SESSION_CACHE").unwrap_or_default())?;
    let transport =
        counter::transport_from_spec(&std::env::var("SESSION_TRANSPORT").unwrap_or_default())?;
    let proxies = counter::trusted_proxies_from_spec(
        &std::env::var("SESSION_TRUSTED_PROXIES").unwrap_or_default(),
    );
    let mut layer = counter::layer(store, key).with_transport(transport);
    if !proxies.is_empty() {
        layer = layer.with_trusted_proxies(proxies);
    }
    let layer = layer.check().map_err(|e| format!("session options: {e}"))?;

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(
        store = %counter::redact(if spec.is_empty() { "memory" } else { &spec }),
        "counter app listening on http://{addr}"
    );
    // The peer address lets the session layer tell a trusted proxy from anyone else.
    let app = counter::app_with(layer);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
