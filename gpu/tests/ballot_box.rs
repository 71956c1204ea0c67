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

/// Signatures are batch-checked in parallel chunks (one per rayon thread,
/// `MIN_VERIFY_CHUNK` to `MAX_VERIFY_CHUNK` envelopes): bad signatures in
/// several chunks, duplicates and equivocations whose two ballots sit in
/// different chunks give the same exclusions, in input order, as the
/// one-by-one rules, whatever the number of threads (and so of chunks).
#[test]
fn chunked_verification_keeps_every_result_and_its_order() {
    let voters = 600;
    let forged = [1, 200, 450];
    let ids: Vec<NodeIdentity> = (0..voters as u32)
        .map(|i| {
            let mut seed = [1u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            NodeIdentity::from_seed(seed)
        })
        .collect();
    let mut envs: Vec<Envelope> = ids.iter().map(|id| ballot(id, 1, JOB, vec![0, 1, 2])).collect();
    for &i in &forged {
        envs[i].payload[0] ^= 1;
    }
    // Voters 0..50 vote again at the end: even ones the same ballot (a
    // duplicate), odd ones a different one (equivocation).
    for (j, id) in ids.iter().enumerate().take(50) {
        let ranking = if j % 2 == 0 { vec![0, 1, 2] } else { vec![2, 1, 0] };
        envs.push(ballot(id, 2, JOB, ranking));
    }
    let mut expected: Vec<(usize, &str)> = forged.iter().map(|&i| (i, "bad signature")).collect();
    for j in 0..50 {
        if j % 2 == 0 {
            expected.push((voters + j, "duplicate of ballot"));
        } else if j != 1 {
            expected.push((j, "equivocation"));
            expected.push((voters + j, "equivocation"));
        } else {
            // Voter 1's first ballot is forged: its second one counts.
            expected.push((voters + j, "counted"));
        }
    }
    expected.retain(|(_, why)| *why != "counted");
    expected.sort();
    let counted_voters: Vec<usize> =
        (0..voters).filter(|i| !forged.contains(i) && (*i >= 50 || i % 2 == 0)).chain([1]).collect();
    let spec = spec(&ids, Quorum::Majority);
    for threads in [1, 3, 8] {
        // 650 envelopes: one chunk of 650, 3 of 217, 8 of 82.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
        let counted = pool.install(|| validate(&spec, &envs));
        let got: Vec<(usize, String)> =
            counted.excluded.iter().map(|e| (e.index, e.reason.clone())).collect();
        assert_eq!(got.len(), expected.len(), "{threads} threads: {got:?}");
        for ((index, reason), (want_index, want)) in got.iter().zip(&expected) {
            assert_eq!(index, want_index, "{threads} threads");
            assert!(reason.contains(want), "{threads} threads, {index}: {reason}");
        }
        assert_eq!(counted.equivocations.len(), 24, "{threads} threads");
        assert_eq!(counted.equivocations[0].ballots, [3, voters + 3], "{threads} threads");
        let mut voters_in_order: Vec<usize> = counted_voters.clone();
        voters_in_order.sort_by_key(|&i| if i == 1 { voters + 1 } else { i });
        assert_eq!(counted.voters, voters_in_order.iter().map(|&i| ids[i].node_id()).collect::<Vec<_>>());
        assert_eq!(counted.input.ballot_count(), counted_voters.len());
    }
}
