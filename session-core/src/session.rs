//! The typed session handed to handlers.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::data::{SessionData, SessionView};
use crate::error::SessionError;
use crate::id::SessionId;
use crate::lifecycle::RequestState;

/// The session of the current request, typed as `T`: an axum extractor.
///
/// `Session<T>` derefs to the view `#[derive(Session)]` generates for `T`, so the accessors
/// are called directly: `visit.views()` returns `&u32`, `visit.views_mut()` returns
/// `&mut u32` and marks the field for saving, `visit.set_views(3)` replaces it. A field is
/// written only if its encoded value really changed. Mutating needs a `mut` binding.
///
/// ```
/// use session_core::Session;
///
/// #[derive(Session)]
/// struct Visit {
///     views: u32,
/// }
///
/// async fn home(mut visit: Session<Visit>) -> String {
///     *visit.views_mut() += 1;
///     format!("You visited {} times", visit.views())
/// }
/// ```
///
/// The session is loaded from the store the first time a handler extracts it; requests that
/// never extract it cost no store call. Changes are saved when the handler returns, before
/// the response leaves, following the rules in [`crate::lifecycle`].
///
/// Only one `Session` can be alive per request at a time; extracting a second while the
/// first is held fails with [`SessionError::AlreadyExtracted`].
#[must_use]
pub struct Session<T: SessionData> {
    view: T::View,
    state: Arc<RequestState>,
}

impl<T: SessionData> Session<T> {
    pub(crate) fn new(view: T::View, state: Arc<RequestState>) -> Self {
        Self { view, state }
    }

    /// The whole data, read-only.
    pub fn data(&self) -> &T {
        self.view.data()
    }

    /// The session's id, if it is stored; `None` for a new session not saved yet.
    pub fn id(&self) -> Option<SessionId> {
        self.state.id()
    }

    /// Gives the session a new id at the end of the request, keeping its data, and deletes
    /// the old record. Call it at login and at every change of privilege, to defeat session
    /// fixation. To start from empty data as well, call [`clear`](Self::clear) too.
    pub fn regenerate(&mut self) {
        self.state.regenerate();
    }

    /// Resets every field to its default and drops every stored field, including fields
    /// this struct does not know.
    pub fn clear(&mut self) {
        self.view = self.state.clear::<T::View>();
    }

    /// Deletes the session from the store at the end of the request and sends a cookie
    /// that removes it from the browser. Changes made in the same request are discarded.
    pub fn destroy(&mut self) {
        self.state.destroy();
    }

    /// Discards unsaved changes and reads the session again from the store.
    ///
    /// # Errors
    /// The store's error, if it fails.
    pub async fn reload(&mut self) -> Result<(), SessionError> {
        let view = self.state.reload::<T::View>().await?;
        self.view = view;
        Ok(())
    }

    /// Writes the session to the store now, instead of at the end of the request. A new
    /// session gets its id here. The end of the request still sends the cookie.
    ///
    /// # Errors
    /// The store's error, or an encoding error, if the write fails.
    pub async fn save(&mut self) -> Result<(), SessionError> {
        self.state.collect(&mut self.view);
        self.state.save_now().await
    }
}

impl<T: SessionData> Deref for Session<T> {
    type Target = T::View;

    fn deref(&self) -> &Self::Target {
        &self.view
    }
}

impl<T: SessionData> DerefMut for Session<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.view
    }
}

impl<T: SessionData> Drop for Session<T> {
    fn drop(&mut self) {
        self.state.check_in(&mut self.view);
    }
}

impl<T: SessionData> fmt::Debug for Session<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}
