//! `Session<T>` as an axum extractor.

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;

use crate::data::SessionData;
use crate::error::{log_failure, SessionError};
use crate::layer::{error_response, OutsidePath, SessionHandle};
use crate::session::Session;

impl<S, T> FromRequestParts<S> for Session<T>
where
    S: Send + Sync,
    T: SessionData,
{
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let handle = handle(parts).map_err(SessionRejection::misuse)?;
        load(parts, &handle).await?;
        Ok(Session::checked_out(handle.0))
    }
}

/// `Option<Session<T>>`: the session if the request carries a live one, `None` otherwise
/// (no cookie, a cookie whose session is gone, or a path outside the cookie's). Taking it
/// never creates a session, sets no cookie and writes nothing; a handler that gets `Some` and
/// changes it saves as usual. For "show the login link unless logged in" pages, which must not
/// create a session for every anonymous visitor.
impl<S, T> OptionalFromRequestParts<S> for Session<T>
where
    S: Send + Sync,
    T: SessionData,
{
    type Rejection = SessionRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if parts.extensions.get::<OutsidePath>().is_some() {
            return Ok(None);
        }
        let handle = handle(parts).map_err(SessionRejection::misuse)?;
        load(parts, &handle).await?;
        Ok(handle
            .0
            .has_stored_session()
            .then(|| Session::checked_out(handle.0)))
    }
}

/// The request's session handle, or why there is none.
pub(crate) fn handle(parts: &Parts) -> Result<SessionHandle, SessionError> {
    if let Some(handle) = parts.extensions.get::<SessionHandle>() {
        return Ok(handle.clone());
    }
    let error = if parts.extensions.get::<OutsidePath>().is_some() {
        SessionError::OutsidePath
    } else {
        SessionError::MissingLayer
    };
    tracing::error!(%error, path = parts.uri.path(), "session extractor misused");
    Err(error)
}

/// Loads the request's session, once per request.
pub(crate) async fn load(
    parts: &Parts,
    SessionHandle(state, delivery): &SessionHandle,
) -> Result<(), SessionRejection> {
    let reject = |error: SessionError| {
        log_failure(&error, "session could not be loaded");
        SessionRejection {
            response: Some(error_response(&state.config, &error)),
            error,
        }
    };
    let find = || crate::transport::lookup(&state.config, *delivery, &parts.headers);
    state.load(find).await.map_err(reject)
}

/// Why `Session<T>` could not be extracted; answers with the layer's error status.
#[derive(Debug)]
pub struct SessionRejection {
    error: SessionError,
    response: Option<Response>,
}

impl SessionRejection {
    /// A programming error: answered with a plain 500.
    pub(crate) fn misuse(error: SessionError) -> Self {
        Self {
            error,
            response: None,
        }
    }

    /// The underlying error.
    pub fn error(&self) -> &SessionError {
        &self.error
    }
}

impl std::fmt::Display for SessionRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for SessionRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        match self.response {
            Some(response) => response,
            // A programming error, logged with its fix where it was found: the client gets
            // no internal detail.
            None => (StatusCode::INTERNAL_SERVER_ERROR, "session error").into_response(),
        }
    }
}
