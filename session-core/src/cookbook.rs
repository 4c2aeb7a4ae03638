//! Recipes for composed apps. Every example here is compiled and run by `cargo test`.
//!
//! # A middleware that requires a login
//!
//! A `from_fn` middleware takes its own view of the session and may hold it across
//! `next.run(request)`: the handler behind it takes views of its own. Views are lenses on the
//! request's one session; their changes are saved together at the end of the request.
//!
//! ```
//! use axum::extract::Request;
//! use axum::middleware::{from_fn, Next};
//! use axum::response::{IntoResponse, Redirect, Response};
//! use axum::routing::get;
//! use axum::Router;
//! use session_core::store::MemoryStore;
//! use session_core::{Key, Session, SessionLayer};
//!
//! #[derive(Session)]
//! struct Auth {
//!     user: Option<String>,
//! }
//!
//! #[derive(Session)]
//! struct Cart {
//!     items: Vec<String>,
//! }
//!
//! async fn require_login(auth: Session<Auth>, request: Request, next: Next) -> Response {
//!     if auth.user().is_none() {
//!         return Redirect::to("/login").into_response();
//!     }
//!     next.run(request).await
//! }
//!
//! async fn cart(cart: Session<Cart>) -> String {
//!     cart.items().join("\n")
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app: Router = Router::new()
//!     .route("/cart", get(cart))
//!     .layer(from_fn(require_login))
//!     // The session layer goes outside (below) the middleware that uses it.
//!     .layer(SessionLayer::new(MemoryStore::new(), Key::generate()?).check()?);
//! # Ok(())
//! # }
//! ```
//!
//! # Two structs in one handler, and a namespaced struct
//!
//! Structs without a namespace share keys on purpose: `Auth.user` and `Visit.user` are the
//! same stored value. `#[session(namespace = "prefs")]` stores a struct's fields as
//! `prefs.theme`, ...: no other struct can read or clobber them, and `clear()` on it clears
//! only them. Two live views changing the same key in one request fail the request with
//! [`SessionError::Conflict`](crate::SessionError::Conflict) rather than lose a change.
//!
//! ```
//! use session_core::Session;
//!
//! #[derive(Session)]
//! struct Visit {
//!     user: Option<String>,
//!     views: u32,
//! }
//!
//! #[derive(Session)]
//! #[session(namespace = "prefs")]
//! struct Prefs {
//!     theme: String,
//!     views: String, // `prefs.views`: unrelated to `Visit.views`
//! }
//!
//! async fn settings(mut visit: Session<Visit>, mut prefs: Session<Prefs>) -> String {
//!     *visit.views_mut() += 1;
//!     prefs.set_theme("dark".into());
//!     format!("{} visits, {} theme", visit.views(), prefs.theme())
//! }
//!
//! async fn reset_preferences(mut prefs: Session<Prefs>) {
//!     prefs.clear(); // the login and the visit count stay
//! }
//! ```
//!
//! # Flash messages, and logout with a message
//!
//! A `#[session(flash)]` field (an `Option<T>`) set in one request is readable in that request
//! and the next, and removed at the end of the next, read or not (Rails' flash). It survives
//! `regenerate`. Fields written after `destroy()` start a new session, so a logout can leave a
//! message for the page it redirects to.
//!
//! ```
//! use axum::response::Redirect;
//! use session_core::Session;
//!
//! #[derive(Session)]
//! struct Visit {
//!     user: Option<String>,
//!     #[session(flash)]
//!     notice: Option<String>,
//! }
//!
//! async fn login(mut visit: Session<Visit>) -> Redirect {
//!     visit.regenerate();
//!     visit.set_user(Some("ada".into()));
//!     visit.set_notice(Some("Welcome, ada".into()));
//!     Redirect::to("/")
//! }
//!
//! async fn logout(mut visit: Session<Visit>) -> Redirect {
//!     visit.destroy();
//!     visit.set_notice(Some("Signed out".into()));
//!     Redirect::to("/")
//! }
//!
//! async fn home(visit: Session<Visit>) -> String {
//!     match visit.notice() {
//!         Some(notice) => format!("{notice}\n"),
//!         None => String::new(),
//!     }
//! }
//! ```
//!
//! # A page that must not create sessions
//!
//! `Option<Session<T>>` is `None` when the request carries no live session and never creates
//! one: a "log in" link for anonymous visitors costs no store write and no cookie.
//!
//! ```
//! use session_core::Session;
//! # #[derive(Session)] struct Visit { user: Option<String> }
//!
//! async fn header(visit: Option<Session<Visit>>) -> String {
//!     match visit.as_ref().and_then(|v| v.user().clone()) {
//!         Some(user) => format!("Signed in as {user}"),
//!         None => "Log in".to_owned(),
//!     }
//! }
//! ```
//!
//! # Key rotation
//!
//! The first key signs; every key verifies; a cookie verified by an old key is re-signed with
//! the new one on its next response. Keep the old key until the longest session has lapsed.
//!
//! ```
//! use session_core::store::MemoryStore;
//! use session_core::{Key, SessionLayer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (new_secret, old_secret) = ([1u8; 32], [2u8; 32]);
//! let layer = SessionLayer::new(MemoryStore::new(), Key::from_bytes(&new_secret)?)
//!     .with_old_key(Key::from_bytes(&old_secret)?)
//!     .check()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Behind a TLS-terminating proxy
//!
//! Trust the proxy by address and serve with the peer address, so `Secure::Auto` believes its
//! `Forwarded` / `X-Forwarded-Proto` header and nobody else's (see [`transport`](crate::transport)):
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use axum::Router;
//! use session_core::store::MemoryStore;
//! use session_core::{Key, SessionLayer};
//!
//! # async fn run(routes: Router) -> Result<(), Box<dyn std::error::Error>> {
//! let layer = SessionLayer::new(MemoryStore::new(), Key::generate()?)
//!     .with_trusted_proxies(["10.0.0.0/8"])
//!     .check()?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
//! axum::serve(
//!     listener,
//!     routes.layer(layer).into_make_service_with_connect_info::<SocketAddr>(),
//! )
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Testing a session flow
//!
//! Drive the app with a test client that keeps cookies like a browser, such as the
//! `axum-test` crate's `TestServer` with `save_cookies()`; `tests/cookbook_flow.rs` in this
//! repository does exactly this for the login, cart, flash and logout flow:
//!
//! ```ignore
//! let server = axum_test::TestServer::builder().save_cookies().build(app)?;
//! server.post("/login").form(&[("name", "ada")]).await;
//! server.get("/me").await.assert_text("user: ada");
//! ```
