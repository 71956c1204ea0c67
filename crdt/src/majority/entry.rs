//! One peer's report about one node, prepared once so that resolution only
//! compares integers and pointers.

use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use hashbrown::HashTable;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Fixed seed: hashes only speed up grouping, but a fixed one keeps every
/// process doing exactly the same work.
pub(crate) fn hash_str(text: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(0x6869_7665_6d65_7368).hash_one(text)
}

/// Texts (ids and canonical versions) shared by every entry that carries
/// them, so that resolution can tell two reports of one version apart from
/// others by comparing pointers instead of reading both texts (at 1,000
/// views x 100 nodes, reading each report's own text was two thirds of the
/// time: cache misses). Only a shortcut: entries whose texts were interned
/// at different times (after a [`Interner::clear`]) hold different pointers
/// to equal texts and are compared byte by byte, so results never depend on
/// it.
struct Interner {
    texts: HashTable<Arc<str>>,
    bytes: usize,
}

/// The interner forgets everything past these sizes (entries keep their
/// texts), which bounds its memory whatever a process parses.
const MAX_INTERNED_TEXTS: usize = 1 << 15;
const MAX_INTERNED_BYTES: usize = 8 << 20;

static INTERNER: LazyLock<Mutex<Interner>> =
    LazyLock::new(|| Mutex::new(Interner { texts: HashTable::new(), bytes: 0 }));

impl Interner {
    fn intern(text: &str, hash: u64) -> Arc<str> {
        let mut interner = INTERNER.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = interner.texts.find(hash, |known| **known == *text) {
            return Arc::clone(found);
        }
        if interner.texts.len() >= MAX_INTERNED_TEXTS || interner.bytes + text.len() > MAX_INTERNED_BYTES {
            interner.clear();
        }
        let shared: Arc<str> = Arc::from(text);
        interner.bytes += text.len();
        interner.texts.insert_unique(hash, Arc::clone(&shared), |known| hash_str(known));
        shared
    }

    fn clear(&mut self) {
        self.texts = HashTable::new();
        self.bytes = 0;
    }
}

/// The same bytes in memory (so equal texts).
fn same_str(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b)
}

/// Equal texts, from their hashes and (shared) pointers first.
fn same_text(a: &Arc<str>, a_hash: u64, b: &Arc<str>, b_hash: u64) -> bool {
    a_hash == b_hash && (Arc::ptr_eq(a, b) || a.as_bytes() == b.as_bytes())
}

/// A node entry as one peer reported it.
///
/// Laid out for resolution over large inputs: the id and the canonical
/// version are interned (equal texts share one allocation), so comparing
/// two entries reads only the two structs, and the reported fields sit
/// behind a pointer until output.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    id: Arc<str>,
    /// The canonical version (see [`Entry::version`]).
    version: Arc<str>,
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
        if u32::try_from(id.len()).is_err() {
            return Err(EntryError::IdTooLong(id.len()));
        }
        let mut version = String::with_capacity(64);
        write_version(&fields, &mut version);
        let (id_hash, version_hash) = (hash_str(id), hash_str(&version));
        Ok(Self {
            id: Interner::intern(id, id_hash),
            version: Interner::intern(&version, version_hash),
            id_hash,
            version_hash,
            last_updated,
            fields: Box::new(fields),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// This entry's id is `id`, whose hash is `hash`: compares the hashes,
    /// then the (interned) pointers, then the bytes.
    pub(crate) fn has_id(&self, id: &str, hash: u64) -> bool {
        self.id_hash == hash && (same_str(&self.id, id) || self.id.as_bytes() == id.as_bytes())
    }

    /// [`Entry::has_id`] for the version.
    pub(crate) fn has_version(&self, version: &str, hash: u64) -> bool {
        self.version_hash == hash
            && (same_str(&self.version, version) || self.version.as_bytes() == version.as_bytes())
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
        &self.version
    }

    pub(crate) fn version_hash(&self) -> u64 {
        self.version_hash
    }

    /// True when both carry the same version (all fields but id and time).
    pub fn same_version(&self, other: &Entry) -> bool {
        same_text(&self.version, self.version_hash, &other.version, other.version_hash)
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
    fn equal_texts_interned_apart_are_still_equal() {
        let report = || {
            Entry::from_json(json!({"id": "n1", "last_updated": "2024-01-01T00:00:00Z", "address": "x"}))
                .unwrap()
        };
        let before = report();
        INTERNER.lock().unwrap_or_else(PoisonError::into_inner).clear();
        let after = report();
        assert!(!Arc::ptr_eq(&before.version, &after.version), "the interner was cleared in between");
        assert!(before.same_version(&after));
        assert!(before.has_id(after.id(), after.id_hash()));
        let other =
            Entry::from_json(json!({"id": "n2", "last_updated": "2024-01-01T00:00:00Z", "address": "y"}))
                .unwrap();
        assert!(!before.same_version(&other));
        assert!(!before.has_id(other.id(), other.id_hash()));
        assert!(!before.has_id(other.id(), before.id_hash()), "a matching hash alone is not enough");
        let views = [vec![before.clone()], vec![after.clone()], vec![other]];
        let resolution = crate::majority::resolve(&views).unwrap();
        assert_eq!(resolution.metrics.majority_resolved, 1);
        assert_eq!(resolution.metrics.conflicts, 0);
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
