//! Identity derivation and typed signed messages.

use hivemesh_protocol::{
    Ballot, BallotChoice, Capabilities, Domain, InvalidJobId, JobId, MessageError, NodeId, NodeIdentity,
    PeerEntry, Role, TallyRule, UnknownTallyRule, Verifier, open, seal,
};

#[test]
fn peer_id_is_derived_from_the_same_key_libp2p_would_use() {
    let seed = [9u8; 32];
    let ours = NodeIdentity::from_seed(seed);
    let mut secret = seed;
    let theirs = libp2p_identity::Keypair::ed25519_from_bytes(&mut secret).expect("key");
    assert_eq!(ours.peer_id(), theirs.public().to_peer_id());
    assert_eq!(ours.node_id().to_peer_id(), Ok(ours.peer_id()));
    assert_eq!(NodeId::from_peer_id(&ours.peer_id()), Ok(ours.node_id()));
    let text = ours.node_id().to_string();
    assert!(text.starts_with("12D3KooW"), "{text}");
    assert_eq!(text.parse::<NodeId>(), Ok(ours.node_id()));
}

#[test]
fn pem_round_trip_and_garbage() {
    let id = NodeIdentity::generate().expect("rng");
    let pem = id.to_pem().expect("pem");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(NodeIdentity::from_pem(&pem).expect("parse").node_id(), id.node_id());
    assert!(NodeIdentity::from_pem("not a key").is_err());
    assert_ne!(NodeIdentity::generate().expect("rng").node_id(), id.node_id());
}

fn entry(node: NodeId) -> PeerEntry {
    PeerEntry {
        node,
        addresses: vec!["/ip4/127.0.0.1/udp/4001/quic-v1".into()],
        role: Role::Worker,
        capabilities: Capabilities { models: vec!["smollm2-135m".into()], gpu: None },
        load: 0,
        last_updated_ms: 1,
    }
}

#[test]
fn signed_peer_entry_opens_for_its_author() {
    let a = NodeIdentity::from_seed([1; 32]);
    let env = seal(&a, 1, 1_000, &entry(a.node_id())).expect("seal");
    Verifier::default().verify(&env, Domain::PEER_ENTRY, 1_000).expect("verify");
    assert_eq!(open::<PeerEntry>(&env), Ok(entry(a.node_id())));
}

#[test]
fn an_entry_for_a_signed_by_b_is_rejected() {
    let a = NodeIdentity::from_seed([1; 32]);
    let b = NodeIdentity::from_seed([2; 32]);
    // An honest encoder refuses to seal it...
    assert!(matches!(seal(&b, 1, 1, &entry(a.node_id())), Err(MessageError::AuthorMismatch { .. })));
    // ...and a hand-built one is refused when opened.
    let payload = hivemesh_protocol::encode_message(&entry(a.node_id())).expect("encode");
    let env = hivemesh_protocol::Envelope::seal(&b, Domain::PEER_ENTRY, 1, 1, payload).expect("seal");
    assert_eq!(
        open::<PeerEntry>(&env),
        Err(MessageError::AuthorMismatch { claimed: a.node_id(), signer: b.node_id() })
    );
}

#[test]
fn oversized_entry_contents_are_invalid() {
    let a = NodeIdentity::from_seed([1; 32]);
    let mut e = entry(a.node_id());
    e.addresses = vec!["x".into(); 17];
    assert!(matches!(seal(&a, 1, 1, &e), Err(MessageError::Invalid { field: "addresses", .. })));
    e.addresses = vec!["x".repeat(300)];
    assert!(matches!(seal(&a, 1, 1, &e), Err(MessageError::Invalid { field: "addresses", .. })));
}

#[test]
fn ballot_shape_is_checked_against_its_rule() {
    let v = NodeIdentity::from_seed([3; 32]);
    let ballot =
        |rule, choice, weight| Ballot { job: JobId([0; 16]), voter: v.node_id(), rule, choice, weight };
    assert!(seal(&v, 1, 1, &ballot(TallyRule::Schulze, BallotChoice::Rank(vec![2, 0, 1]), 1)).is_ok());
    assert!(seal(&v, 1, 1, &ballot(TallyRule::WeightedPlurality, BallotChoice::Single(0), 5)).is_ok());
    let bad = [
        ballot(TallyRule::Schulze, BallotChoice::Single(0), 1),
        ballot(TallyRule::Borda, BallotChoice::Rank(vec![1, 1]), 1),
        ballot(TallyRule::Plurality, BallotChoice::Single(0), 2),
        ballot(TallyRule::WeightedPlurality, BallotChoice::Single(0), 0),
    ];
    for b in bad {
        assert!(matches!(seal(&v, 1, 1, &b), Err(MessageError::Invalid { .. })), "{b:?}");
    }
    let env =
        seal(&v, 1, 1, &ballot(TallyRule::Approval, BallotChoice::Approve(vec![0, 3]), 1)).expect("seal");
    assert!(matches!(open::<PeerEntry>(&env), Err(MessageError::Envelope(_))));
}

#[test]
fn job_ids_and_rules_parse_back_and_name_what_they_refuse() {
    let id = JobId([0xab; 16]);
    assert_eq!(id.to_string().parse::<JobId>(), Ok(id));
    for bad in ["ab", "zz".repeat(16).as_str(), &"a".repeat(33)] {
        let error = bad.parse::<JobId>().expect_err("not a job id");
        assert_eq!(error, InvalidJobId { text: bad.to_string() });
        assert_eq!(error.to_string(), format!("job id {bad:?} is not 32 hex digits"));
    }
    for rule in [
        TallyRule::Plurality,
        TallyRule::WeightedPlurality,
        TallyRule::Approval,
        TallyRule::Borda,
        TallyRule::Schulze,
    ] {
        assert_eq!(rule.name().parse::<TallyRule>(), Ok(rule));
    }
    assert_eq!("condorcet".parse::<TallyRule>(), Ok(TallyRule::Schulze));
    let error = "range".parse::<TallyRule>().expect_err("unknown rule");
    assert_eq!(error, UnknownTallyRule { name: "range".into() });
    assert_eq!(
        error.to_string(),
        "unknown rule \"range\": use plurality, weighted, approval, borda or schulze"
    );
}
