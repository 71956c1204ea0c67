//! Five real nodes on loopback (QUIC and TCP): join, crash, restart, leave.

use std::path::Path;
use std::time::{Duration, Instant};

use hivemesh_node::api::client::StatusCode;
use hivemesh_node::api::{ApiClient, Method};
use hivemesh_node::membership::MembershipConfig;
use hivemesh_node::{MembersReport, Multiaddr, NodeConfig, NodeHandle, spawn_node};
use libp2p::PeerId;

const LIMIT: Duration = Duration::from_secs(60);

async fn start(dir: &Path, bootstrap: Option<Multiaddr>) -> NodeHandle {
    let mut config = NodeConfig::loopback(dir.to_path_buf());
    config.membership = MembershipConfig::lan(5).faster(4);
    config.bootstrap = bootstrap.into_iter().collect();
    spawn_node(config).await.expect("node starts")
}

/// Polls every node's member list until `ok` holds for all of them.
async fn wait_all(nodes: &[&NodeHandle], what: &str, ok: impl Fn(&MembersReport) -> bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut all = true;
        for node in nodes {
            all &= ok(&node.members().await.expect("node answers"));
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_is(peer: PeerId, state: &'static str) -> impl Fn(&MembersReport) -> bool {
    move |r| r.state_of(&peer) == Some(state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_converges_detects_a_crash_readmits_a_restart_and_sees_a_leave() {
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        // Chain bootstrap, alternating transports: node i knows only node i-1.
        let via = if i % 2 == 0 { "tcp" } else { "quic-v1" };
        let bootstrap = nodes.last().map(|prev| prev.address(via).expect("listening on both transports"));
        nodes.push(start(dir.path(), bootstrap).await);
    }
    let all: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all(&all, "every node sees 4 alive members", |r| r.count("alive") == 4).await;

    // Crash node 4 (no goodbye): everyone else marks it down.
    let victim = nodes.pop().expect("five nodes");
    let victim_peer = victim.peer_id;
    let victim_bootstrap = nodes[3].address("quic-v1");
    victim.kill().await;
    let survivors: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all(&survivors, "the crashed node is down everywhere", state_is(victim_peer, "down")).await;
    for node in &survivors {
        let report = node.members().await.expect("answers");
        assert_eq!(report.count("alive"), 3, "the other survivors stay alive: {report:?}");
    }

    // Restart it with the same identity: alive again everywhere.
    let restarted = start(dirs[4].path(), victim_bootstrap).await;
    assert_eq!(restarted.peer_id, victim_peer, "same data dir, same identity");
    nodes.push(restarted);
    let all: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all(&all, "the restarted node is alive everywhere", |r| r.count("alive") == 4).await;

    // Graceful leave of node 2: the others show "left", not "down".
    let leaver = nodes.remove(2);
    let leaver_peer = leaver.peer_id;
    leaver.leave(Duration::from_secs(3)).await;
    let rest: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all(&rest, "the leaver shows as left", state_is(leaver_peer, "left")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_bootstrap_keeps_the_node_running_and_retrying() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nobody listens on (bound and released) on loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("multiaddr");
    let mut config = NodeConfig::loopback(dir.path().to_path_buf());
    config.bootstrap = vec![addr];
    let node = spawn_node(config).await.expect("starts despite the dead bootstrap");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = node.status().await.expect("still answering");
    assert_eq!(status.active_members, 0);
    assert!(status.uptime_ms >= 2000);
    node.leave(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_serves_members_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path(), None).await;
    let api = node.api.expect("api enabled");
    let api_client = ApiClient::new(format!("http://{api}"), None).expect("client");
    let body = api_client.call(Method::GET, "/v1/members", None).await.expect("API answers");
    assert_eq!(body["me"]["peer_id"], node.peer_id.to_string());
    assert!(body["members"].as_array().is_some_and(|m| m.is_empty()));
    let recorded = std::fs::read_to_string(hivemesh_node::api::api_addr_file(dir.path())).expect("api.addr");
    assert_eq!(recorded, api.to_string());
    let missing = api_client.call(Method::GET, "/v1/nope", None).await.expect_err("no such route");
    assert_eq!(missing.status(), Some(StatusCode::NOT_FOUND), "{missing}");
    node.leave(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_with_a_token_refuses_requests_without_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::loopback(dir.path().to_path_buf());
    config.api_token = Some("s3cret".into());
    let node = spawn_node(config).await.expect("node starts");
    let base = format!("http://{}", node.api.expect("api enabled"));
    let anonymous = ApiClient::new(base.clone(), None).expect("client");
    let error = anonymous.call(Method::GET, "/v1/members", None).await.expect_err("refused");
    assert_eq!(error.status(), Some(StatusCode::UNAUTHORIZED), "{error}");
    let message = error.to_string();
    assert!(message.contains("401") && message.contains("Bearer"), "{message}");
    let wrong = ApiClient::new(base.clone(), Some("guess".into())).expect("client");
    let error = wrong.call(Method::GET, "/metrics", None).await.expect_err("refused");
    assert!(error.to_string().contains("wrong bearer token"), "{error}");
    let right = ApiClient::new(base, Some("s3cret".into())).expect("client");
    right.call(Method::GET, "/v1/members", None).await.expect("accepted");
    node.leave(Duration::from_secs(1)).await;

    let mut open_to_all = NodeConfig::loopback(dir.path().to_path_buf());
    open_to_all.api = Some("0.0.0.0:0".parse().expect("address"));
    let error = spawn_node(open_to_all).await.map(|_| ()).expect_err("a public API needs a token");
    assert!(error.to_string().contains("bearer token"), "{error}");
}
