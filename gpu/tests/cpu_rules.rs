//! Known answers for every rule on the CPU backend.

use hivemesh_gpu::{Counts, TallyError, TallyInput, cpu};
use hivemesh_protocol::TallyRule;

#[test]
fn plurality_counts_and_breaks_ties_by_lower_index() {
    let r = cpu::tally(&TallyInput::plurality(3, vec![0, 1, 1, 2])).expect("tally");
    assert_eq!(r.counts, Counts::Scores(vec![1, 2, 1]));
    assert_eq!((r.winner, r.ranking.clone(), r.ballots), (Some(1), vec![1, 0, 2], 4));
    let tie = cpu::tally(&TallyInput::plurality(3, vec![2, 1, 2, 1])).expect("tally");
    assert_eq!((tie.winner, tie.tied_for_first), (Some(1), vec![1, 2]));
}

#[test]
fn plurality_over_many_chunks_matches_a_plain_count() {
    let votes: Vec<u32> = (0..3_000_003u32).map(|i| (i * 7 + i / 5) % 11).collect();
    let mut expected = vec![0u64; 11];
    votes.iter().for_each(|&v| expected[v as usize] += 1);
    let r = cpu::tally(&TallyInput::plurality(11, votes)).expect("tally");
    assert_eq!(r.counts, Counts::Scores(expected));
}

#[test]
fn weighted_plurality_sums_weights() {
    let r = cpu::tally(&TallyInput::weighted(2, vec![0, 1, 1], vec![5, 2, 2])).expect("tally");
    assert_eq!((r.counts, r.winner), (Counts::Scores(vec![5, 4]), Some(0)));
}

#[test]
fn approval_and_borda() {
    let lists = vec![vec![0, 2], vec![2], vec![1, 2]];
    let r = cpu::tally(&TallyInput::lists(TallyRule::Approval, 3, &lists)).expect("tally");
    assert_eq!((r.counts, r.winner), (Counts::Scores(vec![1, 1, 3]), Some(2)));
    let ranks = vec![vec![0, 1, 2], vec![1, 0, 2], vec![2]];
    let r = cpu::tally(&TallyInput::lists(TallyRule::Borda, 3, &ranks)).expect("tally");
    assert_eq!(r.counts, Counts::Scores(vec![3, 3, 2]));
    assert_eq!((r.winner, r.tied_for_first), (Some(0), vec![0, 1]));
}

/// The worked example from Schulze's method's Wikipedia article: 45 voters,
/// candidates A..E; the winner is E and the order E > A > C > B > D.
#[test]
fn schulze_worked_example() {
    let (a, b, c, d, e) = (0, 1, 2, 3, 4);
    let groups: [(usize, [u32; 5]); 8] = [
        (5, [a, c, b, e, d]),
        (5, [a, d, e, c, b]),
        (8, [b, e, d, a, c]),
        (3, [c, a, b, e, d]),
        (7, [c, a, e, b, d]),
        (2, [c, b, a, d, e]),
        (7, [d, c, e, b, a]),
        (8, [e, b, a, d, c]),
    ];
    let ballots: Vec<Vec<u32>> =
        groups.iter().flat_map(|(count, order)| std::iter::repeat_n(order.to_vec(), *count)).collect();
    let r = cpu::tally(&TallyInput::lists(TallyRule::Schulze, 5, &ballots)).expect("tally");
    assert_eq!(r.winner, Some(e));
    assert_eq!(r.ranking, vec![e, a, c, b, d]);
    let Counts::Pairwise { pairwise, strongest } = r.counts else { panic!("pairwise expected") };
    assert_eq!(pairwise[a as usize * 5 + b as usize], 20);
    assert_eq!(pairwise[b as usize * 5 + a as usize], 25);
    assert_eq!(strongest[e as usize * 5 + a as usize], 25);
    assert_eq!(strongest[a as usize * 5 + e as usize], 24);
}

#[test]
fn schulze_partial_rankings_beat_unranked_candidates() {
    let r = cpu::tally(&TallyInput::lists(TallyRule::Schulze, 3, &[vec![2], vec![2, 0]])).expect("tally");
    let Counts::Pairwise { pairwise, .. } = &r.counts else { panic!("pairwise expected") };
    assert_eq!(pairwise[2 * 3], 2); // 2 over 0
    assert_eq!(pairwise[1], 1); // 0 over 1: only where 0 was ranked
    assert_eq!(pairwise[3], 0); // 1 over 0: never
    assert_eq!(r.winner, Some(2));
}

#[test]
fn a_condorcet_cycle_is_resolved_deterministically() {
    let cycle = vec![vec![0, 1, 2], vec![1, 2, 0], vec![2, 0, 1]];
    let r = cpu::tally(&TallyInput::lists(TallyRule::Schulze, 3, &cycle)).expect("tally");
    assert_eq!((r.winner, r.tied_for_first), (Some(0), vec![0, 1, 2]));
}

#[test]
fn bad_input_is_an_error_naming_the_ballot() {
    assert_eq!(
        cpu::tally(&TallyInput::plurality(3, vec![0, 1, 3])),
        Err(TallyError::InvalidBallot { ballot: 2 })
    );
    let dup = TallyInput::lists(TallyRule::Borda, 3, &[vec![0], vec![1, 1]]);
    assert_eq!(cpu::tally(&dup), Err(TallyError::InvalidBallot { ballot: 1 }));
    assert!(matches!(cpu::tally(&TallyInput::plurality(0, vec![])), Err(TallyError::CandidateCount(0))));
    let mut broken = TallyInput::lists(TallyRule::Approval, 2, &[vec![0]]);
    broken.offsets = vec![0, 5];
    assert!(matches!(cpu::tally(&broken), Err(TallyError::Shape(_))));
    let weights_missing = TallyInput::weighted(2, vec![0, 1], vec![1]);
    assert!(matches!(cpu::tally(&weights_missing), Err(TallyError::Shape(_))));
}

#[test]
fn no_ballots_means_no_winner() {
    let r = cpu::tally(&TallyInput::lists(TallyRule::Schulze, 4, &[])).expect("tally");
    assert_eq!((r.winner, r.ballots), (None, 0));
}
