//! Multiplicities (`TallyInput::weights` on rules other than weighted
//! plurality): one entry standing for k identical ballots counts exactly as
//! k copies would, on every rule and backend, without the memory of copies.

mod common;

use common::profile;
use hivemesh_gpu::engine::{BackendChoice, TallyEngine};
use hivemesh_gpu::{TallyError, TallyInput, cpu};
use hivemesh_protocol::TallyRule;

const PROFILE: &str = "
    A > B = C > D * 3
    D > C * 2
    B = D > A
    C > A > B > D * 4
";

/// The distinct orders of [`PROFILE`] with their counts, and the same
/// ballots spelled out one per voter.
fn both(rule: TallyRule) -> (TallyInput, TallyInput) {
    let orders = [
        (vec![vec![0], vec![1, 2], vec![3]], 3),
        (vec![vec![3], vec![2]], 2),
        (vec![vec![1, 3], vec![0]], 1),
        (vec![vec![2], vec![0], vec![1], vec![3]], 4),
    ];
    let distinct: Vec<Vec<Vec<u32>>> = orders.iter().map(|(o, _)| o.clone()).collect();
    let mut weighted = TallyInput::weak_orders(rule, 4, &distinct);
    weighted.weights = orders.iter().map(|(_, k)| *k).collect();
    (weighted, TallyInput::weak_orders(rule, 4, &profile(PROFILE)))
}

#[test]
fn a_multiplicity_counts_as_that_many_ballots_on_every_list_rule() {
    for rule in [TallyRule::Schulze, TallyRule::Borda, TallyRule::Approval] {
        let (weighted, spelled) = both(rule);
        let (a, b) = (cpu::tally(&weighted).expect("weighted"), cpu::tally(&spelled).expect("spelled"));
        assert_eq!(a, b, "{rule:?}");
        assert_eq!(a.ballots, 10, "{rule:?}: ballots are voters, not entries");
    }
}

#[test]
fn plurality_with_multiplicities_is_plurality_of_the_copies() {
    let mut weighted = TallyInput::plurality(3, vec![0, 2, 1]);
    weighted.weights = vec![5, 1, 2];
    let spelled = TallyInput::plurality(3, vec![0, 0, 0, 0, 0, 2, 1, 1]);
    let (a, b) = (cpu::tally(&weighted).expect("weighted"), cpu::tally(&spelled).expect("spelled"));
    assert_eq!(a, b);
    assert_eq!(a.rule, TallyRule::Plurality);
}

#[test]
fn multiplicities_of_the_wrong_length_are_a_shape_error() {
    let (mut weighted, _) = both(TallyRule::Schulze);
    weighted.weights.pop();
    assert!(matches!(cpu::tally(&weighted), Err(TallyError::Shape(_))));
}

#[test]
fn the_gpu_backend_counts_multiplicities_on_the_cpu_with_the_same_result() {
    let engine = match TallyEngine::new(BackendChoice::Gpu) {
        Ok(engine) => engine,
        Err(e) if std::env::var("HIVEMESH_REQUIRE_GPU_TESTS").as_deref() == Ok("1") => {
            panic!("HIVEMESH_REQUIRE_GPU_TESTS=1 but no GPU adapter: {e}")
        }
        Err(e) => {
            eprintln!("skipping: no GPU adapter ({e})");
            return;
        }
    };
    for rule in [TallyRule::Schulze, TallyRule::Borda, TallyRule::Approval] {
        let (weighted, spelled) = both(rule);
        let (result, _) = engine.tally(&weighted);
        assert_eq!(result.expect("gpu engine"), cpu::tally(&spelled).expect("cpu"), "{rule:?}");
    }
}
