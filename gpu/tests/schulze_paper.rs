//! Schulze winners and the Schulze order on published elections.
//!
//! The profiles and results are the examples of section 3 of M. Schulze, "A
//! new monotonic, clone-independent, reversal symmetric, and
//! Condorcet-consistent single-winner election method", Social Choice and
//! Welfare 36 (2011) 267-303, as transcribed in the test suite of an
//! independent implementation, Condorcet PHP
//! (github.com/julien-boudry/Condorcet, Tests/src/Algo/Methods/Schulze/SchulzeTest.php,
//! `testSchulzeOfficialExampleResult_*` under "Schulze Winning", i.e. link
//! strength = winning votes, which is hivemesh's). Both read a ballot's
//! unlisted candidates as tied last, like hivemesh.

mod common;

use common::{letters, profile, tally};
use hivemesh_gpu::outcome::{schulze_tiers, strongest_paths};
use hivemesh_gpu::{Counts, TallyInput, cpu};
use hivemesh_protocol::TallyRule::Schulze;

/// The Schulze order's tiers for `text`, as letters ("BD", "AC").
fn tiers(candidates: u32, text: &str) -> Vec<String> {
    let r = tally(Schulze, candidates, text);
    let Counts::Pairwise { strongest, .. } = &r.counts else { panic!("pairwise expected") };
    schulze_tiers(candidates as usize, strongest).iter().map(|t| letters(t)).collect()
}

/// Winner, `tied_for_first` and ranking, as letters.
fn outcome(candidates: u32, text: &str) -> (String, String, String) {
    let r = tally(Schulze, candidates, text);
    (letters(&[r.winner.expect("winner")]), letters(&r.tied_for_first), letters(&r.ranking))
}

/// Issue 14's smallest case: neither A nor B beats the other on strongest
/// paths, so both win; A has the lower index.
#[test]
fn two_ballots_a_over_b_over_c_and_b_over_c_over_a_tie_a_and_b() {
    let text = "A > B > C\nB > C > A";
    assert_eq!(outcome(3, text), ("A".into(), "AB".into(), "ABC".into()));
    assert_eq!(tiers(3, text), ["AB", "C"]);
}

/// Section 3.2 (the 9-voter example): B and D tie for first; A and C tie below them.
#[test]
fn paper_nine_voters_b_and_d_tie() {
    let text = "A > B > C > D * 3\nD > A > B > C * 2\nD > B > C > A * 2\nC > B > D > A * 2";
    assert_eq!(outcome(4, text), ("B".into(), "BD".into(), "BDAC".into()));
    assert_eq!(tiers(4, text), ["BD", "AC"]);
    // The same profile as Condorcet PHP writes it (3-candidate ballots, the
    // fourth tied last) gives the same tiers.
    assert_eq!(tiers(4, "A > B > C * 3\nC > B > D * 2\nD > A > B * 2\nD > B > C * 2"), ["BD", "AC"]);
}

/// Section 3 example with tied winners A and D.
#[test]
fn paper_example_a_and_d_tie() {
    let text = "A > C > D * 6\nB > A > D * 1\nC > B > D * 3\nD > B > A * 3\nD > C > B * 2";
    let (winner, tied, _) = outcome(4, text);
    assert_eq!((winner.as_str(), tied.as_str()), ("A", "AD"));
}

#[test]
fn paper_examples_with_a_unique_winner() {
    let cases: [(u32, &str, &str); 7] = [
        (4, "A > C > D * 8\nB > A > D * 2\nC > D > B * 4\nD > B > A * 4\nD > C > B * 3", "D"),
        (4, "A > B > C * 12\nA > D > B * 6\nB > C > D * 9\nC > D > A * 15\nD > B > A * 21", "D"),
        (
            5,
            "A > D > B > E * 9\nB > C > A > D * 6\nB > C > D > E * 5\nC > D > B > E * 2\n\
             D > E > C > B * 6\nE > A > C > B * 14\nE > C > A > B * 2\nE > D > A > C * 1",
            "B",
        ),
        (
            5,
            "A > D > B > E * 9\nB > A > C > E * 1\nC > B > A > D * 6\nC > D > B > E * 2\n\
             C > D > E > A * 5\nD > E > C > A * 6\nE > B > A > C * 14\nE > B > C > A * 2",
            "E",
        ),
        (
            4,
            "A > B > D * 3\nA > D > B * 5\nA > D > C * 1\nB > A > D * 2\nB > D > C * 2\n\
             C > A > B * 4\nC > B > A * 6\nD > B > C * 2\nD > C > A * 5",
            "A",
        ),
        (
            5,
            "A > B > D > E * 3\nA > D > E > B * 5\nA > D > E > C * 1\nB > A > D > E * 2\n\
             B > D > E > C * 2\nC > A > B > D * 4\nC > B > A > D * 6\nD > B > E > C * 2\n\
             D > E > C > A * 5",
            "B",
        ),
        (
            5,
            "A > C > B > E * 5\nA > D > E > C * 5\nB > E > D > A * 8\nC > A > B > E * 3\n\
             C > A > E > B * 7\nC > B > A > D * 2\nD > C > E > B * 7\nE > B > A > D * 8",
            "E",
        ),
    ];
    for (candidates, text, winner) in cases {
        let (got, tied, _) = outcome(candidates, text);
        assert_eq!((got.as_str(), tied.as_str()), (winner, winner), "{text}");
    }
}

/// Section 3 example on monotonicity: adding two A > E > F > C > B ballots
/// changes the winner from A to D.
#[test]
fn paper_six_candidates_before_and_after_two_more_ballots() {
    let base = "A > D > E > B > C * 3\nB > F > E > C > D * 3\nC > A > B > F > D * 4\n\
                D > B > C > E > F * 1\nD > E > F > A > B * 4\nE > C > B > D > F * 2\n\
                F > A > C > D > B * 2";
    assert_eq!(outcome(6, base).1, "A");
    assert_eq!(outcome(6, &format!("{base}\nA > E > F > C > B * 2")).1, "D");
}

/// Section 3 example with equal ranks on the ballots (weak orders): under
/// winning votes the winner is D (margins would give A, ratios B).
#[test]
fn paper_example_with_tied_ranks_on_ballots() {
    let text = "A > B > C > D * 6\nA = B * 8\nA = C * 8\nA = C > D * 18\nA = C = D * 8\nB * 40\n\
                C > B > D * 4\nC > D > A * 9\nC = D * 8\nD > A > B * 14\nD > B > C * 11\nD > C > A * 4";
    assert_eq!(outcome(4, text).1, "D");
}

/// The Wikipedia worked example (Condorcet PHP `testResult_1`): a full,
/// strict Schulze order E > A > C > B > D.
#[test]
fn full_order_has_one_candidate_per_tier() {
    let text = "A > C > B > E > D * 5\nA > D > E > C > B * 5\nB > E > D > A > C * 8\nC > A > B > E > D * 3\n\
                C > A > E > B > D * 7\nC > B > A > D > E * 2\nD > C > E > B > A * 7\nE > B > A > D > C * 8";
    assert_eq!(tiers(5, text), ["E", "A", "C", "B", "D"]);
}

/// Ties inside a tier go to the lower index, wherever the tier is.
#[test]
fn a_lower_tier_is_ordered_by_index() {
    // A beats everyone; B, C, D form a perfect cycle below it.
    let text = "A > B > C > D\nA > C > D > B\nA > D > B > C";
    assert_eq!(tiers(4, text), ["A", "BCD"]);
    assert_eq!(outcome(4, text), ("A".into(), "A".into(), "ABCD".into()));
}

#[test]
fn strongest_paths_are_the_widest_paths() {
    // d: A>B 3, B>C 2, C>A 1 (a cycle); the strongest A->C goes through B.
    let n = 3;
    let mut d = vec![0u64; 9];
    d[1] = 3;
    d[n + 2] = 2;
    d[2 * n] = 1;
    let p = strongest_paths(n, &d);
    assert_eq!((p[1], p[2], p[n + 2], p[n], p[2 * n], p[2 * n + 1]), (3, 2, 2, 1, 1, 1));
    assert_eq!(schulze_tiers(n, &p), vec![vec![0], vec![1], vec![2]]);
}

#[test]
fn no_ballots_no_winner_but_a_full_ranking() {
    let r = cpu::tally(&TallyInput::weak_orders(Schulze, 3, &profile(""))).expect("tally");
    assert_eq!((r.winner, r.tied_for_first.len(), r.ranking), (None, 0, vec![0, 1, 2]));
}

mod properties {
    use hivemesh_gpu::{Counts, TallyInput, cpu};
    use hivemesh_protocol::TallyRule::Schulze;
    use proptest::prelude::*;

    /// A random weak order over `n` candidates: a permutation's prefix cut
    /// into groups.
    fn weak_order(n: u32) -> impl Strategy<Value = Vec<Vec<u32>>> {
        (
            Just((0..n).collect::<Vec<u32>>()).prop_shuffle(),
            0..=n as usize,
            proptest::collection::vec(any::<bool>(), n as usize),
        )
            .prop_map(|(order, len, ties)| {
                let mut groups: Vec<Vec<u32>> = Vec::new();
                for (i, c) in order.into_iter().take(len).enumerate() {
                    match groups.last_mut() {
                        Some(group) if ties[i] => group.push(c),
                        _ => groups.push(vec![c]),
                    }
                }
                groups
            })
    }

    fn profile() -> impl Strategy<Value = (u32, Vec<Vec<Vec<u32>>>)> {
        (1u32..=7).prop_flat_map(|n| (Just(n), proptest::collection::vec(weak_order(n), 1..12)))
    }

    proptest! {
        /// The Schulze order's defining properties on random profiles: the
        /// winners are exactly the unbeaten candidates, and nobody later in
        /// the ranking beats anybody earlier.
        #[test]
        fn winners_are_the_unbeaten_and_the_ranking_respects_beats((n, ballots) in profile()) {
            let r = cpu::tally(&TallyInput::weak_orders(Schulze, n, &ballots)).expect("tally");
            let Counts::Pairwise { strongest: p, .. } = &r.counts else { panic!("pairwise expected") };
            let n = n as usize;
            let beats = |a: u32, b: u32| p[a as usize * n + b as usize] > p[b as usize * n + a as usize];
            let unbeaten: Vec<u32> = (0..n as u32).filter(|&a| (0..n as u32).all(|b| !beats(b, a))).collect();
            prop_assert!(!unbeaten.is_empty());
            prop_assert_eq!(&r.tied_for_first, &unbeaten);
            prop_assert_eq!(r.winner, unbeaten.first().copied());
            let mut sorted = r.ranking.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>());
            for (i, &earlier) in r.ranking.iter().enumerate() {
                for &later in &r.ranking[i + 1..] {
                    prop_assert!(!beats(later, earlier), "{} beats {} but ranks below", later, earlier);
                    if !beats(earlier, later) && r.tied_for_first.contains(&later) {
                        // Inside the first tier: by index.
                        prop_assert!(earlier < later);
                    }
                }
            }
        }
    }
}
