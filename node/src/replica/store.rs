//! The node's sled database: registry entries, the advertised profile, the last
//! known members (for a fast rejoin after a restart) and job documents (a
//! chain of incremental saves per job, compacted into one record now and then).
//!
//! Writes that the node acknowledges (an advertisement, an accepted push)
//! are flushed before the acknowledgement, so a `kill -9` loses none of them.

use std::path::Path;

use hivemesh_protocol::{Envelope, JobId, NodeId, decode_message, encode_message};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database in {path}: {source}")]
    Open { path: String, source: sled::Error },
    /// Another process (another hivemesh node) holds the data directory.
    #[error("another hivemesh is using the data directory {path}; stop it or give another --data-dir")]
    InUse { path: String },
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot encode a record: {0}")]
    Encode(String),
    #[error("unreadable record: {0}")]
    Decode(String),
}

/// Cheap to clone: sled's handles are shared.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    registry: sled::Tree,
    members: sled::Tree,
    meta: sled::Tree,
    job_chunks: sled::Tree,
    job_meta: sled::Tree,
    evidence: sled::Tree,
}

/// A record that failed to decode: skipped, reported, never fatal.
#[derive(Debug)]
pub struct Skipped {
    pub tree: &'static str,
    pub reason: String,
}

impl Store {
    /// Opens (or creates) the database in `data_dir`. A lock still held
    /// for a moment after the last handle of this directory was dropped in
    /// this process (sled's flusher thread ends asynchronously) is waited
    /// out, up to [`IN_USE_WAIT`]; `InUse` after that means another process
    /// holds it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        use backon::{BlockingRetryable, ConstantBuilder};
        let attempts = (IN_USE_WAIT.as_millis() / IN_USE_RETRY.as_millis()) as usize;
        let backoff = ConstantBuilder::default().with_delay(IN_USE_RETRY).with_max_times(attempts);
        (|| Self::open_once(data_dir)).retry(backoff).when(|e| matches!(e, StoreError::InUse { .. })).call()
    }

    fn open_once(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("state.sled");
        let db =
            sled::Config::new().path(&path).cache_capacity(8 * 1024 * 1024).open().map_err(|source| {
                match source {
                    // sled 0.34 reports a held lock as an `Other` I/O error whose
                    // text is "could not acquire lock on ..." and a Debug dump of
                    // the OS error; that text is all it gives to tell it apart.
                    sled::Error::Io(error)
                        if error.kind() == std::io::ErrorKind::WouldBlock
                            || error.to_string().contains("could not acquire lock") =>
                    {
                        StoreError::InUse { path: data_dir.display().to_string() }
                    }
                    source => StoreError::Open { path: path.display().to_string(), source },
                }
            })?;
        Ok(Self {
            registry: db.open_tree("registry")?,
            members: db.open_tree("members")?,
            meta: db.open_tree("meta")?,
            job_chunks: db.open_tree("job_chunks")?,
            job_meta: db.open_tree("job_meta")?,
            evidence: db.open_tree("evidence")?,
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

    /// The highest membership generation this data directory has used (a
    /// start or a rejoin), if any; an unreadable record counts as none.
    pub fn generation(&self) -> Option<u64> {
        let bytes = self.meta.get(GENERATION_KEY).ok()??;
        Some(u64::from_be_bytes(bytes.as_ref().try_into().ok()?))
    }

    /// Records `generation` as used (kept if a higher one is recorded) and
    /// flushes, so the next start begins above it even after a `kill -9`.
    pub fn put_generation(&self, generation: u64) -> Result<(), StoreError> {
        if self.generation().is_some_and(|held| held >= generation) {
            return Ok(());
        }
        self.meta.insert(GENERATION_KEY, &generation.to_be_bytes())?;
        self.flush()
    }

    /// Appends one incremental save of `job` as record `seq`.
    pub fn put_job_chunk(&self, job: &JobId, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.job_chunks.insert(job_chunk_key(job, seq), bytes)?;
        Ok(())
    }

    /// Replaces every record of `job` with one full save, atomically, so a
    /// crash leaves either the old chain or the new record.
    pub fn replace_job_chunks(&self, job: &JobId, full: &[u8]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.job_chunks.scan_prefix(job.0).keys().flatten() {
            batch.remove(key);
        }
        batch.insert(&job_chunk_key(job, 0), full);
        self.job_chunks.apply_batch(batch)?;
        Ok(())
    }

    /// Every record of `job` in order, concatenated (automerge loads a
    /// document followed by incremental saves as one byte string), and how
    /// many records there were.
    pub fn job_bytes(&self, job: &JobId) -> Result<(Vec<u8>, u64), StoreError> {
        let mut bytes = Vec::new();
        let mut records = 0;
        for record in self.job_chunks.scan_prefix(job.0).values() {
            bytes.extend_from_slice(&record?);
            records += 1;
        }
        Ok((bytes, records))
    }

    pub fn put_job_meta<M: serde::Serialize>(&self, job: &JobId, meta: &M) -> Result<(), StoreError> {
        let bytes = encode_message(meta).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.job_meta.insert(job.0, bytes)?;
        Ok(())
    }

    pub fn job_meta<M: serde::de::DeserializeOwned>(&self, job: &JobId) -> Result<Option<M>, StoreError> {
        let Some(bytes) = self.job_meta.get(job.0)? else { return Ok(None) };
        decode_message(&bytes).map(Some).map_err(|e| StoreError::Decode(format!("job {job}: {e}")))
    }

    /// Every stored job with its metadata; unreadable records are skipped and
    /// reported.
    pub fn job_metas<M: serde::de::DeserializeOwned>(&self) -> (Vec<(JobId, M)>, Vec<Skipped>) {
        let mut skipped = Vec::new();
        let mut metas = Vec::new();
        for record in self.job_meta.iter() {
            let decoded = record.map_err(|e| e.to_string()).and_then(|(key, value)| {
                let job =
                    JobId(key.as_ref().try_into().map_err(|_| format!("bad key of {} bytes", key.len()))?);
                Ok((job, decode_message(&value).map_err(|e| e.to_string())?))
            });
            match decoded {
                Ok(meta) => metas.push(meta),
                Err(reason) => skipped.push(Skipped { tree: "job_meta", reason }),
            }
        }
        (metas, skipped)
    }

    /// Replaces the evidence record about `voter` (encoded by
    /// `super::evidence`) and flushes: a proof acknowledged or a clearance
    /// answered survives a `kill -9`.
    pub fn put_evidence(&self, voter: &NodeId, record: &[u8]) -> Result<(), StoreError> {
        self.evidence.insert(voter.0, record)?;
        self.flush()
    }

    /// Every evidence record, by voter, as stored.
    pub fn evidence(&self) -> (Vec<(NodeId, Vec<u8>)>, Vec<Skipped>) {
        let mut skipped = Vec::new();
        let mut records = Vec::new();
        for record in self.evidence.iter() {
            match record {
                Ok((key, value)) => match <[u8; 32]>::try_from(key.as_ref()) {
                    Ok(voter) => records.push((NodeId(voter), value.to_vec())),
                    Err(_) => skipped.push(Skipped {
                        tree: "evidence",
                        reason: format!("bad key of {} bytes", key.len()),
                    }),
                },
                Err(e) => skipped.push(Skipped { tree: "evidence", reason: e.to_string() }),
            }
        }
        (records, skipped)
    }

    /// Makes every write so far durable; called before acknowledging one.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// How long [`Store::open`] waits out a lock that is being released.
const IN_USE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How often it tries meanwhile.
const IN_USE_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// The meta key of the highest generation used (8 bytes, big-endian).
const GENERATION_KEY: &str = "generation";

/// The job id then the record's sequence number, big-endian, so a prefix scan
/// returns a job's records in order.
fn job_chunk_key(job: &JobId, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&job.0);
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_in_use_is_one_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = Store::open(dir.path()).expect("open");
        let Err(error) = Store::open(dir.path()) else { panic!("a second open must fail") };
        assert!(matches!(error, StoreError::InUse { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.contains("another hivemesh is using") && !text.contains("Os {"), "{text}");
    }

    #[test]
    fn the_highest_generation_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            assert_eq!(store.generation(), None);
            store.put_generation(1_000).expect("put");
            store.put_generation(2_000).expect("put");
            store.put_generation(1_500).expect("a lower one is ignored");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.generation(), Some(2_000));
    }

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
