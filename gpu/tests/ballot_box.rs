//! Ballot validation: every exclusion reason, equivocation evidence, quorum.

use hivemesh_gpu::ballot_box::{JobSpec, Quorum, validate};
use hivemesh_gpu::cpu;
use hivemesh_protocol::{Ballot, BallotChoice, Envelope, JobId, NodeIdentity, TallyRule, seal};

const JOB: JobId = JobId([7; 16]);

fn voters(n: u8) -> Vec<NodeIdentity> {
    (1..=n).map(|i| NodeIdentity::from_seed([i; 32])).collect()
}

fn spec(ids: &[NodeIdentity], quorum: Quorum) -> JobSpec {
    JobSpec {
        job: JOB,
        rule: TallyRule::Schulze,
        candidates: 3,
        eligible: ids.iter().map(NodeIdentity::node_id).collect(),
        quorum,
    }
}

fn ballot(id: &NodeIdentity, seq: u64, job: JobId, ranking: Vec<u32>) -> Envelope {
    let b = Ballot {
        job,
        voter: id.node_id(),
        rule: TallyRule::Schulze,
        choice: BallotChoice::Rank(ranking),
        weight: 1,
    };
    seal(id, seq, 1_000, &b).expect("seal")
}

#[test]
fn valid_ballots_are_counted_and_reach_quorum() {
    let ids = voters(4);
    let envs: Vec<Envelope> = ids.iter().map(|id| ballot(id, 1, JOB, vec![2, 0, 1])).collect();
    let counted = validate(&spec(&ids, Quorum::TwoThirds), &envs);
    assert!(counted.excluded.is_empty(), "{:?}", counted.excluded);
    assert_eq!((counted.voters.len(), counted.quorum_required), (4, 3));
    assert!(counted.quorum_reached());
    assert_eq!(cpu::tally(&counted.input).expect("tally").winner, Some(2));
}

#[test]
fn every_exclusion_reason() {
    let ids = voters(6);
    let outsider = NodeIdentity::from_seed([99; 32]);
    let mut forged = ballot(&ids[1], 1, JOB, vec![0]);
    forged.payload[0] ^= 0xff;
    let envs = vec![
        ballot(&ids[0], 1, JOB, vec![1, 0]),         // 0 counted
        forged,                                      // 1 bad signature
        ballot(&outsider, 1, JOB, vec![0]),          // 2 not eligible
        ballot(&ids[2], 1, JobId([0; 16]), vec![0]), // 3 other job
        ballot(&ids[3], 1, JOB, vec![5]),            // 4 unknown candidate
        ballot(&ids[4], 1, JOB, vec![2]),            // 5 counted
        ballot(&ids[4], 2, JOB, vec![2]),            // 6 same ballot again: duplicate
    ];
    let counted = validate(&spec(&ids, Quorum::TwoThirds), &envs);
    let reasons: Vec<(usize, String)> =
        counted.excluded.iter().map(|e| (e.index, e.reason.clone())).collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(reasons[0].0 == 1 && reasons[0].1.contains("bad signature"), "{reasons:?}");
    assert!(reasons[1].0 == 2 && reasons[1].1.contains("not eligible"), "{reasons:?}");
    assert!(reasons[2].0 == 3 && reasons[2].1.contains("another job"), "{reasons:?}");
    assert!(reasons[3].0 == 4 && reasons[3].1.contains("unknown candidate 5"), "{reasons:?}");
    assert!(reasons[4].0 == 6 && reasons[4].1.contains("duplicate of ballot 5"), "{reasons:?}");
    assert_eq!(counted.voters, vec![ids[0].node_id(), ids[4].node_id()]);
    // 2 valid of 6 eligible: more than two thirds needs 5.
    assert_eq!(counted.quorum_required, 5);
    assert!(!counted.quorum_reached());
}

#[test]
fn an_equivocating_voter_loses_both_ballots_and_leaves_checkable_evidence() {
    let ids = voters(3);
    let envs = vec![
        ballot(&ids[0], 1, JOB, vec![0, 1]),
        ballot(&ids[1], 1, JOB, vec![1]),
        ballot(&ids[0], 2, JOB, vec![1, 0]),
    ];
    let counted = validate(&spec(&ids, Quorum::Majority), &envs);
    assert_eq!(counted.voters, vec![ids[1].node_id()]);
    assert_eq!(counted.equivocations.len(), 1);
    let evidence = &counted.equivocations[0];
    assert_eq!((evidence.voter.clone(), evidence.ballots), (ids[0].node_id().to_string(), [0, 2]));
    for i in evidence.ballots {
        envs[i].verify_stateless(hivemesh_protocol::Domain::BALLOT).expect("evidence verifies");
    }
    assert_eq!(counted.excluded.iter().filter(|e| e.reason.starts_with("equivocation")).count(), 2);
}

#[test]
fn quorum_rules() {
    assert_eq!(Quorum::TwoThirds.required(3), 3);
    assert_eq!(Quorum::TwoThirds.required(6), 5);
    assert_eq!(Quorum::Majority.required(4), 3);
    assert_eq!("majority".parse::<Quorum>(), Ok(Quorum::Majority));
    assert_eq!("7".parse::<Quorum>(), Ok(Quorum::AtLeast(7)));
    assert!("most".parse::<Quorum>().is_err());
}
