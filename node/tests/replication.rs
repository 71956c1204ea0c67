//! Three real nodes on loopback replicate the signed registry: an
//! advertisement spreads, a crashed node restarts with its registry read back
//! from sled, rejoins through its remembered members and catches up.

use std::path::Path;
use std::time::{Duration, Instant};

use hivemesh_node::membership::MembershipConfig;
use hivemesh_node::replica::{Profile, ViewKind, ViewReport};
use hivemesh_node::{Multiaddr, NodeConfig, NodeHandle, spawn_node};
use hivemesh_protocol::Role;

const LIMIT: Duration = Duration::from_secs(60);

async fn start(dir: &Path, bootstrap: Option<Multiaddr>, models: &[&str]) -> NodeHandle {
    let mut config = NodeConfig::loopback(dir.to_path_buf());
    config.membership = MembershipConfig::lan(3).faster(4);
    config.bootstrap = bootstrap.into_iter().collect();
    config.replication.anti_entropy = Duration::from_millis(300);
    config.replication.profile = Some(profile(models));
    spawn_node(config).await.expect("node starts")
}

fn profile(models: &[&str]) -> Profile {
    Profile { role: Role::Worker, models: models.iter().map(|m| m.to_string()).collect(), gpu: None }
}

async fn wait_for(
    node: &NodeHandle,
    kind: ViewKind,
    what: &str,
    ok: impl Fn(&ViewReport) -> bool,
) -> ViewReport {
    let deadline = Instant::now() + LIMIT;
    loop {
        let report = node.client().view(Some(kind)).await.expect("node answers");
        if ok(&report) {
            return report;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}: {report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn models_of(report: &ViewReport, peer: &str) -> Option<Vec<String>> {
    report.members.iter().find(|m| m.member.peer_id == peer).map(|m| m.models.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertisements_spread_and_a_restarted_node_keeps_and_catches_up() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let a = start(dirs[0].path(), None, &["llama-3-8b"]).await;
    let b = start(dirs[1].path(), a.address("quic-v1"), &["qwen-7b"]).await;
    let c = start(dirs[2].path(), a.address("tcp"), &[]).await;
    let (a_id, b_id) = (a.peer_id.to_string(), b.peer_id.to_string());

    // Start-up entries reach everyone through push and anti-entropy.
    for node in [&b, &c] {
        wait_for(node, ViewKind::Registry, "a's start-up entry is known", |r| {
            models_of(r, &a_id) == Some(vec!["llama-3-8b".into()])
        })
        .await;
    }
    // A runtime advertisement on a reaches b and c.
    a.client().advertise(profile(&["llama-3-8b", "mistral-7b"])).await.expect("advertise");
    for node in [&b, &c] {
        wait_for(node, ViewKind::Registry, "a's new models are known", |r| {
            models_of(r, &a_id) == Some(vec!["llama-3-8b".into(), "mistral-7b".into()])
        })
        .await;
    }

    // The majority view: every node's own list plus both peers' answers.
    let majority =
        wait_for(&b, ViewKind::Majority, "a majority view of three", |r| r.members.len() == 2).await;
    let info = majority.majority.expect("majority metrics");
    assert_eq!((info.peers_asked, info.peers_answered, info.metrics.peer_count), (2, 2, 3));
    assert_eq!(majority.active_view, ViewKind::Majority, "3 nodes are below the default threshold");

    // Crash c, change a's advertisement while c is down.
    let c_peer = c.peer_id;
    c.kill().await;
    a.client().advertise(profile(&["mixtral-8x7b"])).await.expect("advertise");

    // Restart c with no bootstrap: it reloads the registry from sled at once
    // and finds its way back through the members it remembered.
    let c = start(dirs[2].path(), None, &[]).await;
    assert_eq!(c.peer_id, c_peer);
    let status = c.status().await.expect("status");
    assert!(
        status.replication.registry_entries >= 3,
        "registry read back from disk: {:?}",
        status.replication
    );
    let caught_up = wait_for(&c, ViewKind::Registry, "c catches up on what it missed", |r| {
        models_of(r, &a_id) == Some(vec!["mixtral-8x7b".into()])
    })
    .await;
    assert_eq!(models_of(&caught_up, &b_id), Some(vec!["qwen-7b".into()]));
}
