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
//! Every active job's metadata is in memory; its document only while it is
//! among the `max_loaded_docs` most recently touched (see `docs`): a waiting
//! job is read back from sled, every change checked again, when touched.
//!
//! A job is finished once it holds an `outcome` contribution. After a grace
//! period (so late pushes still land everywhere) its history is compacted,
//! it leaves memory, and it takes no more changes: memory holds active jobs
//! only, never the whole history.

mod docs;
mod persist;
mod types;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use hivemesh_crdt::job_doc::SyncSession;
use hivemesh_protocol::{JobId, NodeId, NodeIdentity};
use serde::{Deserialize, Serialize};

use self::docs::{Docs, load_doc};
use self::persist::{admit, persist, save_from_peer, view_of};
pub use self::types::{JobChanged, JobError, JobStats, JobView, JobsConfig};
use super::store::Store;

/// The contribution kind that marks a job finished.
pub const OUTCOME_KIND: &str = "outcome";

/// What is kept per job beside its document (stored as the job's meta).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct JobMeta {
    peers: BTreeSet<NodeId>,
    created_ms: u64,
    finished_at_ms: Option<u64>,
    compacted: bool,
}

/// An active job, in memory whether or not its document is.
struct HeldJob {
    meta: JobMeta,
    /// Sequence number of the job's next incremental record in sled.
    next_seq: u64,
}

pub struct Jobs {
    store: Store,
    me: NodeId,
    held: HashMap<JobId, HeldJob>,
    docs: Docs,
    /// Open sync rounds. Kept when a document leaves memory: were both
    /// sides to start each message from a fresh session, a round would
    /// never end.
    sessions: HashMap<(NodeId, JobId), SyncSession>,
    config: JobsConfig,
    stats: JobStats,
    /// Jobs whose document changed since the last `take_changed`.
    changed: Vec<JobId>,
    /// Views of compacted jobs read lately, at most [`CLOSED_VIEWS`]: a
    /// compacted job takes no more changes, so its verified view stands and
    /// a second read checks no signature again.
    closed: lru::LruCache<JobId, JobView>,
}

/// Compacted jobs whose verified view is kept after a read.
pub const CLOSED_VIEWS: usize = 256;

impl Jobs {
    /// Reloads every unfinished (or not yet compacted) job from sled, checking
    /// each change again; one that no longer loads is reported and skipped.
    /// The first `max_loaded_docs` documents stay in memory.
    pub fn load(store: Store, me: NodeId, config: JobsConfig) -> Self {
        let mut jobs = Self {
            store,
            me,
            held: HashMap::new(),
            docs: Docs::new(config.max_loaded_docs),
            sessions: HashMap::new(),
            config,
            stats: JobStats::default(),
            changed: Vec::new(),
            closed: lru::LruCache::new(
                std::num::NonZeroUsize::new(CLOSED_VIEWS).unwrap_or(std::num::NonZeroUsize::MIN),
            ),
        };
        let (metas, skipped) = jobs.store.job_metas::<JobMeta>();
        for skip in skipped {
            tracing::warn!(tree = skip.tree, reason = %skip.reason, "skipped an unreadable job record");
        }
        for (job, meta) in metas.into_iter().filter(|(_, meta)| !meta.compacted) {
            match load_doc(&jobs.store, &jobs.me, job) {
                Ok((doc, records)) => {
                    jobs.docs.loads += 1;
                    jobs.docs.keep_if_room(job, doc);
                    jobs.held.insert(job, HeldJob { meta, next_seq: records });
                }
                Err(error) => tracing::warn!(%job, %error, "skipped a stored job that no longer loads"),
            }
        }
        tracing::info!(jobs = jobs.held.len(), loaded = jobs.docs.len(), "active jobs loaded from disk");
        jobs
    }

    /// Starts holding `job` (or adds `peers` to it); durable at the next
    /// flush.
    pub fn open(&mut self, job: JobId, peers: &[NodeId], now_ms: u64) -> Result<(), JobError> {
        let held = admit(&mut self.held, self.config.max_active, &self.store, job, now_ms)?;
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
        let loaded = self.docs.get_or_load(&self.store, &self.me, job)?;
        let change = loaded
            .doc
            .contribute(identity, kind, body, now_ms)
            .map_err(|source| JobError::Doc { job, source })?;
        let compact_after = self.config.compact_after_records;
        let folded = persist(&self.store, &mut self.changed, held, loaded, compact_after, now_ms)?;
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
        let held = admit(&mut self.held, self.config.max_active, &self.store, job, now_ms)?;
        let loaded = self.docs.get_or_load(&self.store, &self.me, job)?;
        let new = loaded.doc.apply_changes(changes).map_err(|source| JobError::Doc { job, source })?;
        let folded =
            save_from_peer(&self.store, &mut self.changed, held, loaded, from, compact_after, now_ms)?;
        self.stats.changes_applied += new as u64;
        self.stats.records_folded += u64::from(folded);
        Ok(new)
    }

    /// Opens a sync round with `to`: a fresh session and its first message.
    /// `None` when the job is not held, its document no longer loads
    /// (logged), or there is nothing to say.
    pub fn sync_start(&mut self, to: NodeId, job: JobId) -> Option<Vec<u8>> {
        if !self.held.contains_key(&job) {
            return None;
        }
        let loaded = match self.docs.get_or_load(&self.store, &self.me, job) {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%job, %error, "no sync round: the job document does not load");
                return None;
            }
        };
        let mut session = SyncSession::new();
        let message = loaded.doc.sync_message(&mut session)?;
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
    /// message, or `None` when the round is over. A round whose document
    /// left memory meanwhile goes on from a fresh session.
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
        let held = admit(&mut self.held, self.config.max_active, &self.store, job, now_ms)?;
        let loaded = self.docs.get_or_load(&self.store, &self.me, job)?;
        if first {
            self.sessions.remove(&(peer, job));
        }
        let session = self.sessions.entry((peer, job)).or_default();
        if let Some(bytes) = incoming {
            self.stats.sync_bytes_in += bytes.len() as u64;
            let before = loaded.doc.heads();
            let received = loaded.doc.receive_sync(session, bytes);
            // Whatever changed is written before an error returns: a
            // document never holds heads that are not in sled.
            if loaded.doc.heads() != before {
                let folded = save_from_peer(
                    &self.store,
                    &mut self.changed,
                    held,
                    loaded,
                    peer,
                    compact_after,
                    now_ms,
                )?;
                self.stats.records_folded += u64::from(folded);
            }
            received.map_err(|source| JobError::Doc { job, source })?;
        }
        let next = loaded.doc.sync_message(session);
        if let Some(message) = &next {
            self.stats.sync_bytes_out += message.len() as u64;
        }
        Ok(next)
    }

    /// Every held job that still syncs, with its peers: what anti-entropy
    /// picks from. Reads metadata only; no document is loaded.
    pub fn repair_targets(&self) -> Vec<(JobId, Vec<NodeId>)> {
        self.held
            .iter()
            .filter(|(_, held)| !held.meta.peers.is_empty())
            .map(|(job, held)| (*job, held.meta.peers.iter().copied().collect()))
            .collect()
    }

    /// `peer` answered that it has finished and compacted `job`: it is no
    /// longer repaired with `peer`. Once every peer of the job has closed
    /// it, the job is closed here too, without whatever of its end this
    /// node missed: marked finished now, it is compacted after the grace
    /// period like any finished job (a node that was down when a job ended
    /// would otherwise hold it and send sync rounds for it forever).
    /// Durable at the next flush.
    pub fn closed_at_peer(&mut self, job: JobId, peer: NodeId, now_ms: u64) -> Result<(), JobError> {
        let Some(held) = self.held.get_mut(&job) else { return Ok(()) };
        held.meta.peers.remove(&peer);
        self.sessions.remove(&(peer, job));
        if held.meta.peers.is_empty() && held.meta.finished_at_ms.is_none() {
            tracing::warn!(%job, "every peer has closed this job; closing it here without its end");
            held.meta.finished_at_ms = Some(now_ms);
            self.stats.closed_elsewhere += 1;
        }
        self.store.put_job_meta(&job, &held.meta)?;
        Ok(())
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
            let mut doc = match self.docs.remove(job) {
                Some(loaded) => loaded.doc,
                None => {
                    self.docs.loads += 1;
                    load_doc(&self.store, &self.me, *job)?.0
                }
            };
            doc.compact(identity).map_err(|source| JobError::Doc { job: *job, source })?;
            held.meta.compacted = true;
            self.store.replace_job_chunks(job, &doc.save())?;
            self.store.put_job_meta(job, &held.meta)?;
            self.sessions.retain(|(_, session_job), _| session_job != job);
            self.stats.histories_compacted += 1;
        }
        if !due.is_empty() {
            self.store.flush()?;
        }
        Ok(due)
    }

    /// A held job (its document read back from sled if it had left memory),
    /// or one read back from sled (every signature checked) if it was
    /// compacted; a compacted job read lately comes from memory.
    pub fn view(&mut self, job: JobId) -> Result<JobView, JobError> {
        if let Some(held) = self.held.get(&job) {
            let loaded = self.docs.get_or_load(&self.store, &self.me, job)?;
            return Ok(view_of(job, &held.meta, &mut loaded.doc));
        }
        if let Some(view) = self.closed.get(&job) {
            return Ok(view.clone());
        }
        let meta = self.store.job_meta::<JobMeta>(&job)?.ok_or(JobError::Unknown(job))?;
        self.docs.loads += 1;
        let (mut doc, _) = load_doc(&self.store, &self.me, job)?;
        let view = view_of(job, &meta, &mut doc);
        if meta.compacted {
            self.closed.put(job, view.clone());
        }
        Ok(view)
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
    /// what changed: those whose document is in memory first (by job id),
    /// then those read back from sled, so that reading one back drops only
    /// documents already taken.
    pub fn take_changed(&mut self) -> Vec<JobChanged> {
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        changed.sort_by_key(|job| !self.docs.contains(job));
        let mut out = Vec::with_capacity(changed.len());
        for job in changed {
            let Some(held) = self.held.get(&job) else {
                self.docs.take_pending(&job);
                continue;
            };
            let loaded = match self.docs.get_or_load(&self.store, &self.me, job) {
                Ok(loaded) => loaded,
                Err(error) => {
                    tracing::warn!(%job, %error, "a changed job document no longer loads");
                    continue;
                }
            };
            let mut fresh = loaded.doc.take_fresh();
            let view = Arc::new(view_of(job, &held.meta, &mut loaded.doc));
            let mut all = self.docs.take_pending(&job);
            all.append(&mut fresh);
            out.push(JobChanged { view, fresh: all.into() });
        }
        out
    }

    pub fn stats(&self) -> JobStats {
        JobStats {
            active: self.held.len(),
            loaded: self.docs.len(),
            doc_loads: self.docs.loads,
            ..self.stats.clone()
        }
    }

    fn count<T>(&mut self, result: &Result<T, JobError>) {
        if let Err(error) = result {
            *self.stats.rejected.entry(error.reason().to_string()).or_default() += 1;
        }
    }
}
