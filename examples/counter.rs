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
//! `127.0.0.1,10.0.0.0/8`), `SESSION_COMPAT` (`express` to share sessions with an express-session app:
//! cookie `connect.sid`, `SESSION_SECRET` as express takes it, `SESSION_STORE` as
//! `connect-redis://HOST:PORT` or `connect-pg://USER@HOST:PORT/DB`), `RUST_LOG` (default
//! `info`).

use typed_sessions::{counter, serve};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serve::serve_with_compat(
        "counter app",
        counter::layer,
        Some(counter::express_layer),
        counter::app_with,
    )
    .await
}
