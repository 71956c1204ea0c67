//! Ties in every rule: `tied_for_first` lists everyone with the top result,
//! the ranking orders by result then lower index, and the winner is the
//! lowest index among the tied (docs/adr/0004-tallying.md).

mod common;

use common::tally;
use hivemesh_gpu::{Counts, TallyInput, cpu};
use hivemesh_protocol::TallyRule;

#[test]
fn plurality_tie_lists_every_top_scorer() {
    let r = cpu::tally(&TallyInput::plurality(4, vec![3, 1, 3, 1, 0])).expect("tally");
    assert_eq!(r.counts, Counts::Scores(vec![1, 2, 0, 2]));
    assert_eq!((r.winner, r.tied_for_first, r.ranking), (Some(1), vec![1, 3], vec![1, 3, 0, 2]));
}

#[test]
fn weighted_tie_is_by_weight_not_by_ballots() {
    // 2 has one ballot of weight 4; 0 has four of weight 1: tied at 4.
    let r =
        cpu::tally(&TallyInput::weighted(3, vec![2, 0, 0, 0, 0, 1], vec![4, 1, 1, 1, 1, 3])).expect("tally");
    assert_eq!(r.counts, Counts::Scores(vec![4, 3, 4]));
    assert_eq!((r.winner, r.tied_for_first, r.ranking), (Some(0), vec![0, 2], vec![0, 2, 1]));
}

#[test]
fn approval_tie() {
    let lists = [vec![2, 1], vec![0, 2], vec![1]];
    let r = cpu::tally(&TallyInput::lists(TallyRule::Approval, 3, &lists)).expect("tally");
    assert_eq!(r.counts, Counts::Scores(vec![1, 2, 2]));
    assert_eq!((r.winner, r.tied_for_first, r.ranking), (Some(1), vec![1, 2], vec![1, 2, 0]));
}

#[test]
fn borda_tie_of_three() {
    // A cyclic profile: every candidate earns 3 points.
    let r = tally(TallyRule::Borda, 3, "C > A > B\nA > B > C\nB > C > A");
    assert_eq!(r.counts, Counts::Scores(vec![3, 3, 3]));
    assert_eq!((r.winner, r.tied_for_first, r.ranking), (Some(0), vec![0, 1, 2], vec![0, 1, 2]));
}

#[test]
fn a_tie_below_first_place_is_ordered_by_index() {
    let r = tally(TallyRule::Borda, 4, "D > C > B > A\nD > B > C > A");
    assert_eq!(r.counts, Counts::Scores(vec![0, 3, 3, 6]));
    assert_eq!((r.tied_for_first, r.ranking), (vec![3], vec![3, 1, 2, 0]));
}

#[test]
fn schulze_tie_lists_every_unbeaten_candidate() {
    let r = tally(TallyRule::Schulze, 3, "A > B > C\nB > C > A");
    assert_eq!((r.winner, r.tied_for_first, r.ranking), (Some(0), vec![0, 1], vec![0, 1, 2]));
}
