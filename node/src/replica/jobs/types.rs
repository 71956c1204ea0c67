//! What the job store is configured with, refuses with, and reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hivemesh_crdt::job_doc::{JobDocError, Verified};
use hivemesh_protocol::{JobId, NodeId};
use serde::Serialize;

use crate::replica::store::StoreError;

#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// Most jobs held at once (unfinished, or finished within the grace
    /// period); a new one beyond it is refused as busy. Each costs its
    /// metadata in memory (peers, times, record count: well under 1 KiB).
    pub max_active: usize,
    /// Most job documents (automerge, about 20-30 KiB each for a council
    /// job) kept in memory, the most recently touched; any other active
    /// job's document is read back from sled, every change checked again,
    /// when it is next touched (issue 17). Sized to cover the jobs a node
    /// works on at once (its running model calls and the rounds it syncs),
    /// so that waiting jobs, not busy ones, are the ones read back. Counted
    /// in documents; at least 1. Default 1024 (about 26 KiB each, so about
    /// 26 MiB): 256 saved 20 MiB with 10,000 waiting jobs but, with a few
    /// hundred recent jobs still syncing, re-read and re-checked documents
    /// on every repair round, which tripled the federation bench's cancel
    /// latency (5.2 ms against 15.7 ms p50).
    pub max_loaded_docs: usize,
    /// Incremental records after which a job's records are folded into one.
    pub compact_after_records: u64,
    /// How long a finished job keeps syncing before its history is compacted.
    pub finished_grace: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_active: 20_000,
            max_loaded_docs: 1024,
            compact_after_records: 64,
            finished_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job {0} is not held by this node")]
    Unknown(JobId),
    #[error("busy: this node already holds {max} active jobs; refusing job {job}")]
    Busy { job: JobId, max: usize },
    #[error("job {0} is finished and compacted; it takes no more changes")]
    Closed(JobId),
    #[error("job {job}: {source}")]
    Doc { job: JobId, source: JobDocError },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The flush that was to make a write durable failed (the node's log
    /// has the store's error); the write was not acknowledged.
    #[error("job {0}: the write could not be made durable (flushing the store failed)")]
    NotDurable(JobId),
}

impl JobError {
    /// A short stable label, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unknown(_) => "unknown_job",
            Self::Busy { .. } => "busy",
            Self::Closed(_) => "closed_job",
            Self::Doc { source, .. } => source.reason(),
            Self::Store(_) => "store",
            Self::NotDurable(_) => "not_durable",
        }
    }
}

/// What one write changed in a job: the job as it now stands and the
/// contributions that began to count (each verified once, on arrival).
/// Pushed to subscribers (the federation, event streams, the OpenAI
/// endpoint), which need not read the job again.
#[derive(Debug, Clone)]
pub struct JobChanged {
    pub view: Arc<JobView>,
    /// New contributions, in the order they landed.
    pub fresh: Arc<[Verified]>,
}

impl JobChanged {
    pub fn job(&self) -> JobId {
        self.view.job
    }
}

/// A job as a reader sees it: every verified contribution.
#[derive(Debug, Clone)]
pub struct JobView {
    pub job: JobId,
    pub peers: Vec<NodeId>,
    pub created_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub compacted: bool,
    pub heads: Vec<String>,
    pub contributions: Vec<Verified>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct JobStats {
    /// Jobs held (unfinished, or finished within the grace period).
    pub active: usize,
    /// Of those, jobs whose document is in memory now (at most
    /// `JobsConfig::max_loaded_docs` while the store takes writes).
    pub loaded: usize,
    /// Documents read back from sled and checked again: at start, and each
    /// time a job whose document had left memory was touched.
    pub doc_loads: u64,
    pub changes_pushed: u64,
    pub changes_applied: u64,
    pub sync_rounds: u64,
    pub sync_bytes_in: u64,
    pub sync_bytes_out: u64,
    pub records_folded: u64,
    pub histories_compacted: u64,
    /// Jobs closed here because every peer had finished and compacted
    /// them while this node missed their end (it was down).
    pub closed_elsewhere: u64,
    /// Refused job input by reason.
    pub rejected: BTreeMap<String, u64>,
}
