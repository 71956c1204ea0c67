//! The node's sled database: registry entries, the advertised profile and the last
//! known members (for a fast rejoin after a restart).
//!
//! Writes that the node acknowledges (an advertisement, an accepted push)
//! are flushed before the acknowledgement, so a `kill -9` loses none of them.

use std::path::Path;

use hivemesh_protocol::{Envelope, NodeId, decode_message, encode_message};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database in {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot encode a record: {0}")]
    Encode(String),
}

pub struct Store {
    db: sled::Db,
    registry: sled::Tree,
    members: sled::Tree,
    meta: sled::Tree,
}

/// A record that failed to decode: skipped, reported, never fatal.
#[derive(Debug)]
pub struct Skipped {
    pub tree: &'static str,
    pub reason: String,
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("state.sled");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(8 * 1024 * 1024)
            .open()
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Ok(Self {
            registry: db.open_tree("registry")?,
            members: db.open_tree("members")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    pub fn put_entry(&self, envelope: &Envelope) -> Result<(), StoreError> {
        let bytes = encode_message(envelope).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.registry.insert(envelope.sender.0, bytes)?;
        Ok(())
    }

    /// Every stored registry envelope; undecodable records are skipped and
    /// reported (the registry verifies the rest again before use).
    pub fn entries(&self) -> (Vec<Envelope>, Vec<Skipped>) {
        let mut skipped = Vec::new();
        let entries = self
            .registry
            .iter()
            .filter_map(|record| match record {
                Ok((_, bytes)) => decode_message(&bytes)
                    .map_err(|e| skipped.push(Skipped { tree: "registry", reason: e.to_string() }))
                    .ok(),
                Err(e) => {
                    skipped.push(Skipped { tree: "registry", reason: e.to_string() });
                    None
                }
            })
            .collect();
        (entries, skipped)
    }

    /// Replaces the last known members (node id -> its addresses).
    pub fn put_members(&self, members: &[(NodeId, Vec<Vec<u8>>)]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, _) in self.members.iter().flatten() {
            batch.remove(key);
        }
        for (node, addresses) in members {
            let bytes = encode_message(addresses).map_err(|e| StoreError::Encode(e.to_string()))?;
            batch.insert(&node.0, bytes);
        }
        self.members.apply_batch(batch)?;
        Ok(())
    }

    pub fn members(&self) -> Vec<(NodeId, Vec<Vec<u8>>)> {
        self.members
            .iter()
            .flatten()
            .filter_map(|(key, value)| {
                let node = NodeId(key.as_ref().try_into().ok()?);
                Some((node, decode_message(&value).ok()?))
            })
            .collect()
    }

    /// The profile last advertised at run time (JSON), if any.
    pub fn put_profile(&self, profile: &super::Profile) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(profile).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.meta.insert("profile", bytes)?;
        Ok(())
    }

    pub fn profile(&self) -> Option<super::Profile> {
        let bytes = self.meta.get("profile").ok()??;
        serde_json::from_slice(&bytes)
            .map_err(|e| tracing::warn!(error = %e, "ignoring an unreadable stored profile"))
            .ok()
    }

    /// Makes every write so far durable; called before acknowledging one.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let members = vec![(NodeId([1; 32]), vec![vec![1, 2, 3]]), (NodeId([2; 32]), vec![])];
        {
            let store = Store::open(dir.path()).expect("open");
            store.put_members(&members).expect("put");
            store.flush().expect("flush");
            assert_eq!(store.members(), members);
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.members(), members);
    }
}
