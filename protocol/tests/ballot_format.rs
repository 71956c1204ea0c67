//! Ballot format v2 (`BallotChoice::RankGroups`, weak orders): validation,
//! and compatibility with v1 in both directions.

use hivemesh_protocol::{
    Ballot, BallotChoice, Domain, JobId, MessageError, NodeId, NodeIdentity, TallyRule, decode_message,
    encode_message, open, seal,
};
use serde::{Deserialize, Serialize};

/// The v1 ballot as a node before format v2 declares it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum ChoiceV1 {
    Single(u32),
    Approve(Vec<u32>),
    Rank(Vec<u32>),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct BallotV1 {
    job: JobId,
    voter: NodeId,
    rule: TallyRule,
    choice: ChoiceV1,
    weight: u32,
}

fn ballot(v: &NodeIdentity, rule: TallyRule, choice: BallotChoice) -> Ballot {
    Ballot { job: JobId([5; 16]), voter: v.node_id(), rule, choice, weight: 1 }
}

#[test]
fn v1_ballots_keep_their_bytes_and_signatures() {
    let v = NodeIdentity::from_seed([4; 32]);
    let cases = [
        (ballot(&v, TallyRule::Schulze, BallotChoice::Rank(vec![2, 0, 1])), ChoiceV1::Rank(vec![2, 0, 1])),
        (ballot(&v, TallyRule::Approval, BallotChoice::Approve(vec![3])), ChoiceV1::Approve(vec![3])),
        (ballot(&v, TallyRule::Plurality, BallotChoice::Single(1)), ChoiceV1::Single(1)),
    ];
    for (ours, choice) in cases {
        let old = BallotV1 { job: ours.job, voter: ours.voter, rule: ours.rule, choice, weight: 1 };
        let bytes = encode_message(&old).expect("encode");
        assert_eq!(encode_message(&ours).expect("encode"), bytes, "same bytes as v1");
        let envelope = seal(&v, 1, 1, &ours).expect("seal");
        assert_eq!(envelope.payload, bytes);
        envelope.verify_stateless(Domain::BALLOT).expect("signature verifies");
        assert_eq!(open::<Ballot>(&envelope).expect("open"), ours);
        assert_eq!(decode_message::<BallotV1>(&envelope.payload).expect("a v1 node reads it"), old);
    }
}

#[test]
fn a_v1_node_rejects_a_v2_ballot_as_malformed() {
    let v = NodeIdentity::from_seed([4; 32]);
    let groups = ballot(&v, TallyRule::Schulze, BallotChoice::RankGroups(vec![vec![0], vec![1, 2]]));
    let envelope = seal(&v, 1, 1, &groups).expect("seal");
    assert!(decode_message::<BallotV1>(&envelope.payload).is_err(), "unknown variant: a codec error");
    assert_eq!(open::<Ballot>(&envelope).expect("a v2 node reads it"), groups);
}

#[test]
fn rank_groups_validation_names_the_field() {
    let v = NodeIdentity::from_seed([4; 32]);
    let check =
        |rule, groups: Vec<Vec<u32>>| seal(&v, 1, 1, &ballot(&v, rule, BallotChoice::RankGroups(groups)));
    for rule in [TallyRule::Borda, TallyRule::Schulze] {
        assert!(check(rule, vec![vec![3], vec![0, 1]]).is_ok());
        assert!(check(rule, vec![vec![0, 1, 2]]).is_ok(), "one group: indifference");
        assert!(check(rule, vec![]).is_ok(), "an empty ballot, like Rank(vec![])");
    }
    let invalid = |result: Result<_, MessageError>| match result {
        Err(MessageError::Invalid { field, reason }) => (field, reason),
        other => panic!("expected Invalid, got {other:?}"),
    };
    let (field, reason) = invalid(check(TallyRule::Schulze, vec![vec![0], vec![]]));
    assert_eq!((field, reason.as_str()), ("choice.groups", "group 1 is empty"));
    let (field, reason) = invalid(check(TallyRule::Borda, vec![vec![0, 2], vec![1, 2]]));
    assert_eq!((field, reason.as_str()), ("choice.groups", "candidate 2 appears twice"));
    let (field, reason) = invalid(check(TallyRule::Schulze, vec![vec![4, 4]]));
    assert_eq!((field, reason.as_str()), ("choice.groups", "candidate 4 appears twice"));
    let too_many: Vec<Vec<u32>> = (0..1025u32).map(|c| vec![c]).collect();
    let (field, reason) = invalid(check(TallyRule::Schulze, too_many));
    assert_eq!(field, "choice.groups");
    assert!(reason.contains("1025 candidates"), "{reason}");
    for rule in [TallyRule::Plurality, TallyRule::WeightedPlurality, TallyRule::Approval] {
        assert_eq!(invalid(check(rule, vec![vec![0]])).0, "choice", "{rule:?} takes no weak order");
    }
    // Rank keeps its own field name and now says which candidate repeats.
    let repeated = seal(&v, 1, 1, &ballot(&v, TallyRule::Borda, BallotChoice::Rank(vec![1, 0, 1])));
    assert_eq!(invalid(repeated), ("choice", "candidate 1 appears twice".to_string()));
    let large =
        seal(&v, 1, 1, &ballot(&v, TallyRule::Borda, BallotChoice::Rank(vec![5000, 1, 70_000, 5000])));
    assert_eq!(invalid(large), ("choice", "candidate 5000 appears twice".to_string()));
    let distinct =
        ballot(&v, TallyRule::Schulze, BallotChoice::RankGroups(vec![vec![5000, 1023], vec![0, 64, 63]]));
    assert!(seal(&v, 1, 1, &distinct).is_ok());
}
