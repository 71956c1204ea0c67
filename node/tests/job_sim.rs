//! The job simulation (`hivemesh sim --jobs`): the real job sync machine
//! and planning core across simulated nodes with loss, a partition and a
//! killed participant. Its invariants must hold, and the same seed must give
//! the same report.

use hivemesh_node::sim::jobs::{JobSimConfig, JobSimulation};

fn config(seed: u64) -> JobSimConfig {
    let mut config = JobSimConfig::new(5, 8, seed);
    config.loss = 0.2;
    config.latency_ms = 1..100;
    config.partition = Some(1..3);
    config.kill = 1;
    config
}

#[test]
fn jobs_end_and_replicas_agree_under_loss_a_partition_and_a_death() {
    let report = JobSimulation::new(config(11)).expect("simulation").run();
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.unfinished, 0);
    assert_eq!(report.done + report.failed.values().sum::<usize>(), 8, "{report:?}");
    assert!(report.done >= 6, "most jobs finish despite it all: {report:?}");
    assert!(report.requests_lost > 0, "the network did lose messages: {report:?}");
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let first = JobSimulation::new(config(5)).expect("simulation").run();
    let second = JobSimulation::new(config(5)).expect("simulation").run();
    assert_eq!(first, second);
}

#[test]
fn fewer_than_three_nodes_is_refused() {
    let refused = JobSimulation::new(JobSimConfig::new(2, 1, 1)).err().expect("refused");
    assert!(refused.to_string().contains("at least 3 nodes"), "{refused}");
}

#[test]
fn more_nodes_than_stores_are_worth_opening_is_refused_before_any_is_opened() {
    let refused = JobSimulation::new(JobSimConfig::new(1000, 1, 1)).err().expect("refused");
    assert!(refused.to_string().contains("at most 256 nodes, got 1000"), "{refused}");
}
