//! Job documents in the node's sled store: incremental records folded now
//! and then, a reload that checks every change again, finished jobs compacted
//! and closed.

use std::time::Duration;

use hivemesh_node::replica::{JobError, Jobs, JobsConfig, OUTCOME_KIND, Store};
use hivemesh_protocol::{JobId, NodeIdentity};

fn config(compact_after_records: u64) -> JobsConfig {
    JobsConfig { max_active: 4, compact_after_records, finished_grace: Duration::ZERO }
}

#[test]
fn records_are_folded_and_a_reload_has_every_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let me = NodeIdentity::from_seed([1; 32]);
    let job = JobId([7; 16]);
    let heads = {
        let store = Store::open(dir.path()).expect("open");
        let mut jobs = Jobs::load(store.clone(), me.node_id(), config(8));
        jobs.open(job, &[], 1).expect("open job");
        for i in 0..50u32 {
            jobs.contribute(&me, job, &format!("stage-{i}"), i.to_le_bytes().to_vec(), 10 + u64::from(i))
                .expect("contribute");
        }
        let (_, records) = store.job_bytes(&job).expect("read records");
        assert!(records <= 8, "records are folded every 8, found {records}");
        assert!(jobs.stats().records_folded >= 5, "{:?}", jobs.stats());
        // Durable at a flush: the node's group commit runs it (ADR 0021).
        store.flush().expect("flush");
        jobs.view(job).expect("view").heads
    };
    let store = Store::open(dir.path()).expect("reopen");
    let mut jobs = Jobs::load(store, me.node_id(), config(8));
    let view = jobs.view(job).expect("job reloaded");
    assert_eq!(view.heads, heads);
    assert_eq!(view.contributions.len(), 50);
}

#[test]
fn a_finished_job_is_compacted_leaves_memory_and_takes_no_more_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (me, peer) = (NodeIdentity::from_seed([1; 32]), NodeIdentity::from_seed([2; 32]));
    let job = JobId([9; 16]);
    let store = Store::open(dir.path()).expect("open");
    let mut jobs = Jobs::load(store.clone(), me.node_id(), config(64));
    jobs.open(job, &[peer.node_id()], 1).expect("open job");
    for i in 0..20u32 {
        jobs.contribute(&me, job, "draft", i.to_le_bytes().to_vec(), 10 + u64::from(i)).expect("contribute");
    }
    let (before, _) = store.job_bytes(&job).expect("bytes");
    jobs.contribute(&me, job, OUTCOME_KIND, b"42".to_vec(), 100).expect("outcome");
    assert_eq!(jobs.compact_finished(&me, 100).expect("compact"), vec![job]);
    assert_eq!(jobs.stats().active, 0, "a compacted job leaves memory");

    let (after, records) = store.job_bytes(&job).expect("bytes");
    assert_eq!(records, 1);
    assert!(after.len() < before.len(), "compacted {} bytes, was {}", after.len(), before.len());
    let view = jobs.view(job).expect("read back from sled");
    assert!(view.compacted && view.finished_at_ms == Some(100));
    let kinds: Vec<&str> = view.contributions.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["draft", OUTCOME_KIND]);

    let mut other = hivemesh_crdt::job_doc::JobDoc::new(job, &peer.node_id());
    let change = other.contribute(&peer, "late", vec![1], 200).expect("peer change");
    let refused = jobs.apply_push(peer.node_id(), job, &change, 200).expect_err("closed");
    assert!(matches!(refused, JobError::Closed(_)), "{refused}");
    assert_eq!(jobs.stats().rejected.get("closed_job"), Some(&1));
}

#[test]
fn beyond_the_active_limit_a_new_job_is_busy_and_garbage_is_refused_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (me, peer, forger) = (
        NodeIdentity::from_seed([1; 32]),
        NodeIdentity::from_seed([2; 32]),
        NodeIdentity::from_seed([3; 32]),
    );
    let store = Store::open(dir.path()).expect("open");
    let mut jobs = Jobs::load(store, me.node_id(), config(64));
    for i in 0..4u8 {
        jobs.open(JobId([i; 16]), &[], 1).expect("room for four");
    }
    let busy = jobs.open(JobId([99; 16]), &[], 1).expect_err("fifth job");
    assert!(busy.to_string().contains("busy"), "{busy}");

    // An honest change carried by a document whose actor is another node.
    let job = JobId([0; 16]);
    let mut doc = hivemesh_crdt::job_doc::JobDoc::new(job, &forger.node_id());
    let honest = doc.contribute(&peer, "candidate", b"x".to_vec(), 5).expect("change");
    assert_eq!(jobs.apply_push(peer.node_id(), job, &honest, 5).expect("honest change"), 1);
    let garbage = jobs.apply_push(forger.node_id(), job, b"not automerge", 6).expect_err("garbage");
    assert!(garbage.to_string().contains("not an automerge"), "{garbage}");
    assert_eq!(jobs.stats().rejected.get("malformed"), Some(&1));
    assert_eq!(jobs.view(job).expect("view").contributions.len(), 1, "nothing lost, nothing added");
}
