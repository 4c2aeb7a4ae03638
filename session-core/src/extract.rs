//! `Session<T>` as an axum extractor.

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;

use crate::data::SessionData;
use crate::error::{log_failure, SessionError};
use crate::layer::{error_response, SessionHandle};
use crate::session::Session;

impl<S, T> FromRequestParts<S> for Session<T>
where
    S: Send + Sync,
    T: SessionData,
{
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(SessionHandle(state, delivery)) = parts.extensions.get::<SessionHandle>().cloned()
        else {
            return Err(SessionRejection {
                error: SessionError::MissingLayer,
                response: None,
            });
        };
        let reject = |error: SessionError| {
            log_failure(&error, "session could not be loaded");
            SessionRejection {
                response: Some(error_response(&state.config, &error)),
                error,
            }
        };
        let find = || crate::transport::lookup(&state.config, delivery, &parts.headers);
        state.load(find).await.map_err(reject)?;
        let view = state.check_out::<T::View>().map_err(reject)?;
        Ok(Session::new(view, state))
    }
}

/// Why `Session<T>` could not be extracted; answers with the layer's error status.
#[derive(Debug)]
pub struct SessionRejection {
    error: SessionError,
    response: Option<Response>,
}

impl SessionRejection {
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
            None => {
                tracing::error!(error = %self.error, "session extractor misused");
                (StatusCode::INTERNAL_SERVER_ERROR, self.error.to_string()).into_response()
            }
        }
    }
}
