//! Tally hot paths: plurality and Schulze on the CPU, the same on the GPU
//! backend (a software adapter on machines without a GPU: labelled), and
//! signed-ballot ingest (verify + dedupe + count).
//!
//! `cargo bench -p hivemesh-gpu --bench tally -- ingest` runs the ingest
//! group alone; `RAYON_NUM_THREADS=1` gives the per-core figure.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hivemesh_gpu::ballot_box::{JobSpec, Quorum, validate};
use hivemesh_gpu::wgpu_backend::GpuBackend;
use hivemesh_gpu::{TallyInput, cpu};
use hivemesh_protocol::{Ballot, BallotChoice, Envelope, JobId, NodeIdentity, TallyRule, seal};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn votes(count: usize, candidates: u32) -> TallyInput {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    TallyInput::plurality(candidates, (0..count).map(|_| rng.random_range(0..candidates)).collect())
}

fn rankings(count: usize, candidates: u32) -> TallyInput {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut order: Vec<u32> = (0..candidates).collect();
    let lists: Vec<Vec<u32>> = (0..count)
        .map(|_| {
            order.shuffle(&mut rng);
            order.clone()
        })
        .collect();
    TallyInput::lists(TallyRule::Schulze, candidates, &lists)
}

/// A distinct, reproducible identity per voter index.
fn voter(index: u32) -> NodeIdentity {
    let mut seed = [7u8; 32];
    seed[..4].copy_from_slice(&index.to_le_bytes());
    NodeIdentity::from_seed(seed)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu");
    group.sample_size(10);
    for count in [1_000_000usize, 100_000_000] {
        let input = votes(count, 8);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(format!("plurality_{count}"), |b| b.iter(|| cpu::tally(black_box(&input))));
    }
    for candidates in [8u32, 64] {
        let input = rankings(1_000_000, candidates);
        group.throughput(Throughput::Elements(1_000_000));
        group
            .bench_function(format!("schulze_{candidates}x1M"), |b| b.iter(|| cpu::tally(black_box(&input))));
    }
    group.finish();

    if let Ok(gpu) = GpuBackend::new(true) {
        let label = if gpu.is_software() { "gpu_software" } else { "gpu" };
        let mut group = c.benchmark_group(label);
        group.sample_size(10);
        let input = votes(10_000_000, 8);
        group.throughput(Throughput::Elements(10_000_000));
        group.bench_function("plurality_10M_with_upload", |b| b.iter(|| gpu.tally(black_box(&input))));
        for candidates in [8u32, 64] {
            let input = rankings(100_000, candidates);
            group.throughput(Throughput::Elements(100_000));
            group.bench_function(format!("schulze_{candidates}x100k_with_upload"), |b| {
                b.iter(|| gpu.tally(black_box(&input)))
            });
        }
        group.finish();
    } else {
        eprintln!("no wgpu adapter: GPU benchmarks skipped");
    }

    // Ingest: signed ballots verified in parallel batches, decoded,
    // deduplicated, counted. 1,000 plurality ballots, and 65,536 Schulze
    // rankings of 14 candidates (the size of issue 14's real election).
    let mut group = c.benchmark_group("ingest");
    group.sample_size(10);
    for (rule, count, candidates) in [(TallyRule::Plurality, 1000u32, 4u32), (TallyRule::Schulze, 65_536, 14)]
    {
        let (spec, envelopes) = signed_ballots(rule, count, candidates);
        group.throughput(Throughput::Elements(u64::from(count)));
        let name = match rule {
            TallyRule::Plurality => format!("signed_ballots_{count}"),
            rule => format!("signed_{}_{count}", rule.name()),
        };
        group.bench_function(name, |b| {
            b.iter(|| cpu::tally(&validate(black_box(&spec), black_box(&envelopes)).input))
        });
    }
    group.finish();
}

/// `count` voters' signed ballots for one job: plurality votes, or random
/// full rankings for list rules.
fn signed_ballots(rule: TallyRule, count: u32, candidates: u32) -> (JobSpec, Vec<Envelope>) {
    let voters: Vec<NodeIdentity> = (0..count).map(voter).collect();
    let job = JobId([9; 16]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut order: Vec<u32> = (0..candidates).collect();
    let envelopes = voters
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let choice = if rule == TallyRule::Plurality {
                BallotChoice::Single(i as u32 % candidates)
            } else {
                order.shuffle(&mut rng);
                BallotChoice::Rank(order.clone())
            };
            let ballot = Ballot { job, voter: v.node_id(), rule, choice, weight: 1 };
            seal(v, 1, 1_000, &ballot).expect("seal")
        })
        .collect();
    let spec = JobSpec {
        job,
        rule,
        candidates,
        eligible: voters.iter().map(NodeIdentity::node_id).collect(),
        quorum: Quorum::TwoThirds,
    };
    (spec, envelopes)
}

criterion_group!(benches, bench);
criterion_main!(benches);
