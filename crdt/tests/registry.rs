//! The signed last-writer-wins registry: merging, forgery, anti-entropy.

use hivemesh_crdt::registry::{Merge, Registry, RegistryError};
use hivemesh_protocol::{Capabilities, NodeIdentity, PeerEntry, Role, seal};

fn node(seed: u8) -> NodeIdentity {
    NodeIdentity::from_seed([seed; 32])
}

fn entry(identity: &NodeIdentity, models: &[&str], at_ms: u64) -> PeerEntry {
    PeerEntry {
        node: identity.node_id(),
        addresses: vec![format!("/ip4/127.0.0.1/udp/{}/quic-v1", 4000 + u16::from(identity.node_id().0[0]))],
        role: Role::Worker,
        capabilities: Capabilities { models: models.iter().map(|m| m.to_string()).collect(), gpu: None },
        load: 0,
        last_updated_ms: at_ms,
    }
}

#[test]
fn newer_entries_replace_older_ones_and_stale_ones_change_nothing() {
    let a = node(1);
    let mut local = Registry::new();
    let first = local.publish(&a, entry(&a, &["m1"], 1_000)).unwrap();
    let second = local.publish(&a, entry(&a, &["m1", "m2"], 2_000)).unwrap();

    let mut remote = Registry::new();
    assert_eq!(remote.merge(second.clone()).unwrap(), Merge::Added);
    assert_eq!(remote.merge(first).unwrap(), Merge::Stale);
    assert_eq!(remote.merge(second).unwrap(), Merge::Stale);
    assert_eq!(remote.get(&a.node_id()).unwrap().entry.capabilities.models, ["m1", "m2"]);
}

#[test]
fn publishing_after_the_clock_went_back_still_wins() {
    let a = node(1);
    let mut registry = Registry::new();
    registry.publish(&a, entry(&a, &["old"], 5_000)).unwrap();
    let update = registry.publish(&a, entry(&a, &["new"], 1_000)).unwrap();
    let mut remote = Registry::new();
    remote.merge(update).unwrap();
    let held = &remote.get(&a.node_id()).unwrap().entry;
    assert_eq!(held.capabilities.models, ["new"]);
    assert_eq!(held.last_updated_ms, 5_001);
}

#[test]
fn an_entry_for_a_signed_by_b_is_rejected_and_counted() {
    let (a, b) = (node(1), node(2));
    let mut registry = Registry::new();
    // B signs an envelope whose content names A: the trait refuses to seal
    // it, so build it the way an attacker would, from B's own entry bytes.
    assert!(seal(&b, 1, 1, &entry(&a, &["evil"], 9_999)).is_err());
    let forged = {
        let payload = hivemesh_protocol::encode_message(&entry(&a, &["evil"], 9_999)).unwrap();
        hivemesh_protocol::Envelope::seal(&b, hivemesh_protocol::Domain::PEER_ENTRY, 1, 1, payload).unwrap()
    };
    let error = registry.merge(forged).unwrap_err();
    assert_eq!(error.reason(), "forged", "{error}");
    assert!(registry.is_empty());

    let mut tampered = Registry::new().publish(&a, entry(&a, &["m"], 1)).unwrap();
    tampered.payload[0] ^= 1;
    let error = registry.merge(tampered).unwrap_err();
    assert_eq!(error.reason(), "bad_signature", "{error}");
    assert!(matches!(error, RegistryError::Invalid(_)));
    assert_eq!(registry.rejected().get("forged"), Some(&1));
    assert_eq!(registry.rejected().get("bad_signature"), Some(&1));
}

#[test]
fn anti_entropy_brings_two_registries_to_the_same_entries() {
    let nodes: Vec<_> = (1..=6).map(node).collect();
    let (mut left, mut right) = (Registry::new(), Registry::new());
    // Left knows 1-4, right knows 3-6; node 3 is newer on the right, 4 on the left.
    for (i, id) in nodes.iter().enumerate() {
        let mut scratch = Registry::new();
        let old = scratch.publish(id, entry(id, &["old"], 100)).unwrap();
        let new = scratch.publish(id, entry(id, &["new"], 200)).unwrap();
        match i {
            0 | 1 => drop(left.merge(new)),
            2 => {
                left.merge(old).unwrap();
                right.merge(new).unwrap();
            }
            3 => {
                left.merge(new).unwrap();
                right.merge(old).unwrap();
            }
            _ => drop(right.merge(new)),
        }
    }
    // Left sends its digest; right answers; left sends what right wanted.
    let answer = right.reconcile(&left.digest());
    for envelope in answer.send {
        left.merge(envelope).unwrap();
    }
    for envelope in left.envelopes_for(&answer.want) {
        right.merge(envelope).unwrap();
    }
    assert_eq!(left.digest(), right.digest());
    assert_eq!(left.len(), 6);
    assert!(left.entries().all(|held| held.entry.capabilities.models == ["new"]));
}
