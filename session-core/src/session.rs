//! The typed session handed to handlers.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

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
/// Any number of `Session` views may be alive at once in one request, of one struct or of
/// several (a middleware holding `Session<Auth>` across `next.run(req)`, a handler taking
/// `Session<Cart>` and `Session<Prefs>`): they are views of the request's one session. A view
/// sees what earlier views checked in (a view checks in when it is dropped, or on
/// [`save`](Self::save)); the changes of all of them are written in one save at the end of the
/// request. Two live views that both change the same stored key would lose one change, so that
/// request fails with [`SessionError::Conflict`] instead, writing nothing. `regenerate`,
/// `clear`, `destroy`, `reload` and `save` act on the one session, whichever view calls them.
///
/// `Option<Session<T>>` is `None` when the request carries no live session, and never creates
/// one.
#[must_use]
pub struct Session<T: SessionData> {
    view: T::View,
    state: Arc<RequestState>,
    /// The request's check-in count this view has seen: a key another view changed after it
    /// is a conflict if this view changes it too.
    seen: u64,
}

impl<T: SessionData> Session<T> {
    /// A new view of the request's session.
    pub(crate) fn checked_out(state: Arc<RequestState>) -> Self {
        let (view, seen) = state.check_out::<T::View>();
        Self { view, state, seen }
    }

    /// The whole data, read-only.
    pub fn data(&self) -> &T {
        self.view.data()
    }

    /// The session's id, if it is stored; `None` for a new session not saved yet. After
    /// [`regenerate`](Self::regenerate), the new id, at once (it is stored at the end of the
    /// request, or by [`save`](Self::save)).
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
    /// that removes it from the browser. Changes made before in the same request are
    /// discarded, and the view reads as empty. Fields written *after* `destroy()` start a new
    /// session under a fresh id (its cookie replaces the old one; the destroyed record stays
    /// deleted), so logout with a message is `s.destroy(); s.set_flash(Some("Signed out".into()))`.
    pub fn destroy(&mut self) {
        self.state.destroy();
        // What was changed before is dropped; what is written after starts a new session.
        self.view = T::View::fresh();
    }

    /// The lifetime of this session's cookie: its own if
    /// [`set_cookie_max_age`](Self::set_cookie_max_age) gave it one, else the layer's
    /// `max_age`. `None`: a browser-session cookie.
    pub fn cookie_max_age(&self) -> Option<Duration> {
        self.state.cookie_max_age()
    }

    /// Gives this session a cookie lifetime of its own, e.g. 30 days when a "remember me" box
    /// is ticked, or `None` for a cookie that ends with the browser session. It is stored with
    /// the session, so later requests keep it; the session's server-side idle timeout follows
    /// it (a `Some` lifetime is also its idle timeout; `None` keeps the layer's); the cookie is
    /// sent again with the new lifetime at the end of this request. The layer's absolute
    /// timeout still applies. The layer's [`with_max_age`](crate::SessionLayer::with_max_age)
    /// stays the default of every other session.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use session_core::Session;
    /// # #[derive(Session)] struct Auth { user: Option<String> }
    /// async fn login(mut auth: Session<Auth>, remember: bool) {
    ///     auth.regenerate();
    ///     auth.set_user(Some("ada".into()));
    ///     if remember {
    ///         auth.set_cookie_max_age(Some(Duration::from_secs(30 * 24 * 60 * 60)));
    ///     }
    /// }
    /// ```
    pub fn set_cookie_max_age(&mut self, max_age: Option<Duration>) {
        self.state.set_cookie_max_age(max_age);
    }

    /// Extends the session's deadline now, by its idle timeout from now, even if
    /// `touch_after` would not yet (express's `req.session.touch()`); a cookie with a
    /// lifetime is sent again. Does nothing for a new session not stored yet.
    ///
    /// # Errors
    /// [`SessionError::Ended`] when the stored session is gone; the store's error, if it fails.
    pub async fn touch(&mut self) -> Result<(), SessionError> {
        let result = self.state.touch_now().await;
        if let Err(SessionError::Ended) = result {
            self.view = T::View::fresh();
        }
        result
    }

    /// Discards unsaved changes and reads the session again from the store.
    ///
    /// # Errors
    /// [`SessionError::Ended`] when the stored session is gone (destroyed or regenerated by
    /// another request, or expired); the session then reads as empty. The store's error, if
    /// it fails.
    pub async fn reload(&mut self) -> Result<(), SessionError> {
        match self.state.reload::<T::View>().await {
            Ok(view) => {
                self.view = view;
                Ok(())
            }
            Err(SessionError::Ended) => {
                self.view = T::View::fresh();
                Err(SessionError::Ended)
            }
            Err(error) => Err(error),
        }
    }

    /// Writes the session to the store now, instead of at the end of the request. A new
    /// session gets its id here. The end of the request still sends the cookie.
    ///
    /// Only a new (or regenerated) session is ever created in the store; an existing one is
    /// only written over, so a session that another request destroyed stays destroyed.
    ///
    /// # Errors
    /// [`SessionError::Ended`] when the stored session is gone (destroyed or regenerated by
    /// another request, or expired): nothing was written and the session now reads as empty.
    /// The store's error, or an encoding error, if the write fails.
    pub async fn save(&mut self) -> Result<(), SessionError> {
        self.seen = self.state.collect(&mut self.view, self.seen);
        let result = self.state.save_now().await;
        if let Err(SessionError::Ended) = result {
            self.view = T::View::fresh();
        }
        result
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
        self.state.check_in(&mut self.view, self.seen);
    }
}

impl<T: SessionData> fmt::Debug for Session<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}
