//! What both example apps do in `main`: read the environment, build the session layer, serve.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use session_core::store::Store;
use session_core::{Key, SessionLayer};
use tracing_subscriber::EnvFilter;

use crate::counter;

/// Serves an app on `127.0.0.1:$PORT` with the session options the environment gives:
/// `PORT` (default 3000), `SESSION_SECRET`, `SESSION_STORE`, `SESSION_CACHE`,
/// `SESSION_TRANSPORT`, `SESSION_TRUSTED_PROXIES` and `RUST_LOG` (see the README).
/// `layer` builds the app's session layer from the store and key, `app` puts the routes
/// behind it. Returns on Ctrl-C.
///
/// # Errors
/// A message for a bad setting, a store that cannot be opened, or a port that cannot be bound.
pub async fn serve_from_env(
    name: &str,
    layer: fn(Arc<dyn Store>, Key) -> SessionLayer,
    app: fn(SessionLayer) -> Router,
) -> Result<(), Box<dyn std::error::Error>> {
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
    let mut layer = layer(store, key).with_transport(transport);
    if !proxies.is_empty() {
        layer = layer.with_trusted_proxies(proxies);
    }
    let layer = layer.check().map_err(|e| format!("session options: {e}"))?;

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(
        store = %counter::redact(if spec.is_empty() { "memory" } else { &spec }),
        "{name} listening on http://{addr}"
    );
    // The peer address lets the session layer tell a trusted proxy from anyone else.
    axum::serve(
        listener,
        app(layer).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
