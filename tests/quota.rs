//! Per-remote-peer quotas on a node's provider credits (ADR 0017), across
//! three real nodes on loopback, each with its own OpenAI-compatible
//! provider (a real SSE server on loopback): a peer over its call quota is
//! refused with the `quota` code and the job completes without it (council:
//! quorum met; pipeline: the stage moves), a per-peer override beats the
//! default, the asker's own calls are never limited, and usage shows in
//! `/v1/status` and `/metrics`.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::time::Duration;

use hivemesh::node::NodeHandle;
use hivemesh::node::federation::quota::{PeerOverride, QuotaConfig, QuotaLimits};
use hivemesh::node::load_or_create;
use mesh::{Mesh, provider, serial, start_with, wait_for_registry};
use serde_json::{Value, json};

/// `--peer-quota DEFAULT` and `--peer-quota-for` overrides, as `run` reads them.
fn quotas(default: &str, overrides: &[String]) -> QuotaConfig {
    let overrides = overrides.iter().map(|o| o.parse::<PeerOverride>().expect("override"));
    QuotaConfig::new(default.parse::<QuotaLimits>().expect("limits"), overrides)
}

/// Three nodes joined through the first; node `i` has `configs[i]`. Node 0
/// (the asker in these tests) has its peer id passed to `configs` first.
async fn mesh_with(answers: [&'static str; 3], configs: impl Fn(&str) -> [QuotaConfig; 3]) -> Mesh {
    let serial = serial().await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let asker = load_or_create(dirs[0].path()).expect("identity").identity.peer_id().to_string();
    let configs = configs(&asker);
    let mut servers = Vec::new();
    for answer in answers {
        servers.push(provider(answer, Duration::from_millis(1)).await);
    }
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for (i, config) in configs.into_iter().enumerate() {
        let bootstrap = nodes.first().and_then(|first| first.address("tcp"));
        let node = start_with(dirs[i].path(), bootstrap, &servers[i], 1, |f| f.quotas = config).await;
        nodes.push(node);
    }
    assert_eq!(nodes[0].peer_id.to_string(), asker);
    wait_for_registry(&nodes).await;
    Mesh { nodes, servers, _dirs: dirs, _serial: serial }
}

async fn get(mesh: &Mesh, node: usize, path: &str) -> reqwest::Response {
    reqwest::get(format!("{}{path}", mesh.api(node))).await.expect("get")
}

/// Node `node`'s `/v1/status` quota line for `peer`.
async fn quota_line(mesh: &Mesh, node: usize, peer: &str) -> Value {
    let status: Value = get(mesh, node, "/v1/status").await.json().await.expect("status json");
    let peers = status["quota"]["peers"].as_array().expect("a quota part in the status").clone();
    peers.into_iter().find(|p| p["peer"] == peer).unwrap_or(Value::Null)
}

/// Waits until the asker sees both other nodes alive: placement takes alive
/// peers only, and on a loaded machine a peer may be briefly suspected.
async fn wait_alive(mesh: &Mesh) {
    let deadline = std::time::Instant::now() + mesh::LIMIT;
    while mesh.nodes[0].client().members().await.expect("members").count("alive") < 2 {
        assert!(std::time::Instant::now() < deadline, "peers never all alive");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn council(mesh: &Mesh) -> Value {
    wait_alive(mesh).await;
    let id = mesh.submit(json!({ "question": "What is the capital of France?", "peers": 3 })).await;
    mesh.wait_status(&id, |s| !matches!(s, "running" | "voting")).await
}

fn peers_of(list: &Value, key: &str) -> Vec<String> {
    list.as_array().expect("a list").iter().filter_map(|c| c[key].as_str().map(String::from)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_call_quota_is_refused_and_the_council_completes_without_it() {
    // Node 0 asks. Its own default allows no remote calls at all, which must
    // not touch its own jobs; node 1 allows every peer one call an hour;
    // node 2 allows none by default but 100 to node 0.
    let mesh = mesh_with(
        ["Paris is the capital of France.", "The capital of France is Paris.", "Paris, in France."],
        |asker| {
            [
                quotas("calls=0", &[]),
                quotas("calls=1", &[]),
                quotas("calls=0", &[format!("{asker}:calls=100")]),
            ]
        },
    )
    .await;
    let (asker, limited, favoured) = (
        mesh.nodes[0].peer_id.to_string(),
        mesh.nodes[1].peer_id.to_string(),
        mesh.nodes[2].peer_id.to_string(),
    );

    let first = council(&mesh).await;
    assert_eq!(first["spec"]["participants"].as_array().map(Vec::len), Some(3), "{first:#}");
    assert_eq!(first["outcome"]["status"], "done", "{first:#}");
    let authors = peers_of(&first["candidates"], "peer");
    assert_eq!(authors.len(), 3, "all three answer within their quotas: {first:#}");

    // Node 1's one call this hour is spent: it refuses with `quota`, and the
    // council (quorum 2 of 3) completes with the other two.
    let second = council(&mesh).await;
    assert_eq!(second["spec"]["participants"].as_array().map(Vec::len), Some(3), "{second:#}");
    let outcome = &second["outcome"];
    assert_eq!(outcome["status"], "done", "{second:#}");
    let authors = peers_of(&second["candidates"], "peer");
    assert!(authors.contains(&asker) && authors.contains(&favoured), "{second:#}");
    assert!(!authors.contains(&limited), "the peer over quota wrote no candidate: {second:#}");
    let failure = second["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .find(|f| f["peer"] == limited.as_str())
        .unwrap_or_else(|| panic!("node 1's refusal is in the document: {second:#}"));
    assert_eq!((failure["part"].as_str(), failure["code"].as_str()), (Some("candidate"), Some("quota")));
    let reason = failure["reason"].as_str().expect("reason");
    assert!(reason.contains("1 of its 1 calls per hour"), "the reason names the limit: {reason}");
    let missing = outcome["missing"].as_array().expect("missing");
    assert!(
        missing.iter().any(|m| m["peer"] == limited.as_str() && m["code"] == "quota"),
        "the outcome lists the refused member with its code: {outcome:#}"
    );
    assert!(outcome["answer"].as_str().is_some_and(|a| a.contains("Paris")), "{outcome:#}");

    // Providers: the asker's answered and curated both jobs though its own
    // default allows remote peers nothing; node 1's answered once; node 2's
    // (override 100 beats its default 0) twice.
    let calls: Vec<usize> = mesh.servers.iter().map(|s| s.seen().len()).collect();
    assert_eq!(calls, [4, 1, 2], "provider calls per node");

    // Usage per peer in /v1/status: only peers that called are listed.
    let line = quota_line(&mesh, 1, &asker).await;
    assert_eq!(line["hour"]["calls"], 1, "{line:#}");
    assert_eq!(line["limits"]["calls"], 1, "{line:#}");
    assert_eq!(line["refused"]["calls"], 1, "{line:#}");
    assert!(
        line["hour"]["tokens"].as_u64().is_some_and(|t| t > 0),
        "tokens charged after the call: {line:#}"
    );
    let line = quota_line(&mesh, 2, &asker).await;
    assert_eq!(
        (line["hour"]["calls"].as_u64(), line["limits"]["calls"].as_u64()),
        (Some(2), Some(100)),
        "{line:#}"
    );
    assert!(line["refused"].as_object().is_some_and(|r| r.is_empty()), "{line:#}");
    let own: Value = get(&mesh, 0, "/v1/status").await.json().await.expect("status");
    assert_eq!(own["quota"]["peers"], json!([]), "the asker's own calls are not accounted: {own:#}");
    assert_eq!(own["quota"]["default"]["calls"], 0, "{own:#}");

    // And in /metrics.
    let metrics = get(&mesh, 1, "/metrics").await.text().await.expect("metrics");
    let refusals = format!("hivemesh_peer_quota_refusals_total{{peer=\"{asker}\",limit=\"calls\"}} 1");
    assert!(metrics.contains(&refusals), "{metrics}");
    let hour = format!("hivemesh_peer_quota_hour{{peer=\"{asker}\",resource=\"calls\"}} 1");
    assert!(metrics.contains(&hour), "{metrics}");
    let metrics = get(&mesh, 0, "/metrics").await.text().await.expect("metrics");
    assert!(!metrics.contains("peer_quota_hour{"), "no series for peers that never called: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_stage_refused_for_quota_moves_to_another_peer() {
    let mesh = mesh_with(["Paris.", "Paris.", "Paris."], |_| {
        [quotas("none", &[]), quotas("calls=0", &[]), quotas("none", &[])]
    })
    .await;
    let limited = mesh.nodes[1].peer_id.to_string();
    wait_alive(&mesh).await;
    let id = mesh.submit(json!({ "question": "Capital of France?", "mode": "pipeline" })).await;
    let job = mesh.wait_status(&id, |s| s != "running").await;
    let outcome = &job["outcome"];
    assert_eq!(outcome["status"], "done", "{job:#}");
    assert_eq!(outcome["answer"], "Final: Paris is the capital of France.");
    let refused: Vec<&Value> = job["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .filter(|f| f["peer"] == limited.as_str())
        .collect();
    assert!(!refused.is_empty(), "node 1 had a stage and refused it: {job:#}");
    assert!(refused.iter().all(|f| f["code"] == "quota"), "{job:#}");
    let moved = job["reassigned"].as_array().expect("reassigned");
    assert_eq!(moved.len(), refused.len(), "each refused stage moved: {job:#}");
    assert!(moved.iter().all(|m| m["to"] != limited.as_str()), "{job:#}");
    let stage_peers = peers_of(&outcome["contributions"], "peer");
    assert!(!stage_peers.contains(&limited), "no stage ran on the refusing peer: {outcome:#}");
    assert!(
        outcome["missing"].as_array().expect("missing").iter().any(|m| m["code"] == "quota"),
        "the outcome keeps the code of what moved the stage: {outcome:#}"
    );
    assert_eq!(mesh.servers[1].seen().len(), 0, "node 1's provider was never called");
}
