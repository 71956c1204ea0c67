//! One peer's report about one node, prepared once so that resolution only
//! compares integers and hashes.

use std::hash::BuildHasher;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Fixed seed: hashes only speed up grouping, but a fixed one keeps every
/// process doing exactly the same work.
pub(crate) fn hash_str(text: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(0x6869_7665_6d65_7368).hash_one(text)
}

/// A node entry as one peer reported it.
///
/// Laid out for resolution over large inputs: the id and the canonical
/// version share one allocation, so comparing both touches one place in
/// memory, and the reported fields sit behind a pointer until output.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The id followed by the canonical version.
    text: Box<str>,
    id_len: u32,
    id_hash: u64,
    version_hash: u64,
    /// Seconds and nanoseconds since the Unix epoch: RFC 3339 instants
    /// compared exactly, whatever offset they were written with.
    last_updated: (i64, u32),
    fields: Box<Map<String, Value>>,
}

/// Why a JSON value is not an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry is not a JSON object")]
    NotAnObject,
    #[error("entry has no \"id\"")]
    MissingId,
    #[error("\"id\" is not a string")]
    IdNotString,
    #[error("\"id\" is {0} bytes long")]
    IdTooLong(usize),
    #[error("entry has no \"last_updated\"")]
    MissingLastUpdated,
    #[error("\"last_updated\" is not an RFC 3339 timestamp: {0}")]
    BadLastUpdated(String),
}

impl Entry {
    /// Takes a JSON object with at least `id` and `last_updated`.
    pub fn from_json(value: Value) -> Result<Self, EntryError> {
        let Value::Object(fields) = value else {
            return Err(EntryError::NotAnObject);
        };
        let id = match fields.get("id") {
            None => return Err(EntryError::MissingId),
            Some(Value::String(id)) => id.as_str(),
            Some(_) => return Err(EntryError::IdNotString),
        };
        let last_updated = match fields.get("last_updated") {
            None => return Err(EntryError::MissingLastUpdated),
            Some(Value::String(text)) => parse_instant(text)?,
            Some(other) => return Err(EntryError::BadLastUpdated(other.to_string())),
        };
        let id_len = u32::try_from(id.len()).map_err(|_| EntryError::IdTooLong(id.len()))?;
        let mut text = String::with_capacity(id.len() + 64);
        text.push_str(id);
        write_version(&fields, &mut text);
        Ok(Self {
            id_hash: hash_str(id),
            version_hash: hash_str(&text[id.len()..]),
            text: text.into_boxed_str(),
            id_len,
            last_updated,
            fields: Box::new(fields),
        })
    }

    pub fn id(&self) -> &str {
        &self.text[..self.id_len as usize]
    }

    /// Same id, compared as bytes: no char-boundary checks on the hot path.
    pub(crate) fn same_id(&self, other: &Entry) -> bool {
        self.id_hash == other.id_hash
            && self.text.as_bytes()[..self.id_len as usize] == other.text.as_bytes()[..other.id_len as usize]
    }

    pub(crate) fn id_hash(&self) -> u64 {
        self.id_hash
    }

    /// The instant in nanoseconds since the Unix epoch.
    pub fn last_updated_nanos(&self) -> i128 {
        i128::from(self.last_updated.0) * 1_000_000_000 + i128::from(self.last_updated.1)
    }

    /// The instant as (seconds, nanoseconds), cheap to compare.
    pub(crate) fn instant(&self) -> (i64, u32) {
        self.last_updated
    }

    /// The canonical form of the fields that make up this entry's version.
    pub fn version(&self) -> &str {
        &self.text[self.id_len as usize..]
    }

    pub(crate) fn version_hash(&self) -> u64 {
        self.version_hash
    }

    /// True when both carry the same version (all fields but id and time).
    pub fn same_version(&self, other: &Entry) -> bool {
        self.version_hash == other.version_hash
            && self.text.as_bytes()[self.id_len as usize..] == other.text.as_bytes()[other.id_len as usize..]
    }

    /// The entry exactly as reported, every field kept.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    pub fn to_json(&self) -> Value {
        Value::Object((*self.fields).clone())
    }
}

fn parse_instant(text: &str) -> Result<(i64, u32), EntryError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|instant| (instant.unix_timestamp(), instant.nanosecond()))
        .map_err(|error| EntryError::BadLastUpdated(format!("{text:?} ({error})")))
}

/// JSON with object keys sorted at every depth, independent of how serde_json
/// happens to order maps in this build.
fn write_version(fields: &Map<String, Value>, out: &mut String) {
    let rest = fields.iter().filter(|(key, _)| key.as_str() != "id" && key.as_str() != "last_updated");
    write_object(rest, out);
}

fn write_object<'a>(members: impl Iterator<Item = (&'a String, &'a Value)>, out: &mut String) {
    let mut members: Vec<_> = members.collect();
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (index, (key, value)) in members.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key.clone()).to_string());
        out.push(':');
        write_value(value, out);
    }
    out.push('}');
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => write_object(map.iter(), out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn version_ignores_key_order_id_and_time() {
        let a = Entry::from_json(json!({"id": "a", "last_updated": "2024-01-01T00:00:00Z",
            "address": "x", "meta": {"b": 1, "a": [1, {"z": 0, "y": 2}]}}))
        .unwrap();
        let b = Entry::from_json(json!({"meta": {"a": [1, {"y": 2, "z": 0}], "b": 1},
            "address": "x", "last_updated": "2025-01-01T00:00:00Z", "id": "b"}))
        .unwrap();
        assert!(a.same_version(&b));
        assert_eq!(a.version(), r#"{"address":"x","meta":{"a":[1,{"y":2,"z":0}],"b":1}}"#);
    }

    #[test]
    fn instants_compare_across_offsets() {
        let utc = Entry::from_json(json!({"id": "a", "last_updated": "2024-01-01T12:00:00Z"})).unwrap();
        let plus2 =
            Entry::from_json(json!({"id": "a", "last_updated": "2024-01-01T14:00:00+02:00"})).unwrap();
        assert_eq!(utc.last_updated_nanos(), plus2.last_updated_nanos());
    }

    #[test]
    fn rejects_missing_or_bad_fields() {
        assert_eq!(Entry::from_json(json!([1])), Err(EntryError::NotAnObject));
        assert_eq!(
            Entry::from_json(json!({"last_updated": "2024-01-01T00:00:00Z"})),
            Err(EntryError::MissingId)
        );
        assert_eq!(
            Entry::from_json(json!({"id": 7, "last_updated": "2024-01-01T00:00:00Z"})),
            Err(EntryError::IdNotString)
        );
        assert_eq!(Entry::from_json(json!({"id": "a"})), Err(EntryError::MissingLastUpdated));
        assert!(matches!(
            Entry::from_json(json!({"id": "a", "last_updated": "yesterday"})),
            Err(EntryError::BadLastUpdated(_))
        ));
    }
}
