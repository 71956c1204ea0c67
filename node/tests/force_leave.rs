//! `force-leave` (docs/adr/0019) between real nodes on loopback: a killed
//! peer is marked `left` on every member, and a claim whose issuer is not
//! on a receiver's allowlist is refused there and counted.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use hivemesh_node::api::{ApiClient, Method};
use hivemesh_node::membership::MembershipConfig;
use hivemesh_node::{MembersReport, Multiaddr, NodeConfig, NodeHandle, load_or_create, spawn_node};
use libp2p::PeerId;

const LIMIT: Duration = Duration::from_secs(60);

async fn start(dir: &Path, bootstrap: Option<Multiaddr>, allow: Option<HashSet<PeerId>>) -> NodeHandle {
    let mut config = NodeConfig::loopback(dir.to_path_buf());
    // Plain LAN timing: SWIM alone would show a killed peer `down` only
    // after its suspicion timeout, and never `left`.
    config.membership = MembershipConfig::lan(4);
    config.listen.retain(|a| a.to_string().contains("/tcp/"));
    config.bootstrap = bootstrap.into_iter().collect();
    config.allow_peers = allow;
    spawn_node(config).await.expect("node starts")
}

async fn wait_for(node: &NodeHandle, what: &str, ok: impl Fn(&MembersReport) -> bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        if ok(&node.members().await.expect("node answers")) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}: {:?}", node.members().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn api(node: &NodeHandle) -> ApiClient {
    ApiClient::new(format!("http://{}", node.api.expect("api")), None).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_left_peer_shows_left_on_every_member_and_bad_requests_name_the_problem() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let a = start(dirs[0].path(), None, None).await;
    let b = start(dirs[1].path(), a.address("tcp"), None).await;
    let c = start(dirs[2].path(), a.address("tcp"), None).await;
    for node in [&a, &b, &c] {
        wait_for(node, "three alive", |r| r.count("alive") == 2).await;
    }
    let c_peer = c.peer_id;
    c.kill().await;

    let started = Instant::now();
    let report = api(&a)
        .call(Method::POST, "/v1/force-leave", Some(&serde_json::json!({ "peer": c_peer.to_string() })))
        .await
        .expect("force-leave accepted");
    assert_eq!(report["peer"], c_peer.to_string());
    assert_ne!(report["previous_state"], "left", "{report}");
    for node in [&a, &b] {
        wait_for(node, "c is left", |r| r.state_of(&c_peer) == Some("left")).await;
    }
    eprintln!(
        "figure: a force-left peer showed `left` on both members {:?} after the claim",
        started.elapsed()
    );
    let b_report = b.members().await.expect("answers");
    assert_eq!(b_report.count("alive"), 1, "only c was touched: {b_report:?}");

    // Each bad request names what is wrong.
    let http = reqwest::Client::new();
    let base = format!("http://{}", a.api.expect("api"));
    let stranger = hivemesh_protocol::NodeIdentity::from_seed([7; 32]).peer_id();
    let cases = [
        (serde_json::json!({ "peer": "not-a-peer" }), 400, "not a peer id"),
        (serde_json::json!({ "peer": a.peer_id.to_string() }), 400, "cannot force itself"),
        (serde_json::json!({ "peer": stranger.to_string() }), 404, "not a member"),
        // Well-formed JSON of the wrong shape: 422, as /v1/jobs answers.
        (serde_json::json!({ "peer": c_peer.to_string(), "extra": 1 }), 422, "extra"),
        (serde_json::json!({}), 422, "peer"),
    ];
    for (body, status, needle) in cases {
        let response = http.post(format!("{base}/v1/force-leave")).json(&body).send().await.expect("post");
        assert_eq!(response.status().as_u16(), status, "{body}");
        let text = response.text().await.expect("text");
        assert!(text.contains(needle), "{body}: {text}");
    }
    let broken = http
        .post(format!("{base}/v1/force-leave"))
        .header("content-type", "application/json")
        .body("{\"peer\":");
    let broken = broken.send().await.expect("post");
    assert_eq!(broken.status().as_u16(), 400);
    let untyped = http.post(format!("{base}/v1/force-leave")).body(format!("{{\"peer\":\"{c_peer}\"}}"));
    assert_eq!(untyped.send().await.expect("post").status().as_u16(), 415, "no JSON content type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_from_an_issuer_off_the_receivers_allowlist_is_refused_there() {
    // a allows b and t; b allows a, d and t; t allows a and b; d allows
    // only b. d learns of t through b's gossip; its claim about t reaches a
    // only relayed by b, and d is not on a's allowlist.
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let ids: Vec<PeerId> =
        dirs.iter().map(|d| load_or_create(d.path()).expect("identity").identity.peer_id()).collect();
    let (a_id, b_id, t_id, d_id) = (ids[0], ids[1], ids[2], ids[3]);
    let a = start(dirs[0].path(), None, Some([b_id, t_id].into())).await;
    let b = start(dirs[1].path(), a.address("tcp"), Some([a_id, d_id, t_id].into())).await;
    let t = start(dirs[2].path(), a.address("tcp"), Some([a_id, b_id].into())).await;
    let d = start(dirs[3].path(), b.address("tcp"), Some([b_id].into())).await;
    wait_for(&d, "d knows t", |r| r.state_of(&t_id).is_some()).await;
    wait_for(&a, "a sees b and t", |r| {
        r.state_of(&b_id) == Some("alive") && r.state_of(&t_id) == Some("alive")
    })
    .await;
    wait_for(&b, "b sees t", |r| r.state_of(&t_id) == Some("alive")).await;
    // t fails (a force-leave is for failed peers: a live one would rejoin
    // under a new generation at once, faster than this test looks).
    t.kill().await;

    api(&d)
        .call(Method::POST, "/v1/force-leave", Some(&serde_json::json!({ "peer": t_id.to_string() })))
        .await
        .expect("d issues the claim");
    wait_for(&b, "b applies d's claim", |r| r.state_of(&t_id) == Some("left")).await;
    let deadline = Instant::now() + LIMIT;
    loop {
        let status = a.status().await.expect("status");
        if status.replication.trust_rejected.get("force_leave.issuer_not_allowed").copied().unwrap_or(0) >= 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "a never refused d's claim: {:?}", status.replication);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = api(&a).request(Method::GET, "/metrics").send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    assert!(
        metrics
            .contains("hivemesh_rejected_total{layer=\"trust\",reason=\"force_leave.issuer_not_allowed\"} 1"),
        "{metrics}"
    );
}
