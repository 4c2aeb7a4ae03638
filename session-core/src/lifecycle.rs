//! The express-session decision rules, improved: when to save, when to touch, when to send
//! `Set-Cookie`, and what happens on regenerate and destroy.
//!
//! Each request that extracts a session gets one session state, shared by the layer and
//! every [`Session<T>`](struct@crate::Session) taken from that request. Nothing touches the store
//! until a handler extracts the session (lazy load); at the end of the request
//! the layer applies the rules of express-session's `resave`,
//! `saveUninitialized` and `rolling`:
//!
//! | situation | save | touch | `Set-Cookie` |
//! |---|---|---|---|
//! | new session, data unchanged | only with `save_uninitialized` | – | only with `save_uninitialized` |
//! | new session, data changed | yes | – | yes |
//! | existing session, unchanged | only with `resave` | yes, at most once per `touch_after` (and whenever `Session::touch` asks) | with `rolling`, or when a cookie with a lifetime follows a touch or a resave |
//! | existing session, changed | yes, changed fields only | – | with `rolling` or a cookie lifetime |
//! | regenerated | new id stored, old id deleted | – | yes |
//! | destroyed | record deleted | – | clearing cookie |
//!
//! A new session that cannot get its cookie (a `Secure` cookie on a plain-HTTP request) is
//! not stored at all, so no orphan record is left behind.
//!
//! A cookie's lifetime is the session's own (`Session::set_cookie_max_age`, stored with it) or
//! the layer's `max_age`; a session's own lifetime is also its idle timeout on the server.
//! When the server extends a session whose cookie has a lifetime, the cookie goes out again, so
//! the browser never drops a cookie whose session is still alive (express lets them drift).
//!
//! A session whose record is gone when the request writes or touches it (another request
//! destroyed or regenerated it, or it expired) has ended: nothing is written, the response
//! clears the cookie, and `Session::save`, `Session::touch` and `Session::reload` return
//! [`SessionError::Ended`].

use std::future::Future;
use std::mem;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::{Config, Secure};
use crate::cookie::CookieLookup;
use crate::data::SessionView;
use crate::error::SessionError;
use crate::events::{SessionEvent, ShortId};
use crate::id::{SessionId, StoreKey};
use crate::index::{entries_of, IndexEntry};
use crate::record::{Fields, Record, SaveMode, Timestamp};
use crate::store::{SessionLock, StoreError};

/// How many fresh ids to try when the store reports a collision.
const CREATE_ATTEMPTS: usize = 4;

/// The session state of one request.
pub(crate) struct RequestState {
    pub(crate) config: Arc<Config>,
    secure_request: bool,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// A `Session<T>` was extracted during this request.
    extracted: bool,
    /// How many views are alive right now.
    live_views: usize,
    /// Check-ins that changed something, counted: a view remembers the count when it is
    /// handed out, to tell which keys other views changed since.
    check_ins: u64,
    /// For each key a check-in changed: at which check-in, and by which struct.
    changed_by: std::collections::HashMap<Arc<str>, (u64, &'static str)>,
    /// Two live views changed one key: the request fails rather than lose one change.
    conflict: Option<SessionError>,
    /// Flash keys that came from the store with a value: they are consumed at the end.
    flash_loaded: std::collections::BTreeSet<&'static str>,
    /// The store has been asked for the cookie's session.
    loaded: bool,
    /// The session's id, once it has one in the store.
    id: Option<SessionId>,
    /// The record as stored under `id` (after this request's own writes).
    record: Option<Record>,
    /// The last id hashed into a store key, and its key.
    key_memo: Option<(SessionId, StoreKey)>,
    /// What the request's cookies say, once looked at.
    lookup: CookieLookup,
    looked_up: bool,
    /// The request's cookie named a live record.
    existed: bool,
    /// The per-session lock, while held.
    held: Option<SessionLock>,
    /// This process's own lock of the session, taken before the store's.
    held_local: Option<SessionLock>,
    /// Changed fields not yet written.
    pending: Fields,
    /// `clear()` ran: the next write replaces every stored field.
    replace: bool,
    /// `regenerate()` ran and the new id is not stored yet.
    regenerate: bool,
    /// `destroy()` ran.
    destroy: bool,
    /// The store had no live record when this request wrote or touched the session: another
    /// request destroyed or regenerated it, or it expired. The session has ended.
    ended: bool,
    /// Data or id changed during this request (stays set after an early save).
    modified: bool,
    /// The session's own cookie lifetime, if it has one (`Some(None)`: a browser-session
    /// cookie), overriding the layer's `max_age`; stored with the session.
    max_age: Option<Option<Duration>>,
    /// The session's cookie lifetime changed during this request: the cookie is re-sent.
    max_age_changed: bool,
    /// The deadline was extended during this request (a touch).
    touched: bool,
    /// The id `regenerate()` drew, until it is stored.
    next_id: Option<SessionId>,
    /// The session got a new id during this request (new or regenerated).
    id_issued: bool,
    /// The session was written during this request.
    saved: bool,
    /// A field failed to encode.
    encode_error: Option<serde_json::Error>,
}

/// What the response's `Set-Cookie` should say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CookieAction {
    /// Nothing.
    Keep,
    /// Send the signed cookie for this id, with this lifetime (`None`: until the browser
    /// closes).
    Set(SessionId, Option<Duration>),
    /// Send a cookie that deletes the session cookie.
    Clear,
}

impl RequestState {
    pub(crate) fn new(config: Arc<Config>, secure_request: bool) -> Self {
        Self {
            config,
            secure_request,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code panics while holding this lock; recover rather than cascade if one did.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `Secure` attribute the cookie gets on this request.
    pub(crate) fn cookie_secure(&self) -> bool {
        match self.config.secure {
            Secure::Always => true,
            Secure::Never => false,
            Secure::Auto => self.secure_request,
        }
    }

    /// A browser keeps the cookie only if it is not `Secure` or the request is secure; a
    /// token header reaches the client either way.
    fn can_set_cookie(&self) -> bool {
        self.config.uses_token_header() || !self.cookie_secure() || self.secure_request
    }

    /// The cookie lifetime of the session: its own, or the layer's.
    fn max_age(&self, inner: &Inner) -> Option<Duration> {
        inner.max_age.unwrap_or(self.config.max_age)
    }

    /// The deadline for a session created at `created`, as of `now`: its own cookie lifetime
    /// is its idle timeout, if it has one; the layer's otherwise.
    fn deadline(&self, inner: &Inner, created: Timestamp, now: Timestamp) -> Timestamp {
        let idle = match inner.max_age {
            Some(Some(max_age)) => max_age,
            _ => self.config.idle(),
        };
        let idle = now.saturating_add(idle);
        match self.config.absolute_timeout {
            Some(absolute) => idle.min(created.saturating_add(absolute)),
            None => idle,
        }
    }

    /// Whether a loaded record may be served: both deadlines are checked here, whatever the
    /// store and the cookie say.
    fn is_live(&self, record: &Record, now: Timestamp) -> bool {
        self.config.is_live(record, now)
    }

    /// The store key of `id`, hashed once per request and id.
    fn store_key(&self, id: SessionId) -> StoreKey {
        self.store_key_of(&mut self.lock(), id)
    }

    fn store_key_of(&self, inner: &mut Inner, id: SessionId) -> StoreKey {
        match inner.key_memo {
            Some((memo_id, key)) if memo_id == id => key,
            _ => {
                let key = if inner.lookup.legacy && inner.lookup.id == Some(id) {
                    // An express session being upgraded: kept under its id until regenerated.
                    StoreKey::unhashed(&id)
                } else {
                    self.config.codec.store_key(&id)
                };
                inner.key_memo = Some((id, key));
                key
            }
        }
    }

    /// Tells the metrics and the app's event hook, if it has one.
    pub(crate) fn emit(&self, event: SessionEvent<'_>) {
        self.config.metrics.count(&event);
        if let Some(events) = &self.config.events {
            events.on_event(&event);
        }
    }

    /// A span that names the session by its short id, for the layer's work on it.
    pub(crate) fn span(&self) -> tracing::Span {
        let mut inner = self.lock();
        match (inner.id, inner.lookup.id) {
            (Some(id), _) | (None, Some(id)) => {
                // The key hashed for the store calls, not a second SHA-256 of the same id.
                let key = self.store_key_of(&mut inner, id);
                tracing::info_span!("session", session = %ShortId::of(&key))
            }
            (None, None) => tracing::info_span!("session", session = "new"),
        }
    }

    /// Runs a store call under the configured timeout. A call that answers at once (an
    /// in-process store) never sets up a timer.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.call_within(self.config.store_timeout, call).await
    }

    /// Runs a store call under `limit`, if there is one.
    async fn call_within<T>(
        &self,
        limit: Option<Duration>,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.config.call_within(limit, call).await
    }

    /// Finds the session token (`find` looks on the request's transport) and reads its
    /// session from the store, once per request, taking its lock first when per-session
    /// locks are on. Tokens are verified here, on first extraction, so requests whose
    /// handler never takes the session pay nothing for them.
    pub(crate) async fn load(
        &self,
        find: impl FnOnce() -> CookieLookup,
    ) -> Result<(), SessionError> {
        let id = {
            let mut inner = self.lock();
            if inner.loaded {
                return Ok(());
            }
            if !inner.looked_up {
                inner.lookup = find();
                inner.looked_up = true;
            }
            match inner.lookup.id {
                Some(id) => id,
                None => {
                    inner.loaded = true;
                    return Ok(());
                }
            }
        };
        let span = tracing::info_span!("session", session = %ShortId::of(&self.store_key(id)));
        tracing::Instrument::instrument(self.load_id(id), span).await
    }

    /// Loads the session of the cookie's `id` (after taking its lock, if locks are on).
    async fn load_id(&self, id: SessionId) -> Result<(), SessionError> {
        if let Some(lock) = self.config.lock {
            let key = self.store_key(id);
            let started = tokio::time::Instant::now();
            // The requests of this process queue here, in order, so only one of them at a time
            // polls the store's lock: a hundred concurrent requests on one session cost the
            // store one waiter, not a hundred.
            let local = self
                .config
                .local_locks
                .lock(&key, lock.wait)
                .await
                .ok_or(SessionError::LockTimeout(lock.wait))?;
            self.lock().held_local = Some(local);
            let left = lock.wait.saturating_sub(started.elapsed());
            // Waiting for the lock may take up to `wait`: the store timeout bounds the store's
            // answers on top of that, not the wait itself.
            let limit = self.config.store_timeout.map(|t| t.saturating_add(left));
            let held = self
                .call_within(limit, self.config.store.lock(&key, lock.lease, left))
                .await?
                .ok_or(SessionError::LockTimeout(lock.wait))?;
            self.lock().held = Some(held);
        }
        let record = match self.call(self.config.store.load(&self.store_key(id))).await {
            Ok(record) => record,
            // An unreadable record is left as it is (nothing stored is destroyed) and the
            // visitor starts a new session under a fresh id.
            Err(StoreError::Corrupt(reason)) => {
                tracing::warn!(%reason, "stored session record is unreadable; starting a new session");
                None
            }
            Err(error) => return Err(error.into()),
        };
        let record = record.filter(|r| self.is_live(r, Timestamp::now()));
        let mut inner = self.lock();
        if !inner.loaded {
            inner.loaded = true;
            inner.existed = record.is_some();
            inner.id = record.as_ref().map(|_| id);
            inner.max_age = record.as_ref().and_then(stored_max_age);
            let event = match &record {
                Some(_) => SessionEvent::Loaded {
                    session: ShortId::of(&self.store_key_of(&mut inner, id)),
                },
                None => SessionEvent::ExpiredOnLoad,
            };
            inner.record = record;
            drop(inner);
            self.emit(event);
        }
        Ok(())
    }

    /// Hands out a typed view of the request's one session, with what earlier views checked
    /// in; any number may be alive at once. Returns it with the check-in count it saw.
    pub(crate) fn check_out<V: SessionView>(&self) -> (V, u64) {
        let mut inner = self.lock();
        inner.live_views += 1;
        inner.extracted = true;
        // Flash values that came from the store are consumed at the end of this request.
        if !inner.saved && !inner.id_issued && !inner.destroy {
            if let Some(record) = &inner.record {
                let loaded: Vec<&'static str> = V::FLASH
                    .iter()
                    .copied()
                    .filter(|key| record.fields.get(*key).is_some_and(|v| &**v != "null"))
                    .collect();
                inner.flash_loaded.extend(loaded);
            }
        }
        (inner.view(), inner.check_ins)
    }

    /// Takes a view's changes back when it is dropped.
    pub(crate) fn check_in<V: SessionView>(&self, view: &mut V, seen: u64) {
        let mut inner = self.lock();
        inner.live_views = inner.live_views.saturating_sub(1);
        let others_live = inner.live_views > 0;
        inner.collect(view, seen, others_live);
    }

    /// Takes a view's changes without giving it back (for an early save, or before
    /// `destroy`). Returns the check-in count the view now stands at.
    pub(crate) fn collect<V: SessionView>(&self, view: &mut V, seen: u64) -> u64 {
        let mut inner = self.lock();
        let others_live = inner.live_views > 1;
        inner.collect(view, seen, others_live);
        inner.check_ins
    }

    /// Whether the request's session is stored (and not destroyed in this request).
    pub(crate) fn has_stored_session(&self) -> bool {
        let inner = self.lock();
        inner.record.is_some() && !inner.destroy
    }

    /// The id of the express cookie the request's session came from, on a native layer
    /// upgrading express sessions (until it is regenerated).
    pub(crate) fn legacy_id(&self) -> Option<SessionId> {
        let inner = self.lock();
        inner.lookup.id.filter(|_| inner.lookup.legacy)
    }

    /// The signed token for `id`: the request's own when it named this id and the first key
    /// verified it (no HMAC needed), a fresh signature otherwise.
    pub(crate) fn signed_token(&self, id: &SessionId) -> String {
        let lookup = self.lock().lookup;
        self.config.codec.sign_for(id, &lookup)
    }

    /// Whether the request carried a session token, valid or not.
    pub(crate) fn token_sent(&self) -> bool {
        self.lock().lookup.present
    }

    /// The stored id, or after `regenerate()` the id the session will be stored under.
    pub(crate) fn id(&self) -> Option<SessionId> {
        let inner = self.lock();
        match inner.next_id {
            Some(next) if inner.regenerate => Some(next),
            _ => inner.record.as_ref().and(inner.id),
        }
    }

    /// The store key of the session as stored now, if it is.
    pub(crate) fn stored_key(&self) -> Option<StoreKey> {
        let mut inner = self.lock();
        let id = inner.record.as_ref().and(inner.id)?;
        Some(self.store_key_of(&mut inner, id))
    }

    pub(crate) fn regenerate(&self) {
        let mut inner = self.lock();
        inner.regenerate = true;
        inner.modified = true;
        if inner.next_id.is_none() {
            // Drawn now so `id()` tells the new id at once; should the store report it taken
            // (astronomically unlikely) the write draws another.
            inner.next_id = self.config.new_id().ok();
        }
    }

    pub(crate) fn clear<V: SessionView>(&self) -> V {
        let mut inner = self.lock();
        if let Some(namespace) = V::NAMESPACE {
            // Only this struct's keys go: everything else is kept, as stored or pending.
            let prefix = format!("{namespace}.");
            let mut kept: Fields = match (&inner.record, inner.replace) {
                (Some(record), false) => record.fields.clone(),
                _ => Fields::new(),
            };
            kept.extend(mem::take(&mut inner.pending));
            kept.retain(|key, _| !key.starts_with(&prefix));
            inner.pending = kept;
            inner.replace = true;
            inner.modified = true;
            return V::fresh();
        }
        inner.pending.clear();
        inner.replace = true;
        inner.modified = true;
        // The cookie lifetime is not data: it survives the clear.
        if let Some(max_age) = inner.max_age {
            inner
                .pending
                .insert(Arc::from(MAX_AGE_FIELD), encode_max_age(max_age));
        }
        V::fresh()
    }

    /// The session's cookie lifetime: its own, or the layer's.
    pub(crate) fn cookie_max_age(&self) -> Option<Duration> {
        self.max_age(&self.lock())
    }

    /// Gives the session a cookie lifetime of its own, kept with it in the store.
    pub(crate) fn set_cookie_max_age(&self, max_age: Option<Duration>) {
        let mut inner = self.lock();
        if inner.max_age == Some(max_age) {
            return;
        }
        inner.max_age = Some(max_age);
        inner.max_age_changed = true;
        inner.modified = true;
        inner
            .pending
            .insert(Arc::from(MAX_AGE_FIELD), encode_max_age(max_age));
    }

    /// Extends the stored session's deadline now, whatever `touch_after` says.
    pub(crate) async fn touch_now(&self) -> Result<(), SessionError> {
        self.touch(true).await
    }

    /// Marks the session for deletion at the end of the request and drops its unsaved
    /// changes; what views write after this starts a new session.
    pub(crate) fn destroy(&self) {
        let mut inner = self.lock();
        inner.destroy = true;
        inner.pending.clear();
        inner.replace = false;
        inner.regenerate = false;
        inner.flash_loaded.clear();
    }

    /// Drops unsaved changes and reads the session again from the store. A stored session
    /// whose record is gone has ended: [`SessionError::Ended`].
    pub(crate) async fn reload<V: SessionView>(&self) -> Result<V, SessionError> {
        let id = {
            let mut inner = self.lock();
            inner.pending.clear();
            inner.replace = false;
            inner.record.as_ref().and(inner.id)
        };
        if let Some(id) = id {
            let record = self
                .call(self.config.store.load(&self.store_key(id)))
                .await?;
            match record.filter(|r| self.is_live(r, Timestamp::now())) {
                Some(record) => {
                    let mut inner = self.lock();
                    inner.max_age = stored_max_age(&record);
                    inner.record = Some(record);
                }
                None => {
                    return Err(self.end());
                }
            }
        }
        Ok(self.lock().view())
    }

    /// Writes the session now (`Session::save`).
    pub(crate) async fn save_now(&self) -> Result<(), SessionError> {
        self.persist(true).await
    }

    /// Applies the end-of-request rules; returns what the response's cookie should say.
    /// Releases the per-session lock, if one is held, whatever happened.
    pub(crate) async fn finish(&self) -> Result<CookieAction, SessionError> {
        let result = self.apply_rules().await;
        let (held, held_local) = {
            let mut inner = self.lock();
            (inner.held.take(), inner.held_local.take())
        };
        if let Some(held) = held {
            // Under the store timeout: a release that hangs must not hold the response.
            if let Err(error) = self.call(held.release()).await {
                tracing::warn!(%error, "could not release the session lock; it lapses with its lease");
            }
        }
        if let Some(local) = held_local {
            // In process: cannot fail.
            let _ = local.release().await;
        }
        result
    }

    async fn apply_rules(&self) -> Result<CookieAction, SessionError> {
        let (destroy, id, stored) = {
            let inner = self.lock();
            if !inner.extracted {
                return Ok(CookieAction::Keep);
            }
            if inner.live_views > 0 {
                tracing::warn!(
                    "a Session was still alive when the response was ready (moved into a spawned task?); its changes since extraction are not saved"
                );
            }
            (inner.destroy, inner.id, inner.record.is_some())
        };
        if destroy {
            if let (Some(id), true) = (id, stored) {
                let key = self.store_key(id);
                self.call(self.config.store.delete(&key)).await?;
                let entries = match self.lock().record.as_ref() {
                    Some(record) if !self.config.indexed.is_empty() => {
                        entries_of(&record.fields, &self.config.indexed)
                    }
                    _ => Vec::new(),
                };
                self.index_remove(&entries, &key).await;
                self.emit(SessionEvent::Destroyed {
                    session: ShortId::of(&key),
                });
            }
            let mut inner = self.lock();
            inner.record = None;
            inner.id = None;
            inner.destroy = false;
            if inner.pending.is_empty() {
                return Ok(self.clearing_cookie(&inner));
            }
            // Written after `destroy()` (a "signed out" flash): a new session under a new id,
            // which replaces the cookie; the destroyed record stays deleted.
            inner.existed = false;
            inner.max_age = None;
        }
        {
            // Flash values read from the store are consumed now, read or not.
            let mut inner = self.lock();
            let consumed: Vec<&'static str> = mem::take(&mut inner.flash_loaded)
                .into_iter()
                .filter(|key| !inner.pending.contains_key(*key))
                .collect();
            for key in consumed {
                inner.pending.insert(Arc::from(key), Arc::from("null"));
            }
        }
        match self.persist(false).await {
            Ok(()) => {}
            Err(SessionError::Ended) => return Ok(self.ended()),
            Err(error) => return Err(error),
        }
        match self.touch(false).await {
            Ok(()) => {}
            Err(SessionError::Ended) => return Ok(self.ended()),
            // A failed keep-alive costs the session some lifetime, not the request its answer.
            Err(error) => {
                tracing::warn!(%error, "could not extend the session's deadline");
                self.emit(SessionEvent::Error {
                    error: &error,
                    logged_only: true,
                });
            }
        }

        Ok(self.cookie_action(&self.lock()))
    }

    /// The session's id and new deadline if it is to be touched now (`forced`: whatever
    /// `touch_after` says).
    fn touch_due(
        &self,
        inner: &Inner,
        forced: bool,
        now: Timestamp,
    ) -> Option<(SessionId, Timestamp)> {
        let record = inner.record.as_ref()?;
        let id = inner.id?;
        if !forced && (inner.saved || !inner.existed || inner.id_issued) {
            return None;
        }
        let deadline = self.deadline(inner, record.created_at, now);
        // With `touch_after` zero every request touches, as express does.
        if !forced
            && (deadline < record.expires_at
                || deadline.saturating_since(record.expires_at) < self.config.touch_after)
        {
            return None;
        }
        Some((id, deadline))
    }

    /// The end of a request that has nothing to write (its session was never taken, or only
    /// read, and no touch is due): the cookie decision, taken at once, without a store call
    /// or the asynchronous [`finish`](Self::finish). `None` when the rules may need the
    /// store (a lock to release included); the answer is then `finish`'s.
    pub(crate) fn finish_at_once(&self) -> Option<CookieAction> {
        let inner = self.lock();
        if inner.held.is_some() || inner.held_local.is_some() {
            return None;
        }
        if !inner.extracted {
            return Some(CookieAction::Keep);
        }
        let pending_work = inner.live_views > 0
            || inner.destroy
            || inner.replace
            || inner.regenerate
            || !inner.pending.is_empty()
            || !inner.flash_loaded.is_empty()
            || inner.encode_error.is_some()
            || inner.conflict.is_some();
        let may_write = if inner.record.is_some() {
            self.config.resave && !inner.saved
        } else {
            self.config.save_uninitialized || inner.modified
        };
        if pending_work || may_write || self.touch_due(&inner, false, Timestamp::now()).is_some() {
            return None;
        }
        Some(self.cookie_action(&inner))
    }

    /// What the response's cookie says once the session is written (or needed no write).
    fn cookie_action(&self, inner: &Inner) -> CookieAction {
        let (Some(id), true) = (inner.id, inner.record.is_some()) else {
            // Ended earlier in the request (an explicit save or reload found it gone) and
            // not started again.
            return if inner.ended {
                self.clearing_cookie(inner)
            } else {
                CookieAction::Keep
            };
        };
        let fresh = !inner.existed || inner.id_issued;
        let max_age = self.max_age(inner);
        let send = if fresh {
            // A fresh session exists in the store only if `save_uninitialized` or a change
            // put it there.
            true
        } else {
            self.config.rolling
                || inner.lookup.old_key
                || inner.max_age_changed
                // A cookie with a lifetime follows the server's deadline: when the session
                // was written or touched (at most once per `touch_after`), so the browser
                // never drops a cookie whose session is still alive.
                || (max_age.is_some() && (inner.modified || inner.saved || inner.touched))
        };
        if send && self.can_set_cookie() {
            CookieAction::Set(id, max_age)
        } else {
            CookieAction::Keep
        }
    }

    /// The cookie of a session that ended under this request: another request destroyed or
    /// regenerated it, or it expired, between this request's load and its save. Nothing of
    /// this request was written; the response clears the cookie so the browser stops sending
    /// an id that leads nowhere, and keeps its status and body.
    fn ended(&self) -> CookieAction {
        tracing::info!("the session ended while this request used it (logged out or regenerated elsewhere, or expired); its changes are dropped");
        self.clearing_cookie(&self.lock())
    }

    /// Forgets a session whose record turned out to be gone, and says so: the error to return.
    fn end(&self) -> SessionError {
        let session = {
            let mut inner = self.lock();
            let session = inner.key_memo.map(|(_, key)| ShortId::of(&key));
            inner.end();
            session
        };
        self.emit(SessionEvent::Ended { session });
        SessionError::Ended
    }

    /// A cookie that removes the session cookie, if the browser has one and would take it.
    fn clearing_cookie(&self, inner: &Inner) -> CookieAction {
        let sent_cookie = inner.lookup.present || inner.id_issued;
        if sent_cookie && self.can_set_cookie() {
            CookieAction::Clear
        } else {
            CookieAction::Keep
        }
    }

    /// Writes pending changes if the rules say so. `explicit` is an app-requested save.
    async fn persist(&self, explicit: bool) -> Result<(), SessionError> {
        let config = &*self.config;
        let now = Timestamp::now();
        let (write, old_id, plan) = {
            let mut inner = self.lock();
            if let Some(error) = inner.encode_error.take() {
                return Err(SessionError::Encode(error));
            }
            if let Some(conflict) = inner.conflict.take() {
                return Err(conflict);
            }
            let data_changed = !inner.pending.is_empty() || inner.replace;
            let modified = inner.modified || data_changed || inner.regenerate;
            let stored = inner.record.is_some();
            let needed = if inner.regenerate {
                true
            } else if !stored {
                (explicit || config.save_uninitialized || modified) && self.can_set_cookie()
            } else {
                // An explicit save writes now what `resave` would write at the end.
                data_changed || (config.resave && !inner.saved)
            };
            inner.modified = modified;
            if !needed {
                return Ok(());
            }
            // A regeneration (a login) starts the absolute-timeout window again.
            let created = match inner.record.as_ref() {
                Some(record) if !inner.regenerate => record.created_at,
                _ => now,
            };
            let write = Record {
                fields: mem::take(&mut inner.pending),
                created_at: created,
                expires_at: self.deadline(&inner, created, now),
            };
            let stored_id = inner.record.as_ref().and(inner.id);
            let (write, size) = match (inner.record.as_ref(), stored_id) {
                // The common case: changed fields of a stored session, sent on their own.
                (Some(record), Some(id))
                    if !inner.replace && !inner.regenerate && !write.fields.is_empty() =>
                {
                    let size = merged_len(record, &write.fields);
                    (Write::Merge(id, write), size)
                }
                // Everything else writes the whole record: new, regenerated, cleared, or
                // rewritten unchanged under `resave`.
                (record, _) => {
                    let mut whole = match record {
                        Some(record) if !inner.replace => record.fields.clone(),
                        _ => Fields::new(),
                    };
                    whole.extend(write.fields);
                    let whole = Record {
                        fields: whole,
                        ..write
                    };
                    let size = whole.encoded_len();
                    let write = match stored_id {
                        Some(id) if !inner.regenerate => Write::Replace(id, whole),
                        _ => Write::Create(self.new_record(&inner, whole)),
                    };
                    (write, size)
                }
            };
            // A session stored before the limit was lowered may be over it already: writes
            // that do not make it larger stay allowed, so the app can shrink it.
            let current = inner.record.as_ref().map_or(0, Record::encoded_len);
            if size > config.max_record_bytes && size > current {
                if let Write::Merge(_, changes) = write {
                    inner.pending = changes.fields;
                }
                return Err(SessionError::TooLarge {
                    size,
                    limit: config.max_record_bytes,
                });
            }
            let plan = IndexPlan::new(&config.indexed, inner.record.as_ref(), &write);
            (write, stored_id, plan)
        };
        let until = config
            .absolute_timeout
            .map(|absolute| write.record().created_at.saturating_add(absolute));

        let (new_id, written_id) = match &write {
            Write::Create(whole) => {
                // Boxed: new and regenerated sessions only, and a large future that every
                // save's end-of-request future would carry otherwise.
                let id = Box::pin(self.write_new(whole, old_id, &plan, until)).await?;
                (Some(id), id)
            }
            Write::Replace(id, record) | Write::Merge(id, record) => {
                let mode = match write {
                    Write::Replace(..) => SaveMode::Replace,
                    _ => SaveMode::Merge,
                };
                let key = self.store_key(*id);
                // Into the index before the value is stored: a live session is never missing.
                self.index_add(&plan.add, &key, until).await?;
                let saved = match self.call(config.store.save(&key, record, mode)).await {
                    Ok(saved) => saved,
                    Err(error) => {
                        self.index_remove(&plan.add, &key).await;
                        return Err(error.into());
                    }
                };
                if !saved {
                    // Only `create` creates: the record is gone, so is the session.
                    self.index_remove(&plan.add, &key).await;
                    return Err(self.end());
                }
                self.index_remove(&plan.remove, &key).await;
                (None, *id)
            }
        };
        let session = ShortId::of(&self.store_key(written_id));
        self.emit(match (&write, old_id) {
            (Write::Create(whole), None) => SessionEvent::Created {
                session,
                fields: &whole.fields,
            },
            (Write::Create(_), Some(_)) => SessionEvent::Regenerated { session },
            (Write::Replace(_, record), _) => SessionEvent::Saved {
                session,
                fields: &record.fields,
                whole: true,
            },
            (Write::Merge(_, record), _) => SessionEvent::Saved {
                session,
                fields: &record.fields,
                whole: false,
            },
        });

        let mut inner = self.lock();
        if let Some(id) = new_id {
            inner.id = Some(id);
            inner.id_issued = true;
        }
        match write {
            Write::Merge(_, changes) => {
                if let Some(record) = inner.record.as_mut() {
                    record.apply(&changes, SaveMode::Merge);
                }
            }
            Write::Create(whole) | Write::Replace(_, whole) => inner.record = Some(whole),
        }
        inner.replace = false;
        inner.regenerate = false;
        inner.saved = true;
        Ok(())
    }

    /// Stores a new or regenerated session under a fresh id and, for a regeneration, deletes
    /// the old record; returns the new id.
    async fn write_new(
        &self,
        whole: &Record,
        old_id: Option<SessionId>,
        plan: &IndexPlan,
        until: Option<Timestamp>,
    ) -> Result<SessionId, SessionError> {
        let config = &*self.config;
        let next = self.lock().next_id.take();
        let id = self.create(whole, next, &plan.add, until).await?;
        if let Some(old) = old_id {
            let old_key = self.store_key(old);
            if let Err(error) = self.call(config.store.delete(&old_key)).await {
                // The old id must die with the regeneration; since it cannot, take the new
                // record back so no second copy of the session is left behind.
                let new_key = config.codec.store_key(&id);
                if let Err(undo) = self.call(config.store.delete(&new_key)).await {
                    tracing::warn!(%undo, "could not remove the new record of a failed regeneration; it lapses at its deadline");
                }
                self.index_remove(&plan.add, &new_key).await;
                return Err(error.into());
            }
            self.index_remove(&plan.remove, &old_key).await;
        }
        Ok(id)
    }

    /// A record about to be created, as the layer's record format wants it: express-session's
    /// records carry the cookie's settings under the reserved `cookie` key.
    fn new_record(&self, inner: &Inner, mut record: Record) -> Record {
        if self.config.codec.is_express() {
            let cookie = crate::store::express::cookie_object(
                &self.config,
                self.cookie_secure(),
                self.max_age(inner),
                record.expires_at,
            );
            record
                .fields
                .insert(Arc::from(crate::store::express::COOKIE_KEY), cookie);
        } else if self.config.upgrade.is_some() && inner.lookup.legacy {
            // An express session re-issued natively: express's cookie settings stay behind.
            record.fields.remove(crate::store::express::COOKIE_KEY);
        }
        record
    }

    /// Stores `record` under a fresh id (`first`, if one was drawn already), trying again on
    /// the (astronomically unlikely) collision.
    async fn create(
        &self,
        record: &Record,
        mut first: Option<SessionId>,
        entries: &[IndexEntry],
        until: Option<Timestamp>,
    ) -> Result<SessionId, SessionError> {
        for _ in 0..CREATE_ATTEMPTS {
            let id = match first.take() {
                Some(id) => id,
                None => self.config.new_id()?,
            };
            let key = self.config.codec.store_key(&id);
            self.index_add(entries, &key, until).await?;
            let created = self.call(self.config.store.create(&key, record)).await;
            if let Ok(true) = created {
                return Ok(id);
            }
            self.index_remove(entries, &key).await;
            created?;
            tracing::warn!("session id collision in the store; drawing another id");
        }
        Err(SessionError::IdCollision)
    }

    /// Adds `key` to the index `entries`; a failure fails the write that needed it. The work
    /// is boxed, and only when there is some: most writes change no indexed field, and the
    /// store calls' futures would otherwise weigh on every write's future.
    fn index_add<'a>(
        &'a self,
        entries: &'a [IndexEntry],
        key: &'a StoreKey,
        until: Option<Timestamp>,
    ) -> impl Future<Output = Result<(), SessionError>> + Send + 'a {
        let work = (!entries.is_empty()).then(|| {
            Box::pin(async move {
                for entry in entries {
                    self.call(self.config.store.index_add(entry, key, until))
                        .await?;
                }
                Ok(())
            })
        });
        async move {
            match work {
                Some(work) => work.await,
                None => Ok(()),
            }
        }
    }

    /// Removes `key` from the index `entries`. A failure leaves a stale member, which readers
    /// skip and prune: it is logged, not returned. Boxed when there is work, as `index_add`.
    fn index_remove<'a>(
        &'a self,
        entries: &'a [IndexEntry],
        key: &'a StoreKey,
    ) -> impl Future<Output = ()> + Send + 'a {
        let work = (!entries.is_empty()).then(|| {
            Box::pin(async move {
                for entry in entries {
                    if let Err(error) = self.call(self.config.store.index_remove(entry, key)).await
                    {
                        tracing::warn!(%error, ?entry, "could not remove a session from an index; readers skip it until it is pruned");
                    }
                }
            })
        });
        async move {
            if let Some(work) = work {
                work.await;
            }
        }
    }

    /// Extends an unchanged existing session's deadline, at most once per `touch_after`
    /// unless `forced` (the app asked). [`SessionError::Ended`] when the record is gone.
    async fn touch(&self, forced: bool) -> Result<(), SessionError> {
        let Some((id, deadline)) = self.touch_due(&self.lock(), forced, Timestamp::now()) else {
            return Ok(());
        };
        let touched = self
            .call(self.config.store.touch(&self.store_key(id), deadline))
            .await?;
        if !touched {
            return Err(self.end());
        }
        let mut inner = self.lock();
        if let Some(record) = inner.record.as_mut() {
            record.expires_at = deadline;
        }
        inner.touched = true;
        let session = ShortId::of(&self.store_key_of(&mut inner, id));
        drop(inner);
        self.emit(SessionEvent::Touched { session });
        Ok(())
    }
}

/// The reserved stored key of a session's own cookie lifetime. No derived struct can store a
/// field under it (the derive refuses keys starting with `session-core:`).
pub(crate) const MAX_AGE_FIELD: &str = "session-core:cookie_max_age";

/// A cookie lifetime as stored: whole seconds, or `null` for a browser-session cookie.
fn encode_max_age(max_age: Option<Duration>) -> Arc<str> {
    match max_age {
        Some(max_age) => Arc::from(max_age.as_secs().to_string()),
        None => Arc::from("null"),
    }
}

/// The cookie lifetime a record carries, if it has one of its own. An unreadable value is
/// ignored (the layer's lifetime applies).
pub(crate) fn stored_max_age(record: &Record) -> Option<Option<Duration>> {
    let value = record.fields.get(MAX_AGE_FIELD)?;
    match &**value {
        "null" => Some(None),
        seconds => seconds.parse().ok().map(|s| Some(Duration::from_secs(s))),
    }
}

/// One write of the session.
enum Write {
    /// Store the whole record under a fresh id (new or regenerated session).
    Create(Record),
    /// Overwrite the whole record stored under this id.
    Replace(SessionId, Record),
    /// Write only these fields over the record stored under this id.
    Merge(SessionId, Record),
}

impl Write {
    fn record(&self) -> &Record {
        match self {
            Write::Create(record) | Write::Replace(_, record) | Write::Merge(_, record) => record,
        }
    }
}

/// The index entries a write adds its session to (before it) and removes it from (after).
#[derive(Default)]
struct IndexPlan {
    add: Vec<IndexEntry>,
    /// From the written key, or, for a regeneration, from the old one.
    remove: Vec<IndexEntry>,
}

impl IndexPlan {
    fn new(indexed: &[&'static str], stored: Option<&Record>, write: &Write) -> Self {
        if indexed.is_empty() {
            return Self::default();
        }
        let before =
            |keys: &[&'static str]| stored.map_or_else(Vec::new, |r| entries_of(&r.fields, keys));
        match write {
            // A new key: every entry is added to it; a regeneration's old key loses all.
            Write::Create(whole) => Self {
                add: entries_of(&whole.fields, indexed),
                remove: before(indexed),
            },
            Write::Replace(_, whole) => {
                let after = entries_of(&whole.fields, indexed);
                Self::between(before(indexed), after)
            }
            Write::Merge(_, changes) => {
                // Only the indexed keys the merge writes can change: a save that writes none
                // (the usual case) hashes nothing.
                let written: Vec<&'static str> = indexed
                    .iter()
                    .copied()
                    .filter(|key| changes.fields.contains_key(*key))
                    .collect();
                if written.is_empty() {
                    return Self::default();
                }
                Self::between(before(&written), entries_of(&changes.fields, &written))
            }
        }
    }

    fn between(before: Vec<IndexEntry>, after: Vec<IndexEntry>) -> Self {
        Self {
            add: after
                .iter()
                .filter(|entry| !before.contains(entry))
                .cloned()
                .collect(),
            remove: before
                .into_iter()
                .filter(|entry| !after.contains(entry))
                .collect(),
        }
    }
}

/// The encoded size of `record` once `changes` are written over it.
fn merged_len(record: &Record, changes: &Fields) -> usize {
    let mut size = record.encoded_len();
    for (name, value) in changes {
        match record.fields.get(name) {
            Some(old) => size = size - old.len() + value.len(),
            None => size += name.len() + value.len(),
        }
    }
    size
}

impl Inner {
    /// Forgets a session whose record is gone, with its unsaved changes. A later write in
    /// the same request starts a new session under a fresh id.
    fn end(&mut self) {
        self.ended = true;
        self.modified = false;
        self.record = None;
        self.id = None;
        self.pending.clear();
        self.replace = false;
        self.regenerate = false;
        self.next_id = None;
        self.max_age = None;
        self.max_age_changed = false;
    }

    fn view<V: SessionView>(&self) -> V {
        let empty = Fields::new();
        let stored = match (&self.record, self.replace || self.destroy) {
            (Some(record), false) => &record.fields,
            _ => &empty,
        };
        V::decode(stored, &self.pending)
    }

    /// Takes a view's changed fields into `pending`. A key another view changed after this
    /// one was handed out (at check-in `seen`) is a conflict: neither change may be lost
    /// silently, so the request fails, naming the key and both structs. Which view changed a
    /// key is only remembered while `others_live`: a view handed out later sees the change.
    fn collect<V: SessionView>(&mut self, view: &mut V, seen: u64, others_live: bool) {
        // The usual lone view: no other view's change to conflict with, none to record, nothing
        // pending to keep apart; its changes go straight into `pending`.
        if !others_live && self.changed_by.is_empty() && self.pending.is_empty() {
            match view.collect(&mut self.pending) {
                Ok(false) => {}
                Ok(true) => {
                    self.check_ins += 1;
                    self.modified = true;
                }
                Err(error) => {
                    tracing::error!(%error, "a session field failed to encode");
                    self.pending.clear();
                    self.encode_error = Some(error);
                }
            }
            return;
        }
        let mut changes = Fields::new();
        match view.collect(&mut changes) {
            Ok(false) => return,
            Ok(true) => {}
            Err(error) => {
                tracing::error!(%error, "a session field failed to encode");
                self.encode_error = Some(error);
                return;
            }
        }
        let this = std::any::type_name::<V::Data>();
        for key in changes.keys() {
            if let Some((at, by)) = self.changed_by.get(key) {
                if *at > seen && self.conflict.is_none() {
                    tracing::error!(
                        key = &**key,
                        first = by,
                        second = this,
                        "two live session views changed the same key"
                    );
                    self.conflict = Some(SessionError::Conflict {
                        key: key.to_string(),
                        first: by,
                        second: this,
                    });
                }
            }
        }
        self.check_ins += 1;
        if others_live {
            for key in changes.keys() {
                self.changed_by.insert(key.clone(), (self.check_ins, this));
            }
        }
        self.pending.extend(changes);
        self.modified = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TokenCodec;
    use crate::cookie::{Key, KeyRing};
    use crate::store::{MemoryStore, Store};

    /// A struct with no fields: a handler that takes the session and reads nothing.
    struct Nothing;

    impl SessionView for Nothing {
        type Data = ();
        const KEYS: &'static [&'static str] = &[];

        fn decode(_: &Fields, _: &Fields) -> Self {
            Self
        }

        fn fresh() -> Self {
            Self
        }

        fn collect(&mut self, _: &mut Fields) -> Result<bool, serde_json::Error> {
            Ok(false)
        }

        fn data(&self) -> &() {
            &()
        }

        fn into_data(self) {}
    }

    /// What the request's cookie names.
    #[derive(Clone, Copy, Debug)]
    enum Cookie {
        None,
        /// A session whose deadline is far: no touch due.
        Live,
        /// A session whose deadline is near: a touch is due.
        TouchDue,
        /// A signed id with no record.
        Unknown,
    }

    /// A request that takes its session and changes nothing, run through `finish_at_once`
    /// and, on a twin request, through the full `finish`.
    async fn both_ways(
        config: &Arc<Config>,
        lookup: CookieLookup,
    ) -> (Option<CookieAction>, CookieAction) {
        let mut answers = Vec::new();
        for _ in 0..2 {
            let state = RequestState::new(config.clone(), false);
            state.load(|| lookup).await.unwrap();
            let (mut view, seen) = state.check_out::<Nothing>();
            state.check_in(&mut view, seen);
            answers.push(state);
        }
        let at_once = answers[0].finish_at_once();
        let full = answers[1].finish().await.unwrap();
        (at_once, full)
    }

    /// The shortcut taken by requests that only read their session either declines or
    /// agrees with the full end-of-request rules, and when it answers the full rules wrote
    /// nothing: for every option that decides such a request and every kind of cookie.
    #[tokio::test]
    async fn the_read_only_shortcut_agrees_with_the_full_rules() {
        let mut answered = 0;
        for rolling in [false, true] {
            for max_age in [None, Some(Duration::from_secs(600))] {
                for touch_after in [Duration::ZERO, Duration::from_secs(60)] {
                    for resave in [false, true] {
                        for save_uninitialized in [false, true] {
                            for cookie in [
                                Cookie::None,
                                Cookie::Live,
                                Cookie::TouchDue,
                                Cookie::Unknown,
                            ] {
                                let store = Arc::new(MemoryStore::new());
                                let key = Key::from_bytes(&[7; 64]).unwrap();
                                let mut config = Config::new(
                                    store.clone(),
                                    TokenCodec::Native(KeyRing::new(key)),
                                );
                                config.rolling = rolling;
                                config.max_age = max_age;
                                config.touch_after = touch_after;
                                config.resave = resave;
                                config.save_uninitialized = save_uninitialized;
                                let config = Arc::new(config);
                                let id = SessionId::generate().unwrap();
                                let store_key = config.codec.store_key(&id);
                                let now = Timestamp::now();
                                let stored = match cookie {
                                    Cookie::Live => {
                                        Some(Record::new(now, now.saturating_add(config.idle())))
                                    }
                                    Cookie::TouchDue => Some(Record::new(
                                        now,
                                        now.saturating_add(Duration::from_secs(1)),
                                    )),
                                    Cookie::None | Cookie::Unknown => None,
                                };
                                if let Some(record) = &stored {
                                    assert!(store.create(&store_key, record).await.unwrap());
                                }
                                let lookup = match cookie {
                                    Cookie::None => CookieLookup::default(),
                                    _ => CookieLookup {
                                        id: Some(id),
                                        present: true,
                                        ..CookieLookup::default()
                                    },
                                };
                                let case = format!("rolling {rolling}, max_age {max_age:?}, touch_after {touch_after:?}, resave {resave}, save_uninitialized {save_uninitialized}, cookie {cookie:?}");
                                let (at_once, full) = both_ways(&config, lookup).await;
                                if let Some(action) = &at_once {
                                    answered += 1;
                                    assert_eq!(*action, full, "{case}");
                                    let after = store.load(&store_key).await.unwrap();
                                    assert_eq!(after, stored, "the full rules wrote: {case}");
                                    assert_eq!(
                                        store.len(),
                                        usize::from(stored.is_some()),
                                        "{case}"
                                    );
                                }
                                if matches!(cookie, Cookie::TouchDue) || resave && stored.is_some()
                                {
                                    assert_eq!(at_once, None, "a write is due: {case}");
                                }
                            }
                        }
                    }
                }
            }
        }
        // The shortcut is taken wherever no write is due: 40 of the 128 cases (a live
        // session is due a touch on every request with `touch_after` zero; `resave` writes
        // every stored session; `save_uninitialized` stores every new one).
        assert_eq!(answered, 40);
    }
}
