//! Hot paths of the wire protocol: signing, verifying (single, stateful,
//! batched) and framing an envelope with a 256-byte payload.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hivemesh_protocol::limits::MAX_FRAME_BYTES;
use hivemesh_protocol::{
    Domain, Envelope, NodeIdentity, Verifier, decode_frame, encode_frame, verify_batch_stateless,
};

const NOW: u64 = 1_800_000_000_000;
const BATCH: usize = 64;

/// One envelope from each of `count` distinct senders, all with sequence `seq`.
fn envelopes_at(count: usize, seq: u64) -> Vec<Envelope> {
    (0..count)
        .map(|i| {
            let id = NodeIdentity::from_seed([(i % 251) as u8; 32]);
            Envelope::seal(&id, Domain::BALLOT, seq, NOW, vec![7; 256]).expect("seal")
        })
        .collect()
}

fn envelopes(count: usize) -> Vec<Envelope> {
    envelopes_at(count, 1)
}

fn signing(c: &mut Criterion) {
    let id = NodeIdentity::from_seed([1; 32]);
    let env = envelopes(1).remove(0);
    c.bench_function("envelope/sign", |b| {
        b.iter(|| Envelope::seal(&id, Domain::BALLOT, 1, NOW, black_box(vec![7; 256])))
    });
    c.bench_function("envelope/verify_stateless", |b| {
        b.iter(|| black_box(&env).verify_stateless(Domain::BALLOT))
    });
    c.bench_function("envelope/verify_with_replay_window", |b| {
        b.iter_batched(
            Verifier::default,
            |mut v| v.verify(black_box(&env), Domain::BALLOT, NOW),
            BatchSize::SmallInput,
        )
    });
    let batch = envelopes(BATCH);
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("verify_batch_64", |b| {
        b.iter_batched(
            Verifier::default,
            |mut v| v.verify_batch(black_box(&batch), Domain::BALLOT, NOW),
            BatchSize::SmallInput,
        )
    });
    // Steady state: the senders were seen before, so their keys are cached.
    let mut warm = Verifier::default();
    warm.verify_batch(&envelopes_at(BATCH, 1), Domain::BALLOT, NOW);
    let next = envelopes_at(BATCH, 2);
    group.bench_function("verify_batch_64_known_senders", |b| {
        b.iter_batched(
            || warm.clone(),
            |mut v| v.verify_batch(black_box(&next), Domain::BALLOT, NOW),
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // Stateless batch checks (signed ballot files): the cost per envelope
    // falls with the batch size (one multiscalar multiplication per batch).
    // Distinct senders, so every key is decompressed.
    let mut group = c.benchmark_group("verify_batch_stateless");
    group.sample_size(10);
    let distinct: Vec<Envelope> = (0..4096u32)
        .map(|i| {
            let mut seed = [3u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            Envelope::seal(&NodeIdentity::from_seed(seed), Domain::BALLOT, 1, NOW, vec![7; 96]).expect("seal")
        })
        .collect();
    for size in [64usize, 256, 1024, 4096] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(format!("{size}"), |b| {
            b.iter(|| verify_batch_stateless(black_box(&distinct[..size]), Domain::BALLOT))
        });
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function("sender_key_decompression", |b| {
        b.iter(|| black_box(&distinct[0]).sender.verifying_key())
    });
    group.finish();
}

fn framing(c: &mut Criterion) {
    let env = envelopes(1).remove(0);
    let frame = encode_frame(&env, MAX_FRAME_BYTES).expect("encode");
    c.bench_function("frame/encode_envelope", |b| b.iter(|| encode_frame(black_box(&env), MAX_FRAME_BYTES)));
    c.bench_function("frame/decode_envelope", |b| {
        b.iter(|| decode_frame::<Envelope>(black_box(&frame), MAX_FRAME_BYTES))
    });
}

criterion_group!(benches, signing, framing);
criterion_main!(benches);
