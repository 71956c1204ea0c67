//! The key file: created 0600, reloaded identically, and every unusable file
//! is an error that names it.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use hivemesh_node::keystore::{KEY_FILE_NAME, KeystoreError, load_or_create};

fn set_mode(path: &std::path::Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn created_once_then_reloaded_with_owner_only_permissions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("nested/data");
    let first = load_or_create(&data).expect("create");
    assert!(first.created);
    assert_eq!(first.path, data.join(KEY_FILE_NAME));
    assert_eq!(fs::metadata(&first.path).expect("meta").permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(&data).expect("meta").permissions().mode() & 0o777, 0o700);
    let second = load_or_create(&data).expect("reload");
    assert!(!second.created);
    assert_eq!(second.identity.peer_id(), first.identity.peer_id());
    let leftovers: Vec<_> = fs::read_dir(&data).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from(KEY_FILE_NAME)]);
}

/// Writes `contents` as the key file with `mode`, checks loading fails with a
/// message naming the file and leaves the file untouched, returns the error.
fn broken_key(contents: &[u8], mode: u32) -> (tempfile::TempDir, KeystoreError) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(KEY_FILE_NAME);
    fs::write(&path, contents).expect("write");
    set_mode(&path, mode);
    let err = load_or_create(dir.path()).expect_err("must not load");
    assert!(err.to_string().contains(&path.display().to_string()), "message must name the file: {err}");
    set_mode(&path, 0o600);
    assert_eq!(fs::read(&path).expect("still there"), contents, "never silently replaced");
    (dir, err)
}

#[test]
fn permissions_open_to_others_are_refused() {
    let (_d, err) = broken_key(b"whatever", 0o644);
    assert!(matches!(err, KeystoreError::TooPermissive { mode: 0o644, .. }), "{err}");
}

#[test]
fn an_unreadable_file_is_refused_even_for_root() {
    let (_d, err) = broken_key(b"whatever", 0o000);
    assert!(matches!(err, KeystoreError::Unreadable { mode: 0, .. }), "{err}");
}

#[test]
fn garbage_is_refused() {
    let (_d, err) = broken_key(b"\xff\xfe not a pem key at all", 0o600);
    assert!(matches!(err, KeystoreError::Invalid { .. }), "{err}");
}

#[test]
fn a_key_of_the_wrong_length_is_refused() {
    // A PEM block whose DER body is a PKCS#8 structure cut short.
    let good = hivemesh_protocol::NodeIdentity::from_seed([5; 32]).to_pem().expect("pem");
    let body: String = good.lines().filter(|l| !l.starts_with("-----")).collect();
    let short =
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", &body[..body.len() - 8]);
    let (_d, err) = broken_key(short.as_bytes(), 0o600);
    assert!(matches!(err, KeystoreError::Invalid { .. }), "{err}");
}

#[test]
fn an_oversized_file_is_refused_without_reading_it() {
    let (_d, err) = broken_key(&vec![b'A'; 1 << 20], 0o600);
    assert!(matches!(err, KeystoreError::TooLarge { size: 1_048_576, .. }), "{err}");
}

#[test]
fn a_directory_in_place_of_the_key_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join(KEY_FILE_NAME)).expect("mkdir");
    set_mode(&dir.path().join(KEY_FILE_NAME), 0o700);
    let err = load_or_create(dir.path()).expect_err("must not load");
    assert!(err.to_string().contains(KEY_FILE_NAME), "{err}");
}
