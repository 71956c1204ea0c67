//! Schulze's pairwise matrix for up to 16 candidates, one rank vector per
//! ballot.
//!
//! A ballot becomes `pos[c]`: the index of the group that ranks candidate c
//! (0 for the first group), or `u8::MAX` when c is unranked. Candidate a
//! beats b on that ballot exactly when `pos[a] < pos[b]`, the rule of
//! [`super::pairwise`] (a later group and unranked candidates lose, a group
//! ties inside). The whole `N x N` comparison has no branch and no index
//! that depends on the ballot, so the compiler vectorises it (an 8 x 8 block
//! is a few AVX2 compares); counts go to u8 cells, widened to u64 every 255
//! ballots. Validation (unknown candidate, a repeat, a tie flag on the first
//! item) is folded into the same pass over the items.

use rayon::prelude::*;

use crate::input::{TIED_WITH_PREVIOUS, TallyInput};

/// Ballots per u8 cell before it could overflow.
const WIDEN_EVERY: usize = 255;
/// Below this many ballots per task, splitting costs more than it saves.
const MIN_PART: usize = 1 << 12;
/// At most this many ballots per task, so that a stalled core's share can be
/// taken over (see `plurality::MAX_PART`).
const MAX_PART: usize = 1 << 15;

/// The pairwise matrix `d[a * n + b]` (ballots ranking a above b) and the
/// number of invalid ballots, for `n <= 16` candidates and no multiplicities.
pub(super) fn pairwise_small(input: &TallyInput, n: usize) -> (Vec<u64>, u64) {
    debug_assert!(n <= 16 && !input.has_multiplicities());
    let ballots = input.ballot_count();
    let part_len = ballots.div_ceil(rayon::current_num_threads()).clamp(MIN_PART, MAX_PART);
    let (wide, invalid) = (0..ballots.div_ceil(part_len))
        .into_par_iter()
        .map(|part| {
            let range = part * part_len..((part + 1) * part_len).min(ballots);
            if n <= 8 { count_dispatch::<8>(input, range) } else { count_dispatch::<16>(input, range) }
        })
        .reduce(
            || (vec![0; 256], 0),
            |(mut a, ia), (b, ib)| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                (a, ia + ib)
            },
        );
    // `wide` is laid out 16 x 16 whatever N was; keep the n x n corner.
    let d = (0..n * n).map(|i| wide[(i / n) * 16 + i % n]).collect();
    (d, invalid)
}

/// [`count`] compiled for AVX2 when the CPU has it.
fn count_dispatch<const N: usize>(input: &TallyInput, range: std::ops::Range<usize>) -> (Vec<u64>, u64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn compiled_for_avx2<const N: usize>(
            input: &TallyInput,
            range: std::ops::Range<usize>,
        ) -> (Vec<u64>, u64) {
            count::<N>(input, range)
        }
        // SAFETY: the CPU was just seen to support AVX2.
        return unsafe { compiled_for_avx2::<N>(input, range) };
    }
    count::<N>(input, range)
}

/// Counts ballots `range` into a 16 x 16 u64 matrix (the `N x N` corner
/// used), with the number of invalid ballots.
#[inline(always)]
fn count<const N: usize>(input: &TallyInput, range: std::ops::Range<usize>) -> (Vec<u64>, u64) {
    let n = input.candidates;
    let mut wide = vec![0u64; 256];
    let mut invalid = 0u64;
    let mut cells = [[0u8; N]; N];
    let mut pending = 0;
    for b in range {
        let list = &input.items[input.offsets[b] as usize..input.offsets[b + 1] as usize];
        let Some(pos) = rank_vector::<N>(list, n) else {
            invalid += 1;
            continue;
        };
        for (row, &pa) in cells.iter_mut().zip(&pos) {
            for (cell, &pb) in row.iter_mut().zip(&pos) {
                *cell += u8::from(pa < pb);
            }
        }
        pending += 1;
        if pending == WIDEN_EVERY {
            widen(&mut cells, &mut wide);
            pending = 0;
        }
    }
    widen(&mut cells, &mut wide);
    (wide, invalid)
}

/// Adds the u8 cells into the 16 x 16 u64 matrix and clears them.
fn widen<const N: usize>(cells: &mut [[u8; N]; N], wide: &mut [u64]) {
    for (a, row) in cells.iter_mut().enumerate() {
        for (b, cell) in row.iter_mut().enumerate() {
            wide[a * 16 + b] += u64::from(std::mem::take(cell));
        }
    }
}

/// Group index per candidate (`u8::MAX` unranked); None for an invalid
/// ballot. Candidates at or above `n` (when `n < N`) stay unranked. Built in
/// a register: byte stores followed by a vector load of the same bytes would
/// stall on store forwarding.
#[inline(always)]
fn rank_vector<const N: usize>(list: &[u32], n: u32) -> Option<[u8; N]> {
    if list.len() > N {
        // More items than candidates: some candidate repeats or is unknown.
        return None;
    }
    let mut pos = u128::MAX;
    let mut seen = 0u32;
    let mut bad = list.first().is_some_and(|&c| c & TIED_WITH_PREVIOUS != 0);
    // The first item (never flagged in a valid ballot) takes group 0.
    let mut group = u8::MAX;
    for &item in list {
        let c = item & !TIED_WITH_PREVIOUS;
        group = group.wrapping_add(u8::from(item & TIED_WITH_PREVIOUS == 0));
        let slot = c as usize & (N - 1);
        let bit = 1u32 << slot;
        bad |= c >= n || seen & bit != 0;
        seen |= bit;
        let shift = 8 * slot;
        pos = (pos & !(0xFF << shift)) | (u128::from(group) << shift);
    }
    let bytes = pos.to_le_bytes();
    (!bad).then(|| std::array::from_fn(|i| bytes[i]))
}
