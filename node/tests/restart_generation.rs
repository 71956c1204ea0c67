//! A node restarted from its data directory with a clock behind its previous
//! start is alive on its peers again (ADR 0015). On loopback, without root:
//! the previous start is made "an hour ahead" by recording its generation in
//! the data directory, which is what a clock that has since gone back an
//! hour leaves behind. tests/multihost.rs does the same with a process whose
//! clock is really shifted, on separate hosts.

use std::time::{Duration, Instant};

use hivemesh_node::membership::MembershipConfig;
use hivemesh_node::membership::clock::unix_ms;
use hivemesh_node::replica::Store;
use hivemesh_node::{MembersReport, Multiaddr, NodeConfig, NodeHandle, spawn_node};
use libp2p::PeerId;

const LIMIT: Duration = Duration::from_secs(60);
const HOUR_MS: u64 = 3_600_000;

async fn start(dir: &std::path::Path, bootstrap: Option<Multiaddr>) -> NodeHandle {
    let mut config = NodeConfig::loopback(dir.to_path_buf());
    config.membership = MembershipConfig::lan(2).faster(4);
    config.bootstrap = bootstrap.into_iter().collect();
    spawn_node(config).await.expect("node starts")
}

async fn wait(node: &NodeHandle, what: &str, ok: impl Fn(&MembersReport) -> bool) -> MembersReport {
    let deadline = Instant::now() + LIMIT;
    loop {
        let report = node.members().await.expect("node answers");
        if ok(&report) {
            return report;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}: {report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn generation_of(report: &MembersReport, peer: PeerId) -> Option<u64> {
    let peer = peer.to_string();
    report.members.iter().find(|m| m.peer_id == peer).map(|m| m.generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_clock_an_hour_behind_the_last_start_is_alive_again() {
    let seed_dir = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    // The previous start, an hour ahead of the clock this test runs with.
    let previous = unix_ms() + HOUR_MS;
    Store::open(dir.path()).expect("open").put_generation(previous).expect("record");

    let seed = start(seed_dir.path(), None).await;
    let first = start(dir.path(), seed.address("quic-v1")).await;
    let peer = first.peer_id;
    let report = wait(&seed, "the node is alive", |r| r.state_of(&peer) == Some("alive")).await;
    let first_generation = generation_of(&report, peer).expect("listed");
    assert!(first_generation > previous, "{first_generation} is above the recorded {previous}");

    first.kill().await;
    wait(&seed, "the crash is seen", |r| r.state_of(&peer) == Some("down")).await;

    // Restarted from the same directory; its clock is still an hour behind
    // the generation its peer holds down.
    let second = start(dir.path(), seed.address("quic-v1")).await;
    let report = wait(&seed, "the restarted node is alive", |r| r.state_of(&peer) == Some("alive")).await;
    let second_generation = generation_of(&report, peer).expect("listed");
    assert!(second_generation > first_generation, "{second_generation} > {first_generation}");
    let own = second.members().await.expect("answers").me.generation;
    assert_eq!(own, second_generation);
    second.kill().await;
    seed.kill().await;
}
