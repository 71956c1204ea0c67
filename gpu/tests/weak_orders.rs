//! Weak orders (ranked groups, ties above the bottom): the flat encoding,
//! Borda and Schulze counts, signed `RankGroups` ballots, invalid input.

mod common;

use common::tally;
use hivemesh_gpu::ballot_box::{JobSpec, Quorum, validate};
use hivemesh_gpu::{Counts, TIED_WITH_PREVIOUS, TallyError, TallyInput, cpu};
use hivemesh_protocol::{Ballot, BallotChoice, JobId, NodeIdentity, TallyRule, seal};

const CARTER: u32 = 0;
const CHANDRAN: u32 = 1;
const GUPTA: u32 = 2;
const NOTA: u32 = 3;

/// Debian project leader election 2020, a real ballot shape: "1 Carter,
/// 2 Chandran and Gupta (tied), None of the Above unranked".
fn debian_2020_ballot() -> Vec<Vec<u32>> {
    vec![vec![CARTER], vec![CHANDRAN, GUPTA]]
}

#[test]
fn weak_orders_flatten_with_the_tie_flag() {
    let input = TallyInput::weak_orders(TallyRule::Schulze, 4, &[debian_2020_ballot(), vec![vec![NOTA]]]);
    assert_eq!(input.items, vec![CARTER, CHANDRAN, GUPTA | TIED_WITH_PREVIOUS, NOTA]);
    assert_eq!(input.offsets, vec![0, 3, 4]);
    // Strict rankings encode exactly as `lists` does.
    let strict = [vec![2, 0, 1], vec![1]];
    let groups: Vec<Vec<Vec<u32>>> = strict.iter().map(|b| b.iter().map(|&c| vec![c]).collect()).collect();
    assert_eq!(
        TallyInput::weak_orders(TallyRule::Borda, 3, &groups),
        TallyInput::lists(TallyRule::Borda, 3, &strict)
    );
}

#[test]
fn debian_2020_ballot_pairwise() {
    let r =
        cpu::tally(&TallyInput::weak_orders(TallyRule::Schulze, 4, &[debian_2020_ballot()])).expect("tally");
    let Counts::Pairwise { pairwise: d, .. } = &r.counts else { panic!("pairwise expected") };
    let at = |a: u32, b: u32| d[(a * 4 + b) as usize];
    for other in [CHANDRAN, GUPTA, NOTA] {
        assert_eq!((at(CARTER, other), at(other, CARTER)), (1, 0), "Carter over {other}");
    }
    assert_eq!((at(CHANDRAN, GUPTA), at(GUPTA, CHANDRAN)), (0, 0), "no preference either way");
    for tied in [CHANDRAN, GUPTA] {
        assert_eq!((at(tied, NOTA), at(NOTA, tied)), (1, 0), "{tied} over NOTA");
    }
    assert_eq!((r.winner, r.tied_for_first.clone()), (Some(CARTER), vec![CARTER]));
    assert_eq!(r.ranking, vec![CARTER, CHANDRAN, GUPTA, NOTA]);
}

#[test]
fn debian_2020_ballot_borda_counts_candidates_strictly_below() {
    let r =
        cpu::tally(&TallyInput::weak_orders(TallyRule::Borda, 4, &[debian_2020_ballot()])).expect("tally");
    assert_eq!(r.counts, Counts::Scores(vec![3, 1, 1, 0]));
    // Approval reads every listed candidate as approved, ties or not.
    let r =
        cpu::tally(&TallyInput::weak_orders(TallyRule::Approval, 4, &[debian_2020_ballot()])).expect("tally");
    assert_eq!(r.counts, Counts::Scores(vec![1, 1, 1, 0]));
}

/// Breaking the voters' ties by option number (what a strict-only ballot
/// forces) changes the outcome: here Gupta wins with the ties kept,
/// Chandran with them broken (Borda: 8 to 11 becomes 12 to 11).
#[test]
fn breaking_ties_by_index_changes_the_winner() {
    let kept = "B = C > A * 4\nC";
    let broken = "B > C > A * 4\nC";
    for rule in [TallyRule::Schulze, TallyRule::Borda] {
        assert_eq!(tally(rule, 4, kept).winner, Some(GUPTA), "{rule:?}");
        assert_eq!(tally(rule, 4, broken).winner, Some(CHANDRAN), "{rule:?}");
    }
}

#[test]
fn a_single_group_is_indifference() {
    let r = tally(TallyRule::Schulze, 3, "A = B = C * 5\nB");
    let Counts::Pairwise { pairwise, .. } = &r.counts else { panic!("pairwise expected") };
    assert_eq!(pairwise, &vec![0, 0, 0, 1, 0, 1, 0, 0, 0]);
    assert_eq!((r.winner, r.tied_for_first), (Some(1), vec![1]));
    let borda = tally(TallyRule::Borda, 3, "A = B = C * 5\nB");
    assert_eq!(borda.counts, Counts::Scores(vec![0, 2, 0]));
}

#[test]
fn invalid_weak_orders_name_the_ballot() {
    for rule in [TallyRule::Approval, TallyRule::Borda, TallyRule::Schulze] {
        let mut flag_first = TallyInput::weak_orders(rule, 3, &[vec![vec![0]], vec![vec![1, 2]]]);
        flag_first.items[1] |= TIED_WITH_PREVIOUS;
        assert_eq!(cpu::tally(&flag_first), Err(TallyError::InvalidBallot { ballot: 1 }), "{rule:?}");
        let repeated =
            TallyInput::weak_orders(rule, 3, &[vec![vec![0, 1], vec![2]], vec![vec![0], vec![1, 0]]]);
        assert_eq!(cpu::tally(&repeated), Err(TallyError::InvalidBallot { ballot: 1 }), "{rule:?}");
        let unknown = TallyInput::weak_orders(rule, 3, &[vec![vec![0, 3]]]);
        assert_eq!(cpu::tally(&unknown), Err(TallyError::InvalidBallot { ballot: 0 }), "{rule:?}");
    }
}

#[test]
fn plurality_from_weak_orders_needs_a_single_top_candidate() {
    let ok = TallyInput::weak_orders(TallyRule::Plurality, 3, &[vec![vec![2], vec![0, 1]], vec![vec![2]]]);
    assert_eq!(cpu::tally(&ok).expect("tally").counts, Counts::Scores(vec![0, 0, 2]));
    let weighted = TallyInput::weak_orders(TallyRule::WeightedPlurality, 3, &[vec![vec![1]]]);
    assert_eq!(weighted.weights, vec![1]);
    for bad in [vec![vec![0, 1]], vec![]] {
        let input = TallyInput::weak_orders(TallyRule::Plurality, 3, &[vec![vec![0]], bad]);
        assert_eq!(cpu::tally(&input), Err(TallyError::InvalidBallot { ballot: 1 }));
    }
}

fn signed(
    id: &NodeIdentity,
    job: JobId,
    rule: TallyRule,
    choice: BallotChoice,
) -> hivemesh_protocol::Envelope {
    let ballot = Ballot { job, voter: id.node_id(), rule, choice, weight: 1 };
    seal(id, 1, 1_000, &ballot).expect("seal")
}

#[test]
fn signed_rank_groups_ballots_count_like_weak_orders() {
    let job = JobId([3; 16]);
    let ids: Vec<NodeIdentity> = (1..=4u8).map(|i| NodeIdentity::from_seed([i; 32])).collect();
    let envelopes = vec![
        signed(&ids[0], job, TallyRule::Schulze, BallotChoice::RankGroups(debian_2020_ballot())),
        signed(&ids[1], job, TallyRule::Schulze, BallotChoice::Rank(vec![GUPTA, CARTER])),
        signed(&ids[2], job, TallyRule::Schulze, BallotChoice::RankGroups(vec![vec![NOTA, GUPTA]])),
        signed(&ids[3], job, TallyRule::Schulze, BallotChoice::RankGroups(vec![vec![CARTER], vec![7]])),
    ];
    let spec = JobSpec {
        job,
        rule: TallyRule::Schulze,
        candidates: 4,
        eligible: ids.iter().map(NodeIdentity::node_id).collect(),
        quorum: Quorum::Majority,
    };
    let counted = validate(&spec, &envelopes);
    assert_eq!(counted.excluded.len(), 1, "{:?}", counted.excluded);
    assert_eq!(counted.excluded[0].index, 3);
    assert!(counted.excluded[0].reason.contains("unknown candidate 7"), "{:?}", counted.excluded);
    let expected = TallyInput::weak_orders(
        TallyRule::Schulze,
        4,
        &[debian_2020_ballot(), vec![vec![GUPTA], vec![CARTER]], vec![vec![NOTA, GUPTA]]],
    );
    assert_eq!(counted.input, expected);
    let r = cpu::tally(&counted.input).expect("tally");
    let Counts::Pairwise { pairwise: d, .. } = &r.counts else { panic!("pairwise expected") };
    // Gupta over Chandran: ballots 1 (ranked, Chandran not) and 2 (tied top group).
    assert_eq!((d[(GUPTA * 4 + CHANDRAN) as usize], d[(CHANDRAN * 4 + GUPTA) as usize]), (2, 0));
}
