//! Typed, server-side sessions for [axum]: express-session's `req.session`, checked by the
//! compiler.
//!
//! Derive [`Session`](derive@Session) on a plain struct, add a [`SessionLayer`], and take
//! [`Session<T>`](struct@Session) as a handler argument:
//!
//! ```
//! use axum::{routing::get, Router};
//! use session_core::store::MemoryStore;
//! use session_core::{Key, Session, SessionLayer};
//!
//! #[derive(Session)]
//! struct Visit {
//!     user: Option<String>,
//!     views: u32,
//! }
//!
//! async fn home(mut visit: Session<Visit>) -> String {
//!     *visit.views_mut() += 1; // marks only `views` for saving
//!     format!("You visited {} times", visit.views())
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = Key::generate()?; // in production: Key::from_bytes(secret_from_config)?
//! let app: Router = Router::new()
//!     .route("/", get(home))
//!     .layer(SessionLayer::new(MemoryStore::new(), key).check()?);
//! # Ok(())
//! # }
//! ```
//!
//! # What the derive gives
//!
//! For each field `name: T` the session has `name() -> &T`, `name_mut() -> &mut T` and
//! `set_name(T)`. Accessors are inherent methods of a generated view that `Session<Visit>`
//! derefs to, so no trait import is needed, a misspelt field is a compile error, and a
//! non-`mut` binding cannot mutate. The attributes are documented on
//! [the derive](derive@Session); recipes for composed apps (middleware, several structs,
//! namespaces, flash messages, optional sessions, testing) are in [`cookbook`].
//!
//! # Saving precisely
//!
//! Each field is stored as its own JSON value. A field counts as changed only if its encoding
//! differs from what was loaded, and only changed fields are written; so a handler that only
//! reads writes nothing, and two requests changing different fields both keep their change.
//! Stored fields the struct does not know are kept; a stored field that no longer decodes
//! falls back to its default (with a warning) and is not overwritten unless written.
//!
//! When the store is written, and when `Set-Cookie` is sent, follows express-session's
//! rules; see [`lifecycle`].
//!
//! # Cookies, headers and proxies
//!
//! The signed token travels in a cookie by default, or in a header for API and mobile
//! clients (`X-Session-Token` or `Authorization: Bearer`); `Secure::Auto` believes only the
//! connection and the proxies you trust by address. See [`transport`].
//!
//! # CSRF tokens
//!
//! Sessions are where CSRF tokens live: keep an `Option<`[`csrf::CsrfToken`]`>` field, put it
//! in every form, and [`csrf::verify`] it before a POST changes anything. See [`csrf`].
//!
//! # Features
//!
//! - `axum` (default): the layer and the extractor.
//! - `conformance`: the store conformance suite, to test your own [`Store`].
//!
//! [axum]: https://docs.rs/axum

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(unreachable_pub)]
#![cfg_attr(not(feature = "axum"), allow(dead_code))]

mod codec;
mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "axum")]
pub mod cookbook;
mod cookie;
pub mod csrf;
mod data;
mod error;
pub mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod id;
pub mod index;
pub mod lifecycle;
#[cfg(test)]
mod proptests;
mod record;
mod registry;
mod session;
pub mod store;

#[cfg(feature = "axum")]
mod extract;
#[cfg(feature = "axum")]
mod layer;
#[cfg(feature = "axum")]
pub mod transport;

pub use crate::codec::ExpressSecrets;
pub use crate::config::{ConfigError, Priority, SameSite, SaveErrors, Secure};
pub use crate::cookie::{Key, KeyError};
pub use crate::data::SessionData;
pub use crate::error::SessionError;
pub use crate::events::{MetricsSnapshot, SessionEvent, SessionEvents, SessionMetrics, ShortId};
#[cfg(feature = "axum")]
pub use crate::extract::SessionRejection;
pub use crate::id::{SessionId, StoreKey};
#[cfg(feature = "axum")]
pub use crate::layer::{ResponseFuture, SessionLayer, SessionService};
pub use crate::record::{Fields, Record, SaveMode, Timestamp};
pub use crate::session::Session;
pub use crate::store::{Store, StoreError};
#[cfg(feature = "axum")]
pub use crate::transport::{TlsConnection, TokenHeader, Transport};

/// Derives [`SessionData`] and the typed accessors of [`Session<T>`](struct@Session).
///
/// For each field `name: T`, `Session<Struct>` gets `name() -> &T`, `name_mut() -> &mut T`
/// (marks the field; it is written only if its encoding changes) and `set_name(T)`, with the
/// field's visibility. They appear in your crate's `cargo doc` on the generated view type,
/// `__Struct_SessionView`, which `Session<Struct>` derefs to.
///
/// # Struct attributes
///
/// - `#[session(namespace = "prefs")]`: every field is stored under `prefs.<key>`, so no other
///   struct can read or overwrite it, and `clear()` clears only this namespace. A name of
///   letters, digits, `_` and `-`. Without it, structs share keys on purpose (`Auth.user` and
///   `Visit.user` are one value).
/// - `#[session(crate = "path")]`: where generated code finds this crate, when it is
///   re-exported under another name.
///
/// # Field attributes
///
/// - `#[session(rename = "key")]`: the key the field is stored under (default: its name).
///   Keys starting with `session-core:` are reserved.
/// - `#[session(default = path)]` (or `"path"`): a function giving the value when the store
///   has none; without it, `Default::default()`.
/// - `#[session(flash)]`, on an `Option<T>` field: a flash message. A value set in one request
///   is readable in it and in the next, and removed at the end of the next, read or not; it
///   survives `regenerate`, and a value set after `destroy()` rides the new session.
/// - `#[session(index)]`, on an `Option<T>` field whose `T` is an
///   [`IndexValue`](crate::index::IndexValue) (integers, `String`, `bool`, `char`, or your own
///   type): the store keeps the set of sessions holding each value, and the derive generates
///   `Struct::<field>_index()` to list, count and revoke them with
///   [`SessionIndex`](crate::index::SessionIndex). Not with `flash`.
///
/// The derive also registers the struct, so the layer's `check()` can refuse two structs that
/// store one un-namespaced key with different types (see
/// [`ConfigError::KeyTypeConflict`]).
///
/// Field names that `Session` itself uses (`id`, `data`, `regenerate`, `clear`, `destroy`,
/// `reload`, `save`, `touch`, `cookie_max_age`, ...) are refused: keep the stored key with
/// `rename` and choose another Rust name.
///
/// ```
/// use session_core::Session;
///
/// #[derive(Session)]
/// #[session(namespace = "shop")]
/// struct Shop {
///     #[session(rename = "items", default = starter_cart)]
///     cart: Vec<String>,
///     #[session(flash)]
///     notice: Option<String>,
/// }
///
/// fn starter_cart() -> Vec<String> {
///     vec!["welcome-gift".to_owned()]
/// }
/// ```
pub use session_derive::Session;

/// What generated code uses. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::data::{
        assert_field, collect_field, decode_field, lazy_collect, lazy_get, lazy_get_mut,
        lazy_snapshot, load_field, FieldState, LazyField, SessionData, SessionView,
    };
    pub use crate::index::{Index, IndexedField};
    pub use crate::record::Fields;
    pub use crate::registry::{RegisteredField, Registration};
    pub use inventory;
    pub use serde_json::Error as EncodeError;
}
