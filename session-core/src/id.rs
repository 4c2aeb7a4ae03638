//! Session ids and the store keys derived from them.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Random bytes in a session id: 192 bits from the operating system's CSPRNG.
const ID_BYTES: usize = 24;
/// Length of an id once encoded (base64url without padding).
pub(crate) const ID_LEN: usize = 32;

/// A session id: 24 bytes (192 bits) from the operating system's CSPRNG, base64url-encoded.
///
/// The id travels in the signed cookie and is never written to a store as is: stores see
/// only its [`StoreKey`], a SHA-256 hash, so a leaked store dump holds no usable cookie.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; ID_LEN]);

impl SessionId {
    /// A fresh random id.
    ///
    /// # Errors
    /// Fails only when the operating system cannot provide random bytes.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut raw = [0u8; ID_BYTES];
        getrandom::fill(&mut raw)?;
        Ok(Self::from_bytes(raw))
    }

    /// The id made of these 24 bytes (from an app's own generator: see
    /// [`with_id_generator`](crate::SessionLayer::with_id_generator)).
    pub fn from_bytes(raw: [u8; ID_BYTES]) -> Self {
        let mut encoded = [0u8; ID_LEN];
        // 24 bytes always encode to exactly 32 characters.
        let written = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut encoded)
            .unwrap_or_default();
        debug_assert_eq!(written, ID_LEN);
        Self(encoded)
    }

    /// Parses an id as it appears in a cookie: 32 base64url characters.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != ID_LEN
            || !bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(bytes);
        Some(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only base64url characters are ever stored, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The key under which stores keep this session.
    pub fn store_key(&self) -> StoreKey {
        StoreKey::from_digest(&Sha256::digest(self.0).into())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        _ => 0,
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids are bearer credentials: keep them out of logs.
        f.write_str("SessionId(..)")
    }
}

/// The key a store uses for one session: the SHA-256 hash of its id, as 64 lowercase hex
/// characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey([u8; 64]);

impl StoreKey {
    /// The key as text (64 lowercase hex characters).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The 32 bytes of the digest.
    pub(crate) fn digest(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(self.0.chunks_exact(2)) {
            *byte = hex_value(pair[0]) << 4 | hex_value(pair[1]);
        }
        out
    }

    /// The key of a digest.
    pub(crate) fn from_digest(digest: &[u8; 32]) -> Self {
        let mut key = [0u8; 64];
        for (i, byte) in digest.iter().enumerate() {
            key[2 * i] = HEX[usize::from(byte >> 4)];
            key[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
        }
        Self(key)
    }

    /// The key of an express-compatible session: the id itself, hex-encoded (its 32 ASCII
    /// bytes fill the 64 characters a key has), so the stores that keep express-session's
    /// records can name it as express does. See [`ExpressSecrets`](crate::ExpressSecrets).
    pub fn unhashed(id: &SessionId) -> Self {
        Self::from_digest(&id.0)
    }

    /// The session id of a key made by [`StoreKey::unhashed`]; `None` for a hashed key (whose
    /// bytes are, but for a chance of 2^-64, not all base64url characters).
    pub fn unhashed_id(&self) -> Option<SessionId> {
        let digest = self.digest();
        SessionId::parse(std::str::from_utf8(&digest).ok()?)
    }

    /// Parses a key previously produced by [`StoreKey::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut key = [0u8; 64];
        key.copy_from_slice(bytes);
        Some(Self(key))
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({})", &self.as_str()[..12])
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_ids_are_distinct_and_parse_back() {
        let ids: HashSet<String> = (0..1000)
            .map(|_| SessionId::generate().unwrap().as_str().to_owned())
            .collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(SessionId::parse(id).unwrap().as_str(), id);
        }
    }

    // Ids carry at least 128 bits, all from the CSPRNG.
    const _: () = assert!(ID_BYTES * 8 >= 128);

    #[test]
    fn ids_have_the_encoded_length() {
        assert_eq!(SessionId::generate().unwrap().as_str().len(), ID_LEN);
    }

    #[test]
    fn parse_rejects_wrong_length_and_characters() {
        assert!(SessionId::parse("short").is_none());
        assert!(SessionId::parse(&"a".repeat(33)).is_none());
        assert!(SessionId::parse(&format!("{}+", "a".repeat(31))).is_none());
        assert!(SessionId::parse(&"é".repeat(16)).is_none());
    }

    #[test]
    fn store_key_is_a_hash_not_the_id() {
        let id = SessionId::generate().unwrap();
        let key = id.store_key();
        assert_eq!(key.as_str().len(), 64);
        assert!(!key.as_str().contains(id.as_str()));
        assert_eq!(key, id.store_key());
        assert_eq!(StoreKey::parse(key.as_str()), Some(key));
        assert_eq!(StoreKey::from_digest(&key.digest()), key);
        assert_eq!(key.unhashed_id(), None);
    }

    #[test]
    fn unhashed_keys_give_their_id_back() {
        let id = SessionId::generate().unwrap();
        let key = StoreKey::unhashed(&id);
        assert_eq!(key.unhashed_id(), Some(id));
        assert_ne!(key, id.store_key());
        assert_eq!(StoreKey::parse(key.as_str()), Some(key));
    }
}
