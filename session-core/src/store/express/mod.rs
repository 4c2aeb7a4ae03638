//! express-session's record format, for sharing live sessions with a Node app: the stores
//! [`ConnectRedisStore`] (connect-redis v7 to v9) and [`ConnectPgStore`]
//! (connect-pg-simple), used with [`SessionLayer::express`](crate::SessionLayer::express).
//!
//! # The record
//!
//! express-session keeps a session as one JSON object: the session's own keys, and a `cookie`
//! object with the cookie's settings:
//!
//! ```json
//! {"cookie":{"originalMaxAge":900000,"expires":"2026-12-02T06:50:21.250Z","httpOnly":true,"path":"/"},
//!  "views":3,"user":{"name":"ada"}}
//! ```
//!
//! - Each field of a `#[derive(Session)]` struct is one top-level key, its value the field's
//!   JSON. A field's `rename` names the key.
//! - `cookie` is reserved: the layer writes it when it creates a session (from its cookie
//!   options, as express would), a save moves its `expires` to the new deadline and keeps the
//!   rest, and a field of the struct can never overwrite it.
//! - Keys the struct does not know (written by the Node app) are kept, value and position,
//!   byte for byte; so are the values of keys this side did not change.
//! - A record that is not JSON, or not a JSON object, is [`StoreError::Corrupt`]: the layer
//!   starts a new session under a new id and leaves the record alone.
//!
//! # Writes, and what the other app may change meanwhile
//!
//! The Node stores keep one value per session, so a record is written whole; the layer still
//! writes only when something changed, and only the keys it changed: a save reads the record,
//! sets the changed keys on what it read and writes it back **only if the record is still what
//! it read**: in Redis a compare-and-set (a Lua script) that reads again when the Node app
//! wrote in between; in PostgreSQL the row stays locked (`SELECT .. FOR UPDATE`) from the
//! read to the write. So a change the Node app
//! made to another key between our load and our save is kept.
//!
//! What remains: express-session itself writes the whole object it loaded, so a change this
//! side makes while a Node request on the same session is running is lost when that request
//! saves (express's own lost-update fault, between two Node requests too). A change to the
//! **same** key on both sides is last-writer-wins. A layer with `resave` (or a handler that
//! calls `clear()`) replaces every key it knows with its own values.

use std::sync::Arc;
use std::time::Duration;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::{Config, SameSite};
use crate::record::{Fields, Record, SaveMode, Timestamp};
use crate::store::StoreError;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
// The way out of compat mode is a layer option, so it needs the layer.
#[cfg(feature = "axum")]
mod upgrade;

#[cfg(feature = "axum")]
pub(crate) use upgrade::UpgradeStore;

#[cfg(feature = "postgres")]
pub use postgres::ConnectPgStore;
#[cfg(feature = "redis")]
pub use redis::ConnectRedisStore;

/// The reserved key of the cookie's settings.
pub(crate) const COOKIE_KEY: &str = "cookie";
/// connect-redis's and connect-pg-simple's lifetime for a record whose cookie has no
/// expiry (a browser-session cookie): one day.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How many times a save reads the record again after the other app wrote it in between.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) const SAVE_ATTEMPTS: u32 = 16;

/// The pause before save attempt `attempt` (counted from 1) reads the record again: a
/// millisecond more each time (at most 136 ms in all), so a save racing a busy writer gets
/// its turn.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) async fn back_off(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(u64::from(attempt))).await;
}

/// The error for a hashed store key.
#[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))]
pub(crate) fn not_express() -> StoreError {
    StoreError::Rejected(
        "express-session stores keep sessions under their ids: build the layer with `SessionLayer::express`".to_owned(),
    )
}

/// One express record: its top-level keys in their order, each with its JSON text.
#[derive(Debug, Clone)]
pub(crate) struct ExpressObject {
    entries: Vec<(String, Box<RawValue>)>,
}

impl ExpressObject {
    /// Parses a stored record. Not JSON, or not an object: [`StoreError::Corrupt`].
    pub(crate) fn parse(text: &str) -> Result<Self, StoreError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let entries = deserializer
            .deserialize_map(EntriesVisitor)
            .and_then(|entries| deserializer.end().map(|()| entries))
            .map_err(|error| {
                StoreError::Corrupt(format!(
                    "express session record is not a JSON object: {error}"
                ))
            })?;
        Ok(Self { entries })
    }

    /// The record the layer sees: every key (`cookie` included) as a field.
    pub(crate) fn to_record(&self, expires_at: Timestamp) -> Record {
        let fields: Fields = self
            .entries
            .iter()
            .map(|(key, value)| (Arc::from(key.as_str()), Arc::from(value.get())))
            .collect();
        // express records carry no creation time; the layer in express mode has no absolute
        // timeout, so the load time serves.
        Record {
            fields,
            created_at: Timestamp::now(),
            expires_at,
        }
    }

    /// The object of a record the layer creates: its fields in order, `cookie` first (as
    /// express writes it), with a default cookie if the layer gave none.
    pub(crate) fn from_record(record: &Record) -> Result<Self, StoreError> {
        let mut object = Self {
            entries: Vec::with_capacity(record.fields.len() + 1),
        };
        let cookie = match record.fields.get(COOKIE_KEY) {
            Some(cookie) => raw(cookie)?,
            None => raw(&default_cookie(record.expires_at))?,
        };
        object.entries.push((COOKIE_KEY.to_owned(), cookie));
        for (key, value) in &record.fields {
            if &**key != COOKIE_KEY {
                object.set(key, raw(value)?);
            }
        }
        object.set_expires(record.expires_at)?;
        Ok(object)
    }

    /// Applies a save: the written fields over the stored ones (a replace first drops the
    /// stored keys it does not name); `cookie` stays the stored one, its `expires` moved to
    /// the record's deadline.
    pub(crate) fn apply(&mut self, write: &Record, mode: SaveMode) -> Result<(), StoreError> {
        if mode == SaveMode::Replace {
            self.entries
                .retain(|(key, _)| key == COOKIE_KEY || write.fields.contains_key(key.as_str()));
        }
        for (key, value) in &write.fields {
            if &**key != COOKIE_KEY {
                self.set(key, raw(value)?);
            }
        }
        if self.get(COOKIE_KEY).is_none() {
            self.entries.insert(
                0,
                (
                    COOKIE_KEY.to_owned(),
                    raw(&default_cookie(write.expires_at))?,
                ),
            );
        }
        self.set_expires(write.expires_at)
    }

    fn get(&self, key: &str) -> Option<&RawValue> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| &**value)
    }

    fn set(&mut self, key: &str, value: Box<RawValue>) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, slot)) => *slot = value,
            None => self.entries.push((key.to_owned(), value)),
        }
    }

    /// Moves `cookie.expires` to `expires_at`, unless the cookie has none (a browser-session
    /// cookie, `"expires": null`), keeping every other cookie key as it is.
    fn set_expires(&mut self, expires_at: Timestamp) -> Result<(), StoreError> {
        let Some(cookie) = self.get(COOKIE_KEY) else {
            return Ok(());
        };
        let Ok(mut cookie) = Self::parse(cookie.get()) else {
            // Not an object: express could not read it either; leave it for it to report.
            return Ok(());
        };
        match cookie.get("expires").map(RawValue::get) {
            None | Some("null") => return Ok(()),
            Some(_) => {}
        }
        cookie.set("expires", raw(&format!("\"{}\"", iso8601(expires_at)))?);
        let cookie = raw(&cookie.to_json())?;
        self.set(COOKIE_KEY, cookie);
        Ok(())
    }

    /// When the record's cookie expires, if it says.
    pub(crate) fn cookie_expires(&self) -> Option<Timestamp> {
        let cookie = Self::parse(self.get(COOKIE_KEY)?.get()).ok()?;
        let expires: String = serde_json::from_str(cookie.get("expires")?.get()).ok()?;
        parse_iso8601(&expires)
    }

    /// The lifetime connect-redis and connect-pg-simple give a record: until its cookie
    /// expires, counted from `now`, or [`DEFAULT_TTL`] when the cookie has no expiry. `None`:
    /// the deadline has passed (the stores then delete the record).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn ttl(&self, now: Timestamp) -> Option<Duration> {
        match self.cookie_expires() {
            Some(expires) if expires > now => Some(expires.saturating_since(now)),
            Some(_) => None,
            None => Some(DEFAULT_TTL),
        }
    }

    /// The record as JSON text, keys in order.
    pub(crate) fn to_json(&self) -> String {
        let size: usize = self
            .entries
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = String::with_capacity(size + 2);
        out.push('{');
        for (i, (key, value)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // A `String` always serialises.
            out.push_str(&serde_json::to_string(key).unwrap_or_default());
            out.push(':');
            out.push_str(value.get());
        }
        out.push('}');
        out
    }
}

/// A field's JSON text as a raw value; a field that is not one JSON value (no layer writes
/// such a thing) is refused.
fn raw(text: &str) -> Result<Box<RawValue>, StoreError> {
    RawValue::from_string(text.to_owned())
        .map_err(|error| StoreError::Rejected(format!("session field is not JSON: {error}")))
}

/// Collects a JSON object's entries in order; a repeated key keeps its first place and its
/// last value, as `JSON.parse` keeps the last value.
struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Vec<(String, Box<RawValue>)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries: Self::Value = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some((_, slot)) => *slot = value,
                None => entries.push((key, value)),
            }
        }
        Ok(entries)
    }
}

/// The `cookie` object express writes for a session, from the layer's cookie options:
/// `originalMaxAge` in milliseconds (`null` for a browser-session cookie), `expires`, and the
/// attributes, in express's order.
pub(crate) fn cookie_object(
    config: &Config,
    secure: bool,
    max_age: Option<Duration>,
    expires_at: Timestamp,
) -> Arc<str> {
    let mut out = String::with_capacity(160);
    out.push('{');
    match max_age {
        Some(max_age) => {
            out.push_str("\"originalMaxAge\":");
            out.push_str(&max_age.as_millis().to_string());
            out.push_str(",\"expires\":\"");
            out.push_str(&iso8601(expires_at));
            out.push('"');
        }
        None => out.push_str("\"originalMaxAge\":null,\"expires\":null"),
    }
    if config.partitioned {
        out.push_str(",\"partitioned\":true");
    }
    if secure {
        out.push_str(",\"secure\":true");
    }
    out.push_str(",\"httpOnly\":");
    out.push_str(if config.http_only { "true" } else { "false" });
    if let Some(domain) = &config.domain {
        out.push_str(",\"domain\":");
        out.push_str(&serde_json::to_string(domain).unwrap_or_default());
    }
    out.push_str(",\"path\":");
    out.push_str(&serde_json::to_string(&config.path).unwrap_or_default());
    let same_site = match config.same_site {
        SameSite::Strict => "strict",
        SameSite::Lax => "lax",
        SameSite::None => "none",
        SameSite::Auto if secure => "none",
        SameSite::Auto => "lax",
    };
    out.push_str(",\"sameSite\":\"");
    out.push_str(same_site);
    out.push_str("\"}");
    Arc::from(out)
}

/// The cookie of a record written by a layer that gave none (a native layer on an express
/// store): express's defaults.
fn default_cookie(expires_at: Timestamp) -> String {
    format!(
        "{{\"originalMaxAge\":null,\"expires\":\"{}\",\"httpOnly\":true,\"path\":\"/\"}}",
        iso8601(expires_at)
    )
}

/// `Date.prototype.toISOString`: `2026-12-02T06:50:21.250Z`.
pub(crate) fn iso8601(time: Timestamp) -> String {
    let millis = time.as_millis();
    let secs = millis / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        millis % 1000
    )
}

/// Reads `toISOString`'s form (milliseconds optional); anything else is `None`.
pub(crate) fn parse_iso8601(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let millis = match (b.get(19), b.len()) {
        (Some(b'Z'), 20) => 0,
        (Some(b'.'), 24) if b[23] == b'Z' => digits(20..23)?,
        _ => return None,
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(Timestamp::from_millis(secs * 1000 + millis))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> i64 {
    let y = i64::try_from(year).unwrap_or(0) - i64::from(month <= 2);
    let m = i64::try_from(month).unwrap_or(1);
    let d = i64::try_from(day).unwrap_or(1);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u64::try_from(month).unwrap_or(1),
        u64::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What connect-redis stored for express-session 1.19 after a login (see
    /// spec/express-semantics.md).
    const NODE_RECORD: &str = r#"{"cookie":{"originalMaxAge":900000,"expires":"2026-12-02T06:50:21.250Z","httpOnly":true,"path":"/"},"views":1,"user":{"name":"ada"}}"#;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (Arc::from(*k), Arc::from(*v)))
            .collect()
    }

    #[test]
    fn iso8601_matches_to_iso_string_and_parses_back() {
        let time = Timestamp::from_millis(1_796_194_221_250);
        assert_eq!(iso8601(time), "2026-12-02T06:50:21.250Z");
        assert_eq!(parse_iso8601("2026-12-02T06:50:21.250Z"), Some(time));
        assert_eq!(
            iso8601(Timestamp::from_millis(0)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            iso8601(Timestamp::from_millis(951_782_400_000)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            parse_iso8601("2000-02-29T00:00:00Z"),
            Some(Timestamp::from_millis(951_782_400_000))
        );
        for bad in [
            "",
            "2026-12-02",
            "2026-13-02T06:50:21.250Z",
            "2026-12-02T06:50:21.250+01:00",
            "x026-12-02T06:50:21.250Z",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad:?}");
        }
        for millis in [1, 86_399_999, 1_000_000_000_123, 4_102_444_800_000] {
            let time = Timestamp::from_millis(millis);
            assert_eq!(parse_iso8601(&iso8601(time)), Some(time));
        }
    }

    #[test]
    fn a_node_record_reads_as_fields_and_writes_back_unchanged() {
        let object = ExpressObject::parse(NODE_RECORD).unwrap();
        assert_eq!(object.to_json(), NODE_RECORD);
        let record = object.to_record(Timestamp::from_millis(5));
        assert_eq!(record.fields.get("views").map(|v| &**v), Some("1"));
        assert_eq!(
            record.fields.get("user").map(|v| &**v),
            Some(r#"{"name":"ada"}"#)
        );
        assert_eq!(
            object.cookie_expires(),
            Some(Timestamp::from_millis(1_796_194_221_250))
        );
    }

    #[test]
    fn a_save_sets_changed_keys_in_place_and_keeps_unknown_ones_byte_for_byte() {
        let stored = r#"{"cookie":{"originalMaxAge":900000,"expires":"2026-12-02T06:50:21.250Z","httpOnly":true,"path":"/","sameSite":"lax"},"views":1,"legacy":{ "spaced" : [1, 2.50] },"user":{"name":"ada"}}"#;
        let mut object = ExpressObject::parse(stored).unwrap();
        let mut write = Record::new(
            Timestamp::from_millis(1),
            Timestamp::from_millis(1_796_194_821_250),
        );
        write.fields = fields(&[
            ("views", "2"),
            ("cart", r#"["tea"]"#),
            ("cookie", "\"ours\""),
        ]);
        object.apply(&write, SaveMode::Merge).unwrap();
        assert_eq!(
            object.to_json(),
            r#"{"cookie":{"originalMaxAge":900000,"expires":"2026-12-02T07:00:21.250Z","httpOnly":true,"path":"/","sameSite":"lax"},"views":2,"legacy":{ "spaced" : [1, 2.50] },"user":{"name":"ada"},"cart":["tea"]}"#
        );
    }

    #[test]
    fn a_replace_drops_keys_it_does_not_name_but_keeps_the_cookie() {
        let mut object = ExpressObject::parse(NODE_RECORD).unwrap();
        let mut write = Record::new(
            Timestamp::from_millis(1),
            Timestamp::from_millis(1_796_194_221_250),
        );
        write.fields = fields(&[("flash", r#""Signed out""#)]);
        object.apply(&write, SaveMode::Replace).unwrap();
        assert_eq!(
            object.to_json(),
            r#"{"cookie":{"originalMaxAge":900000,"expires":"2026-12-02T06:50:21.250Z","httpOnly":true,"path":"/"},"flash":"Signed out"}"#
        );
    }

    #[test]
    fn a_browser_session_cookie_keeps_its_null_expiry_and_gets_the_default_ttl() {
        let stored = r#"{"cookie":{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/"},"views":1}"#;
        let mut object = ExpressObject::parse(stored).unwrap();
        let mut write = Record::new(Timestamp::from_millis(1), Timestamp::from_millis(99));
        write.fields = fields(&[("views", "2")]);
        object.apply(&write, SaveMode::Merge).unwrap();
        assert!(object
            .to_json()
            .starts_with(r#"{"cookie":{"originalMaxAge":null,"expires":null,"#));
        assert_eq!(object.ttl(Timestamp::from_millis(50)), Some(DEFAULT_TTL));
    }

    #[test]
    fn ttl_follows_the_cookie_expiry_rounded_by_the_stores() {
        let object = ExpressObject::parse(NODE_RECORD).unwrap();
        let expires = Timestamp::from_millis(1_796_194_221_250);
        assert_eq!(
            object.ttl(Timestamp::from_millis(expires.as_millis() - 900_000)),
            Some(Duration::from_secs(900))
        );
        assert_eq!(object.ttl(expires), None);
    }

    #[test]
    fn garbage_and_non_objects_are_corrupt_not_panics() {
        for bad in [
            "",
            "not json",
            "[1,2]",
            "\"s\"",
            "3",
            "null",
            "{\"a\":1",
            "{\"a\":1} x",
            "{1:2}",
        ] {
            assert!(
                matches!(ExpressObject::parse(bad), Err(StoreError::Corrupt(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_created_record_puts_the_cookie_first() {
        let mut record = Record::new(
            Timestamp::from_millis(1),
            Timestamp::from_millis(1_796_194_221_250),
        );
        record.fields = fields(&[
            ("views", "1"),
            (
                "cookie",
                r#"{"originalMaxAge":900000,"expires":"x","httpOnly":true,"path":"/"}"#,
            ),
        ]);
        let object = ExpressObject::from_record(&record).unwrap();
        assert_eq!(
            object.to_json(),
            r#"{"cookie":{"originalMaxAge":900000,"expires":"2026-12-02T06:50:21.250Z","httpOnly":true,"path":"/"},"views":1}"#
        );
        record.fields = fields(&[("views", "1")]);
        let object = ExpressObject::from_record(&record).unwrap();
        assert!(object.to_json().starts_with(r#"{"cookie":{"originalMaxAge":null,"expires":"2026-12-02T06:50:21.250Z","httpOnly":true,"path":"/"}"#));
    }

    #[test]
    fn repeated_keys_keep_the_last_value_like_json_parse() {
        let object = ExpressObject::parse(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        assert_eq!(object.to_json(), r#"{"a":3,"b":2}"#);
    }
}
