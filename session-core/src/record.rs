//! What a store holds for one session: the encoded fields, the creation time and the expiry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The encoded fields of a session, keyed by field name (or `#[session(rename = "...")]`).
///
/// Every value is the field's JSON text, encoded on its own, so a store can write one field
/// without touching the others. Keys and values are reference-counted so that an in-process
/// store hands records out without copying them.
pub type Fields = BTreeMap<Arc<str>, Arc<str>>;

/// A point in time, in whole milliseconds since the Unix epoch.
///
/// Stores keep expiry deadlines in this form; it converts to and from [`SystemTime`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// A timestamp `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + duration`, saturating at the largest representable time.
    pub fn saturating_add(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// How long after `earlier` this is; zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Self {
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self(millis)
    }
}

impl From<Timestamp> for SystemTime {
    fn from(time: Timestamp) -> Self {
        UNIX_EPOCH + Duration::from_millis(time.0)
    }
}

/// One stored session.
///
/// `expires_at` is the deadline the server enforces: the idle deadline, capped by the absolute
/// one. A store must not return a record whose `expires_at` has passed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// One encoded value per field.
    pub fields: Fields,
    /// When the session was first stored.
    pub created_at: Timestamp,
    /// When the session stops being valid unless it is touched or saved again.
    pub expires_at: Timestamp,
}

impl Record {
    /// An empty record with the given times.
    pub fn new(created_at: Timestamp, expires_at: Timestamp) -> Self {
        Self {
            fields: Fields::new(),
            created_at,
            expires_at,
        }
    }

    /// Whether the record's deadline is at or before `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }

    /// Applies a save to this record in place: merges or replaces the fields and takes the
    /// new times. Stores that keep whole records use this to apply a partial write.
    pub fn apply(&mut self, write: &Record, mode: SaveMode) {
        match mode {
            SaveMode::Merge => {
                for (name, value) in &write.fields {
                    self.fields.insert(name.clone(), value.clone());
                }
            }
            SaveMode::Replace => self.fields.clone_from(&write.fields),
        }
        self.created_at = write.created_at;
        self.expires_at = write.expires_at;
    }

    /// The total size of the encoded fields and their names, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.fields.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// How [`Store::save`](crate::Store::save) applies the record it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveMode {
    /// The record holds only the changed fields: write them over the stored ones and keep
    /// every other stored field (including fields the application no longer knows). If no
    /// live record is stored, nothing is written.
    Merge,
    /// The record is the whole session: stored fields absent from it are removed.
    Replace,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (Arc::from(*k), Arc::from(*v)))
            .collect()
    }

    #[test]
    fn merge_keeps_fields_the_write_does_not_name() {
        let mut stored = Record::new(Timestamp(1), Timestamp(10));
        stored.fields = fields(&[("a", "1"), ("legacy", "\"x\"")]);
        let mut write = Record::new(Timestamp(1), Timestamp(20));
        write.fields = fields(&[("a", "2")]);
        stored.apply(&write, SaveMode::Merge);
        assert_eq!(stored.fields, fields(&[("a", "2"), ("legacy", "\"x\"")]));
        assert_eq!(stored.expires_at, Timestamp(20));
    }

    #[test]
    fn replace_drops_fields_the_write_does_not_name() {
        let mut stored = Record::new(Timestamp(1), Timestamp(10));
        stored.fields = fields(&[("a", "1"), ("b", "2")]);
        let mut write = Record::new(Timestamp(1), Timestamp(20));
        write.fields = fields(&[("a", "3")]);
        stored.apply(&write, SaveMode::Replace);
        assert_eq!(stored.fields, fields(&[("a", "3")]));
    }

    #[test]
    fn timestamps_saturate_instead_of_overflowing() {
        let late = Timestamp(u64::MAX - 1);
        assert_eq!(
            late.saturating_add(Duration::from_secs(5)),
            Timestamp(u64::MAX)
        );
        assert_eq!(Timestamp(5).saturating_since(Timestamp(9)), Duration::ZERO);
    }
}
