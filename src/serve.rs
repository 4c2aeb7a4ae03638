//! What both example apps do in `main`: read the environment, build the session layer, serve.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use session_core::store::Store;
use session_core::{ExpressSecrets, Key, SessionLayer};
use tracing_subscriber::EnvFilter;

use crate::counter;

/// Serves an app on `127.0.0.1:$PORT` with the session options the environment gives:
/// `PORT` (default 3000), `SESSION_SECRET`, `SESSION_STORE`, `SESSION_CACHE`,
/// `SESSION_TRANSPORT`, `SESSION_TRUSTED_PROXIES`, `SESSION_COMPAT` and `RUST_LOG` (see the
/// README).
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
    serve_with_compat(name, layer, None, app).await
}

/// Builds an app's session layer in express-session compatibility mode.
pub type ExpressLayerFn = fn(Arc<dyn Store>, ExpressSecrets) -> SessionLayer;

/// [`serve_from_env`] for an app that also has an express-session compatibility mode:
/// `SESSION_COMPAT=express` builds its layer with `express_layer`, from `SESSION_SECRET` taken
/// as express takes it (any length, required) and a store from `SESSION_STORE`
/// (`connect-redis://` or `connect-pg://` to share sessions with a Node app).
///
/// # Errors
/// As [`serve_from_env`]; also when `SESSION_COMPAT` asks for a mode the app does not have,
/// when the mode has no `SESSION_SECRET`, or when the store needs the other mode.
pub async fn serve_with_compat(
    name: &str,
    layer: fn(Arc<dyn Store>, Key) -> SessionLayer,
    express_layer: Option<ExpressLayerFn>,
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
    let compat = counter::compat_from_spec(&std::env::var("SESSION_COMPAT").unwrap_or_default())?;
    let spec = std::env::var("SESSION_STORE").unwrap_or_default();
    if compat.is_none() && counter::is_express_store(&spec) {
        return Err(format!(
            "SESSION_STORE {:?} keeps express-session's records: set SESSION_COMPAT=express",
            counter::redact(&spec)
        )
        .into());
    }
    let layer: Box<dyn FnOnce(Arc<dyn Store>) -> SessionLayer> = match compat {
        Some(counter::Compat::Express) => {
            let express_layer = express_layer
                .ok_or_else(|| format!("the {name} has no express-session compatibility mode"))?;
            let secret = std::env::var("SESSION_SECRET").map_err(|_| {
                "SESSION_COMPAT=express needs SESSION_SECRET: the express app's secret".to_owned()
            })?;
            let secrets =
                ExpressSecrets::new(&secret).map_err(|e| format!("SESSION_SECRET: {e}"))?;
            Box::new(move |store| express_layer(store, secrets))
        }
        None => {
            let key = native_key()?;
            Box::new(move |store| layer(store, key))
        }
    };
    let store = counter::store_from_spec(&spec).await?;
    let store = counter::with_cache(store, &std::env::var("SESSION_CACHE").unwrap_or_default())?;
    let transport =
        counter::transport_from_spec(&std::env::var("SESSION_TRANSPORT").unwrap_or_default())?;
    let proxies = counter::trusted_proxies_from_spec(
        &std::env::var("SESSION_TRUSTED_PROXIES").unwrap_or_default(),
    );
    let mut layer = layer(store).with_transport(transport);
    if !proxies.is_empty() {
        layer = layer.with_trusted_proxies(proxies);
    }
    let layer = layer.check().map_err(|e| format!("session options: {e}"))?;

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(
        store = %counter::redact(if spec.is_empty() { "memory" } else { &spec }),
        compat = if compat.is_some() { "express" } else { "none" },
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

/// The native key from `SESSION_SECRET` (at least 32 bytes), or a random one.
fn native_key() -> Result<Key, Box<dyn std::error::Error>> {
    Ok(match std::env::var("SESSION_SECRET") {
        Ok(secret) => {
            Key::from_bytes(secret.as_bytes()).map_err(|e| format!("SESSION_SECRET: {e}"))?
        }
        Err(_) => {
            tracing::warn!(
                "SESSION_SECRET is not set: signing with a random key, so sessions end when the process exits"
            );
            Key::generate()?
        }
    })
}
