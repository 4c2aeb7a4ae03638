//! CSRF protection with a token kept in the session (the synchronizer-token pattern).
//!
//! A cross-site form post carries the victim's cookie but cannot read the victim's pages, so
//! it cannot know a secret the server put in them. The rules:
//!
//! - keep an `Option<CsrfToken>` field in your session struct;
//! - when rendering a form, call [`CsrfToken::issue`] on it and put
//!   [`as_str`](CsrfToken::as_str) in a hidden input (conventionally named `_csrf`);
//! - on every state-changing request, call [`verify`] with the stored token and the submitted
//!   one **before changing anything**; its error answers `403 Forbidden`;
//! - issue a fresh token at login ([`CsrfToken::rotate`]), with `regenerate()`, so a token
//!   seen before login is worthless after it.
//!
//! Tokens are 32 bytes from the OS CSPRNG, base64url-encoded; they are compared in constant
//! time. `SameSite=Lax` (the layer's default) already stops most cross-site posts in modern
//! browsers; the token also covers older browsers, same-site subdomains and `SameSite=None`.
//!
//! ```
//! use session_core::csrf::{self, CsrfToken};
//! use session_core::Session;
//!
//! #[derive(Session)]
//! struct Shopper {
//!     csrf: Option<CsrfToken>,
//!     cart: Vec<String>,
//! }
//!
//! // GET: render the form with the session's token.
//! fn form(shopper: &mut Session<Shopper>) -> String {
//!     let token = CsrfToken::issue(shopper.csrf_mut());
//!     format!(r#"<form method="post"><input type="hidden" name="_csrf" value="{}">…</form>"#, token.as_str())
//! }
//!
//! // POST: check first, then change.
//! fn add(shopper: &mut Session<Shopper>, submitted: Option<&str>, item: String) -> Result<(), csrf::CsrfError> {
//!     csrf::verify(shopper.csrf().as_ref(), submitted)?;
//!     shopper.cart_mut().push(item);
//!     Ok(())
//! }
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// A CSRF token: 32 random bytes, base64url-encoded. Keep it in an `Option<CsrfToken>` field
/// of the session; see the [module docs](self).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CsrfToken(String);

impl CsrfToken {
    /// A new random token.
    ///
    /// # Panics
    /// Only when the operating system cannot provide random bytes, as a session id would fail.
    pub fn generate() -> Self {
        let mut raw = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut raw).expect("the OS random number generator failed");
        Self(URL_SAFE_NO_PAD.encode(raw))
    }

    /// The session's token, issuing one first if it has none: call it when rendering a form.
    pub fn issue(field: &mut Option<CsrfToken>) -> &CsrfToken {
        field.get_or_insert_with(Self::generate)
    }

    /// Replaces the session's token with a new one (at login, beside `regenerate()`).
    pub fn rotate(field: &mut Option<CsrfToken>) -> &CsrfToken {
        field.insert(Self::generate())
    }

    /// The token as it goes into a form's hidden input.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for CsrfToken {
    // A token is a secret: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfToken(***)")
    }
}

/// Why a request's CSRF token was refused. As a response (with the `axum` feature), it is
/// `403 Forbidden`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrfError {
    /// The session holds no token: no form was rendered for it (or it ended).
    #[error("the session has no CSRF token")]
    NoSessionToken,
    /// The request carried no token.
    #[error("the request carried no CSRF token")]
    Missing,
    /// The request's token is not the session's.
    #[error("the request's CSRF token does not match the session's")]
    Mismatch,
}

/// Checks a submitted token against the session's, in constant time.
///
/// # Errors
/// [`CsrfError`] when the session has no token, the request sent none, or they differ.
pub fn verify(stored: Option<&CsrfToken>, submitted: Option<&str>) -> Result<(), CsrfError> {
    let stored = stored.ok_or(CsrfError::NoSessionToken)?;
    let submitted = submitted
        .filter(|s| !s.is_empty())
        .ok_or(CsrfError::Missing)?;
    if constant_time_eq(stored.0.as_bytes(), submitted.as_bytes()) {
        Ok(())
    } else {
        Err(CsrfError::Mismatch)
    }
}

/// Equality whose time depends only on the lengths (a token's length is no secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for CsrfError {
    fn into_response(self) -> axum_core::response::Response {
        (
            http::StatusCode::FORBIDDEN,
            "Forbidden: this form has expired or did not come from this site. Go back, reload the page and try again.",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_43_base64url_characters() {
        let a = CsrfToken::generate();
        let b = CsrfToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 43);
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn issue_keeps_an_existing_token_and_rotate_replaces_it() {
        let mut field = None;
        let first = CsrfToken::issue(&mut field).clone();
        assert_eq!(CsrfToken::issue(&mut field), &first);
        let rotated = CsrfToken::rotate(&mut field).clone();
        assert_ne!(rotated, first);
        assert_eq!(field, Some(rotated));
    }

    #[test]
    fn the_matching_token_is_accepted() {
        let token = CsrfToken::generate();
        assert_eq!(verify(Some(&token), Some(token.as_str())), Ok(()));
    }

    #[test]
    fn a_missing_empty_or_wrong_token_is_refused() {
        let token = CsrfToken::generate();
        assert_eq!(verify(Some(&token), None), Err(CsrfError::Missing));
        assert_eq!(verify(Some(&token), Some("")), Err(CsrfError::Missing));
        let other = CsrfToken::generate();
        assert_eq!(
            verify(Some(&token), Some(other.as_str())),
            Err(CsrfError::Mismatch)
        );
        let prefix = &token.as_str()[..10];
        assert_eq!(verify(Some(&token), Some(prefix)), Err(CsrfError::Mismatch));
    }

    #[test]
    fn a_session_without_a_token_accepts_nothing() {
        assert_eq!(
            verify(None, Some("anything")),
            Err(CsrfError::NoSessionToken)
        );
    }

    #[test]
    fn tokens_round_trip_as_plain_json_strings_and_debug_hides_them() {
        let token = CsrfToken::generate();
        let json = serde_json::to_string(&token).unwrap();
        assert_eq!(json, format!("\"{}\"", token.as_str()));
        assert_eq!(serde_json::from_str::<CsrfToken>(&json).unwrap(), token);
        assert_eq!(format!("{token:?}"), "CsrfToken(***)");
    }

    #[cfg(feature = "axum")]
    #[test]
    fn a_refusal_is_a_403() {
        use axum_core::response::IntoResponse as _;
        assert_eq!(
            CsrfError::Mismatch.into_response().status(),
            http::StatusCode::FORBIDDEN
        );
    }
}
