//! CPU backend: streaming integer kernels, parallel over chunks with rayon.
//! No allocation per ballot: each chunk owns one small accumulator.

use hivemesh_protocol::TallyRule;
use rayon::prelude::*;

use crate::input::{TIED_WITH_PREVIOUS, TallyError, TallyInput, TallyResult};
use crate::outcome;

mod plurality;
mod ranks;

/// Votes per parallel task for single-choice rules; small enough that u32
/// counters cannot overflow, large enough to amortise the merge.
const VOTE_CHUNK: usize = 1 << 18;
/// Ballots per parallel task for list rules.
const BALLOT_CHUNK: usize = 1 << 14;

/// Tallies one job.
pub fn tally(input: &TallyInput) -> Result<TallyResult, TallyError> {
    input.check_shape()?;
    let n = input.candidates as usize;
    let ballots = input.voter_count();
    let (counts, invalid) = match input.rule {
        TallyRule::Plurality if input.has_multiplicities() => weighted(&input.items, &input.weights, n),
        TallyRule::Plurality => plurality::count(&input.items, n),
        TallyRule::WeightedPlurality => weighted(&input.items, &input.weights, n),
        TallyRule::Approval | TallyRule::Borda => list_scores(input, n),
        TallyRule::Schulze if n <= 16 && !input.has_multiplicities() => ranks::pairwise_small(input, n),
        TallyRule::Schulze => pairwise(input, n),
    };
    if invalid > 0 {
        return Err(TallyError::InvalidBallot { ballot: input.first_invalid_ballot().unwrap_or(0) });
    }
    Ok(match input.rule {
        TallyRule::Schulze => outcome::from_pairwise(ballots, n, counts),
        rule => outcome::from_scores(rule, ballots, counts),
    })
}

/// Tallies many jobs; each job's result is independent of the others.
pub fn tally_batch(jobs: &[TallyInput]) -> Vec<Result<TallyResult, TallyError>> {
    jobs.par_iter().map(tally).collect()
}

fn add_into(mut total: Vec<u64>, part: Vec<u64>) -> Vec<u64> {
    total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
    total
}

fn weighted(votes: &[u32], weights: &[u32], n: usize) -> (Vec<u64>, u64) {
    let slots = n + 1;
    let mut totals = votes
        .par_chunks(VOTE_CHUNK)
        .zip(weights.par_chunks(VOTE_CHUNK))
        .map(|(vs, ws)| {
            let mut h = vec![0u64; slots];
            let mut bad = 0u64;
            for (&v, &w) in vs.iter().zip(ws) {
                h[(v as usize).min(n)] += u64::from(w);
                bad += u64::from(v as usize >= n);
            }
            h[n] = bad;
            h
        })
        .reduce(|| vec![0; slots], add_into);
    let invalid = totals.pop().unwrap_or(0);
    (totals, invalid)
}

/// Runs `per_ballot` over every ballot's list in parallel chunks, each chunk
/// with its own accumulator of `width` u64s and a `seen` scratch array, and
/// sums the accumulators. `per_ballot` gets the ballot's multiplicity (1
/// without multiplicities) and returns false for an invalid ballot.
fn over_lists<F>(input: &TallyInput, width: usize, per_ballot: F) -> (Vec<u64>, u64)
where
    F: Fn(&[u32], u64, &mut [u64], &mut [bool]) -> bool + Sync,
{
    let n = input.candidates as usize;
    let ballots = input.ballot_count();
    let chunks = ballots.div_ceil(BALLOT_CHUNK);
    let (totals, invalid) = (0..chunks)
        .into_par_iter()
        .map(|chunk| {
            let mut acc = vec![0u64; width];
            let mut seen = vec![false; n];
            let mut invalid = 0u64;
            let end = ((chunk + 1) * BALLOT_CHUNK).min(ballots);
            for b in chunk * BALLOT_CHUNK..end {
                let list = &input.items[input.offsets[b] as usize..input.offsets[b + 1] as usize];
                let times = if input.has_multiplicities() { u64::from(input.weights[b]) } else { 1 };
                if !per_ballot(list, times, &mut acc, &mut seen) {
                    invalid += 1;
                }
                for &c in list {
                    if let Some(s) = seen.get_mut((c & !TIED_WITH_PREVIOUS) as usize) {
                        *s = false;
                    }
                }
            }
            (acc, invalid)
        })
        .reduce(|| (vec![0; width], 0), |(a, ia), (b, ib)| (add_into(a, b), ia + ib));
    (totals, invalid)
}

/// Marks `c` seen; false if it is out of range or was already seen.
fn mark(seen: &mut [bool], c: u32) -> bool {
    match seen.get_mut(c as usize) {
        Some(s) if !*s => {
            *s = true;
            true
        }
        _ => false,
    }
}

/// Walks one ballot's weak order group by group (a group is an item without
/// [`TIED_WITH_PREVIOUS`] and the flagged items after it). Each group's
/// members are marked seen first, then `per_group(members, end, seen)` runs
/// with `end` the list position just past the group, so `seen` holds the
/// group and everything ranked above it. False for an invalid ballot: a
/// flag on the first item, an unknown or a repeated candidate.
fn for_each_group(
    list: &[u32],
    seen: &mut [bool],
    mut per_group: impl FnMut(&[u32], usize, &[bool]),
) -> bool {
    if list.first().is_some_and(|&c| c & TIED_WITH_PREVIOUS != 0) {
        return false;
    }
    let mut start = 0;
    while start < list.len() {
        let end = start + 1 + list[start + 1..].iter().take_while(|&&c| c & TIED_WITH_PREVIOUS != 0).count();
        let group = &list[start..end];
        if !group.iter().all(|&c| mark(seen, c & !TIED_WITH_PREVIOUS)) {
            return false;
        }
        per_group(group, end, seen);
        start = end;
    }
    true
}

/// Approval: one point per listed candidate. Borda: a candidate earns one
/// point per candidate ranked strictly below it (in a later group or
/// unranked), i.e. `n - end` for a group ending at list position `end`; for
/// a strict ranking, position i earns n-1-i. Unranked candidates earn none.
fn list_scores(input: &TallyInput, n: usize) -> (Vec<u64>, u64) {
    let borda = input.rule == TallyRule::Borda;
    over_lists(input, n, |list, times, scores, seen| {
        for_each_group(list, seen, |group, end, _| {
            let points = times * if borda { (n - end) as u64 } else { 1 };
            for &c in group {
                scores[(c & !TIED_WITH_PREVIOUS) as usize] += points;
            }
        })
    })
}

/// Schulze's pairwise matrix: a ranked candidate beats every candidate in a
/// later group and every unranked one, and nobody in its own group. Written
/// as "add 1 to row c for every candidate not seen yet" (the group already
/// marked), a branch-free loop the compiler vectorises.
fn pairwise(input: &TallyInput, n: usize) -> (Vec<u64>, u64) {
    over_lists(input, n * n, |list, times, d, seen| {
        for_each_group(list, seen, |group, _, seen| {
            for &c in group {
                let c = (c & !TIED_WITH_PREVIOUS) as usize;
                let row = &mut d[c * n..(c + 1) * n];
                for (cell, &s) in row.iter_mut().zip(seen.iter()) {
                    *cell += times * u64::from(!s);
                }
            }
        })
    })
}
