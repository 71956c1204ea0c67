//! `hivemesh tally` as a user runs it: generate a signed ballot file, re-check it.

use std::process::{Command, Output};

fn hivemesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hivemesh"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run hivemesh")
}

fn generate(dir: &std::path::Path, extra: &[&str]) -> std::path::PathBuf {
    let out = hivemesh(&[&["tally", "--generate", "--voters", "20", "--candidates", "3"], extra].concat());
    assert!(out.status.success(), "{out:?}");
    let path = dir.join(format!("ballots-{}.json", extra.join("-")));
    std::fs::write(&path, &out.stdout).expect("write");
    path
}

#[test]
fn generated_ballots_recheck_to_the_same_outcome_on_every_rule_and_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    for rule in ["plurality", "weighted", "approval", "borda", "schulze"] {
        let file = generate(dir.path(), &["--rule", rule, "--equivocators", "3"]);
        let file = file.to_str().expect("utf-8");
        let cpu = hivemesh(&["tally", file, "--backend", "cpu", "--json"]);
        assert!(cpu.status.success(), "{rule}: {cpu:?}");
        let report: serde_json::Value = serde_json::from_slice(&cpu.stdout).expect("json");
        assert_eq!(report["status"], "final", "{rule}");
        assert_eq!(report["valid"], 17, "{rule}: 3 equivocators lose both ballots");
        assert_eq!(report["equivocations"].as_array().map(Vec::len), Some(3), "{rule}");
        assert_eq!(report["excluded"].as_array().map(Vec::len), Some(6), "{rule}");
        // The same file re-checked by the GPU backend (lavapipe in CI) agrees.
        let gpu = hivemesh(&["tally", file, "--backend", "gpu", "--json"]);
        if gpu.status.success() {
            let gpu_report: serde_json::Value = serde_json::from_slice(&gpu.stdout).expect("json");
            assert_eq!(gpu_report["counts"], report["counts"], "{rule}");
            assert_eq!(gpu_report["winner"], report["winner"], "{rule}");
        } else {
            assert!(std::env::var_os("HIVEMESH_REQUIRE_GPU_TESTS").is_none(), "no GPU adapter: {gpu:?}");
        }
    }
}

#[test]
fn without_quorum_the_exit_status_is_2_and_the_counts_are_still_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = generate(dir.path(), &["--equivocators", "10"]);
    let out = hivemesh(&["tally", file.to_str().expect("utf-8"), "--backend", "cpu"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status: no quorum") && text.contains("pairwise (ballots preferring"), "{text}");
}

#[test]
fn malformed_input_names_the_offending_ballot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = generate(dir.path(), &[]);
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    value["ballots"][7] = "0102".into();
    std::fs::write(&file, value.to_string()).expect("write");
    let out = hivemesh(&["tally", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ballot 7"), "{out:?}");
    let out = hivemesh(&["tally", "--rule", "dictator", file.to_str().expect("utf-8")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown rule"), "{out:?}");
}

#[test]
fn the_human_report_names_the_winner_once_and_the_ranking_by_label() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = generate(dir.path(), &["--rule", "borda"]);
    let out = hivemesh(&["tally", file.to_str().expect("utf-8"), "--backend", "cpu"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let winner = text.lines().find_map(|l| l.strip_prefix("winner: ")).expect("a winner line");
    // Generic labels are the index already: "candidate 2", not "candidate 2 (candidate 2)".
    assert!(winner.starts_with("candidate ") && !winner.contains('('), "{text}");
    let ranking = text.lines().find_map(|l| l.strip_prefix("ranking: ")).expect("a ranking line");
    assert_eq!(ranking.split(" > ").next(), Some(winner), "{text}");
}

/// An ed25519 peer id whose 32 key bytes are no curve point: well formed
/// as a peer id, refused as a node id.
fn peer_id_of_no_point() -> String {
    use hivemesh::protocol::{NodeId, PeerId};
    (2u8..)
        .map(|y| {
            let mut bytes = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20, y];
            bytes.resize(38, 0);
            PeerId::from_bytes(&bytes).expect("identity multihash").to_base58()
        })
        .find(|text| text.parse::<NodeId>().is_err())
        .expect("some y is no point")
}

#[test]
fn an_eligible_peer_id_that_is_no_key_is_refused_even_when_it_never_voted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = generate(dir.path(), &[]);
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    let bad = peer_id_of_no_point();
    value["eligible"].as_array_mut().expect("eligible").push(bad.clone().into());
    std::fs::write(&file, value.to_string()).expect("write");
    let out = hivemesh(&["tally", file.to_str().expect("utf-8"), "--backend", "cpu"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("eligible[20] {bad:?} is not a peer id")), "{stderr}");
}
