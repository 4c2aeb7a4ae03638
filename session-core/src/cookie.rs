//! Signed session cookies: keys, the key ring, signing, verification, and finding the
//! session cookie among the request's cookies.
//!
//! The cookie value is `ID.SIGNATURE`: the 32-character id, a dot, and the unpadded base64url
//! HMAC-SHA256 of the id. The first key of the ring signs; every key verifies, in constant
//! time. A cookie that verifies only with an older key is re-signed with the first one on the
//! response, so keys can be rotated without logging anyone out.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::id::{SessionId, ID_LEN};

type HmacSha256 = Hmac<Sha256>;

/// Bytes a key must have at least.
pub(crate) const MIN_KEY_LEN: usize = 32;
/// Length of the signature once encoded.
const SIG_LEN: usize = 43;
/// Length of a whole signed cookie value.
pub(crate) const SIGNED_LEN: usize = ID_LEN + 1 + SIG_LEN;
/// Cookies longer than this are not even looked at.
const MAX_COOKIE_VALUE: usize = 256;
/// How many session-named cookies of one request are verified at most. A browser sends
/// more than one only when cookies of several paths or domains share the name; a client that
/// sends thousands would otherwise buy an HMAC per cookie and key with one request.
pub(crate) const MAX_CANDIDATES: usize = 4;

/// A secret key for signing session cookies.
#[derive(Clone)]
pub struct Key {
    mac: HmacSha256,
}

impl Key {
    /// A key from secret bytes: at least 32 of them, as random as you can make them.
    ///
    /// # Errors
    /// [`KeyError::TooShort`] when `secret` has fewer than 32 bytes.
    pub fn from_bytes(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { len: secret.len() });
        }
        let mac = HmacSha256::new_from_slice(secret)
            .map_err(|_| KeyError::TooShort { len: secret.len() })?;
        Ok(Self { mac })
    }

    /// A fresh random key, for development or single-process apps: cookies signed with it
    /// do not survive a restart.
    ///
    /// # Errors
    /// Fails only when the operating system cannot provide random bytes.
    pub fn generate() -> Result<Self, KeyError> {
        let mut secret = [0u8; 64];
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        Self::from_bytes(&secret)
    }

    fn sign(&self, id: &SessionId) -> [u8; SIG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(id.as_str().as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; SIG_LEN];
        let written = URL_SAFE_NO_PAD
            .encode_slice(tag, &mut out)
            .unwrap_or_default();
        debug_assert_eq!(written, SIG_LEN);
        out
    }

    fn verify(&self, id: &SessionId, tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(id.as_str().as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(tag).is_ok()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a key could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The secret is shorter than 32 bytes.
    #[error("session key has {len} bytes; at least 32 are needed")]
    TooShort {
        /// How many bytes the secret had.
        len: usize,
    },
    /// The operating system could not provide random bytes.
    #[error("could not generate a random session key: {0}")]
    Random(String),
    /// An express-session secret (or the list of them) is empty.
    #[error("express session secret is empty")]
    Empty,
}

/// Signing keys: the first signs, all verify.
#[derive(Clone, Debug)]
pub(crate) struct KeyRing {
    keys: Vec<Key>,
}

/// What the request's cookies say about the session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CookieLookup {
    /// The first session cookie whose signature verified.
    pub(crate) id: Option<SessionId>,
    /// It verified only with an older key, so it should be re-signed.
    pub(crate) old_key: bool,
    /// Some cookie with the session cookie's name was sent, valid or not.
    pub(crate) present: bool,
    /// The id came from an express-session cookie, on a native layer upgrading express
    /// sessions: its record is in the express store, under the id itself.
    pub(crate) legacy: bool,
    /// The signature of `id` as sent, when the first key verified it: signing `id` again
    /// would give these very bytes (HMAC is deterministic, the base64 canonical), so a
    /// response that sends the same id back reuses them instead.
    pub(crate) signature: Option<[u8; SIG_LEN]>,
}

impl KeyRing {
    pub(crate) fn new(first: Key) -> Self {
        Self { keys: vec![first] }
    }

    pub(crate) fn push(&mut self, key: Key) {
        self.keys.push(key);
    }

    /// The signed cookie value for `id`.
    pub(crate) fn sign(&self, id: &SessionId) -> String {
        let mut value = String::with_capacity(SIGNED_LEN);
        value.push_str(id.as_str());
        value.push('.');
        let sig = self.keys[0].sign(id);
        value.push_str(std::str::from_utf8(&sig).unwrap_or_default());
        value
    }

    /// The signed cookie value for `id`, reusing the signature the request sent for it if
    /// the first key verified that one.
    pub(crate) fn sign_for(&self, id: &SessionId, lookup: &CookieLookup) -> String {
        match lookup.signature {
            Some(signature) if lookup.id.as_ref() == Some(id) && !lookup.old_key => {
                let mut value = String::with_capacity(SIGNED_LEN);
                value.push_str(id.as_str());
                value.push('.');
                value.push_str(std::str::from_utf8(&signature).unwrap_or_default());
                value
            }
            _ => self.sign(id),
        }
    }

    /// The id in a signed cookie value and the index of the key that verified it.
    pub(crate) fn verify(&self, value: &str) -> Option<(SessionId, usize)> {
        let value = Self::shaped(value)?;
        let id = SessionId::parse(value.get(..ID_LEN)?)?;
        let mut tag = [0u8; 33];
        let len = URL_SAFE_NO_PAD
            .decode_slice(value.get(ID_LEN + 1..)?, &mut tag)
            .ok()?;
        let tag = &tag[..len];
        self.keys
            .iter()
            .position(|key| key.verify(&id, tag))
            .map(|index| (id, index))
    }

    /// `value` without its quotes, if it has the shape of a signed id (what is worth an HMAC).
    fn shaped(value: &str) -> Option<&str> {
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (value.len() == SIGNED_LEN && value.as_bytes()[ID_LEN] == b'.').then_some(value)
    }

    /// Scans `Cookie` header values for the session cookie called `name`. Duplicates are
    /// tried in order and the first that verifies wins; unsigned, tampered, oversized or
    /// malformed values are skipped. At most [`MAX_CANDIDATES`] values shaped like a signed id
    /// are verified; the rest are not looked at.
    pub(crate) fn find<'a>(
        &self,
        name: &str,
        headers: impl IntoIterator<Item = &'a [u8]>,
    ) -> CookieLookup {
        scan_cookies(
            name,
            headers,
            MAX_COOKIE_VALUE,
            |value| Self::shaped(value).is_some(),
            |value, lookup| {
                let Some((id, index)) = self.verify(value) else {
                    return false;
                };
                lookup.id = Some(id);
                lookup.old_key = index > 0;
                if index == 0 {
                    lookup.signature = Self::shaped(value)
                        .and_then(|v| v.get(ID_LEN + 1..))
                        .and_then(|sig| <[u8; SIG_LEN]>::try_from(sig.as_bytes()).ok());
                }
                true
            },
        )
    }
}

/// Scans `Cookie` header values for the cookie called `name`, for every token codec.
/// Duplicates are tried in order: values over `max_len` bytes, not UTF-8, or not `shaped` as
/// a token are skipped; the others are handed to `verify` (which fills `lookup` and says
/// whether it verified) until one does, and at most [`MAX_CANDIDATES`] of them, so a header
/// stuffed with candidates costs a few MACs at most.
pub(crate) fn scan_cookies<'a>(
    name: &str,
    headers: impl IntoIterator<Item = &'a [u8]>,
    max_len: usize,
    shaped: impl Fn(&str) -> bool,
    mut verify: impl FnMut(&str, &mut CookieLookup) -> bool,
) -> CookieLookup {
    let mut lookup = CookieLookup::default();
    let mut candidates = 0;
    for header in headers {
        for pair in header.split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() != name.as_bytes() {
                continue;
            }
            lookup.present = true;
            let value = pair[eq + 1..].trim_ascii();
            if value.len() > max_len {
                continue;
            }
            let Ok(value) = std::str::from_utf8(value) else {
                continue;
            };
            if !shaped(value) {
                continue;
            }
            if candidates == MAX_CANDIDATES {
                return lookup;
            }
            candidates += 1;
            if verify(value, &mut lookup) {
                return lookup;
            }
        }
    }
    lookup
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Key {
        Key::from_bytes(&[byte; 32]).unwrap()
    }

    fn ring() -> KeyRing {
        KeyRing::new(key(1))
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(
            Key::from_bytes(b"keyboard cat").unwrap_err(),
            KeyError::TooShort { len: 12 }
        );
    }

    #[test]
    fn signed_value_verifies_with_the_same_key() {
        let id = SessionId::generate().unwrap();
        let value = ring().sign(&id);
        assert_eq!(value.len(), SIGNED_LEN);
        assert_eq!(ring().verify(&value), Some((id, 0)));
    }

    #[test]
    fn tampered_values_do_not_verify() {
        let id = SessionId::generate().unwrap();
        let value = ring().sign(&id);
        for i in 0..value.len() {
            let mut bytes = value.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert_eq!(ring().verify(&tampered), None, "position {i}");
        }
        assert_eq!(ring().verify(&value[..value.len() - 1]), None);
        assert_eq!(ring().verify(id.as_str()), None);
        assert_eq!(ring().verify(""), None);
    }

    #[test]
    fn other_keys_do_not_verify() {
        let id = SessionId::generate().unwrap();
        let value = KeyRing::new(key(2)).sign(&id);
        assert_eq!(ring().verify(&value), None);
    }

    #[test]
    fn old_keys_verify_and_are_reported() {
        let id = SessionId::generate().unwrap();
        let old = KeyRing::new(key(9)).sign(&id);
        let mut rotated = KeyRing::new(key(1));
        rotated.push(key(9));
        assert_eq!(rotated.verify(&old), Some((id, 1)));
        let lookup = rotated.find("sid", [format!("sid={old}").as_bytes()]);
        assert_eq!(lookup.id, Some(id));
        assert!(lookup.old_key);
    }

    #[test]
    fn the_request_signature_is_reused_only_for_its_own_id_and_the_current_key() {
        let id = SessionId::generate().unwrap();
        let other = SessionId::generate().unwrap();
        let ring = ring();
        let current = ring.sign(&id);
        let lookup = ring.find("sid", [format!("sid=\"{current}\"").as_bytes()]);
        assert!(lookup.signature.is_some());
        assert_eq!(ring.sign_for(&id, &lookup), current);
        assert_eq!(ring.sign_for(&other, &lookup), ring.sign(&other));
        // Verified only by an older key: signed again with the current one.
        let mut rotated = KeyRing::new(key(1));
        rotated.push(key(9));
        let old = KeyRing::new(key(9)).sign(&id);
        let lookup = rotated.find("sid", [format!("sid={old}").as_bytes()]);
        assert_eq!(lookup.signature, None);
        assert_eq!(rotated.sign_for(&id, &lookup), rotated.sign(&id));
        assert_ne!(rotated.sign_for(&id, &lookup), old);
    }

    #[test]
    fn valid_cookie_is_found_among_duplicates_and_other_cookies() {
        let id = SessionId::generate().unwrap();
        let good = ring().sign(&id);
        let header = format!("theme=dark; sid=forged; sid={good}; other=1");
        let lookup = ring().find("sid", [header.as_bytes()]);
        assert_eq!(lookup.id, Some(id));
        assert!(!lookup.old_key);

        let quoted = format!("x=1;sid=\"{good}\"");
        let split = [b"sid=bad".as_slice(), quoted.as_bytes()];
        assert_eq!(ring().find("sid", split).id, Some(id));
    }

    #[test]
    fn only_the_first_few_session_cookies_are_verified() {
        let id = SessionId::generate().unwrap();
        let good = ring().sign(&id);
        let forged = ring().sign(&SessionId::generate().unwrap());
        // Change the signature's last character (to one it is not: with a fixed "A" one run in
        // 64 kept a valid signature and the test failed by chance).
        let last = if forged.ends_with('A') { "B" } else { "A" };
        let forged = format!("{}{last}", &forged[..forged.len() - 1]);
        let after = |n: usize| {
            let mut header = "sid=".to_owned() + &vec![forged.as_str(); n].join("; sid=");
            header.push_str(&format!("; sid={good}"));
            ring().find("sid", [header.as_bytes()])
        };
        assert_eq!(after(MAX_CANDIDATES - 1).id, Some(id));
        let lookup = after(MAX_CANDIDATES);
        assert_eq!(
            lookup.id, None,
            "the valid one came too late to be verified"
        );
        assert!(lookup.present);
        // 10 000 forged cookies cost what four do.
        assert_eq!(after(10_000).id, None);
    }

    #[test]
    fn absent_and_invalid_cookies_are_told_apart() {
        let none = ring().find("sid", [b"a=1; sidx=2".as_slice()]);
        assert_eq!(none, CookieLookup::default());
        let bad = ring().find("sid", [b"sid=%FF%00".as_slice()]);
        assert!(bad.present);
        assert_eq!(bad.id, None);
        let huge = format!("sid={}", "a".repeat(10_000));
        assert_eq!(ring().find("sid", [huge.as_bytes()]).id, None);
    }
}
