//! What the commands put on stdout and stderr, as a person or a script reads
//! it: a closed pipe ends every command quietly, `--json` is one JSON
//! document, stdout holds exactly the final answer, progress stays on
//! stderr (plain lines when it is not a terminal), and every command that
//! talks to a node takes `--node` and `--api-token` alike.
//!
//! Commands that talk to a node do so here with a stand-in for its API: a
//! real HTTP server on loopback serving the routes and event shapes of
//! node/src/api, so each output rule is checked without starting nodes.

mod common;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::convert::Infallible;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sse_server::{Reply, TestServer};

const JOB: &str = "0123456789abcdef0123456789abcdef";
const PEER: &str = "12D3KooWGzoJ1bHqj1bdj6F8ZGSpWqxuddEPUrLbiANG9pBCyMAB";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// Runs hivemesh with stdout a pipe whose reading end is closed before it
/// starts, as in `hivemesh members --json | true` once `true` has exited.
fn with_closed_stdout(args: &[&str], data_dir: &Path) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_hivemesh"))
        .args(args)
        .env("HIVEMESH_DATA_DIR", data_dir)
        .env_remove("RUST_LOG")
        .env_remove("HIVEMESH_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run hivemesh")
}

/// `with_closed_stdout` off the async runtime.
async fn closed(args: Vec<String>, data_dir: &Path) -> Output {
    let data_dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        with_closed_stdout(&args, &data_dir)
    })
    .await
    .expect("join")
}

/// The real binary with stdout and stderr captured (neither a terminal).
async fn hivemesh(args: Vec<String>, data_dir: &Path) -> Output {
    let data_dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_hivemesh"))
            .args(args)
            .env("HIVEMESH_DATA_DIR", data_dir)
            .env_remove("RUST_LOG")
            .env_remove("HIVEMESH_API_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run hivemesh")
    })
    .await
    .expect("join")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Ended quietly: status 0, no panic, nothing about the pipe on stderr.
fn assert_quiet(what: &str, out: &Output) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{what}: {err}");
    assert!(!err.contains("panicked") && !err.to_lowercase().contains("broken pipe"), "{what}: {err}");
}

#[test]
fn local_commands_end_quietly_on_a_closed_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ballots = dir.path().join("ballots.json");
    let generated = common::hivemesh(&["tally", "--generate", "--voters", "50"], dir.path());
    std::fs::write(&ballots, &generated.stdout).expect("write ballots");
    let ballots = ballots.to_str().expect("utf-8");
    let views = dir.path().join("views.json");
    std::fs::write(&views, r#"[[{"id": "a", "last_updated": "2024-01-01T00:00:00Z", "x": 1}]]"#)
        .expect("write views");
    let views = views.to_str().expect("utf-8");
    let commands: [&[&str]; 11] = [
        &["id"],
        &["id", "--json"],
        &["model", "path"],
        &["sim", "--nodes", "5", "--soak", "1"],
        &["sim", "--nodes", "5", "--soak", "1", "--json"],
        &["tally", "--generate", "--voters", "2000"],
        &["tally", ballots, "--backend", "cpu"],
        &["tally", ballots, "--json"],
        &["majority", views],
        &["--help"],
        &["ask", "--help"],
    ];
    for args in commands {
        let out = with_closed_stdout(args, dir.path());
        assert_quiet(&args.join(" "), &out);
    }
}

#[test]
fn model_path_prints_the_path_alone() {
    let data = tempfile::tempdir().expect("tempdir");
    let output = common::hivemesh(&["model", "path"], data.path());
    assert!(output.status.success(), "{output:?}");
    let expected = data.path().join("models").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(text(&output.stdout), format!("{}\n", expected.display()), "usable as --model \"$(...)\"");
    assert!(text(&output.stderr).contains("hivemesh model pull"), "the missing file is said on stderr");
    // Present: the same path, and nothing on stderr.
    std::fs::create_dir_all(expected.parent().expect("parent")).expect("mkdir");
    std::fs::write(&expected, b"GGUF").expect("write");
    let output = common::hivemesh(&["model", "path"], data.path());
    assert_eq!(text(&output.stdout), format!("{}\n", expected.display()));
}

#[test]
fn a_cause_is_printed_once() {
    // A data dir that is a file: the keystore's error prints its cause and
    // returns it as its source; the line names it once.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    for args in [&["id"][..], &["run", "--no-jobs", "--api", "127.0.0.1:0"][..]] {
        let out = common::hivemesh(args, &file);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert_eq!(err.matches("(os error").count(), 1, "the cause once: {err}");
    }
}

/// Answers by stage (from the role prompt): the curator says the answer.
fn staged(curator: impl Fn(usize) -> Reply + Send + Sync + 'static) -> impl Fn(&Value) -> Reply {
    let calls = Mutex::new(0usize);
    move |body: &Value| {
        let system = body["messages"][0]["content"].as_str().unwrap_or_default();
        if system.contains("the Curator") {
            let mut calls = calls.lock().expect("lock");
            *calls += 1;
            return curator(*calls);
        }
        let text = if system.contains("the Validator") { "The draft is correct." } else { "Paris." };
        Reply::Stream { pieces: vec![text.into()], delay: Duration::ZERO, usage: None, keepalive: false }
    }
}

fn answer() -> Reply {
    let pieces = ["Paris", " is the capital", " of France."].map(String::from).to_vec();
    Reply::Stream { pieces, delay: Duration::from_millis(2), usage: Some((10, 3, None)), keepalive: false }
}

fn ask_here(url: &str, extra: &[&str]) -> Vec<String> {
    let mut args =
        strings(&["ask", "What is the capital of France?", "--provider", url, "--provider-model", "m"]);
    args.extend(strings(extra));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_json_is_one_json_document_and_plain_ask_is_the_answer_alone() {
    let server = TestServer::responding(staged(|_| answer())).await;
    let data = tempfile::tempdir().expect("tempdir");
    let json = hivemesh(ask_here(&server.base_url(), &["--json"]), data.path()).await;
    assert!(json.status.success(), "{}", text(&json.stderr));
    let report: Value = serde_json::from_slice(&json.stdout).expect("stdout is one JSON document");
    assert_eq!(report["answer"], "Paris is the capital of France.");
    assert_eq!(report["stages"].as_array().map(Vec::len), Some(4));

    let plain = hivemesh(ask_here(&server.base_url(), &[]), data.path()).await;
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    assert_eq!(text(&plain.stdout), "Paris is the capital of France.\n");
    let err = text(&plain.stderr);
    assert!(err.contains("curator finished") && err.contains("done:"), "stage lines on stderr: {err}");
    assert!(!err.contains('\u{1b}'), "no colour codes on redirected stderr: {err:?}");

    for args in [ask_here(&server.base_url(), &[]), ask_here(&server.base_url(), &["--json"])] {
        let out = closed(args.clone(), data.path()).await;
        assert_quiet(&args.join(" "), &out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curator_attempt_that_breaks_off_is_never_printed_as_the_answer() {
    // The first curator attempt streams "Paris is the cap" and then an error
    // event; the retry answers in full. Stdout is the retry's answer alone.
    let server = TestServer::responding(staged(|call| {
        if call == 1 {
            Reply::MidStreamError {
                pieces: vec!["Paris is the cap".into()],
                message: "Engine loop died".into(),
            }
        } else {
            answer()
        }
    }))
    .await;
    let data = tempfile::tempdir().expect("tempdir");
    let out = hivemesh(ask_here(&server.base_url(), &[]), data.path()).await;
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(text(&out.stdout), "Paris is the capital of France.\n", "{err}");

    // A curator that always breaks off: the command fails, stdout is empty.
    let server = TestServer::responding(staged(|_| Reply::MidStreamError {
        pieces: vec!["Paris is the cap".into()],
        message: "Engine loop died".into(),
    }))
    .await;
    let out = hivemesh(ask_here(&server.base_url(), &[]), data.path()).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "no partial answer: {:?}", text(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_deadline_stops_the_pipeline() {
    let server =
        TestServer::responding(staged(|_| Reply::AfterLatency(Duration::from_secs(30), Box::new(answer()))))
            .await;
    let data = tempfile::tempdir().expect("tempdir");
    let out = hivemesh(ask_here(&server.base_url(), &["--deadline", "1"]), data.path()).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("deadline of 1 s"), "{err}");
    assert!(out.stdout.is_empty());
    let zero = hivemesh(ask_here(&server.base_url(), &["--deadline", "0"]), data.path()).await;
    assert_eq!(zero.status.code(), Some(2), "a usage error: {}", text(&zero.stderr));
}

/// A stand-in for a node's API: what it was sent, and the token it wants.
#[derive(Default)]
struct FakeNode {
    token: Option<&'static str>,
    jobs_posted: Mutex<Vec<Value>>,
    /// Pause before the outcome event, so the job's wall time is known to
    /// be at least this.
    outcome_after: Duration,
}

type Node = Arc<FakeNode>;

fn refused(node: &FakeNode, headers: &HeaderMap) -> Option<Response> {
    let token = node.token?;
    let sent = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    (sent != format!("Bearer {token}")).then(|| {
        (StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": "missing or wrong bearer token"}})))
            .into_response()
    })
}

async fn members(State(node): State<Node>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&node, &headers) {
        return refusal;
    }
    let me = json!({"peer_id": PEER, "state": "alive", "addresses": ["/ip4/127.0.0.1/tcp/1"],
        "incarnation": 0, "generation": 1, "last_change_ms": 0, "role": "Worker", "models": ["m"]});
    Json(json!({"view": "registry", "active_view": "registry", "me": me, "members": []})).into_response()
}

async fn submit(State(node): State<Node>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Some(refusal) = refused(&node, &headers) {
        return refusal;
    }
    node.jobs_posted.lock().expect("lock").push(body);
    (StatusCode::ACCEPTED, Json(json!({"id": JOB, "url": format!("/v1/jobs/{JOB}")}))).into_response()
}

async fn list(State(node): State<Node>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&node, &headers) {
        return refusal;
    }
    let row = json!({"job": {"id": JOB, "status": "done", "mode": "council", "question": "q", "answer": "Paris."},
        "created_ms": 1000, "finished_ms": 2000});
    Json(json!({"jobs": vec![row; 40]})).into_response()
}

async fn show(State(node): State<Node>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&node, &headers) {
        return refusal;
    }
    Json(json!({"id": JOB, "outcome": {"status": "done", "answer": "Paris is the capital of France.", "elapsed_ms": 5}}))
        .into_response()
}

async fn leave(State(node): State<Node>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&node, &headers) {
        return refusal;
    }
    (StatusCode::ACCEPTED, Json(json!({"status": "leaving"}))).into_response()
}

/// A council's events as node/src/api/jobs.rs sends them: many token
/// frames (one partial attempt among them), candidates, the outcome with a
/// figure that leaves time out, then `done`.
async fn events(State(node): State<Node>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&node, &headers) {
        return refusal;
    }
    let mut events: Vec<(Duration, Event)> = Vec::new();
    let event = |name: &str, data: Value| Event::default().event(name).data(data.to_string());
    events.push((Duration::ZERO, event("job", json!({"kind": "spec", "peer": PEER, "body": {}}))));
    for i in 0..60 {
        let text = if i < 30 { "Paris is the cap" } else { "Paris " };
        let attempt = if i < 30 { 1 } else { 2 };
        events.push((
            Duration::ZERO,
            event("tokens", json!({"part": "curator", "peer": PEER, "attempt": attempt, "text": text})),
        ));
    }
    events.push((
        Duration::ZERO,
        event(
            "candidate",
            json!({"kind": "candidate", "peer": PEER, "body": {"tokens": 3, "elapsed_ms": 2}}),
        ),
    ));
    events.push((
        node.outcome_after,
        event(
            "outcome",
            json!({"kind": "outcome", "peer": PEER, "body": {"status": "done", "elapsed_ms": 5}}),
        ),
    ));
    events.push((Duration::ZERO, event("done", json!({"id": JOB}))));
    let stream = futures_util::stream::iter(events).then(|(pause, event)| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, Infallible>(event)
    });
    Sse::new(stream).into_response()
}

async fn fake_node(node: FakeNode) -> (String, Node) {
    let node = Arc::new(node);
    let app = axum::Router::new()
        .route("/v1/members", get(members))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(show))
        .route("/v1/jobs/{id}/events", get(events))
        .route("/v1/leave", post(leave))
        .with_state(node.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_commands_end_quietly_on_a_closed_stdout() {
    let (url, _node) = fake_node(FakeNode::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let commands: [&[&str]; 6] = [
        &["members", "--json", "--node", &url],
        &["members", "--node", &url],
        &["jobs", "--node", &url],
        &["jobs", "--json", "--node", &url],
        &["jobs", JOB, "--node", &url],
        &["ask", "q", "--node", &url],
    ];
    for args in commands {
        let out = closed(strings(args), dir.path()).await;
        assert_quiet(&args.join(" "), &out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_of_a_node_prints_the_answer_or_one_json_document_and_plain_progress() {
    let outcome_after = Duration::from_millis(1500);
    let (url, node) = fake_node(FakeNode { outcome_after, ..FakeNode::default() }).await;
    let dir = tempfile::tempdir().expect("tempdir");

    let out = hivemesh(strings(&["ask", "q", "--node", &url, "--mode", "council"]), dir.path()).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "Paris is the capital of France.\n", "the outcome's answer alone");
    assert!(!stderr.contains("Paris is the cap"), "no token frames off a terminal: {stderr}");
    assert!(stderr.contains("candidate from"), "a line per step: {stderr}");
    assert!(stderr.lines().count() < 10, "not a line per token frame: {stderr}");
    // The job's wall time, not the figure the outcome carried (5 ms).
    let done = stderr.lines().find(|l| l.contains("done in")).expect("a done line");
    let seconds: f64 = done
        .split("done in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("seconds in {done:?}"));
    assert!(seconds >= outcome_after.as_secs_f64(), "{done}");

    let out = hivemesh(strings(&["ask", "q", "--node", &url, "--json"]), dir.path()).await;
    let job: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(job["outcome"]["answer"], "Paris is the capital of France.");

    // The job's deadline: given, or the mode's default.
    let _ = hivemesh(strings(&["ask", "q", "--node", &url, "--deadline", "42"]), dir.path()).await;
    let _ = hivemesh(strings(&["ask", "q", "--node", &url, "--mode", "pipeline"]), dir.path()).await;
    let posted = node.jobs_posted.lock().expect("lock").clone();
    let deadlines: Vec<&Value> = posted.iter().map(|job| &job["deadline_ms"]).collect();
    assert_eq!(deadlines[deadlines.len() - 2], &json!(42_000));
    assert_eq!(deadlines[deadlines.len() - 1], &json!(600_000), "a pipeline's default fits a busy box");
    for bad in ["0", "86401", "soon"] {
        let out = hivemesh(strings(&["ask", "q", "--node", &url, "--deadline", bad]), dir.path()).await;
        assert_eq!(out.status.code(), Some(2), "--deadline {bad}: {}", text(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_that_talks_to_a_node_takes_its_api_token() {
    let (url, _node) = fake_node(FakeNode { token: Some("s3cret"), ..FakeNode::default() }).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let commands: [&[&str]; 5] =
        [&["members", "--json"], &["jobs"], &["jobs", JOB], &["ask", "q"], &["leave"]];
    for args in commands {
        let mut with_token = strings(args);
        with_token.extend(strings(&["--node", &url, "--api-token", "s3cret"]));
        let out = hivemesh(with_token.clone(), dir.path()).await;
        assert!(out.status.success(), "{}: {}", with_token.join(" "), text(&out.stderr));
        let mut without = strings(args);
        without.extend(strings(&["--node", &url]));
        let out = hivemesh(without, dir.path()).await;
        assert_eq!(out.status.code(), Some(1), "{}", args.join(" "));
        assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_the_text_of_a_failed_attempt_is_erased() {
    // A pseudo-terminal from util-linux's `script`; without it there is no
    // terminal to test on.
    if Command::new("script").arg("--version").output().is_err() {
        return;
    }
    let server = TestServer::responding(staged(|call| {
        if call == 1 {
            Reply::MidStreamError {
                pieces: vec!["Lyon is the cap".into()],
                message: "Engine loop died".into(),
            }
        } else {
            answer()
        }
    }))
    .await;
    let data = tempfile::tempdir().expect("tempdir");
    let command = format!(
        "{} ask 'What is the capital of France?' --provider {} --provider-model m",
        env!("CARGO_BIN_EXE_hivemesh"),
        server.base_url()
    );
    let data_dir = data.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .env("HIVEMESH_DATA_DIR", data_dir)
            .env("TERM", "xterm")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run script")
    })
    .await
    .expect("join");
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen}");
    // Shown live, then erased (clear line), then the answer.
    let partial = screen.find("Lyon is the cap").unwrap_or_else(|| panic!("live text: {screen:?}"));
    let erased = screen[partial..].find("\u{1b}[2K").unwrap_or_else(|| panic!("erased: {screen:?}"));
    assert!(screen[partial + erased..].contains("Paris is the capital of France."), "{screen:?}");
}
