//! Token codecs: how a session id is written into its cookie (or token header), how it is read
//! back, and which store key it names.
//!
//! | codec | token | store key |
//! |---|---|---|
//! | native ([`Key`](crate::Key)) | `ID.SIG`, HMAC-SHA256 with a 32-byte key, base64url | SHA-256 of the id |
//! | express ([`ExpressSecrets`]) | `s:ID.SIG` URL-encoded, HMAC-SHA256 with the secret string, base64 | the id itself |
//!
//! The layer picks one when it is built ([`SessionLayer::new`](crate::SessionLayer::new) or
//! [`SessionLayer::express`](crate::SessionLayer::express)); the lifecycle calls it and never
//! looks at the format.

mod express;

pub use express::ExpressSecrets;

use crate::cookie::{CookieLookup, Key, KeyRing};
use crate::id::{SessionId, StoreKey};

/// A native layer's way out of express compatibility mode: express cookies still lead to
/// their sessions (kept in the express store, re-sent in express's format) until the session
/// is regenerated, which re-issues it natively. See
/// [`SessionLayer::with_express_upgrade`](crate::SessionLayer::with_express_upgrade).
#[derive(Clone, Debug)]
pub(crate) struct ExpressUpgrade {
    pub(crate) secrets: ExpressSecrets,
    pub(crate) cookie_name: String,
}

impl ExpressUpgrade {
    /// Looks for an express cookie when the request has no valid native one.
    pub(crate) fn find<'a>(
        &self,
        native: CookieLookup,
        headers: impl IntoIterator<Item = &'a [u8]>,
    ) -> CookieLookup {
        if native.id.is_some() {
            return native;
        }
        let legacy = self.secrets.find(&self.cookie_name, headers);
        match legacy.id {
            Some(_) => CookieLookup {
                legacy: true,
                present: true,
                old_key: false,
                ..legacy
            },
            None => native,
        }
    }
}

/// The token codec of a layer.
#[derive(Clone, Debug)]
pub(crate) enum TokenCodec {
    /// `ID.SIG` with the key ring; stores see hashed ids.
    Native(KeyRing),
    /// express-session's `s:ID.SIG`; stores see the ids themselves (`misplaced_key`: a native
    /// key was added with `with_old_key`, which this codec cannot use).
    Express {
        secrets: ExpressSecrets,
        misplaced_key: bool,
    },
}

impl TokenCodec {
    /// Adds an older native key (see `SessionLayer::with_old_key`).
    pub(crate) fn push_key(&mut self, key: Key) {
        match self {
            Self::Native(ring) => ring.push(key),
            Self::Express { misplaced_key, .. } => *misplaced_key = true,
        }
    }

    /// The token for `id`.
    pub(crate) fn sign(&self, id: &SessionId) -> String {
        match self {
            Self::Native(ring) => ring.sign(id),
            Self::Express { secrets, .. } => secrets.sign(id),
        }
    }

    /// The token for `id`, reusing the request's own signature when it verified `id` with the
    /// first native key (see [`KeyRing::sign_for`]).
    pub(crate) fn sign_for(&self, id: &SessionId, lookup: &CookieLookup) -> String {
        match self {
            Self::Native(ring) if !lookup.legacy => ring.sign_for(id, lookup),
            _ => self.sign(id),
        }
    }

    /// The id of a token and the index of the key that verified it.
    pub(crate) fn verify(&self, token: &str) -> Option<(SessionId, usize)> {
        match self {
            Self::Native(ring) => ring.verify(token),
            Self::Express { secrets, .. } => secrets.verify(token),
        }
    }

    /// Finds the session cookie called `name` in `Cookie` header values.
    pub(crate) fn find<'a>(
        &self,
        name: &str,
        headers: impl IntoIterator<Item = &'a [u8]>,
    ) -> CookieLookup {
        match self {
            Self::Native(ring) => ring.find(name, headers),
            Self::Express { secrets, .. } => secrets.find(name, headers),
        }
    }

    /// The key under which stores keep the session `id`.
    pub(crate) fn store_key(&self, id: &SessionId) -> StoreKey {
        match self {
            Self::Native(_) => id.store_key(),
            Self::Express { .. } => StoreKey::unhashed(id),
        }
    }

    /// Whether this is express-session's codec.
    pub(crate) fn is_express(&self) -> bool {
        matches!(self, Self::Express { .. })
    }
}
