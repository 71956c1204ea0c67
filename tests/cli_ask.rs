//! `hivemesh ask` and `hivemesh model` as a user runs them, against a real
//! OpenAI-compatible streaming server on loopback.

mod common;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::time::Duration;

use sse_server::{Reply, TestServer};

/// Answers by stage (from the role prompt), so the curator's text is known.
async fn server() -> TestServer {
    TestServer::responding(|body| {
        let system = body["messages"][0]["content"].as_str().unwrap_or_default();
        let text = if system.contains("the Curator") {
            vec!["Paris", " is the capital", " of France."]
        } else if system.contains("the Validator") {
            vec!["The draft is correct."]
        } else {
            vec!["Paris."]
        };
        Reply::Stream {
            pieces: text.into_iter().map(String::from).collect(),
            delay: Duration::from_millis(2),
            usage: Some((10, 3, Some(0.0001))),
            keepalive: true,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_streams_the_curators_answer_and_reports_each_stage() {
    let server = server().await;
    let data = tempfile::tempdir().expect("tempdir");
    let url = server.base_url();
    let output = common::hivemesh(
        &["ask", "What is the capital of France?", "--provider", &url, "--provider-model", "m", "--json"],
        data.path(),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr: {stderr}");
    // With --json, stdout is one JSON document and nothing else.
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    assert_eq!(report["answer"], "Paris is the capital of France.");
    assert_eq!(report["stages"].as_array().expect("stages").len(), 4);
    for stage in ["generator", "refiner", "validator", "curator"] {
        assert!(stderr.contains(&format!("{stage} started on {url}/m")), "{stage} start missing: {stderr}");
        assert!(stderr.contains(&format!("{stage} finished: 3 tokens")), "{stage} finish missing: {stderr}");
    }
    assert_eq!(server.seen().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_fails_the_command_naming_the_stage() {
    let server = TestServer::scripted(vec![Reply::status(401, "invalid API key")]).await;
    let data = tempfile::tempdir().expect("tempdir");
    let output = common::hivemesh(&["ask", "q", "--provider", &server.base_url()], data.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("stage generator failed after 1 attempt(s)"), "{stderr}");
    assert!(stderr.contains("HTTP 401: invalid API key"), "{stderr}");
    assert!(output.stdout.is_empty(), "no partial answer on stdout");
    assert_eq!(server.seen().len(), 1, "401 is not retried");
}

#[test]
fn bad_profiles_and_providers_are_clear_errors() {
    let data = tempfile::tempdir().expect("tempdir");
    let output = common::hivemesh(
        &["ask", "q", "--provider", "http://127.0.0.1:9/v1", "--profile", "turbo"],
        data.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown profile \"turbo\"; known profiles: balanced, fast, quality"),
        "{stderr}"
    );
    let output = common::hivemesh(&["ask", "q", "--provider", "gopher"], data.path());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown provider \"gopher\""));
    std::fs::write(data.path().join("profiles.toml"), "[profiles.x]\nbase = 3").expect("write");
    let output = common::hivemesh(&["ask", "q", "--provider", "http://127.0.0.1:9/v1"], data.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("profiles.toml: profiles file") && stderr.contains("line 2"), "{stderr}");
    std::fs::remove_file(data.path().join("profiles.toml")).expect("remove");
    let output = common::hivemesh(&["ask", "q", "--model", "/nonexistent/m.gguf"], data.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--model PATH") && stderr.contains("/nonexistent/m.gguf"), "{stderr}");
}

#[test]
fn model_path_says_where_the_model_goes() {
    let data = tempfile::tempdir().expect("tempdir");
    let output = common::hivemesh(&["model", "path"], data.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.ends_with("models/SmolLM2-135M-Instruct.Q4_1.gguf\n"), "the path alone: {stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("hivemesh model pull"));
}
