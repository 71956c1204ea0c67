//! `hivemesh majority` as a user runs it: views on stdin or in a file.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn majority(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hivemesh"))
        .arg("majority")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hivemesh");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("wait")
}

const VIEWS: &str = r#"{"views": [
  [{"id": "b", "last_updated": "2024-01-01T00:00:00Z", "address": "10.0.0.2"},
   {"id": "a", "last_updated": "2024-01-01T00:00:00Z", "address": "10.0.0.1"}],
  [{"id": "a", "last_updated": "2024-03-01T00:00:00Z", "address": "10.9.9.9"}],
  [{"id": "a", "last_updated": "2024-01-01T00:00:00+00:00", "address": "10.0.0.1"}]
]}"#;

#[test]
fn resolves_views_from_stdin_and_from_a_file() {
    let out = majority(&[], VIEWS);
    assert!(out.status.success(), "{out:?}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let entries = result["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["id"], "a");
    assert_eq!(entries[0]["address"], "10.0.0.1", "the majority beats the newer minority");
    assert_eq!(entries[1]["id"], "b");
    let metrics = &result["metrics"];
    assert_eq!(metrics["peer_count"], 3);
    assert_eq!(metrics["conflicts"], 1);
    assert_eq!(metrics["majority_resolved"], 1);
    assert_eq!(metrics["single_reports"], 1);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("views.json");
    std::fs::write(&path, VIEWS).expect("write");
    let from_file = majority(&[path.to_str().expect("utf-8")], "");
    let file_result: serde_json::Value = serde_json::from_slice(&from_file.stdout).expect("json");
    assert_eq!(file_result["entries"], result["entries"]);
}

#[test]
fn malformed_input_names_the_view_and_entry() {
    let out = majority(
        &["-"],
        r#"[[], [{"id": "a", "last_updated": "2024-01-01T00:00:00Z"}, {"id": "b", "last_updated": "last tuesday"}]]"#,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("view 1, entry 1"), "{stderr}");
    assert!(stderr.contains("last_updated"), "{stderr}");

    let out = majority(&[], "[]");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no peer views to resolve"));

    let out = majority(&[], "{not json");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not JSON"));
}
