//! The membership state machine on its own: frames in, outputs out.

use hivemesh_node::membership::{MemberEvent, MemberId, Membership, MembershipConfig, Output, RejectReason};
use hivemesh_protocol::identity::NodeId;

fn node(n: u8) -> NodeId {
    let mut bytes = [0u8; 32];
    bytes[0] = n;
    NodeId(bytes)
}

fn machine(n: u8) -> Membership {
    Membership::new(MemberId::new(node(n), 1, vec![]), MembershipConfig::lan(3), u64::from(n), 0)
}

/// Delivers every frame `from` wants to send to `to` (and drops the rest).
fn pump(from: &mut Membership, to: &mut Membership) -> Vec<MemberEvent> {
    let sender = from.me().node;
    let mut events = Vec::new();
    for output in from.drain() {
        match output {
            Output::Send { to: dst, frame } if dst.node == to.me().node => {
                to.handle_frame(sender, &frame, 0).expect("valid frame accepted");
            }
            Output::Event(e) => events.push(e),
            _ => {}
        }
    }
    events
}

fn joined_pair() -> (Membership, Membership) {
    let (mut a, mut b) = (machine(1), machine(2));
    b.add_bootstrap(MemberId::placeholder(node(1), vec![]), 0);
    for _ in 0..3 {
        pump(&mut b, &mut a);
        pump(&mut a, &mut b);
    }
    assert!(a.is_active(&node(2)) && b.is_active(&node(1)));
    (a, b)
}

#[test]
fn announce_to_a_bootstrap_peer_makes_both_members() {
    let (a, b) = joined_pair();
    assert_eq!(a.active_count(), 1);
    assert_eq!(b.active_count(), 1);
}

#[test]
fn a_packet_claiming_another_sender_is_dropped_and_counted() {
    let (mut a, mut b) = (machine(1), machine(2));
    b.add_bootstrap(MemberId::placeholder(node(1), vec![]), 0);
    let frame = b
        .drain()
        .into_iter()
        .find_map(|o| match o {
            Output::Send { frame, .. } => Some(frame),
            _ => None,
        })
        .expect("an announce");
    // Node 3 relays node 2's announce as if it were its own.
    let err = a.handle_frame(node(3), &frame, 0).expect_err("spoofed sender");
    assert!(matches!(err, RejectReason::SpoofedSender { .. }), "{err}");
    assert_eq!(a.stats().rejected.get("spoofed_sender"), Some(&1));
    assert_eq!(a.active_count(), 0, "nothing from the spoofed packet was applied");
}

#[test]
fn garbage_and_oversized_frames_are_rejected_with_their_reason() {
    let mut a = machine(1);
    let err = a.handle_frame(node(2), &[0xff, 0xff, 0xff], 0).expect_err("garbage");
    assert_eq!(err.label(), "malformed");
    let big = vec![0u8; a.config().max_packet_size + 1024];
    assert_eq!(a.handle_frame(node(2), &big, 0).expect_err("too big").label(), "oversized");
    assert_eq!(a.stats().rejected.values().sum::<u64>(), 2);
}

#[test]
fn a_graceful_leave_is_reported_as_left_not_down() {
    let (mut a, mut b) = joined_pair();
    b.leave(0);
    let events = pump(&mut b, &mut a);
    assert!(events.is_empty(), "the leaver reports nothing about itself: {events:?}");
    let view = a.members();
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].state.label(), "left");
    let seen: Vec<MemberEvent> =
        a.drain().into_iter().filter_map(|o| if let Output::Event(e) = o { Some(e) } else { None }).collect();
    assert!(seen.iter().any(|e| matches!(e, MemberEvent::Left(id) if id.node == node(2))), "{seen:?}");
}
