//! Two "Hive-like" desktop apps, each with its own model provider, pooled
//! through two hivemesh nodes on loopback. Each app talks to its own node's
//! OpenAI-compatible endpoint as if it were one model; the mesh spreads the
//! work over both providers.
//!
//! App A asks its node for the Hive pipeline (`model: "pipeline"`): the
//! stages land on both nodes. App B asks its node for a council
//! (`model: "council"`, streamed): both nodes answer, vote with signed
//! ballots, and the curator writes the result.
//!
//! Run: cargo run --release --example federate_hive
//!      cargo run --release --example federate_hive -- http://127.0.0.1:11434/v1 local
//! Each argument is one app's provider: `local` (the embedded SmolLM2 model,
//! pulled on first use) or the base URL of an OpenAI-compatible server (key,
//! if any, in $HIVEMESH_API_KEY; model name in $HIVEMESH_PROVIDER_MODEL).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use hivemesh::gpu::engine::{BackendChoice, TallyEngine};
use hivemesh::llm::provider::embedded::{EmbeddedOptions, EmbeddedProvider};
use hivemesh::llm::provider::openai::{OpenAiConfig, OpenAiProvider};
use hivemesh::llm::{LlmClient, ResilienceConfig, model_file};
use hivemesh::node::federation::FederationConfig;
use hivemesh::node::replica::{Profile, ViewKind};
use hivemesh::node::{NodeConfig, NodeHandle, keystore, spawn_node};
use serde_json::{Value, json};

const QUESTION: &str = "What is the capital of France?";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let provider_of = |i: usize| args.get(i).cloned().unwrap_or_else(|| "local".into());
    let root = tempfile::tempdir()?;
    let a = start_node(root.path().join("app-a"), &provider_of(0), None).await?;
    let b = start_node(root.path().join("app-b"), &provider_of(1), Some(&a)).await?;
    for node in [&a, &b] {
        wait_for_peer_entry(node).await?;
    }
    let api_a = format!("http://{}/v1/chat/completions", a.api.context("node A has no API")?);
    let api_b = format!("http://{}/v1/chat/completions", b.api.context("node B has no API")?);
    println!("app A -> {api_a}\napp B -> {api_b}\n");

    let started = Instant::now();
    let (pipeline, council) = tokio::join!(ask_plain(&api_a, "pipeline"), ask_streaming(&api_b, "council"));
    let names = [(a.peer_id.to_string(), "node A"), (b.peer_id.to_string(), "node B")];
    let name = |peer: &str| names.iter().find(|(id, _)| id == peer).map_or("?", |(_, n)| *n);
    for (app, result) in [("A (pipeline)", pipeline), ("B (council, streamed)", council)] {
        let (answer, meta) = result?;
        println!("== app {app}\nanswer: {}", answer.trim());
        for part in meta["outcome"]["contributions"].as_array().into_iter().flatten() {
            println!(
                "  {:<12} on {} ({} tokens, {} ms)",
                part["part"].as_str().unwrap_or("?"),
                name(part["peer"].as_str().unwrap_or_default()),
                part["tokens"],
                part["elapsed_ms"]
            );
        }
        if let Some(winner) = meta["outcome"]["winner"].as_str() {
            println!("  council winner: the candidate from {}", name(winner));
        }
        println!();
    }
    println!("both apps answered in {:.1} s", started.elapsed().as_secs_f64());
    for node in [a, b] {
        node.leave(Duration::from_secs(2)).await;
    }
    Ok(())
}

/// One app's node: its own provider, taking part in jobs, advertising its model.
async fn start_node(
    dir: std::path::PathBuf,
    provider: &str,
    join: Option<&NodeHandle>,
) -> anyhow::Result<NodeHandle> {
    let client = Arc::new(model_client(provider).await?);
    let tally = Arc::new(TallyEngine::new(BackendChoice::Auto)?);
    let mut config = NodeConfig::loopback(dir);
    config.bootstrap = join.and_then(|node| node.address("quic-v1")).into_iter().collect();
    config.replication.anti_entropy = Duration::from_millis(500);
    config.replication.profile =
        Some(Profile { models: vec![client.resolve_model("default").to_string()], ..Profile::default() });
    config.federation = Some(FederationConfig::new(client, tally));
    Ok(spawn_node(config).await?)
}

async fn model_client(provider: &str) -> anyhow::Result<LlmClient> {
    if provider == "local" {
        let data_dir = match std::env::var_os("HIVEMESH_DATA_DIR") {
            Some(dir) => dir.into(),
            None => keystore::default_data_dir()?,
        };
        let path = model_file::ensure_default(&model_file::default_model_path(&data_dir), &|line: &str| {
            eprintln!("{line}")
        })
        .await?;
        let provider = EmbeddedProvider::new(path, EmbeddedOptions::default());
        provider.model().await?;
        let config =
            ResilienceConfig { max_attempts: 1, rate_per_second: None, ..ResilienceConfig::default() };
        return Ok(LlmClient::new(Arc::new(provider), config));
    }
    let model = std::env::var("HIVEMESH_PROVIDER_MODEL").unwrap_or_else(|_| "default".into());
    let mut config = OpenAiConfig::new(provider, provider, &model);
    config.api_key = std::env::var("HIVEMESH_API_KEY").ok();
    Ok(LlmClient::new(Arc::new(OpenAiProvider::new(config)?), ResilienceConfig::default()))
}

/// Placement reads the registry: wait until the node knows its peer's entry.
async fn wait_for_peer_entry(node: &NodeHandle) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.client().view(Some(ViewKind::Registry)).await?.members.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "the nodes did not find each other in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A plain OpenAI chat completion, as a Hive instance sends one.
async fn ask_plain(url: &str, model: &str) -> anyhow::Result<(String, Value)> {
    let body = json!({ "model": model, "messages": [{ "role": "user", "content": QUESTION }] });
    let response: Value =
        reqwest::Client::new().post(url).json(&body).send().await?.error_for_status()?.json().await?;
    let answer = response["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
    Ok((answer, response["hivemesh"].clone()))
}

/// The same request with `stream: true`: the answer arrives in chunks, the
/// consensus metadata on the last one.
async fn ask_streaming(url: &str, model: &str) -> anyhow::Result<(String, Value)> {
    let body =
        json!({ "model": model, "stream": true, "messages": [{ "role": "user", "content": QUESTION }] });
    let response = reqwest::Client::new().post(url).json(&body).send().await?.error_for_status()?;
    let mut chunks = response.bytes_stream();
    let (mut buffer, mut answer, mut meta) = (String::new(), String::new(), Value::Null);
    while let Some(chunk) = chunks.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                return Ok((answer, meta));
            }
            let chunk: Value = serde_json::from_str(data).context("a chunk that is not JSON")?;
            answer.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
            if !chunk["hivemesh"].is_null() {
                meta = chunk["hivemesh"].clone();
            }
        }
    }
    anyhow::bail!("the stream ended without [DONE]")
}
