//! From raw counts to a ranking: shared by every backend so the decision
//! rules exist once and backends only differ in how they count.

use hivemesh_protocol::TallyRule;

use crate::input::{Counts, TallyResult};

/// Ranks candidates by score, highest first; ties go to the lower index.
pub fn from_scores(rule: TallyRule, ballots: u64, scores: Vec<u64>) -> TallyResult {
    let mut ranking: Vec<u32> = (0..scores.len() as u32).collect();
    ranking.sort_by(|&a, &b| scores[b as usize].cmp(&scores[a as usize]).then(a.cmp(&b)));
    let top = ranking.first().map(|&c| scores[c as usize]);
    let tied_for_first = ranking.iter().copied().filter(|&c| Some(scores[c as usize]) == top).collect();
    finish(rule, ballots, ranking, tied_for_first, Counts::Scores(scores))
}

/// Schulze: strongest paths over the pairwise matrix (widest-path
/// Floyd-Warshall), then candidates ordered by how many others they beat.
/// The Schulze relation is transitive, so that order is consistent with it;
/// ties go to the lower index.
pub fn from_pairwise(ballots: u64, n: usize, pairwise: Vec<u64>) -> TallyResult {
    let d = |a: usize, b: usize| pairwise[a * n + b];
    let mut p = vec![0u64; n * n];
    for a in 0..n {
        for b in 0..n {
            if a != b && d(a, b) > d(b, a) {
                p[a * n + b] = d(a, b);
            }
        }
    }
    for k in 0..n {
        for a in 0..n {
            if a == k {
                continue;
            }
            let a_k = p[a * n + k];
            if a_k == 0 {
                continue;
            }
            for b in 0..n {
                if b != a && b != k {
                    let via = a_k.min(p[k * n + b]);
                    if via > p[a * n + b] {
                        p[a * n + b] = via;
                    }
                }
            }
        }
    }
    let wins: Vec<usize> = (0..n).map(|a| (0..n).filter(|&b| p[a * n + b] > p[b * n + a]).count()).collect();
    let mut ranking: Vec<u32> = (0..n as u32).collect();
    ranking.sort_by(|&a, &b| wins[b as usize].cmp(&wins[a as usize]).then(a.cmp(&b)));
    let top = ranking.first().map(|&c| wins[c as usize]);
    let tied_for_first = ranking.iter().copied().filter(|&c| Some(wins[c as usize]) == top).collect();
    finish(TallyRule::Schulze, ballots, ranking, tied_for_first, Counts::Pairwise { pairwise, strongest: p })
}

fn finish(rule: TallyRule, ballots: u64, ranking: Vec<u32>, tied: Vec<u32>, counts: Counts) -> TallyResult {
    let winner = if ballots == 0 { None } else { ranking.first().copied() };
    let tied_for_first = if ballots == 0 { vec![] } else { tied };
    TallyResult { rule, ballots, ranking, winner, tied_for_first, counts }
}
