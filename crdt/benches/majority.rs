//! Majority rule on parsed views (../shared/TARGETS.md: 10x10 <= 2 µs,
//! 1,000x100 <= 5 ms; issue 16: 10x10 with conflicts <= 1 µs, 1,000x100
//! <= 2 ms). Entries are parsed outside the timed loop, as the node does.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hivemesh_crdt::majority::{Entry, resolve};
use serde_json::json;

/// Every view lists every node; with `conflicts`, a third of the reports
/// carry another address and a later timestamp.
fn views(peers: usize, nodes: usize, conflicts: bool) -> Vec<Vec<Entry>> {
    (0..peers)
        .map(|peer| {
            (0..nodes)
                .map(|node| {
                    let stale = conflicts && (peer * 7 + node * 3) % 3 == 0;
                    let address = if stale {
                        format!("10.1.{}.{}:4001", node / 250, node % 250)
                    } else {
                        format!("10.0.{}.{}:4001", node / 250, node % 250)
                    };
                    let second = if stale { 9 } else { node % 7 };
                    Entry::from_json(json!({
                        "id": format!("12D3KooWnode{node:04}"),
                        "last_updated": format!("2026-11-21T10:00:0{second}Z"),
                        "address": address,
                        "metrics_port": 9100,
                        "node_type": "worker",
                        "is_load_balancer": false,
                    }))
                    .expect("generated entry is valid")
                })
                .collect()
        })
        .collect()
}

fn majority(c: &mut Criterion) {
    let mut group = c.benchmark_group("majority");
    for (peers, nodes) in [(10, 10), (100, 100), (1_000, 100)] {
        for conflicts in [false, true] {
            let input = views(peers, nodes, conflicts);
            let label = format!("{peers}x{nodes}/{}", if conflicts { "conflicts" } else { "agree" });
            group.throughput(Throughput::Elements((peers * nodes) as u64));
            group.bench_with_input(BenchmarkId::from_parameter(label), &input, |b, input| {
                b.iter(|| resolve(input).expect("views are not empty"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, majority);
criterion_main!(benches);
