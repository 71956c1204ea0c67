//! `hivemesh sim`: the membership code on a virtual clock.

use crate::output::{errln, outln};
use hivemesh::node::sim::jobs::{JobSimConfig, JobSimReport, JobSimulation};
use hivemesh::node::sim::{SimConfig, SimReport, Simulation};

pub fn run(config: SimConfig, json: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let partitioned = config.partition.is_some();
    let report = Simulation::new(config).run();
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, partitioned);
        errln!(
            "(simulated {:.0} s in {:.1} s of real time)",
            report.virtual_secs,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn ms(value: Option<u64>) -> String {
    value.map_or("not reached".into(), |v| format!("{:.2} s", v as f64 / 1000.0))
}

fn print_report(r: &SimReport, partitioned: bool) {
    outln!("nodes: {}  seed: {}", r.nodes, r.seed);
    outln!("initial convergence (all see all):    {}", ms(r.initial_convergence_ms));
    outln!("one join visible to every node:       {}", ms(r.join_visible_ms));
    outln!("killed nodes marked down everywhere:  {}", ms(r.kill_detected_ms));
    if partitioned {
        outln!("partition healed after lifting:       {}", ms(r.partition_heal_ms));
    }
    outln!("false downs:                          {}", r.false_downs);
    outln!("converged at end:                     {}", r.converged_at_end);
    outln!(
        "frames sent: {} (lost {}), membership traffic {:.0} bytes/s per node",
        r.frames_sent,
        r.frames_lost,
        r.bytes_per_node_per_sec
    );
}

/// Runs the job simulation; `Ok(false)` when an invariant was violated.
pub fn run_jobs(config: JobSimConfig, json: bool) -> anyhow::Result<bool> {
    let started = std::time::Instant::now();
    let report = JobSimulation::new(config)?.run();
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_jobs_report(&report);
        errln!(
            "(simulated {:.0} s in {:.1} s of real time)",
            report.virtual_secs,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(report.violations.is_empty())
}

fn print_jobs_report(r: &JobSimReport) {
    outln!("nodes: {}  seed: {}  jobs: {}", r.nodes, r.seed, r.jobs);
    outln!("done: {}  failed: {}  unfinished: {}", r.done, r.failed.values().sum::<usize>(), r.unfinished);
    for (reason, count) in &r.failed {
        outln!("  failed {count}x: {reason}");
    }
    outln!("job time, submit to outcome at the asker: p50 {}  p99 {}", ms(r.job_p50_ms), ms(r.job_p99_ms));
    outln!(
        "requests sent: {} ({} requests or answers lost to --loss and the partition)",
        r.requests_sent,
        r.requests_lost
    );
    outln!("flushes: {} ({:.2} writes released per flush)", r.flushes, r.released_per_flush);
    if r.violations.is_empty() {
        outln!(
            "invariants: all hold (every job ended; acknowledged contributions on every live participant; tallies re-check)"
        );
    } else {
        outln!("invariants: {} violated", r.violations.len());
        for violation in &r.violations {
            outln!("  {violation}");
        }
    }
}
