//! A small shop on typed sessions: catalogue, cart, login with "remember me", flash
//! messages, CSRF-protected forms and logout, as server-rendered HTML.
//!
//! ```sh
//! cargo run --example shop        # then open http://127.0.0.1:3000
//! ```
//!
//! Environment, as for the counter app: `PORT` (default 3000), `SESSION_SECRET` (at least 32
//! bytes; a random key otherwise, so sessions end with the process), `SESSION_STORE` (default
//! `memory`), `SESSION_CACHE` (an in-process cache in front of the store, e.g. `1s`),
//! `SESSION_TRANSPORT`, `SESSION_TRUSTED_PROXIES`, `RUST_LOG` (default `info`).

use typed_sessions::{serve, shop};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serve::serve_from_env("shop", shop::layer, shop::app_with).await
}
