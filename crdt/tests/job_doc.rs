//! Job documents: concurrent edits converge through the sync protocol, even
//! after a partition; forged or forbidden changes are refused; bounds hold.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT, ScalarValue};
use hivemesh_crdt::job_doc::{JobDoc, JobDocError, MAX_SYNC_MESSAGE_BYTES, SyncSession};
use hivemesh_protocol::identity::hex;
use hivemesh_protocol::{Domain, Envelope, JobContribution, JobId, NodeIdentity, encode_message};

const JOB: JobId = JobId([7; 16]);

fn node(seed: u8) -> NodeIdentity {
    NodeIdentity::from_seed([seed; 32])
}

/// Runs the sync protocol between two replicas until neither has anything to
/// say; returns the bytes exchanged.
fn sync(a: &mut JobDoc, b: &mut JobDoc) -> usize {
    let (mut a_to_b, mut b_to_a) = (SyncSession::new(), SyncSession::new());
    let mut bytes = 0;
    for _ in 0..32 {
        let mut quiet = true;
        if let Some(message) = a.sync_message(&mut a_to_b) {
            bytes += message.len();
            b.receive_sync(&mut b_to_a, &message).unwrap();
            quiet = false;
        }
        if let Some(message) = b.sync_message(&mut b_to_a) {
            bytes += message.len();
            a.receive_sync(&mut a_to_b, &message).unwrap();
            quiet = false;
        }
        if quiet {
            return bytes;
        }
    }
    panic!("sync did not settle in 32 rounds");
}

#[test]
fn concurrent_edits_on_two_nodes_converge_to_the_same_heads() {
    let (alice, bob) = (node(1), node(2));
    let mut left = JobDoc::new(JOB, &alice.node_id());
    let mut right = JobDoc::new(JOB, &bob.node_id());
    left.contribute(&alice, "spec", b"what is 2+2?".to_vec(), 1_000).unwrap();
    sync(&mut left, &mut right);
    // Both write at once, without seeing each other.
    left.contribute(&alice, "candidate", b"4".to_vec(), 2_000).unwrap();
    right.contribute(&bob, "candidate", b"four".to_vec(), 2_000).unwrap();
    right.contribute(&bob, "ballot", b"rank 0 1".to_vec(), 2_001).unwrap();
    assert_ne!(left.heads(), right.heads());
    sync(&mut left, &mut right);
    assert_eq!(left.heads(), right.heads());
    assert_eq!(left.contributions(), right.contributions());
    assert_eq!(left.contributions().len(), 4);
    assert_eq!(right.contribution("candidate", &alice.node_id()).unwrap().body, b"4");
}

#[test]
fn replicas_split_by_a_partition_converge_after_it_heals() {
    let nodes: Vec<_> = (1..=4).map(node).collect();
    let mut docs: Vec<JobDoc> = nodes.iter().map(|n| JobDoc::new(JOB, &n.node_id())).collect();
    docs[0].contribute(&nodes[0], "spec", b"q".to_vec(), 1).unwrap();
    for i in 1..4 {
        let (head, tail) = docs.split_at_mut(i);
        sync(&mut head[0], &mut tail[0]);
    }
    // Partition {0,1} | {2,3}: each side writes and syncs only within itself.
    for (i, n) in nodes.iter().enumerate() {
        for round in 0..5u64 {
            docs[i].contribute(n, &format!("stage-{round}"), vec![i as u8; 32], 10 + round).unwrap();
        }
    }
    {
        let (a, b) = docs.split_at_mut(1);
        sync(&mut a[0], &mut b[0]);
        let (c, d) = docs.split_at_mut(3);
        sync(&mut c[2], &mut d[0]);
    }
    assert_ne!(docs[0].heads(), docs[2].heads());
    // Heal: one link across is enough, then everyone syncs with a neighbour.
    for (x, y) in [(1, 2), (0, 1), (2, 3)] {
        let (head, tail) = docs.split_at_mut(y);
        sync(&mut head[x], &mut tail[0]);
    }
    let heads = docs[0].heads();
    for doc in &mut docs {
        assert_eq!(doc.heads(), heads);
        assert_eq!(doc.contributions().len(), 1 + 4 * 5);
    }
}

/// An attacker's replica: raw automerge, writing whatever it likes.
fn raw_change(edit: impl FnOnce(&mut AutoCommit)) -> Vec<u8> {
    let mut doc = AutoCommit::new();
    edit(&mut doc);
    doc.save()
}

fn signed(author: &NodeIdentity, signer: &NodeIdentity, kind: &str, job: JobId) -> Vec<u8> {
    let contribution =
        JobContribution { job, author: author.node_id(), kind: kind.into(), body: b"x".to_vec() };
    let payload = encode_message(&contribution).unwrap();
    encode_message(&Envelope::seal(signer, Domain::JOB_CONTRIBUTION, 1, 1, payload).unwrap()).unwrap()
}

#[test]
fn forged_and_forbidden_changes_are_refused_and_change_nothing() {
    let (alice, mallory) = (node(1), node(3));
    let alice_key = format!("candidate/{}", hex(&alice.node_id().0));
    let mut doc = JobDoc::new(JOB, &alice.node_id());
    doc.contribute(&alice, "spec", b"q".to_vec(), 1).unwrap();
    let heads = doc.heads();

    let cases = [
        (
            "alice's key, mallory's signature",
            raw_change(|d| {
                d.put(
                    ROOT,
                    alice_key.as_str(),
                    ScalarValue::Bytes(signed(&alice, &mallory, "candidate", JOB)),
                )
                .unwrap();
            }),
            "forged",
        ),
        (
            "mallory's value under alice's key",
            raw_change(|d| {
                d.put(
                    ROOT,
                    alice_key.as_str(),
                    ScalarValue::Bytes(signed(&mallory, &mallory, "candidate", JOB)),
                )
                .unwrap();
            }),
            "forged",
        ),
        (
            "another job's value",
            raw_change(|d| {
                let key = format!("candidate/{}", hex(&mallory.node_id().0));
                d.put(
                    ROOT,
                    key.as_str(),
                    ScalarValue::Bytes(signed(&mallory, &mallory, "candidate", JobId([9; 16]))),
                )
                .unwrap();
            }),
            "forged",
        ),
        (
            "a plain string",
            raw_change(|d| {
                d.put(ROOT, alice_key.as_str(), "4").unwrap();
            }),
            "forbidden_op",
        ),
        (
            "a nested object",
            raw_change(|d| {
                d.put_object(ROOT, "x", automerge::ObjType::Map).unwrap();
            }),
            "forbidden_op",
        ),
    ];
    for (what, change, reason) in cases {
        let error = doc.apply_changes(&change).unwrap_err();
        assert_eq!(error.reason(), reason, "{what}: {error}");
        assert_eq!(doc.heads(), heads, "{what} changed the document");
    }
    // Mallory's own, correctly signed contribution is fine.
    let own = raw_change(|d| {
        let key = format!("candidate/{}", hex(&mallory.node_id().0));
        d.put(ROOT, key.as_str(), ScalarValue::Bytes(signed(&mallory, &mallory, "candidate", JOB))).unwrap();
    });
    assert_eq!(doc.apply_changes(&own).unwrap(), 1);
    assert_eq!(doc.contributions().len(), 2);
}

#[test]
fn oversized_and_garbled_sync_messages_are_clear_errors() {
    let alice = node(1);
    let mut doc = JobDoc::new(JOB, &alice.node_id());
    let mut session = SyncSession::new();
    let error = doc.receive_sync(&mut session, &vec![0x42; MAX_SYNC_MESSAGE_BYTES + 1]).unwrap_err();
    assert!(matches!(error, JobDocError::TooLarge { .. }), "{error}");
    let error = doc.receive_sync(&mut session, b"\x42garbage").unwrap_err();
    assert_eq!(error.reason(), "malformed", "{error}");
    assert!(doc.apply_changes(b"not automerge").is_err());
}

#[test]
fn garbage_after_a_valid_change_is_refused_once_the_document_has_history() {
    // automerge's incremental load skips unparsable bytes on a non-empty
    // document; a job document must refuse them and keep what it had.
    let (alice, bob) = (node(1), node(2));
    let mut doc = JobDoc::new(JOB, &alice.node_id());
    doc.contribute(&alice, "spec", b"q".to_vec(), 1).unwrap();
    let mut other = JobDoc::new(JOB, &bob.node_id());
    let mut bytes = other.contribute(&bob, "candidate", b"a".to_vec(), 2).unwrap();
    bytes.extend_from_slice(b"trailing garbage");
    let heads = doc.heads();
    let error = doc.apply_changes(&bytes).unwrap_err();
    assert_eq!(error.reason(), "malformed", "{error}");
    assert_eq!(doc.heads(), heads);
    assert!(doc.apply_changes(b"not automerge").is_err());
}

/// Counts ERROR-level events, wherever they come from (automerge included).
struct CountErrors(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl tracing::Subscriber for CountErrors {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn a_change_that_builds_on_the_document_applies_without_an_error_log_line() {
    // A peer's incremental change depends on changes this replica already
    // holds. Checking it used to load it alone, which automerge answers with
    // MissingDeps and logs at ERROR level ("change's deps should already be
    // in the document") though the change then applied fine.
    let (alice, bob) = (node(1), node(2));
    let mut doc = JobDoc::new(JOB, &alice.node_id());
    let spec = doc.contribute(&alice, "spec", b"q".to_vec(), 1).unwrap();
    let mut other = JobDoc::new(JOB, &bob.node_id());
    other.apply_changes(&spec).unwrap();
    let candidate = other.contribute(&bob, "candidate", b"a".to_vec(), 2).unwrap();
    let errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let applied =
        tracing::subscriber::with_default(CountErrors(errors.clone()), || doc.apply_changes(&candidate));
    assert_eq!(applied.unwrap(), 1);
    assert_eq!(doc.heads(), other.heads());
    assert_eq!(errors.load(std::sync::atomic::Ordering::SeqCst), 0, "no ERROR line for a valid change");
    // Garbage is still refused, and a change whose parents are missing still waits.
    assert!(doc.apply_changes(b"not automerge").is_err());
}

#[test]
fn compaction_keeps_the_values_shrinks_the_document_and_is_the_same_everywhere() {
    let (alice, bob) = (node(1), node(2));
    let mut left = JobDoc::new(JOB, &alice.node_id());
    let mut right = JobDoc::new(JOB, &bob.node_id());
    for i in 0..50u64 {
        left.contribute(&alice, "stage", format!("draft {i}").into_bytes(), i).unwrap();
        right.contribute(&bob, "stage", format!("draft {i}").into_bytes(), i).unwrap();
    }
    sync(&mut left, &mut right);
    let before = left.save().len();
    let values = left.contributions();
    left.compact(&alice).unwrap();
    right.compact(&bob).unwrap();
    assert_eq!(left.contributions(), values);
    assert!(left.save().len() < before, "{} >= {before}", left.save().len());
    assert_eq!(left.heads(), right.heads());
    // A compacted document still loads and checks out.
    let saved = left.save();
    let reloaded = JobDoc::load(JOB, &alice.node_id(), &saved).unwrap();
    assert_eq!(reloaded.contributions(), values);
}

/// A replica that applied a peer's change still writes as itself: the same
/// edits give the same heads every time (a random actor, as automerge's fork
/// gives, would not), and a change hands on exactly what began to count.
#[test]
fn after_applying_a_peer_change_a_replica_writes_as_itself_and_hands_on_only_the_new() {
    let (alice, bob) = (node(1), node(2));
    let run = || {
        let mut a = JobDoc::new(JOB, &alice.node_id());
        let mut b = JobDoc::new(JOB, &bob.node_id());
        let change = a.contribute(&alice, "spec", b"q".to_vec(), 1_000).unwrap();
        assert_eq!(b.apply_changes(&change).unwrap(), 1);
        let fresh: Vec<String> = b.take_fresh().into_iter().map(|c| c.kind).collect();
        assert_eq!(fresh, ["spec"]);
        b.contribute(&bob, "candidate", b"a".to_vec(), 2_000).unwrap();
        let fresh: Vec<String> = b.take_fresh().into_iter().map(|c| c.kind).collect();
        assert_eq!(fresh, ["candidate"], "only the new contribution");
        assert!(b.take_fresh().is_empty(), "handed on once");
        assert!(b.has_kind("candidate") && !b.has_kind("ballot"));
        b.heads()
    };
    assert_eq!(run(), run());
}
