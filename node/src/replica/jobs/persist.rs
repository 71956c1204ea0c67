//! Writing a job's changes to sled: incremental records folded into one
//! full save every `compact_after_records`, the metadata beside them, and
//! admitting a new job.

use std::collections::HashMap;

use hivemesh_crdt::job_doc::JobDoc;
use hivemesh_protocol::{JobId, NodeId};

use super::docs::LoadedDoc;
use super::{HeldJob, JobError, JobMeta, JobView, OUTCOME_KIND};
use crate::replica::store::Store;

/// The held job, or a new one (metadata only: its document is created when
/// first touched) if there is room and it was not closed.
pub(super) fn admit<'a>(
    held: &'a mut HashMap<JobId, HeldJob>,
    max_active: usize,
    store: &Store,
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
        held.insert(job, HeldJob { meta, next_seq: 0 });
    }
    held.get_mut(&job).ok_or(JobError::Unknown(job))
}

/// Saves what changed since the last save as one more record, or folds every
/// record into one full save when the chain is long. Marks the job finished
/// when it first holds an outcome. Returns whether it folded. Only once this
/// returns `Ok` are the document's heads its saved heads (and the document
/// may leave memory).
pub(super) fn persist(
    store: &Store,
    changed: &mut Vec<JobId>,
    held: &mut HeldJob,
    loaded: &mut LoadedDoc,
    compact_after: u64,
    now_ms: u64,
) -> Result<bool, JobError> {
    let doc = &mut loaded.doc;
    let heads = doc.heads();
    if heads == loaded.saved_heads {
        return Ok(false);
    }
    changed.push(doc.job());
    let folded = held.next_seq >= compact_after;
    if folded {
        store.replace_job_chunks(&doc.job(), &doc.save())?;
        held.next_seq = 1;
    } else {
        let bytes = doc.save_after(&loaded.saved_heads);
        store.put_job_chunk(&doc.job(), held.next_seq, &bytes)?;
        held.next_seq += 1;
    }
    loaded.saved_heads = heads;
    if held.meta.finished_at_ms.is_none() && doc.has_kind(OUTCOME_KIND) {
        held.meta.finished_at_ms = Some(now_ms);
        store.put_job_meta(&doc.job(), &held.meta)?;
    }
    Ok(folded)
}

/// What a peer sent is in the document: `peer` becomes one of the job's
/// peers, all of it durable at the next flush (the caller answers after
/// it). Returns whether the records were folded.
pub(super) fn save_from_peer(
    store: &Store,
    changed: &mut Vec<JobId>,
    held: &mut HeldJob,
    loaded: &mut LoadedDoc,
    peer: NodeId,
    compact_after: u64,
    now_ms: u64,
) -> Result<bool, JobError> {
    let new_peer = held.meta.peers.insert(peer);
    let folded = persist(store, changed, held, loaded, compact_after, now_ms)?;
    if new_peer {
        store.put_job_meta(&loaded.doc.job(), &held.meta)?;
    }
    Ok(folded)
}

pub(super) fn view_of(job: JobId, meta: &JobMeta, doc: &mut JobDoc) -> JobView {
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
