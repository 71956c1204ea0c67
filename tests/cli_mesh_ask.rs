//! `hivemesh mesh --nodes 2 --ask Q --json` as a user runs it, every node's
//! model calls going to a real OpenAI-compatible streaming server on
//! loopback: stdout is exactly one JSON document (answer, winner,
//! candidates with their authors, ballots, tally, timings), progress is on
//! stderr.

mod common;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::time::Duration;

use serde_json::Value;
use sse_server::{Reply, TestServer};

const FINAL: &str = "Paris is the capital of France.";

/// Candidates answer `Paris.`, the curator the final sentence.
async fn server() -> TestServer {
    TestServer::responding(|body| {
        let system = body["messages"][0]["content"].as_str().unwrap_or_default();
        let text = if system.contains("the Curator") { FINAL } else { "Paris." };
        Reply::Stream {
            pieces: text.split_inclusive(' ').map(String::from).collect(),
            delay: Duration::from_millis(1),
            usage: Some((10, 3, None)),
            keepalive: false,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_ask_json_prints_one_document_with_the_whole_outcome_and_progress_on_stderr() {
    let server = server().await;
    let data = tempfile::tempdir().expect("tempdir");
    let url = server.base_url();
    let args: Vec<String> = [
        "mesh",
        "--nodes",
        "2",
        "--no-mdns",
        "--ask",
        "What is the capital of France?",
        "--json",
        "--provider",
        url.as_str(),
        "--provider-model",
        "m",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let output = tokio::task::spawn_blocking({
        let dir = data.path().to_path_buf();
        move || common::hivemesh(&args.iter().map(String::as_str).collect::<Vec<_>>(), &dir)
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    // The whole of stdout is one JSON value: nothing before or after it.
    let document: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(stderr.contains("converged") && stderr.contains("candidate"), "progress on stderr: {stderr}");

    assert_eq!(document["status"], "done", "{document:#}");
    assert_eq!(document["answer"], FINAL, "{document:#}");
    assert_eq!(document["mode"], "council");
    assert_eq!(document["question"], "What is the capital of France?");
    let node_names = ["node-0", "node-1"];
    let candidates = document["candidates"].as_array().expect("candidates");
    let written: Vec<&Value> = candidates.iter().filter(|c| c["text"] == "Paris.").collect();
    assert_eq!(written.len(), 2, "both nodes wrote a candidate: {document:#}");
    for candidate in &written {
        assert!(candidate["author"].as_str().is_some_and(|a| a.starts_with("12D3")), "{candidate}");
        assert!(node_names.contains(&candidate["name"].as_str().unwrap_or_default()), "{candidate}");
    }
    assert_ne!(written[0]["author"], written[1]["author"], "{document:#}");

    let ballots = document["ballots"].as_array().expect("ballots");
    assert_eq!(ballots.len(), 2, "both nodes voted: {document:#}");
    for ballot in ballots {
        assert!(node_names.contains(&ballot["name"].as_str().unwrap_or_default()), "{ballot}");
        assert!(ballot["reads"].as_str().is_some_and(|r| r.contains("node-")), "{ballot}");
        assert!(ballot["choice"].is_object(), "{ballot}");
    }
    assert_eq!(document["vote_order"].as_array().map(Vec::len), Some(2), "{document:#}");
    let winner = document["winner"]["peer"].as_str().expect("a winner");
    assert!(written.iter().any(|c| c["author"] == winner), "the winner wrote a candidate: {document:#}");
    assert!(document["tally"]["result"]["ranking"].is_array(), "{document:#}");

    let timings = &document["timings"];
    let steps = timings["steps"].as_array().expect("steps");
    assert!(steps.iter().any(|s| s["kind"] == "candidate"), "{timings}");
    assert!(steps.iter().any(|s| s["kind"] == "ballot"), "{timings}");
    assert!(steps.windows(2).all(|w| w[0]["at_ms"].as_u64() <= w[1]["at_ms"].as_u64()), "{timings}");
    let total = timings["total_ms"].as_u64().expect("total_ms");
    assert!(steps.iter().all(|s| s["at_ms"].as_u64().is_some_and(|t| t <= total)), "{timings}");
    assert!(timings["job_ms"].is_u64(), "{timings}");
}

#[test]
fn json_without_ask_is_refused() {
    let data = tempfile::tempdir().expect("tempdir");
    let output = common::hivemesh(&["mesh", "--nodes", "2", "--json"], data.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--ask"), "{stderr}");
    assert!(output.stdout.is_empty());
}
