//! Membership properties on the deterministic simulation (the real state
//! machines, a virtual clock, a lossy simulated network).

use hivemesh_node::sim::{SimConfig, Simulation};

#[test]
fn hundred_nodes_at_ten_percent_loss_converge_and_stay_converged_without_false_downs() {
    let mut config = SimConfig::new(100, 7);
    config.loss = 0.10;
    config.kill = 1;
    config.soak_secs = 300;
    let report = Simulation::new(config).run();
    assert!(report.initial_convergence_ms.is_some(), "never converged: {report:?}");
    assert!(report.join_visible_ms.is_some(), "a late join was never seen by all: {report:?}");
    assert!(report.kill_detected_ms.is_some(), "the killed node was not marked down everywhere: {report:?}");
    assert_eq!(report.false_downs, 0, "live nodes were declared down: {report:?}");
    assert!(report.converged_at_end, "views drifted apart during the soak: {report:?}");
    assert!(report.frames_lost > 0, "the network was supposed to be lossy");
}

#[test]
fn a_half_and_half_partition_heals_after_it_is_lifted() {
    let mut config = SimConfig::new(40, 3);
    config.partition = Some(5..35);
    config.soak_secs = 30;
    let report = Simulation::new(config).run();
    assert!(report.partition_heal_ms.is_some(), "the halves never rejoined: {report:?}");
    assert!(report.converged_at_end, "{report:?}");
    assert_eq!(report.false_downs, 0, "{report:?}");
}

#[test]
fn same_seed_same_report_different_seed_different_run() {
    let run = |seed| {
        let mut config = SimConfig::new(30, seed);
        config.loss = 0.05;
        config.soak_secs = 10;
        Simulation::new(config).run()
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11).frames_sent, run(12).frames_sent);
}
