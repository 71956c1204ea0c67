//! The registry machine (`hivemesh_node::replica::anti_entropy`) pumped by
//! hand: a member coming up gets this node's entry and reconciles both
//! ways at once; anti-entropy repairs an entry whose push was lost; a
//! majority view waits for every member asked, failures included; a
//! forged entry is refused in the acknowledgement.

use std::collections::BTreeMap;
use std::sync::Arc;

use hivemesh_crdt::majority::Entry;
use hivemesh_node::membership::MemberId;
use hivemesh_node::replica::anti_entropy::{Input, Output, RegistryRequest, RegistrySync};
use hivemesh_node::replica::sync::{RequestId, Token};
use hivemesh_node::replica::{Replica, StateRequest, StateResponse};
use hivemesh_protocol::{NodeId, NodeIdentity};

struct Node {
    machine: RegistrySync,
    member: MemberId,
    _dir: tempfile::TempDir,
}

fn node(seed: u8) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = Arc::new(NodeIdentity::from_seed([seed; 32]));
    let id = identity.node_id();
    let replica = Replica::open(identity, dir.path(), None).expect("replica");
    let mut machine = RegistrySync::new(replica, u64::from(seed));
    machine.publish(None, vec![format!("/ip4/127.0.0.1/tcp/{seed}")], 1_000).expect("publish");
    assert!(machine.drain().is_empty(), "nothing to push to before any member is up");
    Node { machine, member: MemberId::new(id, 1, Vec::new()), _dir: dir }
}

/// Everything the machine produced, with every flush it asked for run
/// (and succeeding) along the way.
fn settle(machine: &mut RegistrySync) -> Vec<Output> {
    let mut out = Vec::new();
    loop {
        let outputs = machine.drain();
        if outputs.is_empty() {
            return out;
        }
        for output in outputs {
            match output {
                Output::Flush => machine.handle(Input::Flushed { durable: true }),
                other => out.push(other),
            }
        }
    }
}

fn holds(node: &Node, other: &Node) -> bool {
    node.machine.replica().registry().get(&other.member.node).is_some()
}

/// Delivers every send between the nodes until none is left; `drop` says
/// which sends are lost (their request fails). Returns what was delivered.
fn pump(nodes: &mut [&mut Node], drop: impl Fn(&StateRequest) -> bool) -> Vec<StateRequest> {
    let mut delivered = Vec::new();
    let mut queue: Vec<(usize, NodeId, RequestId, StateRequest)> = Vec::new();
    let index: BTreeMap<NodeId, usize> = nodes.iter().enumerate().map(|(i, n)| (n.member.node, i)).collect();
    for _ in 0..100 {
        for (i, node) in nodes.iter_mut().enumerate() {
            for output in settle(&mut node.machine) {
                if let Output::Send { to, id, request } = output {
                    queue.push((i, to.node, id, request));
                }
            }
        }
        let Some((from, to, id, request)) = queue.pop() else { return delivered };
        let sender = nodes[from].member.node;
        let response = if drop(&request) {
            None
        } else {
            delivered.push(request.clone());
            let request = match request {
                StateRequest::Push(envelopes) => RegistryRequest::Push(envelopes),
                StateRequest::Digest(digest) => RegistryRequest::Digest(digest),
                StateRequest::Evidence(_) => {
                    nodes[from].machine.handle(Input::Response { id, response: None });
                    continue;
                }
                other => panic!("not a registry request: {other:?}"),
            };
            let target = &mut nodes[index[&to]].machine;
            target.handle(Input::Request { from: sender, request, token: Token(7) });
            let mut answers = settle(target);
            let position = answers.iter().position(|o| matches!(o, Output::Respond { .. }));
            match position.map(|p| answers.remove(p)) {
                Some(Output::Respond { token, response }) => {
                    assert_eq!(token, Token(7));
                    Some(response)
                }
                _ => panic!("a registry request got no response: {answers:?}"),
            }
        };
        nodes[from].machine.handle(Input::Response { id, response });
    }
    panic!("the exchange did not settle in 100 steps");
}

#[test]
fn a_member_coming_up_gets_our_entry_and_reconciles_both_ways_at_once() {
    let (mut a, mut b) = (node(1), node(2));
    let (a_id, b_id) = (a.member.clone(), b.member.clone());
    a.machine.handle(Input::MemberUp(b_id));
    b.machine.handle(Input::MemberUp(a_id));
    let delivered = pump(&mut [&mut a, &mut b], |_| false);
    assert!(holds(&a, &b) && holds(&b, &a), "entries not exchanged");
    assert!(delivered.iter().any(|r| matches!(r, StateRequest::Digest(_))), "no anti-entropy round on up");
}

#[test]
fn anti_entropy_repairs_an_entry_whose_pushes_were_all_lost() {
    let (mut a, mut b, mut c) = (node(1), node(2), node(3));
    // b knows c; a learns of b only, and every push is lost.
    b.machine.handle(Input::MemberUp(c.member.clone()));
    c.machine.handle(Input::MemberUp(b.member.clone()));
    pump(&mut [&mut a, &mut b, &mut c], |_| false);
    assert!(holds(&b, &c));
    a.machine.handle(Input::MemberUp(b.member.clone()));
    pump(&mut [&mut a, &mut b, &mut c], |r| matches!(r, StateRequest::Push(_) | StateRequest::Digest(_)));
    assert!(!holds(&a, &c), "c's entry reached a with every push and digest lost");
    // A tick: one round with the only live member, which sends c's entry.
    a.machine.handle(Input::Tick);
    pump(&mut [&mut a, &mut b, &mut c], |_| false);
    assert!(holds(&a, &c), "anti-entropy did not carry c's entry to a");
    assert!(holds(&b, &a), "reconciliation did not carry a's entry back to b");
}

#[test]
fn a_majority_view_waits_for_every_member_asked_and_counts_failures() {
    let (mut a, b, c) = (node(1), node(2), node(3));
    a.machine.handle(Input::MemberUp(b.member.clone()));
    a.machine.handle(Input::MemberUp(c.member.clone()));
    a.machine.drain();
    let own = vec![
        Entry::from_json(serde_json::json!({"id": "a", "last_updated": "2026-11-30T12:00:00Z"}))
            .expect("entry"),
    ];
    a.machine.handle(Input::CollectViews { own, token: Token(9) });
    let asks: Vec<RequestId> = a
        .machine
        .drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::Send { id, request: StateRequest::View, .. } => Some(id),
            Output::Views { .. } => panic!("views out before any answer"),
            _ => None,
        })
        .collect();
    assert_eq!(asks.len(), 2, "every live member is asked");
    let json = serde_json::json!([{"id": "b", "last_updated": "2026-11-30T12:00:00Z"}]).to_string();
    a.machine.handle(Input::Response { id: asks[0], response: Some(StateResponse::View(json)) });
    assert!(a.machine.drain().is_empty(), "views out with one member outstanding");
    a.machine.handle(Input::Response { id: asks[1], response: None });
    match a.machine.drain().as_slice() {
        [Output::Views { token, views, asked }] => {
            assert_eq!((*token, *asked, views.len()), (Token(9), 2, 2), "own view + the one answer");
        }
        other => panic!("expected the gathered views, got {other:?}"),
    }
}

#[test]
fn a_majority_view_with_no_live_member_is_this_nodes_alone() {
    let mut a = node(1);
    let own = vec![
        Entry::from_json(serde_json::json!({"id": "a", "last_updated": "2026-11-30T12:00:00Z"}))
            .expect("entry"),
    ];
    a.machine.handle(Input::CollectViews { own, token: Token(1) });
    assert!(
        matches!(a.machine.drain().as_slice(), [Output::Views { asked: 0, views, .. }] if views.len() == 1)
    );
}

#[test]
fn a_forged_entry_is_refused_in_the_ack_and_not_held() {
    let (mut a, b, mut mallory) = (node(1), node(2), node(3));
    // Mallory pushes b's entry with one byte of it changed: b's signature
    // no longer covers it.
    let mut forged = b.machine.replica().registry().get(&b.member.node).expect("own").envelope.clone();
    let last = forged.payload.len() - 1;
    forged.payload[last] ^= 1;
    a.machine.handle(Input::Request {
        from: mallory.member.node,
        request: RegistryRequest::Push(vec![forged]),
        token: Token(3),
    });
    match a.machine.drain().as_slice() {
        [Output::Respond { token: Token(3), response: StateResponse::Ack { accepted: 0, rejected } }] => {
            assert_eq!(rejected.len(), 1, "{rejected:?}");
        }
        other => panic!("expected a refusing ack, got {other:?}"),
    }
    assert!(!holds(&a, &b));
    mallory.machine.drain();
}

#[test]
fn an_accepted_entry_is_acknowledged_only_once_durable_and_a_failed_flush_refuses() {
    let (mut a, b, c) = (node(1), node(2), node(3));
    let entry = |n: &Node| n.machine.replica().registry().get(&n.member.node).expect("own").envelope.clone();
    let push = |token| Input::Request {
        from: b.member.node,
        request: RegistryRequest::Push(vec![entry(&b)]),
        token: Token(token),
    };
    a.machine.handle(push(1));
    let out = a.machine.drain();
    assert!(matches!(out.as_slice(), [Output::Flush]), "only a flush before durability: {out:?}");
    // A second push while that flush runs waits for the next one.
    a.machine.handle(Input::Request {
        from: c.member.node,
        request: RegistryRequest::Push(vec![entry(&c)]),
        token: Token(2),
    });
    assert!(a.machine.drain().is_empty(), "one flush at a time");
    a.machine.handle(Input::Flushed { durable: true });
    let out = a.machine.drain();
    assert!(
        matches!(
            out.as_slice(),
            [
                Output::Respond { token: Token(1), response: StateResponse::Ack { accepted: 1, .. } },
                Output::Flush
            ]
        ),
        "the first ack, then the next flush: {out:?}"
    );
    a.machine.handle(Input::Flushed { durable: false });
    let out = a.machine.drain();
    assert!(
        matches!(out.as_slice(), [Output::Respond { token: Token(2), response: StateResponse::Refused(_) }]),
        "not durable: refused, not acknowledged: {out:?}"
    );
    // A push of what is already held writes nothing and is answered at once.
    a.machine.handle(push(3));
    assert!(
        matches!(
            a.machine.drain().as_slice(),
            [Output::Respond { token: Token(3), response: StateResponse::Ack { accepted: 0, .. } }]
        ),
        "a stale push waits for no flush"
    );
}
