//! The swarm as one OpenAI endpoint (docs/adr/0020): three real nodes on
//! loopback, each with its own provider (a real SSE server on loopback)
//! offering a different model. A request to any node for any peer's model
//! reaches that peer's provider with the body unchanged, and its answer
//! comes back unchanged but for the id: plain, streamed, embeddings, a
//! failover, a peer's quota, and the official `openai` Python client.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/python_openai.rs"]
mod python_openai;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hivemesh::llm::provider::openai::OpenAiConfig;
use hivemesh::node::NodeHandle;
use hivemesh::node::federation::quota::{QuotaConfig, QuotaLimits};
use hivemesh::node::replica::Profile;
use hivemesh::protocol::Role;
use serde_json::{Value, json};
use sse_server::{Reply, TestServer};

const MODELS: [&str; 3] = ["llama-a", "qwen-b", "mistral-c"];

/// The model both node 1 and node 2 offer, for the failover.
const SHARED: &str = "shared-model";

/// A model node 1 offers whose provider breaks off mid-answer.
const BROKEN: &str = "broken-model";

/// Which node's provider fails every request for [`SHARED`].
type Failing = Arc<Mutex<Option<usize>>>;

/// Node `i`'s provider: a plain JSON completion or a stream naming the
/// model, with usage; a 500 for [`SHARED`] when it is the failing one.
async fn provider(i: usize, failing: Failing) -> TestServer {
    TestServer::responding(move |body| {
        let model = body["model"].as_str().unwrap_or_default().to_string();
        if model == SHARED && *failing.lock().expect("lock") == Some(i) {
            return Reply::status(500, "this provider is down");
        }
        if model == BROKEN {
            return Reply::Reset(vec!["data: {\"id\":\"up\",\"choices\":[{\"delta\":{\"content\":\"Half\"}}]}\n\n".into()]);
        }
        let text = format!("From {model} on node {i}.");
        if body["stream"] == true {
            let pieces = text.split_inclusive(' ').map(String::from).collect();
            return Reply::Stream { pieces, delay: Duration::from_millis(1), usage: Some((9, 4, None)), keepalive: true };
        }
        let completion = json!({
            "id": format!("upstream-{i}"), "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
            "system_fingerprint": "fp_upstream"
        });
        Reply::Status { code: 200, retry_after: None, body: completion.to_string() }
    })
    .await
    .with_embeddings(move |text| vec![i as f32, text.len() as f32])
}

struct Swarm {
    nodes: Vec<NodeHandle>,
    servers: Vec<TestServer>,
    failing: Failing,
    _dirs: Vec<tempfile::TempDir>,
    _serial: mesh::Serial,
}

impl Swarm {
    /// With `quota`, node 2 allows every remote peer one call an hour.
    async fn start(quota: bool) -> Self {
        let serial = mesh::serial().await;
        let failing: Failing = Arc::default();
        let mut servers = Vec::new();
        for i in 0..3 {
            servers.push(provider(i, failing.clone()).await);
        }
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let mut nodes: Vec<NodeHandle> = Vec::new();
        for i in 0..3 {
            let config = OpenAiConfig::new(format!("provider-{i}"), servers[i].base_url(), MODELS[i]);
            let client = Arc::new(mesh::client_for(config));
            let bootstrap = nodes.first().and_then(|first| first.address("tcp"));
            let node = mesh::start_with_client(dirs[i].path(), bootstrap, client, 1, |federation| {
                if i == 2 && quota {
                    let one_call = QuotaLimits { calls: Some(1), tokens: None, usd: None };
                    federation.quotas = QuotaConfig::new(one_call, []);
                }
            })
            .await;
            nodes.push(node);
        }
        mesh::wait_for_registry(&nodes).await;
        // Nodes 1 and 2 also offer the shared model; everyone sees it.
        for i in [1, 2] {
            let mut models = vec![MODELS[i].to_string(), SHARED.to_string()];
            if i == 1 {
                models.push(BROKEN.to_string());
            }
            nodes[i]
                .client()
                .advertise(Profile { role: Role::Worker, models, gpu: None })
                .await
                .expect("advertise");
        }
        let deadline = std::time::Instant::now() + mesh::LIMIT;
        while models_offered(&nodes[0]).await.iter().filter(|m| *m == SHARED).count() < 2 {
            assert!(std::time::Instant::now() < deadline, "the advertisements did not spread");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { nodes, servers, failing, _dirs: dirs, _serial: serial }
    }

    fn api(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].api.expect("api"))
    }
}

async fn models_offered(node: &NodeHandle) -> Vec<String> {
    let view = node.client().view(Some(hivemesh::node::replica::ViewKind::Registry)).await.expect("view");
    view.members.iter().filter(|m| m.member.state == "alive").flat_map(|m| m.models.clone()).collect()
}

async fn post(url: String, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(url).json(body).send().await.expect("post")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_answers_for_any_peers_model_with_the_body_and_answer_unchanged() {
    let swarm = Swarm::start(false).await;
    let peer = |i: usize| swarm.nodes[i].peer_id.to_string();

    // Plain: node 0 forwards to node 1, every field as the client sent it
    // (ones the mesh's own modes refuse, too).
    let request = json!({
        "model": "qwen-b", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.3,
        "logit_bias": {"42": -100}, "user": "someone", "n": 1,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    });
    let response = post(format!("{}/v1/chat/completions", swarm.api(0)), &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-hivemesh-peer"], peer(1).as_str());
    let text = response.text().await.expect("body");
    let seen = swarm.servers[1].seen();
    assert_eq!(seen.len(), 1, "node 1's provider answered");
    assert_eq!(seen[0].body, request, "the body reached the provider unchanged");
    assert!(swarm.servers[0].seen().is_empty() && swarm.servers[2].seen().is_empty());
    let answer: Value = serde_json::from_str(&text).expect("JSON");
    let id = answer["id"].as_str().expect("id");
    assert!(id.starts_with("chatcmpl-hm-") && id != "upstream-1", "{text}");
    assert_eq!(answer["choices"][0]["message"]["content"], "From qwen-b on node 1.");
    assert_eq!(answer["system_fingerprint"], "fp_upstream", "the rest is the provider's: {text}");

    // Streamed: node 0 forwards to node 2; every event carries the new id.
    let request =
        json!({"model": "mistral-c", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let response = post(format!("{}/v1/chat/completions", swarm.api(0)), &request).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/event-stream"));
    let text = response.text().await.expect("body");
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("event JSON"))
        .collect();
    let content: String =
        events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "From mistral-c on node 2.", "{text}");
    let ids: std::collections::HashSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "one id for the whole stream: {ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("chatcmpl-hm-")), "{ids:?}");
    assert!(text.contains("data: [DONE]"), "{text}");

    // Node 0's own model is served by its own provider.
    let request = json!({"model": "llama-a", "messages": [{"role": "user", "content": "Hi"}]});
    let response = post(format!("{}/v1/chat/completions", swarm.api(0)), &request).await;
    assert_eq!(response.headers()["x-hivemesh-peer"], peer(0).as_str());
    assert_eq!(swarm.servers[0].seen().len(), 1);

    // Embeddings go the same way.
    let request = json!({"model": "qwen-b", "input": ["a", "bcd"]});
    let response = post(format!("{}/v1/embeddings", swarm.api(2)), &request).await;
    assert_eq!(response.status(), 200);
    let embedded: Value = response.json().await.expect("JSON");
    assert_eq!(embedded["data"].as_array().map(Vec::len), Some(2), "{embedded}");
    assert!(embedded["data"].to_string().contains("[1.0,3.0]"), "node 1's embedder: {embedded}");

    // A provider that breaks off mid-answer: the client's response breaks
    // off too (an error reading the body), never a short answer that looks
    // whole.
    let request = json!({"model": BROKEN, "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let response = post(format!("{}/v1/chat/completions", swarm.api(0)), &request).await;
    assert_eq!(response.status(), 200, "the head came before the break");
    assert!(response.text().await.is_err(), "the body must end in an error");

    // No peer offers it: OpenAI's 404.
    let request = json!({"model": "gpt-9", "messages": [{"role": "user", "content": "Hi"}]});
    let response = post(format!("{}/v1/chat/completions", swarm.api(0)), &request).await;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["error"]["code"], "model_not_found", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_peer_is_passed_over_until_its_breaker_opens() {
    let swarm = Swarm::start(false).await;
    // Whichever of nodes 1 and 2 is tried first fails; the other answers.
    let mut both = [swarm.nodes[1].peer_id, swarm.nodes[2].peer_id];
    both.sort_by_key(|p| p.to_bytes());
    let first = if both[0] == swarm.nodes[1].peer_id { 1 } else { 2 };
    let second = 3 - first;
    *swarm.failing.lock().expect("lock") = Some(first);
    let request = json!({"model": SHARED, "messages": [{"role": "user", "content": "Hi"}]});
    let answered_by_second = |response: &reqwest::Response| {
        response.headers().get("x-hivemesh-peer").and_then(|v| v.to_str().ok()).map(str::to_string)
            == Some(swarm.nodes[second].peer_id.to_string())
    };
    let response = post(format!("{}/v1/chat/completions", swarm.api(0)), &request).await;
    assert_eq!(response.status(), 200);
    assert!(answered_by_second(&response), "{:?}", response.headers());
    assert_eq!(swarm.servers[first].seen().len(), 1, "the first peer was tried");
    // After three failures in a row its breaker opens: later requests go
    // to the other peer first, and the failing one is not asked.
    for _ in 0..4 {
        let response = post(format!("{}/v1/chat/completions", swarm.api(0)), &request).await;
        assert!(answered_by_second(&response), "{:?}", response.headers());
    }
    assert_eq!(swarm.servers[first].seen().len(), 3, "tried until its breaker opened, then passed over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_quota_refuses_and_charges_the_asking_peer() {
    let swarm = Swarm::start(true).await;
    // Node 2 allows each remote peer one call an hour: node 0's first call
    // to its model is answered, the second refused with 429, and no other
    // peer offers mistral-c.
    let request = json!({"model": "mistral-c", "messages": [{"role": "user", "content": "Hi"}]});
    let answered = post(format!("{}/v1/chat/completions", swarm.api(0)), &request).await;
    assert_eq!(answered.status(), 200);
    let refused = post(format!("{}/v1/chat/completions", swarm.api(0)), &request).await;
    assert_eq!(refused.status(), 502);
    let text = refused.text().await.expect("body");
    assert!(text.contains("HTTP 429"), "{text}");
    // The call and its tokens are counted against node 0 on node 2.
    let status: Value =
        reqwest::get(format!("{}/v1/status", swarm.api(2))).await.expect("get").json().await.expect("json");
    let usage = status["quota"]["peers"].as_array().and_then(|peers| {
        peers.iter().find(|p| p["peer"] == swarm.nodes[0].peer_id.to_string().as_str()).cloned()
    });
    let usage = usage.unwrap_or_else(|| panic!("node 0 in node 2's quota: {status:#}"));
    assert_eq!(usage["hour"]["calls"], 1, "{usage}");
    assert_eq!(usage["hour"]["tokens"], 13, "usage from the provider's answer: {usage}");
    assert_eq!(usage["refused"]["calls"], 1, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_uses_every_peers_model_through_one_node() {
    let package = tokio::task::spawn_blocking(python_openai::openai_package).await.expect("install");
    let swarm = Swarm::start(false).await;
    let base_url = format!("{}/v1", swarm.api(0));
    let seen = python_openai::run_script("gateway_client.py", base_url, package).await;
    assert_eq!(seen["plain"], "From qwen-b on node 1.", "{seen:#}");
    assert_eq!(seen["streamed"], "From mistral-c on node 2.", "{seen:#}");
    assert_eq!(seen["embeddings"], 2, "{seen:#}");
    assert_eq!(seen["unknown"], 404, "{seen:#}");
}
