//! Job documents in the node's sled store: incremental records folded now
//! and then, a reload that checks every change again, finished jobs compacted
//! and closed, and only the most recently touched documents kept in memory
//! (the others read back from sled when touched, losing nothing).

use std::time::Duration;

use hivemesh_crdt::job_doc::JobDoc;
use hivemesh_node::replica::{JobError, JobView, Jobs, JobsConfig, OUTCOME_KIND, Store};
use hivemesh_protocol::{JobId, NodeId, NodeIdentity};

fn config(compact_after_records: u64) -> JobsConfig {
    JobsConfig { max_active: 4, max_loaded_docs: 1024, compact_after_records, finished_grace: Duration::ZERO }
}

/// Room for ten jobs, two documents in memory, records folded every 4.
fn two_loaded() -> JobsConfig {
    JobsConfig {
        max_active: 10,
        max_loaded_docs: 2,
        compact_after_records: 4,
        finished_grace: Duration::ZERO,
    }
}

fn kinds(view: &JobView) -> Vec<String> {
    let mut kinds: Vec<String> = view.contributions.iter().map(|c| c.kind.clone()).collect();
    kinds.sort();
    kinds
}

fn assert_at_most_two_loaded(jobs: &Jobs) {
    let stats = jobs.stats();
    assert!(stats.loaded <= 2, "{} documents in memory, bound 2: {stats:?}", stats.loaded);
}

/// Every round, on each of five jobs in turn: this node contributes
/// `mine-{round}` and the peer pushes `theirs-{round}`.
fn five_jobs_two_rounds_each(
    jobs: &mut Jobs,
    me: &NodeIdentity,
    peer: &NodeIdentity,
    ids: &[JobId],
    rounds: u32,
) {
    let mut peer_docs: Vec<JobDoc> = ids.iter().map(|job| JobDoc::new(*job, &peer.node_id())).collect();
    for round in 0..rounds {
        let now = 100 + u64::from(round);
        for (job, peer_doc) in ids.iter().zip(&mut peer_docs) {
            let (_, to) = jobs
                .contribute(me, *job, &format!("mine-{round}"), round.to_le_bytes().to_vec(), now)
                .expect("contribute after the document was dropped");
            assert_eq!(to, vec![peer.node_id()], "pushed to the job's peer");
            assert_at_most_two_loaded(jobs);
            let change =
                peer_doc.contribute(peer, &format!("theirs-{round}"), vec![1], now).expect("peer change");
            assert_eq!(jobs.apply_push(peer.node_id(), *job, &change, now).expect("push lands"), 1);
            assert_at_most_two_loaded(jobs);
        }
        // Each job reports what this round brought, and only that: nothing
        // fresh was lost when its document left memory, and nothing old is
        // fresh again when it came back.
        let mut changed = jobs.take_changed();
        changed.sort_by_key(|c| c.job());
        assert_eq!(changed.iter().map(|c| c.job()).collect::<Vec<_>>(), ids, "round {round}");
        for c in &changed {
            let fresh: Vec<&str> = c.fresh.iter().map(|v| v.kind.as_str()).collect();
            assert_eq!(fresh, [format!("mine-{round}"), format!("theirs-{round}")], "round {round}");
            assert_eq!(c.view.contributions.len(), 2 * (round as usize + 1));
        }
        assert_at_most_two_loaded(jobs);
    }
}

fn expected_kinds(rounds: u32) -> Vec<String> {
    let mut kinds: Vec<String> =
        (0..rounds).flat_map(|r| [format!("mine-{r}"), format!("theirs-{r}")]).collect();
    kinds.sort();
    kinds
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
    let loads = jobs.stats().doc_loads;
    let view = jobs.view(job).expect("read back from sled");
    assert!(view.compacted && view.finished_at_ms == Some(100));
    let kinds: Vec<&str> = view.contributions.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["draft", OUTCOME_KIND]);
    assert_eq!(jobs.stats().doc_loads, loads + 1, "the first read loads and verifies it");
    assert_eq!(jobs.view(job).expect("read again").heads, view.heads);
    assert_eq!(jobs.stats().doc_loads, loads + 1, "a closed job read again is not verified again");

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

#[test]
fn with_two_documents_in_memory_five_jobs_lose_nothing_across_eviction_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (me, peer) = (NodeIdentity::from_seed([1; 32]), NodeIdentity::from_seed([2; 32]));
    let ids: Vec<JobId> = (1..=5u8).map(|i| JobId([i; 16])).collect();
    let rounds = 6;
    let heads = {
        let store = Store::open(dir.path()).expect("open");
        let mut jobs = Jobs::load(store.clone(), me.node_id(), two_loaded());
        for job in &ids {
            jobs.open(*job, &[peer.node_id()], 1).expect("open job");
        }
        five_jobs_two_rounds_each(&mut jobs, &me, &peer, &ids, rounds);
        let stats = jobs.stats();
        assert_eq!(stats.active, 5, "every job is still held: {stats:?}");
        assert!(stats.doc_loads >= 5 * u64::from(rounds), "documents were read back: {stats:?}");
        assert!(stats.records_folded > 0, "records folded across eviction: {stats:?}");

        let mut heads = Vec::new();
        for job in &ids {
            let view = jobs.view(*job).expect("view of a job whose document left memory");
            assert_eq!(kinds(&view), expected_kinds(rounds), "job {job}");
            assert_eq!(view.peers, vec![peer.node_id()]);
            assert_at_most_two_loaded(&jobs);
            heads.push(view.heads);
        }
        assert!(jobs.take_changed().is_empty(), "views change nothing");
        store.flush().expect("flush");
        heads
    };

    // A restart reads back metadata for every job, documents for two.
    let store = Store::open(dir.path()).expect("reopen");
    let mut jobs = Jobs::load(store, me.node_id(), two_loaded());
    let stats = jobs.stats();
    assert_eq!((stats.active, stats.loaded), (5, 2), "{stats:?}");
    for (job, heads) in ids.iter().zip(&heads) {
        let view = jobs.view(*job).expect("view after restart");
        assert_eq!(&view.heads, heads, "job {job}");
        assert_eq!(kinds(&view), expected_kinds(rounds));
    }
    let job = ids[0];
    jobs.contribute(&me, job, "after-restart", vec![9], 500).expect("contribute after restart");
    let changed = jobs.take_changed();
    assert_eq!(changed.len(), 1);
    let fresh: Vec<&str> = changed[0].fresh.iter().map(|v| v.kind.as_str()).collect();
    assert_eq!(fresh, ["after-restart"], "reloaded contributions are not fresh again");
    assert_at_most_two_loaded(&jobs);
}

/// Sync rounds for five jobs, one message at a time across all of them,
/// so every document (and its session) leaves memory in mid-round on both
/// sides. Returns how many passes it took.
fn sync_all(a: &mut Jobs, a_id: NodeId, b: &mut Jobs, b_id: NodeId, ids: &[JobId]) -> usize {
    let mut pending: Vec<(JobId, Option<Vec<u8>>)> =
        ids.iter().map(|j| (*j, a.sync_start(b_id, *j))).collect();
    for pass in 0..50 {
        if pending.iter().all(|(_, message)| message.is_none()) {
            return pass;
        }
        for (job, message) in &mut pending {
            let Some(bytes) = message.take() else { continue };
            let answer = b.sync_receive(a_id, *job, pass == 0, &bytes, 300).expect("b answers");
            *message = a.sync_continue(b_id, *job, answer.as_deref(), 300).expect("a goes on");
            assert_at_most_two_loaded(a);
            assert_at_most_two_loaded(b);
        }
    }
    panic!("sync rounds did not end in 50 passes");
}

#[test]
fn sync_rounds_interrupted_by_eviction_still_bring_every_change_over() {
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (ida, idb) = (NodeIdentity::from_seed([1; 32]), NodeIdentity::from_seed([2; 32]));
    let ids: Vec<JobId> = (1..=5u8).map(|i| JobId([i; 16])).collect();
    let store_b = Store::open(dir_b.path()).expect("open b");
    let mut a = Jobs::load(Store::open(dir_a.path()).expect("open a"), ida.node_id(), two_loaded());
    let mut b = Jobs::load(store_b.clone(), idb.node_id(), two_loaded());
    for job in &ids {
        a.open(*job, &[idb.node_id()], 1).expect("open on a");
        for i in 0..3u8 {
            a.contribute(&ida, *job, &format!("a-{i}"), vec![i], 10).expect("a writes");
        }
    }
    a.take_changed();
    sync_all(&mut a, ida.node_id(), &mut b, idb.node_id(), &ids);
    assert!(b.stats().changes_applied == 0 && b.stats().sync_rounds == 0, "b only answered");
    assert!(b.stats().doc_loads > 0 && a.stats().doc_loads > 5, "documents were dropped in mid-round");

    let mut changed = b.take_changed();
    changed.sort_by_key(|c| c.job());
    assert_eq!(changed.iter().map(|c| c.job()).collect::<Vec<_>>(), ids);
    for c in &changed {
        assert_eq!(c.fresh.len(), 3, "every change that came over is fresh once: {:?}", c.fresh);
    }
    store_b.flush().expect("flush");
    drop(b);
    let mut b = Jobs::load(store_b, idb.node_id(), two_loaded());
    for job in &ids {
        let (va, vb) = (a.view(*job).expect("a view"), b.view(*job).expect("b view after restart"));
        assert_eq!(vb.heads, va.heads, "job {job}");
        assert_eq!(kinds(&vb), ["a-0", "a-1", "a-2"]);
        assert_eq!(vb.peers, vec![ida.node_id()], "the sender became a peer");
    }
    assert_eq!(sync_all(&mut a, ida.node_id(), &mut b, idb.node_id(), &ids), 1, "nothing left to send");
}
