//! The OpenAI-compatible endpoint driven by the official `openai` Python
//! package (pinned; fetched once into the target dir, like a crate), in
//! plain and streaming mode, against three real nodes on loopback.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/python_openai.rs"]
mod python_openai;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::time::Duration;

use mesh::Mesh;
use python_openai::openai_package;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_uses_the_mesh_as_one_model() {
    let package = tokio::task::spawn_blocking(openai_package).await.expect("install");
    let mesh = Mesh::new(
        ["Paris is the capital of France.", "The capital of France is Paris.", "Bananas are yellow."],
        [Duration::from_millis(1); 3],
        1,
    )
    .await;
    let base_url = format!("{}/v1", mesh.api(0));
    let seen = python_openai::run_script("openai_client.py", base_url, package).await;

    let models = seen["models"].as_array().expect("models");
    for id in ["council", "hivemesh", "pipeline"] {
        assert!(models.iter().any(|m| m == id), "{id} listed: {models:?}");
    }

    let plain = &seen["plain"];
    assert_eq!(plain["content"], "Final: Paris is the capital of France.", "{seen:#}");
    assert_eq!(plain["finish_reason"], "stop");
    let meta = &plain["hivemesh"];
    assert_eq!(meta["outcome"]["status"], "done", "consensus metadata rides along: {seen:#}");
    assert_eq!(meta["outcome"]["ballot_file"]["ballots"].as_array().map(Vec::len), Some(3));

    let streamed = &seen["streamed"];
    assert_eq!(streamed["content"], "Final: Paris is the capital of France.", "{seen:#}");
    assert!(streamed["chunks"].as_u64().unwrap_or(0) >= 2, "the answer came in chunks: {seen:#}");
    assert_eq!(
        streamed["hivemesh"]["outcome"]["contributions"].as_array().map(Vec::len),
        Some(4),
        "{seen:#}"
    );

    // An unknown profile is an unknown model, as OpenAI answers one: 404.
    let unknown = &seen["unknown_profile"];
    assert_eq!(unknown["status"], 404, "{seen:#}");
    assert!(unknown["message"].as_str().unwrap_or_default().contains("no-such-profile"), "{seen:#}");
}

/// Providers that fail any call for a question containing FAIL (a 400, never
/// retried) and otherwise answer like `mesh::provider`, reporting 12 prompt
/// tokens per call.
async fn fail_on_request() -> sse_server::TestServer {
    use sse_server::Reply;
    sse_server::TestServer::responding(|body| {
        if body.to_string().contains("FAIL") {
            return Reply::status(400, "this model refuses the question");
        }
        let system = body["messages"][0]["content"].as_str().unwrap_or_default();
        let text = if system.contains("the Curator") {
            "Final: Paris is the capital of France."
        } else {
            "Paris is the capital of France."
        };
        let pieces: Vec<String> = text.split_inclusive(' ').map(String::from).collect();
        let completion = pieces.len() as u64;
        Reply::Stream {
            pieces,
            delay: Duration::from_millis(1),
            usage: Some((12, completion, None)),
            keepalive: false,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_raises_on_failed_jobs_reads_usage_and_sends_tool_history() {
    let package = tokio::task::spawn_blocking(openai_package).await.expect("install");
    let servers = vec![fail_on_request().await, fail_on_request().await, fail_on_request().await];
    let mesh = Mesh::with_servers(servers, 1).await;
    let base_url = format!("{}/v1", mesh.api(0));
    let seen = python_openai::run_script("openai_fields.py", base_url, package).await;

    let failed = &seen["failed_stream"];
    assert_eq!(failed["raised"], "APIError", "a failed job raises in the SDK: {seen:#}");
    assert!(failed["message"].as_str().unwrap_or_default().contains("failed"), "{seen:#}");
    assert_eq!(seen["failed_plain"]["status"], 502, "{seen:#}");

    let usage = &seen["usage"];
    assert_eq!(usage["text"], "Final: Paris is the capital of France.", "{seen:#}");
    let calls = usage["calls"].as_u64().unwrap_or(0);
    assert!(calls >= 3, "{seen:#}");
    assert_eq!(
        usage["usage"]["prompt_tokens"].as_u64(),
        Some(12 * calls),
        "12 prompt tokens a call: {seen:#}"
    );
    assert_eq!(usage["usage"]["choices"], 0, "{seen:#}");

    assert_eq!(seen["tools_history"]["content"], "Final: Paris is the capital of France.", "{seen:#}");
    for field in ["n", "logprobs", "response_format"] {
        let refused = &seen["refused"][field];
        assert_eq!(refused["status"], 400, "{field}: {seen:#}");
        assert_eq!(refused["param"], field, "{field}: {seen:#}");
    }
}
