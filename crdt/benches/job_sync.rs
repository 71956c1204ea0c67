//! Job-document sync after a partition (1,000 changes on one side), and
//! compaction. Prints the bytes exchanged and the document sizes, which the
//! README reports next to the times.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hivemesh_crdt::job_doc::{JobDoc, SyncSession};
use hivemesh_protocol::{JobId, NodeIdentity};

const JOB: JobId = JobId([7; 16]);

/// Sync until quiet; returns (bytes, messages).
fn sync(a: &mut JobDoc, b: &mut JobDoc) -> (usize, usize) {
    let (mut a_to_b, mut b_to_a) = (SyncSession::new(), SyncSession::new());
    let (mut bytes, mut messages) = (0, 0);
    loop {
        let mut quiet = true;
        if let Some(message) = a.sync_message(&mut a_to_b) {
            (bytes, messages, quiet) = (bytes + message.len(), messages + 1, false);
            b.receive_sync(&mut b_to_a, &message).expect("valid sync message");
        }
        if let Some(message) = b.sync_message(&mut b_to_a) {
            (bytes, messages, quiet) = (bytes + message.len(), messages + 1, false);
            a.receive_sync(&mut a_to_b, &message).expect("valid sync message");
        }
        if quiet {
            return (bytes, messages);
        }
    }
}

/// Two replicas that agreed on a spec, then one wrote `changes` stage
/// outputs (about 200 bytes each) while cut off.
fn partitioned(changes: u64) -> (JobDoc, JobDoc, NodeIdentity) {
    let (alice, bob) = (NodeIdentity::from_seed([1; 32]), NodeIdentity::from_seed([2; 32]));
    let mut left = JobDoc::new(JOB, &alice.node_id());
    let mut right = JobDoc::new(JOB, &bob.node_id());
    left.contribute(&alice, "spec", b"question".to_vec(), 0).expect("contribute");
    sync(&mut left, &mut right);
    for i in 0..changes {
        let body = format!("stage output {i}: {}", "lorem ipsum ".repeat(16)).into_bytes();
        left.contribute(&alice, &format!("stage-{i}"), body, i).expect("contribute");
    }
    (left, right, alice)
}

fn job_sync(c: &mut Criterion) {
    let (mut left, mut right, alice) = partitioned(1_000);
    let (bytes, messages) = sync(&mut left, &mut right);
    let before = left.save().len();
    left.compact(&alice).expect("compact");
    let after = left.save().len();
    eprintln!(
        "after a 1,000-change partition: {bytes} bytes in {messages} sync messages; \
         saved document {before} bytes, {after} after compaction"
    );

    let mut group = c.benchmark_group("job_doc");
    group.sample_size(10);
    group.bench_function("sync_after_partition/1000_changes", |b| {
        b.iter_batched(
            || partitioned(1_000),
            |(mut left, mut right, _)| black_box(sync(&mut left, &mut right)),
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("compact/1000_changes", |b| {
        b.iter_batched(
            || partitioned(1_000),
            |(mut left, _, alice)| left.compact(&alice).expect("compact"),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, job_sync);
criterion_main!(benches);
