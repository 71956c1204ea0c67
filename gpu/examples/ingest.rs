//! Signed-ballot ingest throughput, in wall time and in CPU time (so the
//! per-core figure holds on a shared machine too): `count` voters' signed
//! Schulze rankings of 14 candidates, validated (batch signature checks,
//! decoding, dedupe) and counted, `rounds` times.
//!
//! `cargo run --release -p hivemesh-gpu --example ingest -- [count] [rounds]`
//! (defaults 65536 and 5); `RAYON_NUM_THREADS` sets the threads. Linux only
//! for the CPU time (/proc/self/stat); elsewhere it prints wall time alone.

use std::time::Instant;

use hivemesh_gpu::ballot_box::{JobSpec, Quorum, validate};
use hivemesh_gpu::cpu;
use hivemesh_protocol::{Ballot, BallotChoice, JobId, NodeIdentity, TallyRule, seal};
use rand::SeedableRng;
use rand::seq::SliceRandom;

const CANDIDATES: u32 = 14;

/// User + system CPU seconds of this process so far, from /proc/self/stat.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let count = args.next().and_then(Result::ok).unwrap_or(65_536);
    let rounds = args.next().and_then(Result::ok).unwrap_or(5);
    let job = JobId([9; 16]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut order: Vec<u32> = (0..CANDIDATES).collect();
    let voters: Vec<NodeIdentity> = (0..count as u32)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            NodeIdentity::from_seed(seed)
        })
        .collect();
    let envelopes: Vec<_> = voters
        .iter()
        .map(|v| {
            order.shuffle(&mut rng);
            let ballot = Ballot {
                job,
                voter: v.node_id(),
                rule: TallyRule::Schulze,
                choice: BallotChoice::Rank(order.clone()),
                weight: 1,
            };
            seal(v, 1, 1_000, &ballot).expect("seal")
        })
        .collect();
    let spec = JobSpec {
        job,
        rule: TallyRule::Schulze,
        candidates: CANDIDATES,
        eligible: voters.iter().map(NodeIdentity::node_id).collect(),
        quorum: Quorum::TwoThirds,
    };
    let threads = rayon::current_num_threads();
    let (cpu_before, start) = (cpu_seconds(), Instant::now());
    for _ in 0..rounds {
        let counted = validate(&spec, &envelopes);
        assert_eq!(counted.voters.len(), count);
        std::hint::black_box(cpu::tally(&counted.input).expect("tally"));
    }
    let wall = start.elapsed().as_secs_f64();
    let ballots = (count * rounds) as f64;
    print!("{count} ballots x {rounds} rounds, {threads} threads: {:.0} ballots/s wall", ballots / wall);
    match (cpu_before, cpu_seconds()) {
        (Some(before), Some(after)) if after > before => {
            println!(", {:.0} ballots per CPU-second", ballots / (after - before))
        }
        _ => println!(),
    }
}
