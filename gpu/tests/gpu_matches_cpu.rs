//! The real WGSL shaders, forced onto whatever adapter exists (lavapipe in
//! CI), must give exactly the CPU backend's result for every rule.
//!
//! With no adapter at all the tests say they were skipped; CI sets
//! HIVEMESH_REQUIRE_GPU_TESTS=1 to make that a failure.

use std::sync::OnceLock;

use hivemesh_gpu::wgpu_backend::GpuBackend;
use hivemesh_gpu::{TIED_WITH_PREVIOUS, TallyError, TallyInput, cpu};
use hivemesh_protocol::TallyRule;
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn gpu() -> Option<&'static GpuBackend> {
    static GPU: OnceLock<Option<GpuBackend>> = OnceLock::new();
    GPU.get_or_init(|| match GpuBackend::new(true) {
        Ok(gpu) => {
            eprintln!("GPU tests run on {} (software: {})", gpu.adapter_name(), gpu.is_software());
            Some(gpu)
        }
        Err(e) => {
            assert!(
                std::env::var_os("HIVEMESH_REQUIRE_GPU_TESTS").is_none(),
                "HIVEMESH_REQUIRE_GPU_TESTS is set but no GPU adapter exists: {e}"
            );
            eprintln!("SKIPPED: GPU tests need a wgpu adapter (apt-get install mesa-vulkan-drivers): {e}");
            None
        }
    })
    .as_ref()
}

fn random_input(rule: TallyRule, candidates: u32, ballots: usize, seed: u64) -> TallyInput {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let all: Vec<u32> = (0..candidates).collect();
    match rule {
        TallyRule::Plurality => {
            TallyInput::plurality(candidates, (0..ballots).map(|_| rng.random_range(0..candidates)).collect())
        }
        TallyRule::WeightedPlurality => TallyInput::weighted(
            candidates,
            (0..ballots).map(|_| rng.random_range(0..candidates)).collect(),
            (0..ballots).map(|_| rng.random_range(1..=u32::MAX / 2)).collect(),
        ),
        _ => {
            // Weak orders: a random prefix of a shuffle, cut into groups; a
            // third of the seeds give strict rankings only.
            let tie_chance = if seed.is_multiple_of(3) { 0.0 } else { rng.random_range(0.0..0.8) };
            let orders: Vec<Vec<Vec<u32>>> = (0..ballots)
                .map(|_| {
                    let mut list = all.clone();
                    list.shuffle(&mut rng);
                    list.truncate(rng.random_range(0..=candidates as usize));
                    let mut groups: Vec<Vec<u32>> = Vec::new();
                    for c in list {
                        match groups.last_mut() {
                            Some(group) if rng.random_bool(tie_chance) => group.push(c),
                            _ => groups.push(vec![c]),
                        }
                    }
                    groups
                })
                .collect();
            TallyInput::weak_orders(rule, candidates, &orders)
        }
    }
}

const RULES: [TallyRule; 5] = [
    TallyRule::Plurality,
    TallyRule::WeightedPlurality,
    TallyRule::Approval,
    TallyRule::Borda,
    TallyRule::Schulze,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn gpu_equals_cpu_on_random_inputs(rule in 0usize..5, candidates in 1u32..=64, ballots in 0usize..3000, seed in any::<u64>()) {
        let Some(gpu) = gpu() else { return Ok(()) };
        let input = random_input(RULES[rule], candidates, ballots, seed);
        prop_assert_eq!(gpu.tally(&input), cpu::tally(&input));
    }
}

#[test]
fn weighted_sums_past_u32_are_exact() {
    let Some(gpu) = gpu() else { return };
    // 3 x (2^32 - 1) overflows a u32 counter twice: the carry path must work.
    let input = TallyInput::weighted(2, vec![1, 1, 1, 0], vec![u32::MAX, u32::MAX, u32::MAX, 1]);
    let result = gpu.tally(&input).expect("tally");
    assert_eq!(result, cpu::tally(&input).expect("tally"));
    assert_eq!(result.counts, hivemesh_gpu::Counts::Scores(vec![1, 3 * u64::from(u32::MAX)]));
}

#[test]
fn every_rule_on_a_larger_input() {
    let Some(gpu) = gpu() else { return };
    for (i, rule) in RULES.into_iter().enumerate() {
        // Seeds 4..=8: approval (6) gets strict lists, Borda (7) and
        // Schulze (8) weak orders.
        let input = random_input(rule, 8, 200_000, 4 + i as u64);
        assert_eq!(gpu.tally(&input), cpu::tally(&input), "{rule:?}");
    }
}

#[test]
fn weak_orders_at_the_kernels_candidate_limits() {
    let Some(gpu) = gpu() else { return };
    for (rule, candidates) in
        [(TallyRule::Schulze, 64), (TallyRule::Borda, 1024), (TallyRule::Approval, 1024)]
    {
        for seed in [1, 2] {
            let input = random_input(rule, candidates, 300, seed);
            assert!(input.items.iter().any(|&c| c & TIED_WITH_PREVIOUS != 0), "ties present");
            assert_eq!(gpu.tally(&input), cpu::tally(&input), "{rule:?}");
        }
    }
}

#[test]
fn invalid_ballots_are_reported_like_the_cpu_does() {
    let Some(gpu) = gpu() else { return };
    let bad_vote = TallyInput::plurality(3, vec![0, 2, 9, 1]);
    assert_eq!(gpu.tally(&bad_vote), Err(TallyError::InvalidBallot { ballot: 2 }));
    for rule in [TallyRule::Approval, TallyRule::Borda, TallyRule::Schulze] {
        let dup = TallyInput::lists(rule, 4, &[vec![0, 1], vec![3, 3]]);
        assert_eq!(gpu.tally(&dup), Err(TallyError::InvalidBallot { ballot: 1 }), "{rule:?}");
        let dup_in_group = TallyInput::weak_orders(rule, 4, &[vec![vec![0, 1]], vec![vec![2], vec![3, 2]]]);
        assert_eq!(gpu.tally(&dup_in_group), Err(TallyError::InvalidBallot { ballot: 1 }), "{rule:?}");
        let mut flag_first = TallyInput::weak_orders(rule, 4, &[vec![vec![0]], vec![vec![1]]]);
        flag_first.items[1] |= TIED_WITH_PREVIOUS;
        assert_eq!(gpu.tally(&flag_first), Err(TallyError::InvalidBallot { ballot: 1 }), "{rule:?}");
        let unknown_after_mask = TallyInput::lists(rule, 4, &[vec![1, 4 | TIED_WITH_PREVIOUS]]);
        assert_eq!(gpu.tally(&unknown_after_mask), Err(TallyError::InvalidBallot { ballot: 0 }), "{rule:?}");
    }
}

#[test]
fn many_candidates_schulze_falls_back_to_the_cpu_with_the_same_result() {
    let Some(gpu) = gpu() else { return };
    let input = random_input(TallyRule::Schulze, 100, 500, 3);
    assert_eq!(gpu.tally(&input), cpu::tally(&input));
}

#[test]
fn buffers_are_reused_across_calls_of_different_sizes() {
    let Some(gpu) = gpu() else { return };
    for (ballots, seed) in [(10, 1), (50_000, 2), (7, 3), (50_000, 4)] {
        let input = random_input(TallyRule::Borda, 5, ballots, seed);
        assert_eq!(gpu.tally(&input), cpu::tally(&input));
    }
}
