//! `hivemesh run`, `members`, `leave` and `sim` as a user runs them.

use std::process::{Command, Stdio};

mod common;
use common::hivemesh;
use std::time::{Duration, Instant};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn members_without_a_running_node_says_how_to_start_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = hivemesh(&["members"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("no running node found") && err.contains("api.addr"), "{err}");
}

#[test]
fn a_malformed_bootstrap_address_is_a_clear_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = hivemesh(&["run", "--bootstrap", "192.0.2.1:4001"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("not a multiaddr"), "{}", text(&out.stderr));
}

#[test]
fn sim_is_reproducible_and_reports_convergence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["sim", "--nodes", "20", "--loss", "0.05", "--soak", "10", "--seed", "3", "--json"];
    let first = hivemesh(&args, dir.path());
    assert!(first.status.success(), "{first:?}");
    let second = hivemesh(&args, dir.path());
    assert_eq!(first.stdout, second.stdout, "same seed, same report");
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).expect("JSON report");
    assert_eq!(report["converged_at_end"], true, "{report}");
    assert_eq!(report["false_downs"], 0, "{report}");
    assert!(report["kill_detected_ms"].is_u64(), "{report}");
    let bad = hivemesh(&["sim", "--loss", "1.5"], dir.path());
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("--loss"));
}

#[test]
fn run_then_members_then_leave() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Command::new(env!("CARGO_BIN_EXE_hivemesh"))
        .args([
            "run",
            "--no-jobs",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .args(["--api", "127.0.0.1:0"])
        .env("HIVEMESH_DATA_DIR", dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hivemesh run");
    let addr_file = dir.path().join("api.addr");
    common::wait_for_api(dir.path());
    let members = hivemesh(&["members", "--json"], dir.path());
    assert!(members.status.success(), "{members:?}");
    let report: serde_json::Value = serde_json::from_slice(&members.stdout).expect("JSON");
    let id = hivemesh(&["id"], dir.path());
    assert_eq!(report["me"]["peer_id"], text(&id.stdout).trim());

    let leave = hivemesh(&["leave"], dir.path());
    assert!(leave.status.success(), "{leave:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = node.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the node did not stop after leave");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(!addr_file.exists(), "api.addr is removed on exit");
}

fn start_node(dir: &std::path::Path, extra: &[&str]) -> std::process::Child {
    let _ = std::fs::remove_file(dir.join("api.addr"));
    let child = Command::new(env!("CARGO_BIN_EXE_hivemesh"))
        .args(["run", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--api", "127.0.0.1:0"])
        .args(extra)
        .env("HIVEMESH_DATA_DIR", dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hivemesh run");
    common::wait_for_api(dir);
    child
}

#[test]
fn an_acknowledged_advertisement_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = start_node(dir.path(), &["--no-jobs", "--models", "llama-3-8b"]);
    let advertised =
        hivemesh(&["advertise", "--models", "qwen-7b,mistral-7b", "--gpu", "RTX 4090:24564"], dir.path());
    assert!(advertised.status.success(), "{advertised:?}");
    node.kill().expect("SIGKILL"); // std sends SIGKILL on Unix: no shutdown code runs
    node.wait().expect("reap");

    // Restarted without profile flags, the node keeps what it last
    // advertised: read back from sled, then signed and published again.
    let mut node = start_node(dir.path(), &["--no-jobs"]);
    let members = hivemesh(&["members", "--view", "registry", "--json"], dir.path());
    assert!(members.status.success(), "{members:?}");
    let report: serde_json::Value = serde_json::from_slice(&members.stdout).expect("JSON");
    assert_eq!(report["view"], "registry");
    assert_eq!(report["me"]["models"], serde_json::json!(["qwen-7b", "mistral-7b"]));
    assert_eq!(report["me"]["gpu"]["memory_mb"], 24564);
    let status = hivemesh(&["members", "--view", "bogus"], dir.path());
    assert!(!status.status.success());
    assert!(text(&status.stderr).contains("unknown view"), "{}", text(&status.stderr));
    node.kill().expect("SIGKILL");
    node.wait().expect("reap");
}

#[test]
fn a_node_taking_jobs_advertises_its_model_and_keeps_what_it_advertised_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = start_node(dir.path(), &["--no-jobs"]);
    let advertised = hivemesh(&["advertise", "--gpu", "RTX 4090:24564"], dir.path());
    assert!(advertised.status.success(), "{advertised:?}");
    node.kill().expect("SIGKILL");
    node.wait().expect("reap");
    // Restarted with a provider (nothing listens there; no call is made at
    // start) and no profile flags: the GPU stays, the provider's model joins.
    let provider = ["--provider", "http://127.0.0.1:9/v1", "--provider-model", "llama-3-8b"];
    let mut node = start_node(dir.path(), &provider);
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let members = hivemesh(&["members", "--view", "registry", "--json"], dir.path());
        let report: serde_json::Value = serde_json::from_slice(&members.stdout).unwrap_or_default();
        if report["me"]["models"] == serde_json::json!(["llama-3-8b"]) {
            break report;
        }
        assert!(Instant::now() < deadline, "the provider's model was not advertised: {report}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(report["me"]["gpu"]["memory_mb"], 24564, "{report}");
    node.kill().expect("SIGKILL");
    node.wait().expect("reap");
}

fn registry_me(dir: &std::path::Path) -> serde_json::Value {
    let members = hivemesh(&["members", "--view", "registry", "--json"], dir);
    assert!(members.status.success(), "{members:?}");
    let report: serde_json::Value = serde_json::from_slice(&members.stdout).expect("JSON");
    report["me"].clone()
}

#[test]
fn advertise_changes_only_the_fields_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node =
        start_node(dir.path(), &["--no-jobs", "--models", "llama-3-8b", "--gpu", "RTX 4090:24564"]);
    let me = registry_me(dir.path());
    assert_eq!(me["models"], serde_json::json!(["llama-3-8b"]), "{me}");

    let observer = hivemesh(&["advertise", "--role", "observer"], dir.path());
    assert!(observer.status.success(), "{observer:?}");
    let me = registry_me(dir.path());
    assert_eq!(me["role"], "Observer", "{me}");
    assert_eq!(me["models"], serde_json::json!(["llama-3-8b"]), "the models stay: {me}");
    assert_eq!(me["gpu"]["memory_mb"], 24564, "the GPU stays: {me}");

    let models = hivemesh(&["advertise", "--models", "qwen-7b"], dir.path());
    assert!(models.status.success(), "{models:?}");
    let me = registry_me(dir.path());
    assert_eq!(
        (me["role"].clone(), me["models"].clone()),
        ("Observer".into(), serde_json::json!(["qwen-7b"]))
    );
    let cleared = hivemesh(&["advertise", "--models", "", "--gpu", "none"], dir.path());
    assert!(cleared.status.success(), "{cleared:?}");
    let me = registry_me(dir.path());
    assert!(me.get("models").is_none() && me.get("gpu").is_none(), "cleared: {me}");
    assert_eq!(me["role"], "Observer", "{me}");
    let nothing = hivemesh(&["advertise"], dir.path());
    assert_eq!(nothing.status.code(), Some(1), "{nothing:?}");
    node.kill().expect("SIGKILL");
    node.wait().expect("reap");
}

/// `hivemesh run` with `args` on a fresh data dir; its exit status and stderr.
fn run_fails(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = hivemesh(&[&["run", "--no-jobs"], args].concat(), dir.path());
    (out.status.code(), text(&out.stderr))
}

#[test]
fn an_address_the_host_lacks_is_one_line_with_the_reason() {
    for listen in ["/ip4/192.0.2.1/tcp/4001", "/ip4/192.0.2.1/udp/4001/quic-v1"] {
        let (code, err) = run_fails(&["--listen", listen, "--api", "127.0.0.1:0"]);
        assert_eq!(code, Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        let reason = err.split(&format!("cannot listen on {listen}: ")).nth(1).unwrap_or_default();
        assert!(reason.contains("os error"), "a real reason: {err}");
        assert_eq!(err.matches("os error").count(), 1, "once: {err}");
    }
    // The control API on a port already taken, and on an address the host lacks.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let api = taken.local_addr().expect("addr").to_string();
    let (code, err) = run_fails(&["--listen", "/ip4/127.0.0.1/tcp/0", "--api", &api]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(&format!("cannot bind the control API on {api}")), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "once: {err}");
    let (code, err) =
        run_fails(&["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "192.0.2.1:7480", "--api-token", "t"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!((err.lines().count(), err.matches("os error").count()), (1, 1), "{err}");
}

/// Reads `run`'s stderr until a line satisfies `wanted` (or 30 s pass).
fn log_line(mut node: std::process::Child, wanted: impl Fn(&str) -> bool) -> (Option<String>, String) {
    use std::io::{BufRead, BufReader};
    let stderr = node.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    let mut found = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if wanted(&line) {
                    found = Some(line);
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = node.kill();
    let _ = node.wait();
    (found, seen)
}

#[test]
fn an_unreachable_bootstrap_peer_is_a_log_line() {
    let other = tempfile::tempdir().expect("tempdir");
    let peer = text(&hivemesh(&["id"], other.path()).stdout).trim().to_string();
    for bootstrap in ["/ip4/127.0.0.1/tcp/1".to_string(), format!("/ip4/127.0.0.1/tcp/1/p2p/{peer}")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = Command::new(env!("CARGO_BIN_EXE_hivemesh"))
            .args(["run", "--no-jobs", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
            .args(["--bootstrap", &bootstrap])
            .env("HIVEMESH_DATA_DIR", dir.path())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hivemesh run");
        let (line, seen) = log_line(node, |line| line.contains("bootstrap"));
        let line = line.unwrap_or_else(|| panic!("no line about {bootstrap}: {seen}"));
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("127.0.0.1/tcp/1") || line.contains(&peer), "names the peer: {line}");
        assert!(line.contains("Connection refused") || line.contains("os error"), "the reason: {line}");
        assert!(!seen.contains('\u{1b}'), "no colour codes on redirected stderr: {seen:?}");
    }
}
