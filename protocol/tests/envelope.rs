//! Every envelope rejection case fails for its own reason.

use hivemesh_protocol::limits::{MAX_ENVELOPE_AGE_MS, MAX_FUTURE_SKEW_MS, MAX_PAYLOAD_BYTES, REPLAY_WINDOW};
use hivemesh_protocol::{Domain, Envelope, EnvelopeError, NodeId, NodeIdentity, PROTOCOL_VERSION, Verifier};

const NOW: u64 = 1_800_000_000_000;

fn node(n: u8) -> NodeIdentity {
    NodeIdentity::from_seed([n; 32])
}

fn ballot_env(id: &NodeIdentity, seq: u64) -> Envelope {
    Envelope::seal(id, Domain::BALLOT, seq, NOW, b"payload".to_vec()).expect("seal")
}

#[test]
fn a_well_formed_envelope_verifies() {
    let env = ballot_env(&node(1), 1);
    assert_eq!(env.version, PROTOCOL_VERSION);
    assert_eq!(Verifier::default().verify(&env, Domain::BALLOT, NOW), Ok(()));
    assert_eq!(env.verify_stateless(Domain::BALLOT), Ok(()));
}

#[test]
fn tampered_payload_is_a_bad_signature() {
    let mut env = ballot_env(&node(1), 1);
    env.payload[0] ^= 1;
    assert_eq!(
        Verifier::default().verify(&env, Domain::BALLOT, NOW),
        Err(EnvelopeError::BadSignature(env.sender))
    );
}

#[test]
fn every_signed_header_field_is_covered_by_the_signature() {
    let base = ballot_env(&node(1), 5);
    let mut seq = base.clone();
    seq.seq = 6;
    let mut ts = base.clone();
    ts.timestamp_ms += 1;
    let mut sender = base.clone();
    sender.sender = node(2).node_id();
    for env in [seq, ts, sender] {
        let err = Verifier::default().verify(&env, Domain::BALLOT, NOW).unwrap_err();
        assert!(matches!(err, EnvelopeError::BadSignature(_)), "{err:?}");
    }
}

#[test]
fn a_signature_for_one_domain_does_not_pass_as_another() {
    let mut env = ballot_env(&node(1), 1);
    assert_eq!(
        Verifier::default().verify(&env, Domain::PEER_ENTRY, NOW),
        Err(EnvelopeError::WrongDomain { expected: Domain::PEER_ENTRY, got: Domain::BALLOT })
    );
    // Relabelling the domain breaks the signature: the domain is signed.
    env.domain = Domain::PEER_ENTRY;
    assert_eq!(
        Verifier::default().verify(&env, Domain::PEER_ENTRY, NOW),
        Err(EnvelopeError::BadSignature(env.sender))
    );
}

#[test]
fn unknown_version_is_rejected_before_the_signature() {
    let mut env = ballot_env(&node(1), 1);
    env.version = 9;
    assert_eq!(
        Verifier::default().verify(&env, Domain::BALLOT, NOW),
        Err(EnvelopeError::UnknownVersion { got: 9, supported: PROTOCOL_VERSION })
    );
}

#[test]
fn replayed_sequence_is_rejected_and_reordering_inside_the_window_is_not() {
    let id = node(1);
    let mut verifier = Verifier::default();
    for seq in [10, 8, 9] {
        assert_eq!(verifier.verify(&ballot_env(&id, seq), Domain::BALLOT, NOW), Ok(()), "seq {seq}");
    }
    assert_eq!(
        verifier.verify(&ballot_env(&id, 9), Domain::BALLOT, NOW),
        Err(EnvelopeError::Replayed { sender: id.node_id(), seq: 9 })
    );
    // Another sender's sequence numbers are independent.
    assert_eq!(verifier.verify(&ballot_env(&node(2), 9), Domain::BALLOT, NOW), Ok(()));
}

#[test]
fn sequence_below_the_window_is_too_old() {
    let id = node(1);
    let mut verifier = Verifier::default();
    let top = 1_000;
    verifier.verify(&ballot_env(&id, top), Domain::BALLOT, NOW).expect("first");
    let oldest = top + 1 - REPLAY_WINDOW;
    assert_eq!(verifier.verify(&ballot_env(&id, oldest), Domain::BALLOT, NOW), Ok(()));
    assert_eq!(
        verifier.verify(&ballot_env(&id, oldest - 1), Domain::BALLOT, NOW),
        Err(EnvelopeError::SequenceTooOld { sender: id.node_id(), seq: oldest - 1, oldest })
    );
}

#[test]
fn a_forgery_does_not_burn_the_sequence_number_it_claims() {
    let id = node(1);
    let mut verifier = Verifier::default();
    let mut forged = ballot_env(&id, 3);
    forged.payload = b"forged".to_vec();
    assert!(verifier.verify(&forged, Domain::BALLOT, NOW).is_err());
    assert_eq!(verifier.verify(&ballot_env(&id, 3), Domain::BALLOT, NOW), Ok(()));
}

#[test]
fn too_old_and_future_timestamps_are_rejected() {
    let id = node(1);
    let old = Envelope::seal(&id, Domain::BALLOT, 1, NOW - MAX_ENVELOPE_AGE_MS - 1, vec![]).expect("seal");
    assert!(matches!(
        Verifier::default().verify(&old, Domain::BALLOT, NOW),
        Err(EnvelopeError::Expired { max_age_ms: MAX_ENVELOPE_AGE_MS, .. })
    ));
    let future = Envelope::seal(&id, Domain::BALLOT, 1, NOW + MAX_FUTURE_SKEW_MS + 1, vec![]).expect("seal");
    assert!(matches!(
        Verifier::default().verify(&future, Domain::BALLOT, NOW),
        Err(EnvelopeError::FromTheFuture { max_skew_ms: MAX_FUTURE_SKEW_MS, .. })
    ));
}

#[test]
fn oversized_payload_is_refused_when_sealing_and_when_verifying() {
    let id = node(1);
    let big = vec![0u8; MAX_PAYLOAD_BYTES + 1];
    assert_eq!(
        Envelope::seal(&id, Domain::BALLOT, 1, NOW, big.clone()).unwrap_err(),
        EnvelopeError::PayloadTooLarge { size: MAX_PAYLOAD_BYTES + 1, max: MAX_PAYLOAD_BYTES }
    );
    let mut env = ballot_env(&id, 1);
    env.payload = big;
    assert_eq!(
        Verifier::default().verify(&env, Domain::BALLOT, NOW),
        Err(EnvelopeError::PayloadTooLarge { size: MAX_PAYLOAD_BYTES + 1, max: MAX_PAYLOAD_BYTES })
    );
}

#[test]
fn a_sender_that_is_not_a_curve_point_is_rejected() {
    let mut env = ballot_env(&node(1), 1);
    // y = 2 does not decompress to a point on edwards25519.
    let mut bad = [0u8; 32];
    bad[0] = 2;
    env.sender = NodeId(bad);
    assert_eq!(
        Verifier::default().verify(&env, Domain::BALLOT, NOW),
        Err(EnvelopeError::InvalidSender(env.sender))
    );
}

#[test]
fn batch_verification_isolates_bad_envelopes_and_duplicates() {
    let id = node(1);
    let mut envs: Vec<Envelope> = (1..=20).map(|s| ballot_env(&id, s)).collect();
    envs[4].payload = b"tampered".to_vec();
    envs.push(ballot_env(&id, 7)); // duplicate of a good one inside the batch
    let results = Verifier::default().verify_batch(&envs, Domain::BALLOT, NOW);
    for (i, r) in results.iter().enumerate() {
        match i {
            4 => assert_eq!(r, &Err(EnvelopeError::BadSignature(id.node_id()))),
            20 => assert_eq!(r, &Err(EnvelopeError::Replayed { sender: id.node_id(), seq: 7 })),
            _ => assert_eq!(r, &Ok(()), "envelope {i}"),
        }
    }
    let all_good: Vec<Envelope> = (1..=64).map(|s| ballot_env(&node(3), s)).collect();
    assert!(Verifier::default().verify_batch(&all_good, Domain::BALLOT, NOW).iter().all(Result::is_ok));
}

#[test]
fn every_rejection_has_a_distinct_metric_label() {
    let id = node(1).node_id();
    let errors = [
        EnvelopeError::UnknownVersion { got: 0, supported: 1 },
        EnvelopeError::WrongDomain { expected: Domain::BALLOT, got: Domain::PEER_ENTRY },
        EnvelopeError::PayloadTooLarge { size: 0, max: 0 },
        EnvelopeError::InvalidSender(id),
        EnvelopeError::BadSignature(id),
        EnvelopeError::Replayed { sender: id, seq: 0 },
        EnvelopeError::SequenceTooOld { sender: id, seq: 0, oldest: 0 },
        EnvelopeError::Expired { timestamp_ms: 0, now_ms: 0, max_age_ms: 0 },
        EnvelopeError::FromTheFuture { timestamp_ms: 0, now_ms: 0, max_skew_ms: 0 },
    ];
    let mut labels: Vec<_> = errors.iter().map(EnvelopeError::reason).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), errors.len());
}
