//! From raw counts to a ranking: shared by every backend so the decision
//! rules exist once and backends only differ in how they count.
//!
//! Ties, for every rule: `tied_for_first` lists every candidate sharing first
//! place; inside a tie the lower candidate index ranks first (and is the
//! `winner`). See docs/adr/0004-tallying.md.

use hivemesh_protocol::TallyRule;

use crate::input::{Counts, TallyResult};

/// Ranks candidates by score, highest first; equal scores go to the lower
/// index. `tied_for_first` is every candidate with the top score.
pub fn from_scores(rule: TallyRule, ballots: u64, scores: Vec<u64>) -> TallyResult {
    let mut ranking: Vec<u32> = (0..scores.len() as u32).collect();
    ranking.sort_by(|&a, &b| scores[b as usize].cmp(&scores[a as usize]).then(a.cmp(&b)));
    let top = ranking.first().map(|&c| scores[c as usize]);
    let tied_for_first = ranking.iter().copied().filter(|&c| Some(scores[c as usize]) == top).collect();
    finish(rule, ballots, ranking, tied_for_first, Counts::Scores(scores))
}

/// Strongest path strengths `p[a*n+b]` from the pairwise matrix `d[a*n+b]`
/// (ballots preferring a to b): links are the pairwise defeats
/// (d[a][b] > d[b][a], strength d[a][b]), widest paths by Floyd-Warshall
/// (Schulze 2011, section 2.3).
pub fn strongest_paths(n: usize, pairwise: &[u64]) -> Vec<u64> {
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
    p
}

/// The Schulze order as tiers, best first: `a` beats `b` iff
/// `p[a][b] > p[b][a]` (strongest paths); tier 0 is the candidates nobody
/// beats (the Schulze winners, Schulze 2011 section 4: never empty, the
/// relation is transitive), tier k+1 those nobody left beats once tiers
/// 0..=k are removed. Each tier lists its candidates by index.
pub fn schulze_tiers(n: usize, strongest: &[u64]) -> Vec<Vec<u32>> {
    let beats = |a: usize, b: usize| strongest[a * n + b] > strongest[b * n + a];
    // Kahn's topological layering: beaten_by[b] counts the remaining
    // candidates that beat b.
    let mut beaten_by: Vec<usize> = (0..n).map(|b| (0..n).filter(|&a| beats(a, b)).count()).collect();
    let mut placed = vec![false; n];
    let mut left = n;
    let mut tiers = Vec::new();
    while left > 0 {
        let mut tier: Vec<u32> =
            (0..n).filter(|&c| !placed[c] && beaten_by[c] == 0).map(|c| c as u32).collect();
        if tier.is_empty() {
            // Unreachable for a transitive relation; kept so that a
            // corrupted matrix still yields a total, deterministic order.
            tier = (0..n).filter(|&c| !placed[c]).map(|c| c as u32).collect();
        }
        for &a in &tier {
            placed[a as usize] = true;
            for (b, count) in beaten_by.iter_mut().enumerate() {
                if beats(a as usize, b) {
                    *count = count.saturating_sub(1);
                }
            }
        }
        left -= tier.len();
        tiers.push(tier);
    }
    tiers
}

/// Schulze: strongest paths over the pairwise matrix, then the Schulze order
/// by tiers ([`schulze_tiers`]); inside a tier the lower index first.
/// `tied_for_first` is the first tier: every Schulze winner.
pub fn from_pairwise(ballots: u64, n: usize, pairwise: Vec<u64>) -> TallyResult {
    let strongest = strongest_paths(n, &pairwise);
    let tiers = schulze_tiers(n, &strongest);
    let tied_for_first = tiers.first().cloned().unwrap_or_default();
    let ranking = tiers.into_iter().flatten().collect();
    finish(TallyRule::Schulze, ballots, ranking, tied_for_first, Counts::Pairwise { pairwise, strongest })
}

fn finish(rule: TallyRule, ballots: u64, ranking: Vec<u32>, tied: Vec<u32>, counts: Counts) -> TallyResult {
    let winner = if ballots == 0 { None } else { ranking.first().copied() };
    let tied_for_first = if ballots == 0 { vec![] } else { tied };
    TallyResult { rule, ballots, ranking, winner, tied_for_first, counts }
}
