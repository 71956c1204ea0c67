//! The CPU kernels against plain, obviously-correct counts over random
//! inputs: ties, partial rankings, unknown and repeated candidates, a tie
//! flag on the first item, empty input, and sizes around every kernel's
//! block and task boundaries.

use hivemesh_gpu::{Counts, TIED_WITH_PREVIOUS, TallyError, TallyInput, cpu, outcome};
use hivemesh_protocol::TallyRule;
use proptest::prelude::*;

/// Plurality counted one vote at a time; the first bad vote's index.
fn plurality_reference(n: u32, votes: &[u32]) -> Result<Vec<u64>, usize> {
    let mut counts = vec![0u64; n as usize];
    for (i, &v) in votes.iter().enumerate() {
        *counts.get_mut(v as usize).ok_or(i)? += 1;
    }
    Ok(counts)
}

/// Schulze's pairwise matrix from each ballot's rank per candidate: a beats
/// b when ranked in an earlier group, or ranked while b is not.
fn pairwise_reference(n: u32, lists: &[Vec<u32>]) -> Result<Vec<u64>, usize> {
    let n = n as usize;
    let mut d = vec![0u64; n * n];
    for (i, list) in lists.iter().enumerate() {
        if list.first().is_some_and(|&c| c & TIED_WITH_PREVIOUS != 0) {
            return Err(i);
        }
        let mut rank: Vec<Option<usize>> = vec![None; n];
        let mut group = 0;
        for (k, &item) in list.iter().enumerate() {
            if k > 0 && item & TIED_WITH_PREVIOUS == 0 {
                group += 1;
            }
            let c = (item & !TIED_WITH_PREVIOUS) as usize;
            match rank.get_mut(c) {
                Some(slot @ None) => *slot = Some(group),
                _ => return Err(i),
            }
        }
        for a in 0..n {
            for b in 0..n {
                let wins = match (rank[a], rank[b]) {
                    (Some(ra), Some(rb)) => ra < rb,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                d[a * n + b] += u64::from(wins);
            }
        }
    }
    Ok(d)
}

/// A vote: mostly valid, sometimes just out of range or far out.
fn vote(n: u32) -> impl Strategy<Value = u32> {
    prop_oneof![
        20 => 0..n,
        1 => n..n + 3,
        1 => Just(u32::MAX),
    ]
}

/// A valid ranking list: a shuffled subset of the candidates, with random
/// tie flags.
fn ranking(n: u32) -> impl Strategy<Value = Vec<u32>> {
    (Just((0..n).collect::<Vec<u32>>()).prop_shuffle(), 0..=n as usize, any::<u64>()).prop_map(
        |(order, len, ties)| {
            order[..len]
                .iter()
                .enumerate()
                .map(|(i, &c)| if i > 0 && ties >> i & 1 == 1 { c | TIED_WITH_PREVIOUS } else { c })
                .collect()
        },
    )
}

/// Spoils one ballot (when there is one): a repeat, an unknown candidate,
/// a flagged first item, a huge item.
fn spoil(lists: &mut [Vec<u32>], n: u32, at: usize, kind: u8) {
    let Some(list) = lists.get_mut(at % lists.len().max(1)) else { return };
    match kind % 4 {
        0 if !list.is_empty() => list.push(list[0] & !TIED_WITH_PREVIOUS),
        0 | 1 => list.push(n + u32::from(kind % 3)),
        2 if !list.is_empty() => list[0] |= TIED_WITH_PREVIOUS,
        _ => list.insert(0, u32::MAX),
    }
}

fn check_plurality(n: u32, votes: Vec<u32>) -> Result<(), TestCaseError> {
    let want = plurality_reference(n, &votes);
    let got = cpu::tally(&TallyInput::plurality(n, votes.clone()));
    match want {
        Ok(counts) => {
            prop_assert_eq!(got, Ok(outcome::from_scores(TallyRule::Plurality, votes.len() as u64, counts)));
        }
        Err(first) => prop_assert_eq!(got, Err(TallyError::InvalidBallot { ballot: first })),
    }
    Ok(())
}

fn check_schulze(n: u32, lists: Vec<Vec<u32>>) -> Result<(), TestCaseError> {
    let want = pairwise_reference(n, &lists);
    let got = cpu::tally(&TallyInput::lists(TallyRule::Schulze, n, &lists));
    match want {
        Ok(d) => {
            let expected = outcome::from_pairwise(lists.len() as u64, n as usize, d);
            prop_assert_eq!(got, Ok(expected));
        }
        Err(first) => prop_assert_eq!(got, Err(TallyError::InvalidBallot { ballot: first })),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn plurality_matches_a_vote_by_vote_count(
        (n, votes) in (1u32..=40).prop_flat_map(|n| (Just(n), prop::collection::vec(vote(n), 0..5000)))
    ) {
        check_plurality(n, votes)?;
    }

    #[test]
    fn plurality_of_valid_votes_matches(
        (n, votes) in (1u32..=20).prop_flat_map(|n| (Just(n), prop::collection::vec(0..n, 0..5000)))
    ) {
        check_plurality(n, votes)?;
    }

    #[test]
    fn schulze_matches_a_ballot_by_ballot_matrix(
        (n, mut lists) in (1u32..=20).prop_flat_map(|n| (Just(n), prop::collection::vec(ranking(n), 0..700))),
        spoiled in prop::option::of((any::<usize>(), any::<u8>())),
    ) {
        if let Some((at, kind)) = spoiled {
            spoil(&mut lists, n, at, kind);
        }
        check_schulze(n, lists)?;
    }
}

/// Large inputs cross the kernels' task split and their counter widening
/// (every 255 ballots / 2,040 votes); every ballot valid, then one bad.
#[test]
fn large_inputs_match_the_references() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for n in [2u32, 5, 8, 9, 16] {
        let votes: Vec<u32> = (0..400_001).map(|_| (next() % u64::from(n)) as u32).collect();
        check_plurality(n, votes.clone()).unwrap();
        let mut spoiled = votes;
        spoiled[300_000] = n;
        check_plurality(n, spoiled).unwrap();

        let lists: Vec<Vec<u32>> = (0..20_011)
            .map(|_| {
                let mut order: Vec<u32> = (0..n).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, (next() % (i as u64 + 1)) as usize);
                }
                let len = (next() % (u64::from(n) + 1)) as usize;
                order.truncate(len.max(1));
                if next() % 4 == 0 && order.len() > 1 {
                    order[1] |= TIED_WITH_PREVIOUS;
                }
                order
            })
            .collect();
        check_schulze(n, lists.clone()).unwrap();
        let mut spoiled = lists;
        let first = spoiled[15_000][0] & !TIED_WITH_PREVIOUS;
        spoiled[15_000].push(first);
        check_schulze(n, spoiled).unwrap();
    }
}

#[test]
fn empty_inputs_have_no_winner() {
    for n in [1u32, 8, 16, 17] {
        let r = cpu::tally(&TallyInput::plurality(n, vec![])).unwrap();
        assert_eq!((r.winner, r.ballots), (None, 0));
        assert_eq!(r.counts, Counts::Scores(vec![0; n as usize]));
        let r = cpu::tally(&TallyInput::lists(TallyRule::Schulze, n, &[])).unwrap();
        assert_eq!((r.winner, r.ballots), (None, 0));
    }
}
