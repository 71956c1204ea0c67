//! `hivemesh tally` on hostile or careless input: a count line that stands
//! for millions of voters, a repeated eligible voter, a byte order mark,
//! contradicting header lines, a quorum of zero.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hivemesh")
}

fn hivemesh(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env_remove("RUST_LOG").output().expect("run hivemesh")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A 350-byte PrefLib file (one order line, count 200000, 100 alternatives)
/// must be counted in bounded memory: the count is a multiplicity, not 200000
/// copies of the order (which took ~6 KB per voter: 1M voters were 5.9 GB,
/// and the 16,777,216-voter limit x 1024 alternatives ~1 TB from a ~4 KB
/// file). Under a 1 GB address-space limit that aborted.
#[test]
fn a_large_count_line_is_counted_in_bounded_memory() {
    let dir = tempdir();
    let dir = dir.path();
    let order: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    let text = format!("# DATA TYPE: soc\n# NUMBER ALTERNATIVES: 100\n200000: {}\n", order.join(","));
    let file = write(dir, "amplify.soc", &text);
    for rule in ["schulze", "borda"] {
        let script = format!(
            "ulimit -v 1000000; exec {} tally {} --rule {rule} --backend cpu --json",
            bin(),
            file.display()
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().expect("sh");
        assert!(
            out.status.success(),
            "{rule}: a {}-byte file needs more than 1 GB: {:?} {}",
            text.len(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(report["voters"], 200000);
        assert_eq!(report["winner"]["index"], 0);
    }
}

/// The eligible list is a set of voters: listing each voter twice must not
/// double the electorate (it gave "no quorum (7 of 14 eligible voters;
/// quorum needs 10)" with every voter voting). The file is refused.
#[test]
fn a_repeated_eligible_entry_does_not_inflate_the_electorate() {
    let dir = tempdir();
    let dir = dir.path();
    let out = hivemesh(&["tally", "--generate", "--voters", "7", "--candidates", "3", "--seed", "5"]);
    assert!(out.status.success());
    let mut file: Value = serde_json::from_slice(&out.stdout).expect("json");
    let eligible = file["eligible"].as_array().expect("eligible").clone();
    let doubled: Vec<Value> = eligible.iter().chain(eligible.iter()).cloned().collect();
    file["eligible"] = Value::Array(doubled);
    let path = write(dir, "dup-eligible.json", &file.to_string());
    let out = hivemesh(&["tally", path.to_str().expect("utf-8"), "--backend", "cpu", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("eligible[7]") && err.contains("repeats eligible[0]"), "{err}");
    assert!(out.stdout.is_empty());
}

/// A UTF-8 byte order mark (Windows editors write one) is skipped.
#[test]
fn a_byte_order_mark_is_skipped_or_named() {
    let dir = tempdir();
    let dir = dir.path();
    let text = "\u{feff}# DATA TYPE: soc\n# NUMBER ALTERNATIVES: 2\n# ALTERNATIVE NAME 1: A\n\
                # ALTERNATIVE NAME 2: B\n1: 1,2\n";
    let path = write(dir, "bom.soc", text);
    let out = hivemesh(&["tally", path.to_str().expect("utf-8"), "--backend", "cpu", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["candidates"], serde_json::json!(["A", "B"]));
    assert_eq!(report["winner"]["label"], "A");
}

/// A header key given twice is a malformed file naming the second line (the
/// last one used to win silently: NUMBER VOTERS 99 then 1 counted as 1).
#[test]
fn conflicting_header_lines_are_refused() {
    let dir = tempdir();
    let dir = dir.path();
    let text = "# DATA TYPE: soc\n# NUMBER ALTERNATIVES: 2\n# NUMBER VOTERS: 99\n# NUMBER VOTERS: 1\n\
                # ALTERNATIVE NAME 1: A\n# ALTERNATIVE NAME 2: B\n1: 1,2\n";
    let path = write(dir, "twice.soc", text);
    let out = hivemesh(&["tally", path.to_str().expect("utf-8"), "--backend", "cpu"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 4"));
}

/// A quorum of zero would make an empty ballot box final.
#[test]
fn a_quorum_of_zero_is_refused() {
    let dir = tempdir();
    let out = hivemesh(&["tally", "--generate", "--voters", "3", "--candidates", "3", "--seed", "5"]);
    assert!(out.status.success());
    let path = dir.path().join("b.json");
    std::fs::write(&path, &out.stdout).expect("write");
    let out = hivemesh(&["tally", path.to_str().expect("utf-8"), "--quorum", "0"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quorum 0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = hivemesh(&["tally", path.to_str().expect("utf-8"), "--quorum", "1", "--backend", "cpu"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

/// Counts are multiplicities: 3 voters A>B, 2 voters B>A gives the same
/// Borda and pairwise counts as five separate lines.
#[test]
fn a_count_line_counts_as_that_many_ballots_for_every_rule() {
    let dir = tempdir();
    let head =
        "# DATA TYPE: soc\n# NUMBER ALTERNATIVES: 2\n# ALTERNATIVE NAME 1: A\n# ALTERNATIVE NAME 2: B\n";
    let counted = write(dir.path(), "counted.soc", &format!("{head}3: 1,2\n2: 2,1\n"));
    let spelled =
        write(dir.path(), "spelled.soc", &format!("{head}1: 1,2\n1: 2,1\n1: 1,2\n1: 2,1\n1: 1,2\n"));
    for rule in ["schulze", "borda", "plurality", "approval"] {
        let report = |path: &Path| -> Value {
            let out = hivemesh(&[
                "tally",
                path.to_str().expect("utf-8"),
                "--rule",
                rule,
                "--backend",
                "cpu",
                "--json",
            ]);
            assert!(out.status.success(), "{rule}: {}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice(&out.stdout).expect("json")
        };
        let (a, b) = (report(&counted), report(&spelled));
        assert_eq!(a["counts"], b["counts"], "{rule}");
        assert_eq!(a["voters"], 5, "{rule}");
        assert_eq!(a["winner"], b["winner"], "{rule}");
    }
}
