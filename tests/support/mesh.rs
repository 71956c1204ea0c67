//! Three (or more) real nodes on loopback taking part in jobs, each with its
//! own OpenAI-compatible provider: a real SSE server on loopback with its own
//! canned answer. Shared by the federation tests and benchmarks, which
//! declare `sse_server` (llm/tests/common) beside this module.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hivemesh::gpu::engine::{BackendChoice, TallyEngine};
use hivemesh::llm::provider::openai::{OpenAiConfig, OpenAiProvider};
use hivemesh::llm::{LlmClient, ResilienceConfig};
use hivemesh::node::federation::FederationConfig;
use hivemesh::node::membership::MembershipConfig;
use hivemesh::node::replica::{Profile, ViewKind};
use hivemesh::node::{Multiaddr, NodeConfig, NodeHandle, spawn_node};
use hivemesh::protocol::Role;
use serde_json::Value;

use crate::sse_server::{Reply, TestServer};

pub const LIMIT: Duration = Duration::from_secs(60);

/// A provider that answers `candidate` as a generator and `final` as the
/// curator, each piece `delay` apart.
pub async fn provider(candidate: &'static str, delay: Duration) -> TestServer {
    TestServer::responding(move |body| {
        let system = body["messages"][0]["content"].as_str().unwrap_or_default();
        let text =
            if system.contains("the Curator") { "Final: Paris is the capital of France." } else { candidate };
        let pieces: Vec<String> = text.split_inclusive(' ').map(String::from).collect();
        Reply::Stream { pieces, delay, usage: None, keepalive: false }
    })
    .await
}

pub async fn start(
    dir: &Path,
    bootstrap: Option<Multiaddr>,
    server: &TestServer,
    speedup: u32,
) -> NodeHandle {
    start_with(dir, bootstrap, server, speedup, |_| {}).await
}

/// `start`, with the federation settings adjusted by `tweak`.
pub async fn start_with(
    dir: &Path,
    bootstrap: Option<Multiaddr>,
    server: &TestServer,
    speedup: u32,
    tweak: impl FnOnce(&mut FederationConfig),
) -> NodeHandle {
    let client = Arc::new(client_for(OpenAiConfig::new("test", server.base_url(), "canned")));
    start_with_client(dir, bootstrap, client, speedup, tweak).await
}

/// A client for a test provider with no retries, cache or rate limit:
/// every call reaches the server as made.
pub fn client_for(config: OpenAiConfig) -> LlmClient {
    let resilience = ResilienceConfig {
        max_attempts: 1,
        cache_entries: 0,
        rate_per_second: None,
        ..ResilienceConfig::default()
    };
    LlmClient::new(Arc::new(OpenAiProvider::new(config).expect("provider")), resilience)
}

/// A node answering its share of jobs with `client`.
pub async fn start_with_client(
    dir: &Path,
    bootstrap: Option<Multiaddr>,
    client: Arc<LlmClient>,
    speedup: u32,
    tweak: impl FnOnce(&mut FederationConfig),
) -> NodeHandle {
    let mut config = NodeConfig::loopback(dir.to_path_buf());
    config.membership = MembershipConfig::lan(3).faster(speedup);
    config.bootstrap = bootstrap.into_iter().collect();
    config.replication.anti_entropy = Duration::from_millis(200);
    let model = client.resolve_model("default").to_string();
    config.replication.profile = Some(Profile { role: Role::Worker, models: vec![model], gpu: None });
    let tally = Arc::new(TallyEngine::new(BackendChoice::Cpu).expect("cpu tally"));
    let mut federation = FederationConfig::new(client, tally);
    federation.tick = Duration::from_millis(100);
    federation.default_deadline = Duration::from_secs(30);
    tweak(&mut federation);
    config.federation = Some(federation);
    spawn_node(config).await.expect("node starts")
}

/// Waits until every node holds every other's registry entry (placement
/// reads it).
pub async fn wait_for_registry(nodes: &[NodeHandle]) {
    for node in nodes {
        let deadline = Instant::now() + LIMIT;
        while node.client().view(Some(ViewKind::Registry)).await.expect("view").members.len()
            < nodes.len() - 1
        {
            assert!(Instant::now() < deadline, "registry did not spread");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub struct Mesh {
    pub nodes: Vec<NodeHandle>,
    pub servers: Vec<TestServer>,
    pub _dirs: Vec<tempfile::TempDir>,
    pub _serial: Serial,
}

/// Held for a mesh's lifetime: one mesh at a time per test binary, so that
/// six meshes' worth of nodes on a 2-core machine do not starve each other's
/// failure detectors into false suspicion.
pub type Serial = tokio::sync::MutexGuard<'static, ()>;

pub async fn serial() -> Serial {
    static ONE_MESH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE_MESH.lock().await
}

impl Mesh {
    /// `speedup` divides the membership periods: more means faster failure
    /// detection and, on a loaded machine, more false suspicion.
    pub async fn new(answers: [&'static str; 3], delays: [Duration; 3], speedup: u32) -> Self {
        let mut servers = Vec::new();
        for (answer, delay) in answers.into_iter().zip(delays) {
            servers.push(provider(answer, delay).await);
        }
        Self::with_servers(servers, speedup).await
    }

    /// One node per provider, joined through the first; returns once every
    /// node holds every other's registry entry (placement reads it).
    pub async fn with_servers(servers: Vec<TestServer>, speedup: u32) -> Self {
        let serial = serial().await;
        let dirs: Vec<tempfile::TempDir> =
            servers.iter().map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let mut nodes: Vec<NodeHandle> = Vec::new();
        for (i, server) in servers.iter().enumerate() {
            let bootstrap =
                nodes.first().and_then(|first| first.address(if i % 2 == 0 { "tcp" } else { "quic-v1" }));
            nodes.push(start(dirs[i].path(), bootstrap, server, speedup).await);
        }
        wait_for_registry(&nodes).await;
        Self { nodes, servers, _dirs: dirs, _serial: serial }
    }

    pub fn api(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].api.expect("api"))
    }

    pub async fn submit(&self, body: Value) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/jobs", self.api(0)))
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
        let body: Value = response.json().await.expect("json");
        body["id"].as_str().expect("id").to_string()
    }

    pub async fn job(&self, id: &str) -> Value {
        reqwest::get(format!("{}/v1/jobs/{id}", self.api(0))).await.expect("get").json().await.expect("json")
    }

    pub async fn wait_status(&self, id: &str, done: impl Fn(&str) -> bool) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let job = self.job(id).await;
            if done(job["status"].as_str().unwrap_or_default()) {
                return job;
            }
            assert!(Instant::now() < deadline, "job stuck: {job:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
