//! The seed's counter app on the embedded default store.
//!
//! ```sh
//! cargo run --example counter
//! curl -c jar -b jar http://127.0.0.1:3000/     # You visited 1 times
//! curl -c jar -b jar http://127.0.0.1:3000/     # You visited 2 times
//! ```
//!
//! Environment: `PORT` (default 3000), `SESSION_SECRET` (at least 32 bytes; a random key
//! otherwise, so sessions end with the process), `SESSION_STORE` (default `memory`), `SESSION_CACHE` (an in-process cache in front of
//! the store, e.g. `1s`),
//! `RUST_LOG` (default `info`).

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

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(
        store = %counter::redact(if spec.is_empty() { "memory" } else { &spec }),
        "counter app listening on http://{addr}"
    );
    axum::serve(listener, counter::app(store, key))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
