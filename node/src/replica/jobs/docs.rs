//! The job documents held in memory: at most `JobsConfig::max_loaded_docs`
//! of them, the most recently touched; any other active job's document is
//! read back from sled (and every change checked again) when it is touched
//! (issue 17: a waiting job costs its metadata, not an automerge document).
//!
//! Dropping a document loses nothing: every path that changes one writes
//! the change to sled before it returns (`persist`), a document whose heads
//! were not written (a store write failed) is never dropped, and the
//! contributions it had not yet handed to `take_changed` are kept aside.

use std::collections::HashMap;

use hivemesh_crdt::job_doc::{ChangeHash, JobDoc, Verified};
use hivemesh_protocol::{JobId, NodeId};
use lru::LruCache;

use super::JobError;
use crate::replica::store::Store;

/// One job's document in memory, with what it has in sled.
pub(super) struct LoadedDoc {
    pub(super) doc: JobDoc,
    /// The heads written to sled; the document may only be dropped while
    /// its heads equal these.
    pub(super) saved_heads: Vec<ChangeHash>,
}

impl LoadedDoc {
    fn new(doc: JobDoc) -> Self {
        let mut loaded = Self { doc, saved_heads: Vec::new() };
        loaded.saved_heads = loaded.doc.heads();
        loaded
    }
}

/// A least-recently-used set of loaded documents.
pub(super) struct Docs {
    loaded: LruCache<JobId, LoadedDoc>,
    /// Most documents kept; at least one.
    max: usize,
    /// Fresh contributions of dropped documents, not yet taken.
    pending_fresh: HashMap<JobId, Vec<Verified>>,
    /// Documents read back from sled (at start and on a miss).
    pub(super) loads: u64,
}

impl Docs {
    pub(super) fn new(max: usize) -> Self {
        Self { loaded: LruCache::unbounded(), max: max.max(1), pending_fresh: HashMap::new(), loads: 0 }
    }

    /// Documents in memory now.
    pub(super) fn len(&self) -> usize {
        self.loaded.len()
    }

    pub(super) fn contains(&self, job: &JobId) -> bool {
        self.loaded.contains(job)
    }

    /// Keeps `doc`, read from sled at start, if there is room; its old
    /// contributions are not fresh.
    pub(super) fn keep_if_room(&mut self, job: JobId, mut doc: JobDoc) {
        if self.loaded.len() < self.max {
            doc.take_fresh();
            self.loaded.put(job, LoadedDoc::new(doc));
        }
    }

    /// The document of `job` (an active job), read back from sled if it is
    /// not in memory, and now the most recently used. Errors: the store, or
    /// a stored change that no longer passes the checks.
    pub(super) fn get_or_load(
        &mut self,
        store: &Store,
        me: &NodeId,
        job: JobId,
    ) -> Result<&mut LoadedDoc, JobError> {
        if !self.loaded.contains(&job) {
            let (mut doc, _) = load_doc(store, me, job)?;
            self.loads += 1;
            doc.take_fresh();
            self.make_room();
            self.loaded.put(job, LoadedDoc::new(doc));
        }
        self.loaded.get_mut(&job).ok_or(JobError::Unknown(job))
    }

    /// Drops `job`'s document and whatever was kept aside for it.
    pub(super) fn remove(&mut self, job: &JobId) -> Option<LoadedDoc> {
        self.pending_fresh.remove(job);
        self.loaded.pop(job)
    }

    /// Contributions of `job` kept aside when its document was dropped, to
    /// be reported before those its document holds now.
    pub(super) fn take_pending(&mut self, job: &JobId) -> Vec<Verified> {
        self.pending_fresh.remove(job).unwrap_or_default()
    }

    /// Drops least recently used documents until one more fits. A document
    /// whose heads are not all in sled stays (it is written at its next
    /// change), so the bound can be exceeded while store writes fail.
    fn make_room(&mut self) {
        let mut unsaved = Vec::new();
        while self.loaded.len() >= self.max {
            let Some((job, mut loaded)) = self.loaded.pop_lru() else { break };
            if loaded.doc.heads() != loaded.saved_heads {
                tracing::warn!(%job, "kept a job document whose last change is not in the store yet");
                unsaved.push((job, loaded));
                continue;
            }
            let fresh = loaded.doc.take_fresh();
            if !fresh.is_empty() {
                self.pending_fresh.entry(job).or_default().extend(fresh);
            }
        }
        for (job, loaded) in unsaved {
            self.loaded.put(job, loaded);
        }
    }
}

/// Reads `job`'s records from sled and checks every change again (as if it
/// came from the network). Returns the document (its `fresh` holds every
/// contribution) and how many records it was stored in. A job with no
/// records yet is an empty document.
pub(super) fn load_doc(store: &Store, me: &NodeId, job: JobId) -> Result<(JobDoc, u64), JobError> {
    let (bytes, records) = store.job_bytes(&job)?;
    if bytes.is_empty() {
        return Ok((JobDoc::new(job, me), records));
    }
    let doc = JobDoc::load(job, me, &bytes).map_err(|source| JobError::Doc { job, source })?;
    Ok((doc, records))
}
