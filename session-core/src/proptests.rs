//! Property tests of the decoders that see untrusted input: the `Cookie` header scan (every
//! byte is the client's) and the per-field record decoder (a store's text may be corrupt,
//! foreign or from an older schema). With the `fuzzing` and `file` features, the file store's
//! record parser too.
//!
//! What must hold: nothing panics; a cookie that does not verify is never taken (so the
//! layer starts a fresh session without a store lookup); a valid cookie is found wherever it
//! is among duplicates and junk; a field that does not decode takes its default and its stored
//! value is not overwritten unless the application writes it.
//!
//! Case counts are kept modest so the module runs in seconds; `fuzz/` runs the same decoders
//! for as long as you like. Inputs the fuzzer or these properties once broke are pinned as
//! plain tests at the end.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::Config;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cookie::{CookieLookup, Key, KeyRing, SIGNED_LEN};
use crate::data::{collect_field, decode_field, FieldState, SessionData, SessionView};
use crate::id::{SessionId, ID_LEN};
use crate::record::Fields;

const NAME: &str = "sid";

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn key(byte: u8) -> Key {
    Key::from_bytes(&[byte; 32]).unwrap()
}

/// Key 1 signs; key 2 is an old key that still verifies.
fn ring() -> KeyRing {
    let mut ring = KeyRing::new(key(1));
    ring.push(key(2));
    ring
}

fn current_only() -> KeyRing {
    KeyRing::new(key(1))
}

fn signed_by(byte: u8, id: &SessionId) -> String {
    KeyRing::new(key(byte)).sign(id)
}

fn find(ring: &KeyRing, headers: &[Vec<u8>]) -> CookieLookup {
    ring.find(NAME, headers.iter().map(Vec::as_slice))
}

fn find_one(ring: &KeyRing, header: &str) -> CookieLookup {
    ring.find(NAME, [header.as_bytes()])
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn id() -> impl Strategy<Value = SessionId> {
    vec(select(BASE64URL), ID_LEN)
        .prop_map(|bytes| SessionId::parse(std::str::from_utf8(&bytes).unwrap()).unwrap())
}

/// A value of a `sid` cookie that never verifies: text, forgeries of the right shape, bad
/// percent-encoding, invalid UTF-8, quotes.
fn junk_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -:<-~]{0,80}".prop_map(String::into_bytes),
        (id(), "[A-Za-z0-9_-]{43}")
            .prop_map(|(id, sig)| format!("{}.{sig}", id.as_str()).into_bytes()),
        id().prop_map(|id| id.as_str().as_bytes().to_vec()),
        "(%[0-9A-Fa-f]{0,2}|%%|%[G-Zg-z]{2}){1,20}".prop_map(String::into_bytes),
        vec(128u8..=255, 1..40),
        vec(
            any::<u8>().prop_filter("no separator", |b| *b != b';'),
            0..80
        ),
        Just(b"\"".to_vec()),
        Just(b"\"\"".to_vec()),
        Just(Vec::new()),
    ]
}

/// One `name=value` pair (or something that is not a pair) of a `Cookie` header, without a
/// valid session cookie.
fn junk_pair() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        junk_value().prop_map(|v| [b"sid=".as_slice(), &v].concat()),
        junk_value().prop_map(|v| [b" sid = ".as_slice(), &v, b" "].concat()),
        ("[a-z]{1,8}", junk_value()).prop_map(|(n, v)| [n.as_bytes(), b"=", &v].concat()),
        (
            select(&["SID", "sidx", "xsid", "s id", "sid\"", "\"sid"][..]),
            junk_value()
        )
            .prop_map(|(n, v)| [n.as_bytes(), b"=", &v].concat()),
        Just(b"sid".to_vec()),
        Just(Vec::new()),
        vec(
            any::<u8>().prop_filter("no separator", |b| *b != b';'),
            0..40
        ),
    ]
}

/// Pieces of cookie-like input, some valid, some not, to be concatenated.
fn atom() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => junk_pair(),
        2 => Just(b"; ".to_vec()),
        1 => Just(b";".to_vec()),
        1 => select(&["sid=", "=", " ", "\"", "%", "%2D", "\t", "\n"][..])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => id().prop_map(|id| format!("sid={}", signed_by(1, &id)).into_bytes()),
        1 => id().prop_map(|id| format!("sid={}", signed_by(2, &id)).into_bytes()),
        1 => id().prop_map(|id| format!("sid={}", signed_by(3, &id)).into_bytes()),
        1 => (id(), 0..SIGNED_LEN).prop_map(|(id, cut)| {
            format!("sid={}", &signed_by(1, &id)[..cut]).into_bytes()
        }),
        1 => vec(any::<u8>(), 0..16),
    ]
}

/// A `Cookie` header (or several, at `\n`) built from atoms.
fn cookie_like() -> impl Strategy<Value = Vec<Vec<u8>>> {
    vec(atom(), 0..24).prop_map(|atoms| {
        atoms
            .concat()
            .split(|b| *b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    })
}

/// Joins pairs into one header, or spreads them over several when `spread` is set.
fn headers(pairs: &[Vec<u8>], spread: bool) -> Vec<Vec<u8>> {
    if spread {
        pairs.to_vec()
    } else {
        vec![pairs.join(b"; ".as_slice())]
    }
}

/// JSON text, valid or nearly: values of many shapes, sometimes cut short or with a byte
/// spliced in.
fn json_like() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            vec(("[a-z]{0,4}", inner), 0..6)
                .prop_map(|pairs| serde_json::Value::Object(pairs.into_iter().collect())),
        ]
    });
    let edge = select(
        &[
            "",
            " ",
            "-",
            "-0",
            "0",
            "00",
            "01",
            "1e400",
            "-1e400",
            "1e-400",
            "4294967296",
            "-1",
            "18446744073709551616",
            "9223372036854775808",
            "1.0",
            "1e0",
            "NaN",
            "Infinity",
            "\"\\ud800\"",
            "\"\\u0000\"",
            "\"\\x\"",
            "[",
            "]",
            "{",
            "{\"a\":}",
            "[1,]",
            "\"unterminated",
            "nul\u{0}",
            "tru",
            "truex",
            "[[[[[[[[[[[[[[[[[[[[",
        ][..],
    );
    prop_oneof![
        4 => value.prop_map(|v| v.to_string()),
        1 => edge.prop_map(str::to_owned),
        2 => (value_text(), any::<Index>(), any::<char>()).prop_map(|(text, at, c)| {
            let mut text = text;
            let at = floor_char_boundary(&text, at.index(text.len() + 1));
            text.insert(at, c);
            text
        }),
        2 => (value_text(), any::<Index>()).prop_map(|(text, at)| {
            let at = floor_char_boundary(&text, at.index(text.len() + 1));
            text[..at].to_owned()
        }),
        1 => any::<String>(),
    ]
}

fn value_text() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            any::<i32>().prop_map(|n| n.to_string()),
            ".{0,6}".prop_map(|s| serde_json::Value::from(s).to_string()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("{\"k\":".to_owned()),
            Just("}".to_owned()),
            Just(",".to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
        ],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

// ---------------------------------------------------------------------------------------
// Checks shared by several properties
// ---------------------------------------------------------------------------------------

/// What must hold for any scan result.
fn check_scan(headers: &[Vec<u8>]) -> Result<CookieLookup, TestCaseError> {
    let lookup = find(&ring(), headers);
    if let Some(id) = lookup.id {
        prop_assert!(lookup.present);
        let signer = if lookup.old_key { 2 } else { 1 };
        let value = signed_by(signer, &id);
        prop_assert!(
            headers.iter().any(|h| contains(h, value.as_bytes())),
            "the found id's signed value is not in the input"
        );
    } else if !lookup.present {
        prop_assert_eq!(lookup, CookieLookup::default());
    }
    // The scan is per pair: splitting at every `;` into separate header values changes
    // nothing.
    let pairs: Vec<Vec<u8>> = headers
        .iter()
        .flat_map(|h| h.split(|b| *b == b';').map(<[u8]>::to_vec))
        .collect();
    prop_assert_eq!(find(&ring(), &pairs), lookup);
    // A ring without the old key finds the same current-key cookie, or nothing.
    let current = find(&current_only(), headers);
    prop_assert_eq!(current.present, lookup.present);
    if !lookup.old_key {
        prop_assert_eq!(current.id, lookup.id);
    }
    Ok(lookup)
}

/// Decodes `text` as a field of type `F` and checks the field contract: the value is what
/// `serde_json` makes of the text, or the default; an undecodable value is not overwritten
/// by a touch; what a touch writes decodes back to the same value.
fn check_field<F>(text: &str) -> Result<(), TestCaseError>
where
    F: Serialize + DeserializeOwned + Default + PartialEq + Debug,
{
    let stored = Fields::from([(Arc::<str>::from("f"), Arc::<str>::from(text))]);
    let mut state = FieldState::NEW;
    let value: F = decode_field(&stored, &Fields::new(), "f", &mut state, F::default);
    let decodes = match serde_json::from_str::<F>(text) {
        Ok(expected) => {
            prop_assert_eq!(&value, &expected);
            true
        }
        Err(_) => {
            prop_assert_eq!(&value, &F::default());
            false
        }
    };
    state.touch(&value);
    let mut out = Fields::new();
    let written = collect_field(&value, "f", &mut state, &mut out)
        .map_err(|e| TestCaseError::fail(format!("a decoded value does not encode: {e}")))?;
    if !decodes {
        prop_assert!(!written, "an undecodable stored value was overwritten");
    }
    if let Some(encoded) = out.get("f") {
        let again = serde_json::from_str::<F>(encoded)
            .map_err(|e| TestCaseError::fail(format!("written text does not decode: {e}")))?;
        prop_assert!(
            same_value(&again, &value),
            "a touched, unchanged field changed when written: {:?} became {:?}",
            value,
            again
        );
    }
    Ok(())
}

/// Equal as JSON values. Floats compare exactly: serde_json's `float_roundtrip` feature
/// makes every finite float load back as itself.
fn same_value<F: Serialize>(a: &F, b: &F) -> bool {
    matches!(
        (serde_json::to_value(a), serde_json::to_value(b)),
        (Ok(a), Ok(b)) if a == b
    )
}

fn check_all_fields(text: &str) -> Result<(), TestCaseError> {
    check_field::<u32>(text)?;
    check_field::<i64>(text)?;
    check_field::<u64>(text)?;
    check_field::<f64>(text)?;
    check_field::<bool>(text)?;
    check_field::<String>(text)?;
    check_field::<Option<String>>(text)?;
    check_field::<Vec<u32>>(text)?;
    check_field::<Vec<String>>(text)?;
    check_field::<Option<Vec<Option<bool>>>>(text)?;
    check_field::<BTreeMap<String, i64>>(text)?;
    check_field::<BTreeMap<u32, String>>(text)?;
    check_field::<(u8, String, Vec<f64>)>(text)?;
    check_field::<serde_json::Value>(text)
}

fn ten() -> u32 {
    10
}

/// A derived session struct, as an application would write one.
#[derive(crate::Session)]
#[session(crate = "crate")]
struct Profile {
    name: Option<String>,
    views: u32,
    #[session(rename = "items", default = ten)]
    cart_limit: u32,
    tags: Vec<String>,
    scores: BTreeMap<String, f64>,
}

type ProfileView = <Profile as SessionData>::View;

// ---------------------------------------------------------------------------------------
// The cookie scan
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn scan_never_panics_on_arbitrary_bytes(
        headers in vec(vec(any::<u8>(), 0..300), 0..4),
    ) {
        check_scan(&headers)?;
    }

    #[test]
    fn scan_never_panics_on_cookie_like_input(headers in cookie_like()) {
        check_scan(&headers)?;
    }

    #[test]
    fn scan_with_any_cookie_name_never_panics(
        name in select(&["", "sid", "s", " ", "=", ";", "é"][..]),
        header in vec(any::<u8>(), 0..200),
    ) {
        let lookup = ring().find(name, [header.as_slice()]);
        prop_assert!(lookup.id.is_none() || lookup.present);
    }
}

proptest! {
    #![proptest_config(config(500))]

    /// A valid cookie is found wherever it stands among forgeries and other cookies, in one
    /// header or several, quoted or not, with spaces around `=`. Fewer than
    /// `MAX_CANDIDATES` pairs stand before it: each could be a forgery shaped like a signed
    /// id, and only that many are verified (a bound `cookie::tests` checks on its own).
    #[test]
    fn valid_cookie_is_found_among_duplicates_and_junk(
        id in id(),
        before in vec(junk_pair(), 0..crate::cookie::MAX_CANDIDATES),
        after in vec(junk_pair(), 0..12),
        spread in any::<bool>(),
        style in 0..3u8,
    ) {
        let good = signed_by(1, &id);
        let pair = match style {
            0 => format!("sid={good}"),
            1 => format!("sid=\"{good}\""),
            _ => format!(" sid = {good} "),
        };
        let pairs: Vec<Vec<u8>> = before
            .iter()
            .cloned()
            .chain([pair.into_bytes()])
            .chain(after.iter().cloned())
            .collect();
        let lookup = check_scan(&headers(&pairs, spread))?;
        prop_assert_eq!(lookup.id, Some(id));
        prop_assert!(!lookup.old_key);
        prop_assert!(lookup.present);
    }

    /// Among several valid session cookies the first wins (fewer than `MAX_CANDIDATES`
    /// possible forgeries before it, as above).
    #[test]
    fn first_valid_cookie_wins(
        first in id(),
        second in id(),
        junk in vec(junk_pair(), 0..crate::cookie::MAX_CANDIDATES),
        spread in any::<bool>(),
    ) {
        let mut pairs = junk.clone();
        pairs.push(format!("sid={}", signed_by(1, &first)).into_bytes());
        pairs.extend(junk);
        pairs.push(format!("sid={}", signed_by(2, &second)).into_bytes());
        let lookup = check_scan(&headers(&pairs, spread))?;
        prop_assert_eq!(lookup.id, Some(first));
        prop_assert!(!lookup.old_key);
    }

    /// A cookie signed by an old key of the ring is found and flagged for re-signing; once
    /// the key leaves the ring, the same cookie is ignored.
    #[test]
    fn old_key_cookie_is_found_and_flagged(
        id in id(),
        junk in vec(junk_pair(), 0..crate::cookie::MAX_CANDIDATES),
    ) {
        let mut pairs = junk;
        pairs.push(format!("sid={}", signed_by(2, &id)).into_bytes());
        let headers = headers(&pairs, false);
        let lookup = check_scan(&headers)?;
        prop_assert_eq!(lookup.id, Some(id));
        prop_assert!(lookup.old_key);
        let rotated_out = find(&current_only(), &headers);
        prop_assert_eq!(rotated_out.id, None);
        prop_assert!(rotated_out.present);
    }

    /// A cookie signed by a key the ring never held is ignored.
    #[test]
    fn foreign_key_cookie_is_ignored(id in id(), foreign in 3u8..=255) {
        let lookup = find_one(&ring(), &format!("sid={}", signed_by(foreign, &id)));
        prop_assert_eq!(lookup.id, None);
        prop_assert!(lookup.present);
    }

    /// A truncated or extended signature never verifies.
    #[test]
    fn truncated_or_extended_signature_never_verifies(
        id in id(),
        cut in 0..SIGNED_LEN,
        extra in "[A-Za-z0-9_=.-]{1,8}",
    ) {
        let good = signed_by(1, &id);
        prop_assert_eq!(ring().verify(&good[..cut]), None);
        prop_assert_eq!(find_one(&ring(), &format!("sid={}", &good[..cut])).id, None);
        prop_assert_eq!(ring().verify(&format!("{good}{extra}")), None);
        prop_assert_eq!(find_one(&ring(), &format!("sid={good}{extra}")).id, None);
    }

    /// Changing any one byte of a signed value, to anything, makes it invalid.
    #[test]
    fn any_changed_byte_is_rejected(id in id(), at in 0..SIGNED_LEN, byte in any::<u8>()) {
        let good = signed_by(1, &id);
        let mut value = good.clone().into_bytes();
        prop_assume!(value[at] != byte);
        value[at] = byte;
        let lookup = ring().find(NAME, [[b"sid=".as_slice(), &value].concat().as_slice()]);
        prop_assert_eq!(lookup.id, None);
    }

    /// Values over the size limit are skipped unread, even when they hold a valid cookie;
    /// surrounding whitespace does not count.
    #[test]
    fn oversized_values_are_skipped(id in id(), pad in 181usize..4000, ws in 0usize..400) {
        let good = signed_by(1, &id);
        let padded = format!("sid={good}{}", "A".repeat(pad));
        prop_assert_eq!(find_one(&ring(), &padded).id, None);
        let spaced = format!("sid={}{good}{}", " ".repeat(ws), "\t".repeat(ws));
        prop_assert_eq!(find_one(&ring(), &spaced).id, Some(id));
    }

    /// Percent-encoding a valid value (the form is base64url, never encoded) or putting
    /// invalid UTF-8 into it makes it invalid, and never hides a valid cookie elsewhere.
    #[test]
    fn bad_utf8_and_percent_encoding_are_rejected(
        id in id(),
        at in 0..SIGNED_LEN,
        high in 128u8..=255,
        valid_after in any::<bool>(),
    ) {
        let good = signed_by(1, &id);
        let encoded = format!("{}%{:02X}{}", &good[..at], good.as_bytes()[at], &good[at + 1..]);
        prop_assert_eq!(find_one(&ring(), &format!("sid={encoded}")).id, None);
        let mut bad = good.clone().into_bytes();
        bad.insert(at, high);
        let mut header = [b"sid=".as_slice(), &bad].concat();
        prop_assert_eq!(ring().find(NAME, [header.as_slice()]).id, None);
        if valid_after {
            header.extend_from_slice(format!("; sid={good}").as_bytes());
            prop_assert_eq!(ring().find(NAME, [header.as_slice()]).id, Some(id));
        }
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Thousands of cookies, in one header or spread over many, with the valid one anywhere.
    #[test]
    fn many_cookies_with_one_valid(
        id in id(),
        count in 0usize..10_000,
        at in any::<Index>(),
        spread in any::<bool>(),
        duplicates in any::<bool>(),
    ) {
        let at = at.index(count + 1);
        let good = format!("sid={}", signed_by(1, &id)).into_bytes();
        let pairs: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                if duplicates {
                    format!("sid=forged{i}").into_bytes()
                } else {
                    format!("c{i}=v{i}").into_bytes()
                }
            })
            .take(at)
            .chain([good])
            .chain((at..count).map(|i| format!("d{i}=w").into_bytes()))
            .collect();
        let lookup = find(&ring(), &headers(&pairs, spread));
        prop_assert_eq!(lookup.id, Some(id));
    }
}

// ---------------------------------------------------------------------------------------
// The record decoder
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn field_decoder_never_panics_on_arbitrary_text(bytes in vec(any::<u8>(), 0..200)) {
        check_all_fields(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn field_decoder_handles_json_like_text(text in json_like()) {
        check_all_fields(&text)?;
    }

    /// Values written by the application load back as the same values, and touching them
    /// without a change writes nothing.
    #[test]
    fn typed_values_round_trip_through_a_field(
        n in any::<u64>(),
        i in any::<i64>(),
        s in any::<String>(),
        v in vec(any::<String>(), 0..5),
        o in any::<Option<bool>>(),
    ) {
        round_trip(&n)?;
        round_trip(&i)?;
        round_trip(&s)?;
        round_trip(&v)?;
        round_trip(&o)?;
    }

    /// Every finite float loads back as itself (serde_json's `float_roundtrip` feature is on:
    /// without it values such as `-1.127055959878845e241` come back 1 or 2 ULP off, so a
    /// float kept in a session would drift each time it is written).
    #[test]
    fn floats_round_trip_through_a_field(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
        round_trip(&x)?;
    }

    /// A derived view decodes each field on its own: a field that does not decode takes
    /// its default and the others are unaffected; keys it does not know are ignored; an
    /// untouched view writes nothing; a touched one writes only what decoded.
    #[test]
    fn derived_view_falls_back_field_by_field(
        stored in vec((select(&["name", "views", "items", "tags", "scores", "other", "cart_limit"][..]), json_like()), 0..10),
        pending in vec((select(&["name", "views", "items"][..]), json_like()), 0..3),
    ) {
        let to_fields = |pairs: &[(&str, String)]| -> Fields {
            pairs.iter().map(|(k, v)| (Arc::from(*k), Arc::from(v.as_str()))).collect()
        };
        let stored = to_fields(&stored);
        let pending = to_fields(&pending);
        let raw = |key: &str| pending.get(key).or_else(|| stored.get(key)).cloned();

        let mut view = ProfileView::decode(&stored, &pending);
        let mut out = Fields::new();
        prop_assert!(!view.collect(&mut out).unwrap());
        prop_assert!(out.is_empty());

        let data = view.data();
        prop_assert_eq!(&data.name, &expected::<Option<String>>(raw("name"), Option::default));
        prop_assert_eq!(data.views, expected(raw("views"), u32::default));
        prop_assert_eq!(data.cart_limit, expected(raw("items"), ten));
        prop_assert_eq!(&data.tags, &expected::<Vec<String>>(raw("tags"), Vec::default));
        prop_assert_eq!(&data.scores, &expected::<BTreeMap<String, f64>>(raw("scores"), BTreeMap::default));

        let _ = view.name_mut();
        let _ = view.views_mut();
        let _ = view.cart_limit_mut();
        let _ = view.tags_mut();
        let _ = view.scores_mut();
        view.collect(&mut out).unwrap();
        for (key, encoded) in &out {
            prop_assert!(ProfileView::KEYS.contains(&&**key), "wrote unknown key {}", key);
            let original = raw(key);
            prop_assert!(original.is_some(), "wrote unchanged default of {}", key);
            prop_assert_ne!(original.unwrap(), encoded.clone());
        }
        let reread = ProfileView::decode(&out, &Fields::new());
        for key in out.keys() {
            let (a, b) = (view.data(), reread.data());
            match &**key {
                "name" => prop_assert_eq!(&a.name, &b.name),
                "views" => prop_assert_eq!(a.views, b.views),
                "items" => prop_assert_eq!(a.cart_limit, b.cart_limit),
                "tags" => prop_assert_eq!(&a.tags, &b.tags),
                "scores" => prop_assert!(same_value(&a.scores, &b.scores)),
                other => prop_assert!(false, "unexpected key {}", other),
            }
        }
    }
}

fn expected<F: DeserializeOwned>(raw: Option<Arc<str>>, default: fn() -> F) -> F {
    raw.and_then(|raw| serde_json::from_str(&raw).ok())
        .unwrap_or_else(default)
}

/// Encodes `value` as the application's write would (the project's own `collect_field`, on a
/// field that held the default), loads it back with `decode_field`, and touches it. Only the
/// project's encoder and decoder are on the path: a value equal to the default is written as
/// nothing, and nothing loads back as the default.
fn round_trip<F>(value: &F) -> Result<(), TestCaseError>
where
    F: Serialize + DeserializeOwned + Default + PartialEq + Debug,
{
    let mut state = FieldState::NEW;
    state.touch(&F::default());
    let mut stored = Fields::new();
    let written = collect_field(value, "f", &mut state, &mut stored).unwrap();
    prop_assert_eq!(
        written,
        serde_json::to_string(value).ok() != serde_json::to_string(&F::default()).ok(),
        "a field changed from the default to {:?}",
        value
    );
    let mut state = FieldState::NEW;
    let loaded: F = decode_field(&stored, &Fields::new(), "f", &mut state, F::default);
    prop_assert_eq!(&loaded, value, "stored as {:?}", stored.get("f"));
    state.touch(&loaded);
    let mut again = Fields::new();
    prop_assert!(!collect_field(&loaded, "f", &mut state, &mut again).unwrap());
    Ok(())
}

proptest! {
    #![proptest_config(config(24))]

    /// Huge stored values decode (or fall back) without trouble; deep nesting stops at
    /// serde_json's recursion limit instead of overflowing the stack.
    #[test]
    fn field_decoder_handles_huge_values(
        len in 10_000usize..200_000,
        shape in 0..5u8,
    ) {
        let text = match shape {
            0 => serde_json::Value::from("x".repeat(len)).to_string(),
            1 => format!("[{}0]", "1,".repeat(len / 2)),
            2 => "9".repeat(len),
            3 => "[".repeat(len),
            _ => format!("{}{}", "{\"a\":[".repeat(len / 8), "]}".repeat(len / 8)),
        };
        check_field::<String>(&text)?;
        check_field::<Vec<u32>>(&text)?;
        check_field::<u64>(&text)?;
        check_field::<serde_json::Value>(&text)?;
    }
}

// ---------------------------------------------------------------------------------------
// Through the `fuzzing` entry points (the same checks the fuzz targets run)
// ---------------------------------------------------------------------------------------

#[cfg(feature = "fuzzing")]
mod entry_points {
    use super::*;
    use crate::fuzzing;

    /// Inputs in the token alphabet `fuzzing::cookie_header` expands.
    fn tokenised() -> impl Strategy<Value = Vec<u8>> {
        vec(
            prop_oneof![
                Just(b"sid=".to_vec()),
                Just(b"; ".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\"".to_vec()),
                (1u8..=4).prop_map(|t| vec![t]),
                vec(any::<u8>(), 0..6),
            ],
            0..16,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(config(500))]

        #[test]
        fn cookie_header_entry_point(bytes in prop_oneof![tokenised(), vec(any::<u8>(), 0..200)]) {
            fuzzing::cookie_header(&bytes);
        }

        #[test]
        fn field_entry_point(text in prop_oneof![
            json_like(),
            vec(json_like(), 0..8).prop_map(|parts| parts.join("\n")),
        ]) {
            fuzzing::field(text.as_bytes());
        }
    }

    /// Record files: the store's own format with odd numbers, versions and fields, sometimes
    /// cut short, sometimes with a key repeated at the end.
    #[cfg(feature = "file")]
    fn record_file() -> impl Strategy<Value = Vec<u8>> {
        let now = crate::record::Timestamp::now().as_millis();
        let number = prop_oneof![
            (0u64..10).prop_map(|n| n.to_string()),
            (now - 100_000..now + 100_000).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            select(
                &[
                    "-1",
                    "1.5",
                    "1e3",
                    "18446744073709551616",
                    "\"5\"",
                    "null",
                    "99999999999999999999999",
                    "00",
                ][..]
            )
            .prop_map(str::to_owned),
        ];
        let fields = prop_oneof![
            vec(("[a-z]{0,4}", json_like()), 0..4).prop_map(|pairs| {
                let map: serde_json::Map<String, serde_json::Value> =
                    pairs.into_iter().map(|(k, v)| (k, v.into())).collect();
                serde_json::Value::Object(map).to_string()
            }),
            json_like(),
        ];
        let version = select(&["1", "2", "0", "\"1\"", "1.0", "-1"][..]);
        let extra = prop_oneof![
            3 => Just(String::new()),
            1 => number.clone().prop_map(|n| format!(",\"expires_at\":{n}")),
            1 => number.clone().prop_map(|n| format!(",\"created_at\":{n}")),
            1 => Just(",\"v\":2".to_owned()),
            1 => Just(",\"fields\":{}".to_owned()),
        ];
        (version, number.clone(), number, fields, extra, any::<bool>(), any::<Index>()).prop_map(
            |(v, expires, created, fields, extra, cut, at)| {
                let text = format!(
                    "{{\"v\":{v},\"expires_at\":{expires},\"created_at\":{created},\"fields\":{fields}{extra}}}"
                );
                let mut bytes = text.into_bytes();
                if cut {
                    bytes.truncate(at.index(bytes.len() + 1));
                }
                bytes
            },
        )
    }

    /// RESP replies to `HGETALL`: arrays and maps of bulk and simple strings naming the
    /// store's time fields, session fields and metadata, with hostile lengths, nesting and
    /// numbers, sometimes cut short.
    #[cfg(feature = "redis")]
    fn resp_reply() -> impl Strategy<Value = Vec<u8>> {
        let now = crate::record::Timestamp::now().as_millis();
        let text = prop_oneof![
            select(&["\0created", "\0expires", "views", "\0meta", "", "\0"][..])
                .prop_map(str::to_owned),
            (now - 10_000..now + 100_000).prop_map(|n| n.to_string()),
            select(&["-1", "1e3", "18446744073709551616", " 5", "x"][..]).prop_map(str::to_owned),
            json_like(),
        ];
        let element = prop_oneof![
            4 => text.clone().prop_map(|t| format!("${}\r\n{t}\r\n", t.len())),
            1 => text.prop_map(|t| format!("+{}\r\n", t.replace(['\r', '\n'], ""))),
            1 => select(&[
                "$-1\r\n", "$99999999999\r\n", "$-5\r\n", ":12\r\n", "*1\r\n:1\r\n",
                "_\r\n", "$3\r\nab\r\n", "-ERR no\r\n", "*-1\r\n",
            ][..]).prop_map(str::to_owned),
        ];
        (
            vec(element, 0..10),
            any::<bool>(),
            any::<bool>(),
            any::<Index>(),
        )
            .prop_map(|(items, map, cut, at)| {
                let head = if map {
                    format!("%{}\r\n", items.len() / 2)
                } else {
                    format!("*{}\r\n", items.len())
                };
                let mut bytes = (head + &items.concat()).into_bytes();
                if cut {
                    bytes.truncate(at.index(bytes.len() + 1));
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(config(400))]

        #[cfg(feature = "redis")]
        #[test]
        fn redis_record_entry_point(bytes in prop_oneof![resp_reply(), vec(any::<u8>(), 0..200)]) {
            fuzzing::redis_record(&bytes);
        }

        #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
        #[test]
        fn sql_record_entry_point(
            created in any::<i64>(),
            expires in any::<i64>(),
            data in prop_oneof![
                vec(("[a-z]{0,3}", json_like()), 0..5).prop_map(|pairs| {
                    let map: serde_json::Map<String, serde_json::Value> =
                        pairs.into_iter().map(|(k, v)| (k, v.into())).collect();
                    serde_json::Value::Object(map).to_string()
                }),
                json_like(),
                vec(any::<u8>(), 0..100).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            ],
        ) {
            let mut bytes = created.to_le_bytes().to_vec();
            bytes.extend(expires.to_le_bytes());
            bytes.extend(data.as_bytes());
            fuzzing::sql_record(&bytes);
        }

        #[cfg(feature = "memcached")]
        #[test]
        fn memcached_record_entry_point(
            data in prop_oneof![
                (select(&["1", "2", "-1", "\"1\""][..]), any::<i64>(), json_like(), json_like()).prop_map(
                    |(v, t, e, f)| format!("{{\"v\":{v},\"created\":{t},\"expires\":{e},\"fields\":{f}}}")
                ),
                vec(any::<u8>(), 0..100).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            ],
        ) {
            fuzzing::memcached_record(data.as_bytes());
        }
    }

    /// Every seed of every fuzz target (`fuzz/seeds/TARGET/*`) passes its target: the seeds
    /// are the fuzzers' starting points and each was once a finding or a shape worth keeping.
    #[test]
    fn fuzz_seeds_pass_their_targets() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        let mut ran = 0;
        for target in std::fs::read_dir(&seeds).expect("fuzz/seeds exists") {
            let target = target.unwrap().path();
            let name = target.file_name().unwrap().to_string_lossy().into_owned();
            let run: fn(&[u8]) = match name.as_str() {
                "cookie_header" => fuzzing::cookie_header,
                "field" => fuzzing::field,
                #[cfg(feature = "file")]
                "file_record" => fuzzing::file_record,
                #[cfg(feature = "redis")]
                "redis_record" => fuzzing::redis_record,
                #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
                "sql_record" => fuzzing::sql_record,
                #[cfg(feature = "memcached")]
                "memcached_record" => fuzzing::memcached_record,
                _ => continue,
            };
            for seed in std::fs::read_dir(&target).unwrap() {
                let seed = seed.unwrap().path();
                run(&std::fs::read(&seed).unwrap());
                ran += 1;
            }
        }
        assert!(ran >= 9, "only {ran} seeds ran");
        #[cfg(feature = "file")]
        fuzzing::remove_file_record_dir();
    }

    /// Run by hand rather than with `proptest!` so that the harness's folder is removed
    /// afterwards.
    #[cfg(feature = "file")]
    #[test]
    fn file_record_entry_point() {
        let inputs = prop_oneof![record_file(), vec(any::<u8>(), 0..200)];
        let result = proptest::test_runner::TestRunner::new(config(400)).run(&inputs, |bytes| {
            fuzzing::file_record(&bytes);
            Ok(())
        });
        fuzzing::remove_file_record_dir();
        if let Err(error) = result {
            panic!("{error}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Regressions: inputs that once broke a property, kept as plain tests
// ---------------------------------------------------------------------------------------

/// The file store's reaper reads the deadline from a file's first bytes, a load from the
/// whole file, where a repeated `expires_at` key would count last: such a file (which the
/// store never writes; only a foreign writer of the folder can) is refused as corrupt by the
/// load, before and after a sweep, so the reaper and the reader never disagree on serving it.
#[cfg(feature = "file")]
#[test]
fn file_store_reaper_and_reader_agree_on_duplicate_deadlines() {
    use crate::store::{FileStore, Store, StoreError};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir =
        std::env::temp_dir().join(format!("session-core-dup-deadline-{}", std::process::id()));
    runtime.block_on(async {
        let store = FileStore::open(&dir).await.unwrap();
        let key = SessionId::generate().unwrap().store_key();
        let far = crate::record::Timestamp::now().as_millis() + 3_600_000;
        let text = format!(
            "{{\"v\":1,\"expires_at\":5,\"created_at\":1,\"fields\":{{}},\"expires_at\":{far}}}"
        );
        std::fs::write(store.dir().join(format!("{key}.json")), text).unwrap();
        let before = store.load(&key).await;
        store.purge_expired().await.unwrap();
        let after = store.load(&key).await;
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(before, Err(StoreError::Corrupt(_))), "{before:?}");
        assert!(
            matches!(after, Err(StoreError::Corrupt(_)) | Ok(None)),
            "never served after a sweep: {after:?}"
        );
    });
}

/// Collects the text of every event's fields, to see what a log line would hold.
#[derive(Default)]
struct LogCapture {
    lines: std::sync::Mutex<Vec<String>>,
}

impl tracing::Subscriber for LogCapture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Line<'a>(&'a mut String);
        impl tracing::field::Visit for Line<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn Debug) {
                use std::fmt::Write as _;
                let _ = write!(self.0, "{}={:?} ", field.name(), value);
            }
        }
        let mut line = String::new();
        event.record(&mut Line(&mut line));
        self.lines.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Regression: the warning for a field that does not decode carried serde_json's message,
/// which quotes a string value in full, so a stored 100 KB string became a 100 KB log line
/// holding the session's data.
#[test]
fn undecodable_field_warning_does_not_quote_the_stored_value() {
    let secret = "s3cr3t".repeat(20_000);
    let text = serde_json::Value::from(secret.as_str()).to_string();
    let stored = Fields::from([(Arc::<str>::from("views"), Arc::<str>::from(text.as_str()))]);
    let capture = Arc::new(LogCapture::default());
    let mut state = FieldState::NEW;
    let value: u32 = tracing::subscriber::with_default(capture.clone(), || {
        decode_field(&stored, &Fields::new(), "views", &mut state, || 7)
    });
    assert_eq!(value, 7);
    let lines = capture.lines.lock().unwrap();
    assert_eq!(lines.len(), 1, "one warning: {lines:?}");
    assert!(lines[0].contains("views"), "{}", lines[0]);
    assert!(
        !lines[0].contains("s3cr3t"),
        "the log line quotes the stored value"
    );
    assert!(
        lines[0].len() < 1_000,
        "log line of {} bytes",
        lines[0].len()
    );
}
