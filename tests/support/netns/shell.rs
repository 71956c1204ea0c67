//! Running `ip` and `nft`, whether the bed can run here, and the sweep of
//! namespaces left by killed runs.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::PREFIX;

/// Whether this machine can run the bed: `Err` says why not. Makes and
/// deletes a probe namespace and runs nftables inside it, so root without
/// CAP_SYS_ADMIN (a container) is caught here rather than half-way through.
pub fn available() -> Result<(), String> {
    let uid = Command::new("id").arg("-u").output().map(|out| text(&out.stdout).trim().to_string());
    if uid.as_deref().ok() != Some("0") {
        return Err("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    // Unique per call: the tests of one binary probe in parallel.
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("{PREFIX}{}-probe{n}", std::process::id());
    let steps: [&[&str]; 3] = [
        &["ip", "netns", "add", &probe],
        &["ip", "netns", "exec", &probe, "nft", "list", "ruleset"],
        &["ip", "netns", "del", &probe],
    ];
    for step in steps {
        let outcome = Command::new(step[0]).args(&step[1..]).stdin(Stdio::null()).output();
        let failure = match outcome {
            Ok(out) if out.status.success() => continue,
            Ok(out) => format!("`{}` failed: {}", step.join(" "), text(&out.stderr).trim()),
            Err(e) => format!("`{}` is missing ({e}); install iproute2 and nftables", step[0]),
        };
        delete_namespace(&probe);
        return Err(failure);
    }
    Ok(())
}

/// `true` when `test` must be skipped: prints one line saying why. Panics
/// instead when `HIVEMESH_REQUIRE_NETNS_TESTS=1`.
pub fn skip(test: &str) -> bool {
    let Err(why) = available() else { return false };
    if std::env::var("HIVEMESH_REQUIRE_NETNS_TESTS").is_ok_and(|v| v == "1") {
        panic!(
            "{test}: the network-namespace test bed is required (HIVEMESH_REQUIRE_NETNS_TESTS=1) but {why}"
        );
    }
    eprintln!("skipping {test}: {why}");
    true
}

pub(super) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `ip` with `args`; panics with its stderr when it fails.
pub(super) fn ip(args: &[&str]) {
    run_ok("ip", args, None);
}

pub(super) fn run_ok(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{program} {args:?} failed: {}", text(&out.stderr));
    out
}

/// Loads an nftables ruleset into namespace `ns`.
pub(super) fn nft(ns: &str, ruleset: &str) {
    run_ok("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(ruleset));
}

/// Deletes an nftables table in `ns` if it exists.
pub(super) fn nft_delete_table(ns: &str, table: &str) {
    let _ = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "delete", "table", "inet", table])
        .stderr(Stdio::null())
        .status();
}

/// Deletes namespaces with this module's prefix whose test process is gone
/// (a run killed before its `Drop`), killing what still runs inside.
pub fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in text(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_namespace(name);
    }
}

pub(super) fn delete_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in text(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
}
