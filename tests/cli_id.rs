//! `hivemesh id` as a user runs it: the real binary, a real data dir.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;

mod common;
use common::hivemesh;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn id_is_stable_across_runs_and_flag_overrides_env() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = hivemesh(&["id"], dir.path());
    assert!(first.status.success(), "{first:?}");
    assert!(stdout(&first).starts_with("12D3KooW"), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stderr).contains("created a new identity"));
    let second = hivemesh(&["id"], dir.path());
    assert_eq!(stdout(&first), stdout(&second));
    assert!(second.stderr.is_empty(), "no creation message the second time: {second:?}");

    let other = tempfile::tempdir().expect("tempdir");
    let flag = other.path().to_str().expect("utf-8 path");
    let third = hivemesh(&["id", "--data-dir", flag], dir.path());
    assert_ne!(stdout(&third), stdout(&first), "--data-dir must win over HIVEMESH_DATA_DIR");
}

#[test]
fn id_json_has_the_peer_id_and_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = hivemesh(&["id", "--json"], dir.path());
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(value["peer_id"].as_str().expect("peer_id").starts_with("12D3KooW"));
    assert_eq!(value["public_key"].as_str().expect("hex").len(), 64);
    assert_eq!(value["created"], true);
    assert!(value["key_file"].as_str().expect("path").ends_with("identity.key"));
}

#[test]
fn corrupted_or_unreadable_key_exits_non_zero_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(hivemesh(&["id"], dir.path()).status.success());
    let key = dir.path().join("identity.key");
    let original = fs::read(&key).expect("key");

    fs::set_permissions(&key, fs::Permissions::from_mode(0o000)).expect("chmod");
    let out = hivemesh(&["id"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&key.display().to_string()), "{out:?}");

    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::write(&key, b"corrupted").expect("write");
    let out = hivemesh(&["id"], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&key.display().to_string()) && err.contains("PKCS#8"), "{err}");
    assert_eq!(fs::read(&key).expect("key"), b"corrupted", "the bad key is never replaced");
    assert_ne!(original, b"corrupted");
}

#[test]
fn help_and_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let help = hivemesh(&["--help"], dir.path());
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("id") && text.contains("--data-dir"), "{text}");
    let version = hivemesh(&["--version"], dir.path());
    assert_eq!(stdout(&version), format!("hivemesh {}", env!("CARGO_PKG_VERSION")));
}
