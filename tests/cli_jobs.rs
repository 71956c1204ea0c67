//! `hivemesh run` taking part in jobs, `hivemesh ask --node/--mode` and
//! `hivemesh jobs`, as a user runs them: three real node processes on
//! loopback, each with its own OpenAI-compatible provider (a loopback SSE
//! server with its own canned answer).

#[path = "support/mesh.rs"]
mod mesh;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sse_server::TestServer;

/// Kills its node process however the test ends.
struct NodeProcess {
    child: Child,
    api: String,
    listen: String,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, server: &TestServer, bootstrap: Option<&str>) -> NodeProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hivemesh"));
    command
        .args(["run", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--api", "127.0.0.1:0"])
        .args(["--provider", &server.base_url(), "--provider-model", "canned", "--anti-entropy-ms", "200"])
        .env("HIVEMESH_DATA_DIR", dir)
        .env_remove("RUST_LOG")
        .env_remove("HIVEMESH_API_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(address) = bootstrap {
        command.args(["--bootstrap", address]);
    }
    let mut child = command.spawn().expect("start hivemesh run");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut listen, mut api) = (None, None);
    while listen.is_none() || api.is_none() {
        let line = lines.next().expect("the node printed its addresses").expect("utf-8");
        if let Some(address) = line.strip_prefix("listening: ") {
            listen = Some(address.to_string());
        }
        if let Some(rest) = line.strip_prefix("control API: ") {
            api = rest.split_whitespace().next().map(String::from);
        }
    }
    // Keep draining stdout so the node never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    NodeProcess { child, api: api.expect("api"), listen: listen.expect("listen") }
}

async fn hivemesh(args: Vec<String>, data_dir: &Path) -> Output {
    let data_dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_hivemesh"))
            .args(args)
            .env("HIVEMESH_DATA_DIR", data_dir)
            .env_remove("RUST_LOG")
            .env_remove("HIVEMESH_API_TOKEN")
            .output()
            .expect("run hivemesh")
    })
    .await
    .expect("join")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Placement reads the registry: waits until `node` knows both others and
/// what they offer.
async fn wait_for_offers(node: &NodeProcess, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let members =
            hivemesh(strings(&["members", "--view", "registry", "--json", "--node", &node.api]), dir).await;
        let report: Value = serde_json::from_slice(&members.stdout).unwrap_or_default();
        let offering = report["members"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["models"] == serde_json::json!(["canned"])).count());
        if offering == 2 {
            return;
        }
        assert!(Instant::now() < deadline, "the registry did not spread: {report:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_with_run_answer_jobs_asked_from_the_command_line() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let servers = [
        mesh::provider("Paris is the capital of France.", Duration::from_millis(2)).await,
        mesh::provider("The capital of France is Paris.", Duration::from_millis(2)).await,
        mesh::provider("Bananas are yellow.", Duration::from_millis(2)).await,
    ];
    let a = start(dirs[0].path(), &servers[0], None);
    let b = start(dirs[1].path(), &servers[1], Some(&a.listen));
    let c = start(dirs[2].path(), &servers[2], Some(&a.listen));

    wait_for_offers(&a, dirs[0].path()).await;

    let question = "What is the capital of France?";
    let council =
        hivemesh(strings(&["ask", "--node", &a.api, "--mode", "council", question]), dirs[2].path()).await;
    let (out, err) = (text(&council.stdout), text(&council.stderr));
    assert!(council.status.success(), "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "Final: Paris is the capital of France.", "only the answer on stdout");
    assert_eq!(err.matches("candidate from").count(), 3, "three candidates: {err}");
    assert_eq!(err.matches("ballot from").count(), 3, "three ballots: {err}");
    assert!(err.contains("done in"), "plain progress lines: {err}");
    assert!(!err.lines().any(|l| l.contains("] tokens ")), "no line per token frame off a terminal: {err}");
    let peers: Vec<&str> =
        [&a, &b, &c].iter().map(|n| n.listen.rsplit('/').next().unwrap_or_default()).collect();
    for peer in &peers {
        let short = &peer[peer.len() - 6..];
        assert!(err.contains(&format!("candidate from …{short}")), "a candidate from {peer}: {err}");
    }

    // Without --node, `ask --mode` finds the node started on this data dir.
    let pipeline = hivemesh(strings(&["ask", "--mode", "pipeline", question]), dirs[0].path()).await;
    let (out, err) = (text(&pipeline.stdout), text(&pipeline.stderr));
    assert!(pipeline.status.success(), "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "Final: Paris is the capital of France.");
    for stage in ["stage.generator", "stage.refiner", "stage.validator", "stage.curator"] {
        assert!(err.contains(&format!("{stage} from")), "{stage} ran: {err}");
    }

    let listed = hivemesh(strings(&["jobs", "--node", &a.api]), dirs[0].path()).await;
    let out = text(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(out.contains("2 jobs") && out.matches(" done ").count() == 2, "{out}");
    assert!(out.contains("council") && out.contains("pipeline"), "{out}");

    let json = hivemesh(strings(&["jobs", "--json", "--node", &a.api]), dirs[0].path()).await;
    let list: Value = serde_json::from_slice(&json.stdout).expect("JSON list");
    let id = list["jobs"][0]["job"]["id"].as_str().expect("an id").to_string();
    let shown = hivemesh(strings(&["jobs", &id, "--json", "--node", &a.api]), dirs[0].path()).await;
    let job: Value = serde_json::from_slice(&shown.stdout).expect("JSON job");
    assert_eq!(job["id"], id);
    assert_eq!(job["outcome"]["status"], "done");
    // Without --json, the same job for people: what was asked, who wrote
    // what, and the answer, each on a labelled line.
    let human = hivemesh(strings(&["jobs", &id, "--node", &a.api]), dirs[0].path()).await;
    let out = text(&human.stdout);
    assert!(human.status.success(), "{human:?}");
    assert!(out.contains(&format!("job       {id}")) && out.contains("status    done"), "{out}");
    assert!(out.contains(&format!("question  {question}")), "{out}");
    assert!(out.contains("\nanswer\nFinal: Paris is the capital of France."), "{out}");
    // The newest job is the pipeline, asked at a: its stages by name.
    assert!(out.contains(&format!("asker     {}", peers[0])), "{out}");
    assert!(out.contains("  generator ") && out.contains("  curator "), "{out}");
    assert!(serde_json::from_str::<Value>(&out).is_err(), "not JSON: {out}");

    let bad =
        hivemesh(strings(&["ask", "--node", &a.api, "--mode", "debate", question]), dirs[0].path()).await;
    let err = text(&bad.stderr);
    // A usage error, caught before anything is asked of the node.
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(
        err.contains("debate") && err.contains("council, pipeline"),
        "the error names the bad mode: {err}"
    );
    let unknown =
        hivemesh(strings(&["jobs", "00000000000000000000000000000000", "--node", &a.api]), dirs[0].path())
            .await;
    assert!(text(&unknown.stderr).contains("404"), "{}", text(&unknown.stderr));
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_whose_node_dies_mid_job_says_the_node_stopped_answering() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    // Six pieces two seconds apart: no candidate is done for 12 s.
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(mesh::provider("Paris is the capital of France.", Duration::from_secs(2)).await);
    }
    let a = start(dirs[0].path(), &servers[0], None);
    let _b = start(dirs[1].path(), &servers[1], Some(&a.listen));
    let _c = start(dirs[2].path(), &servers[2], Some(&a.listen));
    wait_for_offers(&a, dirs[0].path()).await;

    let ask = Command::new(env!("CARGO_BIN_EXE_hivemesh"))
        .args(["ask", "--node", &a.api, "--mode", "council", "What is the capital of France?"])
        .env("HIVEMESH_DATA_DIR", dirs[2].path())
        .env_remove("RUST_LOG")
        .env_remove("HIVEMESH_API_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hivemesh ask");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let api = a.api.clone();
    drop(a); // killed mid-job, no goodbye
    let asked =
        tokio::task::spawn_blocking(move || ask.wait_with_output()).await.expect("join").expect("ask");
    let (out, err) = (text(&asked.stdout), text(&asked.stderr));
    assert!(!asked.status.success(), "stdout: {out}\nstderr: {err}");
    assert!(out.trim().is_empty(), "no answer on stdout: {out}");
    assert!(err.contains(&format!("the node at {api} stopped answering while job")), "{err}");
    assert!(
        err.contains("hivemesh jobs ") && err.contains(&format!("--node {api}")),
        "where to look next: {err}"
    );
}
