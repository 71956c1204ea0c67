//! The job documents this node holds: each one an automerge document (see
//! `hivemesh_crdt::job_doc`), persisted in sled as a chain of incremental
//! saves that is folded into one record every `compact_after_records`, and
//! replicated with the job's peers by push and by sync rounds.
//!
//! Nothing here flushes on the hot path: a write is in sled's log when a
//! method returns and durable at the next flush, which the driver runs as a
//! group commit (one flush for every write that arrived while the previous
//! one ran) and only then acknowledges, pushes or announces (ADR 0021).
//!
//! A job is finished once it holds an `outcome` contribution. After a grace
//! period (so late pushes still land everywhere) its history is compacted,
//! it leaves memory, and it takes no more changes: memory holds active jobs
//! only, never the whole history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use hivemesh_crdt::job_doc::{ChangeHash, JobDoc, JobDocError, SyncSession, Verified};
use hivemesh_protocol::{JobId, NodeId, NodeIdentity};
use serde::{Deserialize, Serialize};

use super::store::{Store, StoreError};

/// The contribution kind that marks a job finished.
pub const OUTCOME_KIND: &str = "outcome";

#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// Most jobs held in memory at once (unfinished, or finished within the
    /// grace period); a new one beyond it is refused as busy.
    pub max_active: usize,
    /// Incremental records after which a job's records are folded into one.
    pub compact_after_records: u64,
    /// How long a finished job keeps syncing before its history is compacted.
    pub finished_grace: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self { max_active: 20_000, compact_after_records: 64, finished_grace: Duration::from_secs(30) }
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

/// What is kept per job beside its document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct JobMeta {
    peers: BTreeSet<NodeId>,
    created_ms: u64,
    finished_at_ms: Option<u64>,
    compacted: bool,
}

struct HeldJob {
    doc: JobDoc,
    meta: JobMeta,
    saved_heads: Vec<ChangeHash>,
    next_seq: u64,
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
    pub active: usize,
    pub changes_pushed: u64,
    pub changes_applied: u64,
    pub sync_rounds: u64,
    pub sync_bytes_in: u64,
    pub sync_bytes_out: u64,
    pub records_folded: u64,
    pub histories_compacted: u64,
    /// Refused job input by reason.
    pub rejected: BTreeMap<String, u64>,
}

pub struct Jobs {
    store: Store,
    me: NodeId,
    held: HashMap<JobId, HeldJob>,
    sessions: HashMap<(NodeId, JobId), SyncSession>,
    config: JobsConfig,
    stats: JobStats,
    /// Jobs whose document changed since the last `take_changed`.
    changed: Vec<JobId>,
}

impl Jobs {
    /// Reloads every unfinished (or not yet compacted) job from sled, checking
    /// each change again; one that no longer loads is reported and skipped.
    pub fn load(store: Store, me: NodeId, config: JobsConfig) -> Self {
        let mut jobs = Self {
            store,
            me,
            held: HashMap::new(),
            sessions: HashMap::new(),
            config,
            stats: JobStats::default(),
            changed: Vec::new(),
        };
        let (store, me) = (&jobs.store, &jobs.me);
        let (metas, skipped) = store.job_metas::<JobMeta>();
        for skip in skipped {
            tracing::warn!(tree = skip.tree, reason = %skip.reason, "skipped an unreadable job record");
        }
        let mut held = HashMap::new();
        for (job, meta) in metas.into_iter().filter(|(_, meta)| !meta.compacted) {
            match load_doc(store, me, job) {
                Ok((mut doc, records)) => {
                    let saved_heads = doc.heads();
                    held.insert(job, HeldJob { doc, meta, saved_heads, next_seq: records });
                }
                Err(error) => tracing::warn!(%job, %error, "skipped a stored job that no longer loads"),
            }
        }
        tracing::info!(jobs = held.len(), "active jobs loaded from disk");
        jobs.held = held;
        jobs
    }

    /// Starts holding `job` (or adds `peers` to it); durable at the next
    /// flush.
    pub fn open(&mut self, job: JobId, peers: &[NodeId], now_ms: u64) -> Result<(), JobError> {
        let held = admit(&mut self.held, self.config.max_active, &self.store, &self.me, job, now_ms)?;
        held.meta.peers.extend(peers.iter().filter(|p| **p != self.me));
        self.store.put_job_meta(&job, &held.meta)?;
        Ok(())
    }

    /// Signs and commits a contribution (durable at the next flush). Returns
    /// the change to push and the peers to push it to.
    pub fn contribute(
        &mut self,
        identity: &NodeIdentity,
        job: JobId,
        kind: &str,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Result<(Vec<u8>, Vec<NodeId>), JobError> {
        let held = self.held.get_mut(&job).ok_or(JobError::Unknown(job))?;
        let change = held
            .doc
            .contribute(identity, kind, body, now_ms)
            .map_err(|source| JobError::Doc { job, source })?;
        let folded =
            persist(&self.store, &mut self.changed, held, self.config.compact_after_records, now_ms)?;
        self.stats.records_folded += u64::from(folded);
        self.stats.changes_pushed += held.meta.peers.len() as u64;
        Ok((change, held.meta.peers.iter().copied().collect()))
    }

    /// Applies changes pushed by `from` (a participant, so it becomes one of
    /// the job's peers); durable at the next flush. Returns how many were new.
    pub fn apply_push(
        &mut self,
        from: NodeId,
        job: JobId,
        changes: &[u8],
        now_ms: u64,
    ) -> Result<usize, JobError> {
        let result = self.apply_push_inner(from, job, changes, now_ms);
        self.count(&result);
        result
    }

    fn apply_push_inner(
        &mut self,
        from: NodeId,
        job: JobId,
        changes: &[u8],
        now_ms: u64,
    ) -> Result<usize, JobError> {
        let compact_after = self.config.compact_after_records;
        let held = admit(&mut self.held, self.config.max_active, &self.store, &self.me, job, now_ms)?;
        let new = held.doc.apply_changes(changes).map_err(|source| JobError::Doc { job, source })?;
        let folded = save_from_peer(&self.store, &mut self.changed, held, from, compact_after, now_ms)?;
        self.stats.changes_applied += new as u64;
        self.stats.records_folded += u64::from(folded);
        Ok(new)
    }

    /// Opens a sync round with `to`: a fresh session and its first message.
    pub fn sync_start(&mut self, to: NodeId, job: JobId) -> Option<Vec<u8>> {
        let held = self.held.get_mut(&job)?;
        let mut session = SyncSession::new();
        let message = held.doc.sync_message(&mut session)?;
        self.sessions.insert((to, job), session);
        self.stats.sync_rounds += 1;
        self.stats.sync_bytes_out += message.len() as u64;
        Some(message)
    }

    /// The responder's side: applies `message` from `from` (a new round when
    /// `first`) and returns the answer, if there is one.
    pub fn sync_receive(
        &mut self,
        from: NodeId,
        job: JobId,
        first: bool,
        message: &[u8],
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, JobError> {
        let result = self.sync_step(from, job, first, Some(message), now_ms);
        self.count(&result);
        result
    }

    /// The initiator's side: applies the peer's answer and returns the next
    /// message, or `None` when the round is over.
    pub fn sync_continue(
        &mut self,
        to: NodeId,
        job: JobId,
        answer: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, JobError> {
        let result = self.sync_step(to, job, false, answer, now_ms);
        self.count(&result);
        if !matches!(result, Ok(Some(_))) {
            self.sessions.remove(&(to, job));
        }
        result
    }

    fn sync_step(
        &mut self,
        peer: NodeId,
        job: JobId,
        first: bool,
        incoming: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, JobError> {
        let compact_after = self.config.compact_after_records;
        let held = admit(&mut self.held, self.config.max_active, &self.store, &self.me, job, now_ms)?;
        if first {
            self.sessions.remove(&(peer, job));
        }
        let session = self.sessions.entry((peer, job)).or_default();
        if let Some(bytes) = incoming {
            self.stats.sync_bytes_in += bytes.len() as u64;
            let before = held.doc.heads();
            held.doc.receive_sync(session, bytes).map_err(|source| JobError::Doc { job, source })?;
            if held.doc.heads() != before {
                let folded =
                    save_from_peer(&self.store, &mut self.changed, held, peer, compact_after, now_ms)?;
                self.stats.records_folded += u64::from(folded);
            }
        }
        let next = held.doc.sync_message(session);
        if let Some(message) = &next {
            self.stats.sync_bytes_out += message.len() as u64;
        }
        Ok(next)
    }

    /// Every held job that still syncs, with its peers: what anti-entropy
    /// picks from.
    pub fn repair_targets(&self) -> Vec<(JobId, Vec<NodeId>)> {
        self.held
            .iter()
            .filter(|(_, held)| !held.meta.peers.is_empty())
            .map(|(job, held)| (*job, held.meta.peers.iter().copied().collect()))
            .collect()
    }

    /// Compacts the history of jobs finished longer than the grace period
    /// ago and lets them leave memory. Returns the jobs compacted.
    pub fn compact_finished(&mut self, identity: &NodeIdentity, now_ms: u64) -> Result<Vec<JobId>, JobError> {
        let grace = self.config.finished_grace.as_millis() as u64;
        let due: Vec<JobId> = self
            .held
            .iter()
            .filter(|(_, held)| held.meta.finished_at_ms.is_some_and(|at| at + grace <= now_ms))
            .map(|(job, _)| *job)
            .collect();
        for job in &due {
            let Some(mut held) = self.held.remove(job) else { continue };
            held.doc.compact(identity).map_err(|source| JobError::Doc { job: *job, source })?;
            held.meta.compacted = true;
            self.store.replace_job_chunks(job, &held.doc.save())?;
            self.store.put_job_meta(job, &held.meta)?;
            self.sessions.retain(|(_, session_job), _| session_job != job);
            self.stats.histories_compacted += 1;
        }
        if !due.is_empty() {
            self.store.flush()?;
        }
        Ok(due)
    }

    /// A job held in memory, or read back from sled if it was compacted.
    pub fn view(&mut self, job: JobId) -> Result<JobView, JobError> {
        if let Some(held) = self.held.get_mut(&job) {
            return Ok(view_of(job, &held.meta, &mut held.doc));
        }
        let meta = self.store.job_meta::<JobMeta>(&job)?.ok_or(JobError::Unknown(job))?;
        let (mut doc, _) = load_doc(&self.store, &self.me, job)?;
        Ok(view_of(job, &meta, &mut doc))
    }

    /// Every job known here (held or stored), newest first, at most `limit`.
    pub fn list(&self, limit: usize) -> Vec<(JobId, u64, Option<u64>)> {
        let (metas, _) = self.store.job_metas::<JobMeta>();
        let mut jobs: Vec<_> =
            metas.into_iter().map(|(job, m)| (job, m.created_ms, m.finished_at_ms)).collect();
        jobs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        jobs.truncate(limit);
        jobs
    }

    /// Jobs whose document changed since the last call, each once, with
    /// what changed.
    pub fn take_changed(&mut self) -> Vec<JobChanged> {
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        changed
            .into_iter()
            .filter_map(|job| {
                let held = self.held.get_mut(&job)?;
                let fresh = held.doc.take_fresh().into();
                Some(JobChanged { view: Arc::new(view_of(job, &held.meta, &mut held.doc)), fresh })
            })
            .collect()
    }

    pub fn stats(&self) -> JobStats {
        JobStats { active: self.held.len(), ..self.stats.clone() }
    }

    fn count<T>(&mut self, result: &Result<T, JobError>) {
        if let Err(error) = result {
            *self.stats.rejected.entry(error.reason().to_string()).or_default() += 1;
        }
    }
}

/// The held job, or a new one if there is room and it was not closed.
fn admit<'a>(
    held: &'a mut HashMap<JobId, HeldJob>,
    max_active: usize,
    store: &Store,
    me: &NodeId,
    job: JobId,
    now_ms: u64,
) -> Result<&'a mut HeldJob, JobError> {
    if !held.contains_key(&job) {
        if store.job_meta::<JobMeta>(&job)?.is_some_and(|meta| meta.compacted) {
            return Err(JobError::Closed(job));
        }
        if held.len() >= max_active {
            return Err(JobError::Busy { job, max: max_active });
        }
        let meta = JobMeta { created_ms: now_ms, ..JobMeta::default() };
        store.put_job_meta(&job, &meta)?;
        held.insert(job, HeldJob { doc: JobDoc::new(job, me), meta, saved_heads: Vec::new(), next_seq: 0 });
    }
    held.get_mut(&job).ok_or(JobError::Unknown(job))
}

/// Saves what changed since the last save as one more record, or folds every
/// record into one full save when the chain is long. Marks the job finished
/// when it first holds an outcome. Returns whether it folded.
fn persist(
    store: &Store,
    changed: &mut Vec<JobId>,
    held: &mut HeldJob,
    compact_after: u64,
    now_ms: u64,
) -> Result<bool, JobError> {
    let heads = held.doc.heads();
    if heads == held.saved_heads {
        return Ok(false);
    }
    changed.push(held.doc.job());
    let folded = held.next_seq >= compact_after;
    if folded {
        store.replace_job_chunks(&held.doc.job(), &held.doc.save())?;
        held.next_seq = 1;
    } else {
        let bytes = held.doc.save_after(&held.saved_heads);
        store.put_job_chunk(&held.doc.job(), held.next_seq, &bytes)?;
        held.next_seq += 1;
    }
    held.saved_heads = heads;
    if held.meta.finished_at_ms.is_none() && held.doc.has_kind(OUTCOME_KIND) {
        held.meta.finished_at_ms = Some(now_ms);
        store.put_job_meta(&held.doc.job(), &held.meta)?;
    }
    Ok(folded)
}

/// What a peer sent is in the document: `peer` becomes one of the job's
/// peers, all of it durable at the next flush (the caller answers after
/// it). Returns whether the records were folded.
fn save_from_peer(
    store: &Store,
    changed: &mut Vec<JobId>,
    held: &mut HeldJob,
    peer: NodeId,
    compact_after: u64,
    now_ms: u64,
) -> Result<bool, JobError> {
    let new_peer = held.meta.peers.insert(peer);
    let folded = persist(store, changed, held, compact_after, now_ms)?;
    if new_peer {
        store.put_job_meta(&held.doc.job(), &held.meta)?;
    }
    Ok(folded)
}

fn load_doc(store: &Store, me: &NodeId, job: JobId) -> Result<(JobDoc, u64), JobError> {
    let (bytes, records) = store.job_bytes(&job)?;
    let doc = JobDoc::load(job, me, &bytes).map_err(|source| JobError::Doc { job, source })?;
    Ok((doc, records))
}

fn view_of(job: JobId, meta: &JobMeta, doc: &mut JobDoc) -> JobView {
    JobView {
        job,
        peers: meta.peers.iter().copied().collect(),
        created_ms: meta.created_ms,
        finished_at_ms: meta.finished_at_ms,
        compacted: meta.compacted,
        heads: doc.heads().iter().map(|h| h.to_string()).collect(),
        contributions: doc.contributions(),
    }
}
