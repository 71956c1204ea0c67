//! `/v1/models` and `/v1/models/{id}` over three real nodes on loopback,
//! each with its own loopback provider offering a different model: one
//! node lists every live peer's models with the peers offering them, ids
//! with `/` and `:` are answered one by one, an unknown id is OpenAI's 404,
//! and a killed node's models leave the list.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hivemesh::llm::provider::openai::OpenAiConfig;
use hivemesh::node::NodeHandle;
use mesh::LIMIT;
use serde_json::{Value, json};
use sse_server::TestServer;

/// Each node's provider default model, which the node advertises.
const MODELS: [&str; 3] = ["alpha-7b", "meta-llama/llama-3.2-3b-instruct:free", "qwen2.5:0.5b"];
/// Advertised by node 1 and node 2 besides their own.
const SHARED: &str = "org/shared-model:latest";

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(LIMIT).build().expect("client")
}

fn api(node: &NodeHandle) -> String {
    format!("http://{}", node.api.expect("api"))
}

async fn get(url: String) -> (u16, Value) {
    let response = http().get(url).send().await.expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn models(node: &NodeHandle) -> Vec<Value> {
    let (status, body) = get(format!("{}/v1/models", api(node))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list", "{body}");
    body["data"].as_array().expect("data").clone()
}

fn find<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|m| m["id"] == id)
}

/// Polls node's list until `done` holds for it.
async fn wait_models(node: &NodeHandle, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let list = models(node).await;
        if done(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: {list:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three nodes, node i's provider offering `MODELS[i]`.
async fn start() -> (Vec<NodeHandle>, Vec<TestServer>, Vec<tempfile::TempDir>, mesh::Serial) {
    let serial = mesh::serial().await;
    let mut servers = Vec::new();
    for _ in MODELS {
        servers.push(mesh::provider("Paris is the capital of France.", Duration::ZERO).await);
    }
    let dirs: Vec<tempfile::TempDir> = MODELS.iter().map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for (i, model) in MODELS.into_iter().enumerate() {
        let client = Arc::new(mesh::client_for(OpenAiConfig::new("test", servers[i].base_url(), model)));
        let bootstrap = nodes.first().and_then(|first| first.address("tcp"));
        nodes.push(mesh::start_with_client(dirs[i].path(), bootstrap, client, 1, |_| {}).await);
    }
    mesh::wait_for_registry(&nodes).await;
    (nodes, servers, dirs, serial)
}

/// POST /v1/advertise on `node`: a worker offering `models`.
async fn advertise(node: &NodeHandle, models: &[&str]) {
    let response = http()
        .post(format!("{}/v1/advertise", api(node)))
        .json(&json!({ "role": "Worker", "models": models, "gpu": null }))
        .send()
        .await
        .expect("advertise");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_live_peers_models_are_listed_with_their_owners_and_a_killed_ones_leave() {
    let (mut nodes, _servers, _dirs, _serial) = start().await;
    let peer = |i: usize| nodes[i].peer_id.to_string();
    let (p0, p1, p2) = (peer(0), peer(1), peer(2));
    advertise(&nodes[1], &[MODELS[1], SHARED]).await;
    advertise(&nodes[2], &[MODELS[2], SHARED]).await;

    let list = wait_models(&nodes[0], "node-0 lists every peer's models", |list| {
        find(list, SHARED).is_some_and(|m| m["peers"].as_array().map(Vec::len) == Some(2))
            && MODELS.iter().all(|id| find(list, id).is_some())
    })
    .await;
    // The modes, as before: owned by hivemesh, no peers.
    for mode in ["hivemesh", "council", "pipeline", "council:fast", "pipeline:fast"] {
        let entry = find(&list, mode).unwrap_or_else(|| panic!("{mode} listed: {list:#?}"));
        assert_eq!(entry["owned_by"], "hivemesh", "{entry}");
        assert!(entry.get("peers").is_none(), "{entry}");
    }
    let mut shared_peers = vec![p1.clone(), p2.clone()];
    shared_peers.sort();
    for (id, peers) in [
        (MODELS[0], vec![p0.clone()]),
        (MODELS[1], vec![p1.clone()]),
        (MODELS[2], vec![p2.clone()]),
        (SHARED, shared_peers.clone()),
    ] {
        let entry = find(&list, id).expect("listed");
        assert_eq!(entry["object"], "model", "{entry}");
        assert!(entry["created"].as_u64().is_some_and(|c| c > 1_600_000_000), "{entry}");
        assert_eq!(entry["owned_by"], peers.join(","), "{entry}");
        assert_eq!(entry["peers"], json!(peers), "{entry}");
    }
    let mut swarm: Vec<&str> =
        list.iter().filter(|m| m["owned_by"] != "hivemesh").filter_map(|m| m["id"].as_str()).collect();
    swarm.sort();
    let mut expected = vec![MODELS[0], MODELS[1], MODELS[2], SHARED];
    expected.sort();
    assert_eq!(swarm, expected, "the modes and exactly the 4 offered models: {list:#?}");

    // One model: the same object, its id's `/` and `:` taken as they are
    // or percent-encoded.
    for path in [SHARED.to_string(), SHARED.replace('/', "%2F"), MODELS[1].to_string()] {
        let (status, body) = get(format!("{}/v1/models/{path}", api(&nodes[0]))).await;
        assert_eq!(status, 200, "{path}: {body}");
        let id = if path == MODELS[1] { MODELS[1] } else { SHARED };
        assert_eq!(&body, find(&list, id).expect("listed"), "{path}");
    }
    let (status, body) = get(format!("{}/v1/models/council:fast", api(&nodes[0]))).await;
    assert_eq!((status, &body["owned_by"]), (200, &json!("hivemesh")), "{body}");

    let (status, body) = get(format!("{}/v1/models/no/such-model:7b", api(&nodes[0]))).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
    assert_eq!(body["error"]["param"], "model", "{body}");
    assert_eq!(body["error"]["type"], "not_found_error", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("no/such-model:7b")), "{body}");

    // Node 2 dies: its own model leaves the list, the shared one stays with node 1.
    let victim = nodes.pop().expect("three nodes");
    let victim_peer = victim.peer_id;
    victim.kill().await;
    let list = wait_models(&nodes[0], "the killed node's models leave the list", |list| {
        find(list, MODELS[2]).is_none()
    })
    .await;
    assert_eq!(find(&list, SHARED).map(|m| m["owned_by"].clone()), Some(json!(p1)), "{list:#?}");
    assert_eq!(find(&list, SHARED).map(|m| m["peers"].clone()), Some(json!([p1])), "{list:#?}");
    assert!(find(&list, MODELS[0]).is_some() && find(&list, MODELS[1]).is_some(), "{list:#?}");
    let (status, body) = get(format!("{}/v1/models/{}", api(&nodes[0]), MODELS[2])).await;
    assert_eq!(status, 404, "{body}");
    // Still gone once SWIM holds it down, not merely suspect.
    let deadline = Instant::now() + LIMIT;
    while nodes[0].members().await.expect("members").state_of(&victim_peer) != Some("down") {
        assert!(Instant::now() < deadline, "node-0 never marked the killed node down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(find(&models(&nodes[0]).await, MODELS[2]).is_none());
    for node in nodes {
        node.leave(Duration::from_secs(2)).await;
    }
}
