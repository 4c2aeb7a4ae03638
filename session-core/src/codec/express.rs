//! express-session's cookie: `s:` + id + `.` + the unpadded standard-base64 HMAC-SHA256 of the
//! id keyed with the secret string, URL-encoded as express writes it (`s%3A...`).

use std::fmt;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::cookie::{scan_cookies, CookieLookup, KeyError, MIN_KEY_LEN};
use crate::id::SessionId;

type HmacSha256 = Hmac<Sha256>;

/// Cookie values longer than this are not even looked at (an express cookie with a default
/// id is 80 bytes once encoded).
const MAX_COOKIE_VALUE: usize = 512;

/// express-session's `secret` option: one secret string, or a list of them where the first
/// signs and every one verifies (for rotation).
///
/// Secrets are used as express uses them, as the UTF-8 bytes of the string, whatever their
/// length; one shorter than 32 bytes is accepted (express accepts it) with a warning, because
/// a short secret can be guessed offline from any signed cookie.
///
/// ```
/// use session_core::ExpressSecrets;
///
/// let secrets = ExpressSecrets::new("keyboard cat")?;
/// // The same cookie express-session (cookie-signature) writes for the id "apple":
/// assert_eq!(
///     secrets.sign_value("apple"),
///     "s%3Aapple.D8Y%2BpkTAmeR0PobOhY4G97PRW%2Bj7bUnP%2F5m6%2FOn1MCU"
/// );
/// assert_eq!(
///     secrets.unsign_value("s%3Aapple.D8Y%2BpkTAmeR0PobOhY4G97PRW%2Bj7bUnP%2F5m6%2FOn1MCU"),
///     Some("apple".to_owned())
/// );
///
/// // express's `secret: ["new", "old"]`: cookies signed with "old" still verify.
/// let rotated = ExpressSecrets::from_list(["a new secret", "keyboard cat"])?;
/// assert!(rotated.unsign_value(&secrets.sign_value("apple")).is_some());
/// # Ok::<(), session_core::KeyError>(())
/// ```
#[derive(Clone)]
pub struct ExpressSecrets {
    macs: Vec<HmacSha256>,
}

impl ExpressSecrets {
    /// One secret, as express's `secret: "..."`.
    ///
    /// # Errors
    /// [`KeyError::Empty`] when `secret` is empty (express refuses it too).
    pub fn new(secret: &str) -> Result<Self, KeyError> {
        Self::from_list([secret])
    }

    /// A list of secrets, as express's `secret: [...]`: the first signs, all verify.
    ///
    /// # Errors
    /// [`KeyError::Empty`] when the list or one of its secrets is empty.
    pub fn from_list<S: AsRef<str>>(
        secrets: impl IntoIterator<Item = S>,
    ) -> Result<Self, KeyError> {
        let mut macs = Vec::new();
        for secret in secrets {
            let secret = secret.as_ref();
            if secret.is_empty() {
                return Err(KeyError::Empty);
            }
            if secret.len() < MIN_KEY_LEN {
                tracing::warn!(
                    len = secret.len(),
                    "the express session secret is shorter than {MIN_KEY_LEN} bytes: anyone holding a signed cookie can try to guess it offline; use a long random secret"
                );
            }
            // HMAC takes keys of any length.
            let mac = HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| KeyError::Empty)?;
            macs.push(mac);
        }
        if macs.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self { macs })
    }

    /// Adds an older secret that still verifies cookies (express's list, in order).
    ///
    /// # Errors
    /// [`KeyError::Empty`] when `secret` is empty.
    pub fn with_old_secret(mut self, secret: &str) -> Result<Self, KeyError> {
        let old = Self::new(secret)?;
        self.macs.extend(old.macs);
        Ok(self)
    }

    /// The cookie value express-session writes for the session id `value`: `s:ID.SIG`,
    /// URL-encoded. Byte for byte what cookie-signature's `sign` and the `cookie` module's
    /// `serialize` produce.
    pub fn sign_value(&self, value: &str) -> String {
        let mut signed = String::with_capacity(value.len() + 48);
        signed.push_str("s:");
        signed.push_str(value);
        signed.push('.');
        signed.push_str(&STANDARD_NO_PAD.encode(self.tag(0, value)));
        encode_uri_component(&signed)
    }

    /// The session id in a cookie value written by express-session (URL-encoded or not), if
    /// one of the secrets verifies its signature. Verification is in constant time.
    pub fn unsign_value(&self, value: &str) -> Option<String> {
        self.unsign(value).map(|(id, _)| id)
    }

    /// The id and the index of the secret that verified it.
    fn unsign(&self, value: &str) -> Option<(String, usize)> {
        if value.len() > MAX_COOKIE_VALUE {
            return None;
        }
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let decoded = decode_uri_component(value)?;
        let signed = decoded.strip_prefix("s:")?;
        let dot = signed.rfind('.')?;
        let (id, signature) = (&signed[..dot], &signed[dot + 1..]);
        let mut tag = [0u8; 33];
        // Canonical unpadded base64 only, as cookie-signature's string comparison demands.
        let len = STANDARD_NO_PAD.decode_slice(signature, &mut tag).ok()?;
        let tag = &tag[..len];
        self.macs
            .iter()
            .position(|mac| {
                let mut mac = mac.clone();
                mac.update(id.as_bytes());
                mac.verify_slice(tag).is_ok()
            })
            .map(|index| (id.to_owned(), index))
    }

    fn tag(&self, index: usize, value: &str) -> [u8; 32] {
        let mut mac = self.macs[index].clone();
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The cookie value for a session id.
    pub(crate) fn sign(&self, id: &SessionId) -> String {
        self.sign_value(id.as_str())
    }

    /// The session id of a cookie value and the index of the secret that verified it. An id
    /// that is not in express's default form (24 random bytes, base64url) is refused.
    pub(crate) fn verify(&self, value: &str) -> Option<(SessionId, usize)> {
        let (id, index) = self.unsign(value)?;
        Some((SessionId::parse(&id)?, index))
    }

    /// Scans `Cookie` header values for the session cookie called `name`, as
    /// [`KeyRing::find`](crate::cookie::KeyRing) does for native cookies: duplicates are
    /// tried in order, the first that verifies wins, at most a few are verified.
    pub(crate) fn find<'a>(
        &self,
        name: &str,
        headers: impl IntoIterator<Item = &'a [u8]>,
    ) -> CookieLookup {
        scan_cookies(
            name,
            headers,
            MAX_COOKIE_VALUE,
            |_| true,
            |value, lookup| {
                let Some((id, index)) = self.verify(value) else {
                    return false;
                };
                lookup.id = Some(id);
                lookup.old_key = index > 0;
                true
            },
        )
    }
}

impl fmt::Debug for ExpressSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExpressSecrets({} secrets)", self.macs.len())
    }
}

/// JavaScript's `encodeURIComponent`, which the `cookie` module applies to values: every byte
/// but `A-Z a-z 0-9 - _ . ! ~ * ' ( )` is percent-encoded.
fn encode_uri_component(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len() + 16);
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

/// `decodeURIComponent`, as the `cookie` module applies it: `None` for a malformed escape or
/// bytes that are not UTF-8 (where the `cookie` module keeps the raw value, which then lacks
/// the `s:` prefix and is refused anyway).
fn decode_uri_component(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from express-session's own tests and from cookie-signature 1.0.7 run under
    /// Node.js 20 (`encodeURIComponent('s:' + sign(id, secret))`).
    const VECTORS: &[(&str, &str, &str)] = &[
        (
            "keyboard cat",
            "apple",
            "s%3Aapple.D8Y%2BpkTAmeR0PobOhY4G97PRW%2Bj7bUnP%2F5m6%2FOn1MCU",
        ),
        (
            "keyboard cat",
            "%",
            "s%3A%25.kzQ6x52kKVdF35Qh62AWk4ZekS28K5XYCXKa%2FOTZ01g",
        ),
        (
            "keyboard cat",
            "/foo",
            "s%3A%2Ffoo.paEKBtAHbV5s1IB8B2zPnzAgYmmnRPIqObW4VRYj%2FMQ",
        ),
        (
            "keyboard cat",
            "ena0nCx1a32cVewElb3tRpnoOwe1ShP2",
            "s%3Aena0nCx1a32cVewElb3tRpnoOwe1ShP2.ebpoRRCWIpC%2FKAZTf%2FNmqk2GSAydnno1QQ%2F8rz2cDn0",
        ),
        (
            "a much longer secret string with ünïcödé",
            "ena0nCx1a32cVewElb3tRpnoOwe1ShP2",
            "s%3Aena0nCx1a32cVewElb3tRpnoOwe1ShP2.tbE3d%2B0R89y4bHwTxA4VkOmh5%2Btx00j0NXeUYrm8KFA",
        ),
    ];

    #[test]
    fn signatures_match_cookie_signature_byte_for_byte() {
        for (secret, id, cookie) in VECTORS {
            let secrets = ExpressSecrets::new(secret).unwrap();
            assert_eq!(secrets.sign_value(id), *cookie, "{secret:?} {id:?}");
            assert_eq!(secrets.unsign_value(cookie).as_deref(), Some(*id));
        }
    }

    #[test]
    fn express_ids_parse_into_session_ids() {
        let secrets = ExpressSecrets::new("keyboard cat").unwrap();
        let (_, _, cookie) = VECTORS[3];
        let (id, index) = secrets.verify(cookie).unwrap();
        assert_eq!(id.as_str(), "ena0nCx1a32cVewElb3tRpnoOwe1ShP2");
        assert_eq!(index, 0);
        assert_eq!(secrets.sign(&id), cookie);
        // Ids express would accept but that are not in its default form are refused.
        assert_eq!(secrets.verify(VECTORS[0].2), None);
    }

    #[test]
    fn the_first_secret_signs_and_all_verify() {
        let old = ExpressSecrets::new("keyboard cat").unwrap();
        let rotated = ExpressSecrets::from_list(["a fresh secret", "keyboard cat"]).unwrap();
        let (_, _, cookie) = VECTORS[3];
        let (id, index) = rotated.verify(cookie).unwrap();
        assert_eq!(index, 1);
        assert_ne!(rotated.sign(&id), cookie);
        assert_eq!(old.verify(&rotated.sign(&id)), None);
        let appended = ExpressSecrets::new("a fresh secret")
            .unwrap()
            .with_old_secret("keyboard cat")
            .unwrap();
        assert_eq!(appended.sign(&id), rotated.sign(&id));
    }

    #[test]
    fn tampered_wrong_secret_and_malformed_values_are_refused() {
        let secrets = ExpressSecrets::new("keyboard cat").unwrap();
        let (_, _, cookie) = VECTORS[3];
        for i in 0..cookie.len() {
            let mut bytes = cookie.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert_eq!(secrets.verify(&tampered), None, "position {i}");
        }
        let wrong = ExpressSecrets::new("not the secret").unwrap();
        assert_eq!(wrong.verify(cookie), None);
        for bad in [
            "",
            "s:",
            "s%3A",
            "%",
            "%zz",
            "%FF%FE",
            "ena0nCx1a32cVewElb3tRpnoOwe1ShP2",
            "s%3Aena0nCx1a32cVewElb3tRpnoOwe1ShP2",
            "s%3Aena0nCx1a32cVewElb3tRpnoOwe1ShP2.",
            "s%3Aena0nCx1a32cVewElb3tRpnoOwe1ShP2.ebpoRRCWIpC%2FKAZTf%2FNmqk2GSAydnno1QQ%2F8rz2cDn0%3D",
        ] {
            assert_eq!(secrets.verify(bad), None, "{bad:?}");
        }
        assert_eq!(secrets.verify(&"s%3A".repeat(1000)), None);
    }

    #[test]
    fn empty_secrets_are_refused() {
        assert_eq!(ExpressSecrets::new("").unwrap_err(), KeyError::Empty);
        assert_eq!(
            ExpressSecrets::from_list(Vec::<String>::new()).unwrap_err(),
            KeyError::Empty
        );
        assert_eq!(
            ExpressSecrets::from_list(["ok", ""]).unwrap_err(),
            KeyError::Empty
        );
    }

    #[test]
    fn the_cookie_is_found_among_others_quoted_or_not() {
        let secrets = ExpressSecrets::new("keyboard cat").unwrap();
        let (_, id, cookie) = VECTORS[3];
        let header = format!("connect.sid=s%3Aforged.x; theme=dark; connect.sid=\"{cookie}\"");
        let lookup = secrets.find("connect.sid", [header.as_bytes()]);
        assert_eq!(
            lookup.id.map(|id| id.as_str().to_owned()).as_deref(),
            Some(id)
        );
        assert!(lookup.present);
        let absent = secrets.find("connect.sid", [b"sid=1".as_slice()]);
        assert!(!absent.present);
    }

    #[test]
    fn uri_component_coding_round_trips() {
        for text in ["s:a+b/c=d", "%", "ünï", "a b;c", "-_.!~*'()"] {
            assert_eq!(
                decode_uri_component(&encode_uri_component(text)).unwrap(),
                text
            );
        }
        assert_eq!(encode_uri_component("s:/+="), "s%3A%2F%2B%3D");
    }
}
