//! The job sync machine (`hivemesh_node::replica::sync`) pumped by hand:
//! group commit (nothing released before its flush; one flush for every
//! write that arrived while the previous one ran; a failed flush refuses),
//! push retries, and two machines repairing a lost push by a sync round.

use std::sync::Arc;

use hivemesh_node::replica::sync::{Input, JobRequest, JobSync, MAX_PUSH_ATTEMPTS, Output, Token};
use hivemesh_node::replica::{JobError, Jobs, JobsConfig, StateRequest, Store};
use hivemesh_protocol::{JobId, NodeId, NodeIdentity};

const JOB: JobId = JobId([5; 16]);

struct Node {
    machine: JobSync,
    id: NodeId,
    _dir: tempfile::TempDir,
}

fn node(seed: u8) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = Arc::new(NodeIdentity::from_seed([seed; 32]));
    let store = Store::open(dir.path()).expect("store");
    let id = identity.node_id();
    let jobs = Jobs::load(store, id, JobsConfig::default());
    Node { machine: JobSync::new(jobs, identity, u64::from(seed)), id, _dir: dir }
}

fn contribute(node: &mut Node, kind: &str, token: u64) {
    let input = Input::Contribute {
        job: JOB,
        kind: kind.into(),
        body: kind.as_bytes().to_vec(),
        token: Token(token),
    };
    node.machine.handle(input, 1_000);
}

fn flushes(outputs: &[Output]) -> usize {
    outputs.iter().filter(|o| matches!(o, Output::Flush)).count()
}

fn replies(outputs: &[Output]) -> Vec<(u64, bool)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Reply { token, result, .. } => Some((token.0, result.is_ok())),
            _ => None,
        })
        .collect()
}

fn sends(outputs: Vec<Output>) -> Vec<(NodeId, hivemesh_node::replica::sync::RequestId, StateRequest)> {
    outputs
        .into_iter()
        .filter_map(|o| match o {
            Output::Send { to, id, request } => Some((to, id, request)),
            _ => None,
        })
        .collect()
}

#[test]
fn nothing_is_replied_pushed_or_announced_before_its_flush() {
    let (mut a, b) = (node(1), node(2));
    a.machine.handle(Input::Open { job: JOB, peers: vec![b.id], token: Token(0) }, 1_000);
    let opened = a.machine.drain();
    assert_eq!(flushes(&opened), 1, "{opened:?}");
    assert!(replies(&opened).is_empty(), "replied before durable: {opened:?}");
    a.machine.handle(Input::Flushed { durable: true }, 1_001);
    assert_eq!(replies(&a.machine.drain()), [(0, true)]);

    contribute(&mut a, "spec", 1);
    let written = a.machine.drain();
    assert_eq!(flushes(&written), 1);
    assert!(
        written.iter().all(|o| matches!(o, Output::Flush)),
        "only a flush may come before durability: {written:?}"
    );
    a.machine.handle(Input::Flushed { durable: true }, 1_002);
    let released = a.machine.drain();
    assert_eq!(replies(&released), [(1, true)]);
    assert!(released.iter().any(|o| matches!(o, Output::Changed(c) if c.fresh.len() == 1)));
    let pushed = sends(released);
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].0, b.id);
    assert!(matches!(pushed[0].2, StateRequest::JobPush { job: JOB, .. }));
}

#[test]
fn one_flush_releases_every_write_that_arrived_while_the_previous_one_ran() {
    let mut a = node(1);
    a.machine.handle(Input::Open { job: JOB, peers: vec![], token: Token(0) }, 1_000);
    assert_eq!(flushes(&a.machine.drain()), 1);
    for token in 1..=5 {
        contribute(&mut a, &format!("draft-{token}"), token);
    }
    assert_eq!(flushes(&a.machine.drain()), 0, "one flush at a time");
    a.machine.handle(Input::Flushed { durable: true }, 1_001);
    let first = a.machine.drain();
    assert_eq!(replies(&first), [(0, true)], "only the write before the flush is released");
    assert_eq!(flushes(&first), 1, "the next flush starts at once");
    a.machine.handle(Input::Flushed { durable: true }, 1_002);
    let second = a.machine.drain();
    assert_eq!(replies(&second), [(1, true), (2, true), (3, true), (4, true), (5, true)]);
    assert_eq!(flushes(&second), 0, "nothing left to flush");
    let stats = a.machine.commit_stats();
    assert_eq!((stats.flushes, stats.released), (2, 1 + 5 + 5), "{stats:?}");
}

#[test]
fn a_failed_flush_refuses_the_writes_waiting_on_it_and_pushes_nothing() {
    let (mut a, b) = (node(1), node(2));
    a.machine.handle(Input::Open { job: JOB, peers: vec![b.id], token: Token(0) }, 1_000);
    a.machine.handle(Input::Flushed { durable: true }, 1_000);
    a.machine.drain();
    contribute(&mut a, "spec", 1);
    a.machine.drain();
    a.machine.handle(Input::Flushed { durable: false }, 1_001);
    let out = a.machine.drain();
    let refused = out
        .iter()
        .any(|o| matches!(o, Output::Reply { token: Token(1), result: Err(JobError::NotDurable(JOB)), .. }));
    assert!(refused, "{out:?}");
    assert!(sends(out).is_empty(), "a change that may not be durable is not pushed");
    assert_eq!(a.machine.commit_stats().failed, 1);
}

#[test]
fn a_failed_push_is_sent_again_to_a_live_peer_and_dropped_for_a_gone_one() {
    let (mut a, b) = (node(1), node(2));
    a.machine.handle(Input::MemberUp(b.id), 1_000);
    a.machine.handle(Input::Open { job: JOB, peers: vec![b.id], token: Token(0) }, 1_000);
    contribute(&mut a, "spec", 1);
    a.machine.handle(Input::Flushed { durable: true }, 1_001);
    a.machine.drain();
    a.machine.handle(Input::Flushed { durable: true }, 1_001);
    let mut push = sends(a.machine.drain());
    let mut attempts = 1;
    while let Some((to, id, _)) = push.pop() {
        assert_eq!(to, b.id);
        a.machine.handle(Input::Response { id, response: None }, 1_002);
        push = sends(a.machine.drain());
        attempts += push.len() as u32;
    }
    assert_eq!(attempts, MAX_PUSH_ATTEMPTS, "sent {attempts} times");

    contribute(&mut a, "candidate", 2);
    a.machine.handle(Input::Flushed { durable: true }, 1_003);
    let (_, id, _) = sends(a.machine.drain()).pop().expect("pushed");
    a.machine.handle(Input::MemberGone(b.id), 1_004);
    a.machine.handle(Input::Response { id, response: None }, 1_004);
    assert!(sends(a.machine.drain()).is_empty(), "no retry to a peer that is down");
}

/// Delivers every request in `outputs` from `from` to `to` and the answers
/// back, flushing at once, until both are quiet; `drop_pushes` loses pushes.
fn pump(from: &mut Node, to: &mut Node, mut outputs: Vec<Output>, drop_pushes: bool) {
    for _ in 0..64 {
        let mut back = Vec::new();
        for output in outputs {
            match output {
                Output::Flush => from.machine.handle(Input::Flushed { durable: true }, 2_000),
                Output::Send { id, request, .. } => {
                    let request = match request {
                        StateRequest::JobPush { .. } if drop_pushes => {
                            from.machine.handle(Input::Response { id, response: None }, 2_000);
                            continue;
                        }
                        StateRequest::JobPush { job, changes } => JobRequest::Push { job, changes },
                        StateRequest::JobSync { job, first, message } => {
                            JobRequest::Sync { job, first, message }
                        }
                        other => panic!("not a job request: {other:?}"),
                    };
                    to.machine.handle(Input::Request { from: from.id, request, token: Token(id.0) }, 2_000);
                    let mut answered = to.machine.drain();
                    while answered.iter().any(|o| matches!(o, Output::Flush)) {
                        to.machine.handle(Input::Flushed { durable: true }, 2_000);
                        answered.extend(to.machine.drain());
                        answered.retain(|o| !matches!(o, Output::Flush));
                    }
                    for o in answered {
                        if let Output::Respond { token, response } = o {
                            assert_eq!(token.0, id.0);
                            back.push((id, response));
                        }
                    }
                }
                _ => {}
            }
        }
        for (id, response) in back {
            from.machine.handle(Input::Response { id, response: Some(response) }, 2_000);
        }
        outputs = from.machine.drain();
        if outputs.is_empty() {
            return;
        }
    }
    panic!("the machines never went quiet");
}

#[test]
fn a_lost_push_is_repaired_by_a_sync_round_at_the_next_tick() {
    let (mut a, mut b) = (node(1), node(2));
    a.machine.handle(Input::MemberUp(b.id), 1_000);
    a.machine.handle(Input::Open { job: JOB, peers: vec![b.id], token: Token(0) }, 1_000);
    for (token, kind) in ["spec", "candidate", "ballot"].into_iter().enumerate() {
        contribute(&mut a, kind, token as u64 + 1);
    }
    let outputs = a.machine.drain();
    pump(&mut a, &mut b, outputs, true);
    assert!(b.machine.jobs().view(JOB).is_err(), "every push was lost");

    a.machine.handle(Input::Tick, 3_000);
    let outputs = a.machine.drain();
    assert!(outputs.iter().any(|o| matches!(o, Output::Send { .. })), "the tick starts a round: {outputs:?}");
    pump(&mut a, &mut b, outputs, false);
    let healed = b.machine.jobs().view(JOB).expect("b holds the job");
    let kinds: Vec<&str> = healed.contributions.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["ballot", "candidate", "spec"]);
}

#[test]
fn a_node_that_missed_a_jobs_end_stops_syncing_it_once_its_peers_closed_it() {
    let (mut a, mut b) = (node(1), node(2));
    a.machine.handle(Input::MemberUp(b.id), 1_000);
    b.machine.handle(Input::MemberUp(a.id), 1_000);
    a.machine.handle(Input::Open { job: JOB, peers: vec![b.id], token: Token(0) }, 1_000);
    b.machine.handle(Input::Open { job: JOB, peers: vec![a.id], token: Token(0) }, 1_000);
    b.machine.handle(Input::Flushed { durable: true }, 1_000);
    b.machine.drain();
    contribute(&mut a, "spec", 1);
    contribute(&mut a, hivemesh_node::replica::OUTCOME_KIND, 2);
    let outputs = a.machine.drain();
    pump(&mut a, &mut b, outputs, true);
    assert!(b.machine.jobs().view(JOB).expect("held").contributions.is_empty(), "b missed the end");

    // Past the grace period a compacts the finished job (its repair round
    // with b is lost too).
    a.machine.handle(Input::Tick, 40_000);
    let mut compacted = false;
    for output in a.machine.drain() {
        match output {
            Output::Send { id, .. } => a.machine.handle(Input::Response { id, response: None }, 40_000),
            Output::Compacted(job) => compacted |= job == JOB,
            _ => {}
        }
    }
    assert!(compacted, "a compacted the finished job");

    // b's next round is answered "closed": b stops repairing the job with a
    // and, every peer having closed it, closes it too.
    b.machine.handle(Input::Tick, 41_000);
    let outputs = b.machine.drain();
    assert!(!sends(outputs.iter().filter_map(same_send).collect()).is_empty(), "b starts a round");
    pump(&mut b, &mut a, outputs, false);
    assert_eq!(b.machine.jobs().stats().closed_elsewhere, 1);
    // Past the grace period after that: no round, and the job compacted.
    b.machine.handle(Input::Tick, 41_000 + 31_000);
    let outputs = b.machine.drain();
    assert!(outputs.iter().any(|o| matches!(o, Output::Compacted(job) if *job == JOB)), "{outputs:?}");
    assert!(sends(outputs).is_empty(), "no more rounds for a job its peers closed");
}

/// A copy of a send, to look at outputs before pumping them.
fn same_send(output: &Output) -> Option<Output> {
    match output {
        Output::Send { to, id, request } => Some(Output::Send { to: *to, id: *id, request: request.clone() }),
        _ => None,
    }
}
