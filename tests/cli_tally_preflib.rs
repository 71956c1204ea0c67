//! `hivemesh tally FILE.soc|.soi|.toc|.toi`: PrefLib files of each type
//! through every rule, against results worked out by hand (small files) or
//! by an independent count in this file plus the published winner (real
//! Debian elections in data/preflib/).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn hivemesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hivemesh"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run hivemesh")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// The JSON report of `tally FILE --rule RULE`.
fn report(file: &Path, rule: &str) -> Value {
    let out =
        hivemesh(&["tally", file.to_str().expect("utf-8"), "--rule", rule, "--backend", "cpu", "--json"]);
    assert!(out.status.success(), "{rule}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("json")
}

fn header(kind: &str, names: &[&str], voters: u32, unique: u32) -> String {
    let mut text = format!(
        "# FILE NAME: hand.{kind}\n# TITLE: by hand\n# DATA TYPE: {kind}\n# NUMBER ALTERNATIVES: {}\n\
         # NUMBER VOTERS: {voters}\n# NUMBER UNIQUE ORDERS: {unique}\n",
        names.len()
    );
    for (i, name) in names.iter().enumerate() {
        text += &format!("# ALTERNATIVE NAME {}: {name}\n", i + 1);
    }
    text
}

/// Checks one rule's report: winner index, tied_for_first, ranking, counts.
fn check(report: &Value, winner: u32, tied: &[u32], ranking: &[u32], counts: Value) {
    assert_eq!(report["winner"]["index"], winner, "{report:#}");
    assert_eq!(report["tied_for_first"], json!(tied), "{report:#}");
    assert_eq!(report["ranking"], json!(ranking), "{report:#}");
    assert_eq!(report["counts"], counts, "{report:#}");
    assert_eq!(report["signed"], false);
    assert_eq!(report["status"], "final");
}

fn schulze(pairwise: &[u64], strongest: &[u64]) -> Value {
    json!({"pairwise": {"pairwise": pairwise, "strongest": strongest}})
}

fn scores(scores: &[u64]) -> Value {
    json!({ "scores": scores })
}

#[test]
fn a_toi_file_with_the_debian_2020_ballot_counts_ties_and_unranked_alternatives_in_every_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Alternatives 0 Carter, 1 Chandran, 2 Gupta, 3 NOTA. 3 voters cast the
    // Debian 2020 ballot "1 Carter, 2 Chandran and Gupta, NOTA unranked".
    let text = header("toi", &["Carter", "Chandran", "Gupta", "None Of The Above"], 6, 3)
        + "3: 1,{2,3}\n2: 3,4\n1: 2\n";
    let file = write(dir.path(), "debian-2020-example.toi", &text);
    // Pairwise by hand: Carter>Chandran 3, Carter>Gupta 3, Carter>NOTA 3;
    // Chandran>Carter 1, >Gupta 1, >NOTA 3+1; Gupta>Carter 2, >Chandran 2,
    // >NOTA 3+2; NOTA>Carter 2, >Chandran 2. Chandran and Gupta tie on the
    // 3 Debian ballots: neither gains. Strongest paths: Carter->Chandran 3,
    // ->Gupta 3, ->NOTA 3; Chandran->NOTA 4; Gupta->Chandran 2, ->NOTA 5.
    check(
        &report(&file, "schulze"),
        0,
        &[0],
        &[0, 2, 1, 3],
        schulze(
            &[0, 3, 3, 3, 1, 0, 1, 4, 2, 2, 0, 5, 2, 2, 0, 0],
            &[0, 3, 3, 3, 0, 0, 0, 4, 0, 2, 0, 5, 0, 0, 0, 0],
        ),
    );
    // Borda, a point per alternative ranked strictly below: Carter 3x3;
    // Chandran 3x1 + 1x3; Gupta 3x1 + 2x3; NOTA 2x2. Carter and Gupta tie.
    check(&report(&file, "borda"), 0, &[0, 2], &[0, 2, 1, 3], scores(&[9, 6, 9, 4]));
    // Plurality: first choices Carter 3, Gupta 2, Chandran 1.
    check(&report(&file, "plurality"), 0, &[0], &[0, 2, 1, 3], scores(&[3, 1, 2, 0]));
    // Approval of every listed alternative: Carter 3, Chandran 3+1, Gupta 3+2, NOTA 2.
    check(&report(&file, "approval"), 2, &[2], &[2, 1, 0, 3], scores(&[3, 4, 5, 2]));
    let human = hivemesh(&["tally", file.to_str().expect("utf-8"), "--rule", "borda"]);
    let human = String::from_utf8(human.stdout).expect("utf-8");
    assert!(
        human.contains(
            "source: PrefLib toi file (unsigned ballots; no signature, eligibility or quorum checks)\n"
        ) && human.contains("voters: 6 (3 order lines)\n")
            && human.contains("winner: Carter (alternative 1)\n")
            && human.contains("tied for first: Carter, Gupta\n")
            && human.contains("ranking: Carter > Gupta > Chandran > None Of The Above\n"),
        "{human}"
    );
}

#[test]
fn a_soc_file_with_tied_schulze_winners_in_every_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Twice Schulze's smallest tie, A>B>C and B>C>A: winners A and B.
    let text = header("soc", &["Alpha", "Bravo", "Charlie"], 4, 2) + "2: 1,2,3\n2: 2,3,1\n";
    // No extension: the header alone says what the file is.
    let file = write(dir.path(), "hand", &text);
    check(
        &report(&file, "schulze"),
        0,
        &[0, 1],
        &[0, 1, 2],
        schulze(&[0, 2, 2, 2, 0, 4, 2, 0, 0], &[0, 0, 0, 0, 0, 4, 0, 0, 0]),
    );
    check(&report(&file, "borda"), 1, &[1], &[1, 0, 2], scores(&[4, 6, 2]));
    check(&report(&file, "plurality"), 0, &[0, 1], &[0, 1, 2], scores(&[2, 2, 0]));
    check(&report(&file, "approval"), 0, &[0, 1, 2], &[0, 1, 2], scores(&[4, 4, 4]));
}

#[test]
fn a_soi_file_leaves_unlisted_alternatives_tied_last_in_every_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = header("soi", &["X", "Y", "Z"], 4, 3) + "2: 1,2\n1: 3\n1: 2,3,1\n";
    let file = write(dir.path(), "hand.soi", &text);
    // X>Y 2, X>Z 2, Y>X 1, Y>Z 2+1, Z>X 1+1, Z>Y 1; X-Z is a pairwise tie.
    check(
        &report(&file, "schulze"),
        0,
        &[0],
        &[0, 1, 2],
        schulze(&[0, 2, 2, 1, 0, 3, 2, 1, 0], &[0, 2, 2, 0, 0, 3, 0, 0, 0]),
    );
    // X 2x2; Y 2x1 + 2; Z 2 + 1.
    check(&report(&file, "borda"), 0, &[0, 1], &[0, 1, 2], scores(&[4, 4, 3]));
    check(&report(&file, "plurality"), 0, &[0], &[0, 1, 2], scores(&[2, 1, 1]));
    check(&report(&file, "approval"), 0, &[0, 1], &[0, 1, 2], scores(&[3, 3, 2]));
}

#[test]
fn a_toc_file_counts_ties_and_refuses_plurality_on_a_tied_first_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = header("toc", &["P", "Q", "R"], 5, 2) + "3: {1,2},3\n2: 3,1,2\n";
    let file = write(dir.path(), "hand.toc", &text);
    // P>Q 2 (P=Q on 3 ballots), P>R 3, Q>R 3, R>P 2, R>Q 2.
    check(
        &report(&file, "schulze"),
        0,
        &[0],
        &[0, 1, 2],
        schulze(&[0, 2, 3, 0, 0, 3, 2, 2, 0], &[0, 2, 3, 0, 0, 3, 0, 0, 0]),
    );
    // P 3x1 + 2x1; Q 3x1; R 2x2.
    check(&report(&file, "borda"), 0, &[0], &[0, 2, 1], scores(&[5, 3, 4]));
    check(&report(&file, "approval"), 0, &[0, 1, 2], &[0, 1, 2], scores(&[5, 5, 5]));
    let out = hivemesh(&["tally", file.to_str().expect("utf-8"), "--rule", "plurality"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 10: plurality counts each ballot's single first choice"), "{stderr}");
    let out = hivemesh(&["tally", file.to_str().expect("utf-8"), "--rule", "weighted"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no weights"), "{out:?}");
}

#[test]
fn the_pre_2022_layout_is_read_when_the_file_name_gives_its_type() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "old.toc", "3\n1,P\n2,Q\n3,R\n5,5,2\n3,{1,2},3\n2,3,1,2\n");
    check(&report(&file, "borda"), 0, &[0], &[0, 2, 1], scores(&[5, 3, 4]));
}

#[test]
fn malformed_preflib_files_are_errors_naming_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = header("soi", &["X", "Y", "Z"], 4, 3) + "2: 1,2\n1: 3\n1: 2,3,1\n";
    for (bad, expected) in [
        (good.replace("1: 3\n", "1: 4\n"), "line 11: unknown alternative 4 (the file has 3)"),
        (good.replace("1: 3\n", "1: {3,1}\n"), "line 11: a soi file cannot tie"),
        (good.replace("1: 3\n", "1: 3,3\n"), "line 11: alternative 3 appears twice"),
        (good.replace("1: 3\n", "0: 3\n"), "line 11: the count \"0\""),
        (good.replace("1: 3\n", "1; 3\n"), "line 11: malformed order"),
        (good.replace("VOTERS: 4", "VOTERS: 5"), "line 5: the header declares 5 voters"),
        (good.replace("DATA TYPE: soi", "DATA TYPE: soc"), "line 10: a soc file must rank every alternative"),
    ] {
        let file = write(dir.path(), "bad.soi", &bad);
        let out = hivemesh(&["tally", file.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected) && !stderr.contains("panicked"), "{expected}: {stderr}");
    }
    let mut bytes = good.into_bytes();
    let last = bytes.len() - 2;
    bytes[last] = 0xfe;
    let file = dir.path().join("latin1.soi");
    std::fs::write(&file, bytes).expect("write");
    let out = hivemesh(&["tally", file.to_str().expect("utf-8")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 12: not UTF-8 text"), "{out:?}");
}

/// `count` voters cast `groups` (0-based alternatives, best group first).
type Order = (u64, Vec<Vec<usize>>);

/// An independent reading of a PrefLib file: `(count, groups)` with 0-based
/// alternatives, written here without the product's parser.
fn orders(text: &str) -> (usize, Vec<Order>) {
    let mut n = 0;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("# NUMBER ALTERNATIVES:") {
            n = v.trim().parse().expect("n");
        } else if !line.starts_with('#') {
            let (count, list) = line.split_once(':').expect("order");
            let mut groups = Vec::new();
            let mut open: Option<Vec<usize>> = None;
            for token in list.split(',') {
                let token = token.trim();
                let alt =
                    |t: &str| t.trim_matches(|c| c == '{' || c == '}').parse::<usize>().expect("alt") - 1;
                match (&mut open, token.starts_with('{'), token.ends_with('}')) {
                    (None, true, true) | (None, false, _) => groups.push(vec![alt(token)]),
                    (None, true, false) => open = Some(vec![alt(token)]),
                    (Some(group), _, false) => group.push(alt(token)),
                    (Some(_), _, true) => {
                        let mut group = open.take().expect("open");
                        group.push(alt(token));
                        groups.push(group);
                    }
                }
            }
            out.push((count.trim().parse().expect("count"), groups));
        }
    }
    (n, out)
}

/// Pairwise counts and Borda scores (a point per alternative strictly below).
fn reference_counts(n: usize, orders: &[Order]) -> (Vec<u64>, Vec<u64>) {
    let mut pairwise = vec![0; n * n];
    let mut borda = vec![0; n];
    for (count, groups) in orders {
        let mut rank = vec![groups.len(); n]; // unlisted: below every group
        for (r, group) in groups.iter().enumerate() {
            group.iter().for_each(|&c| rank[c] = r);
        }
        for a in 0..n {
            for b in 0..n {
                if rank[a] < rank[b] {
                    pairwise[a * n + b] += count;
                    borda[a] += count;
                }
            }
        }
    }
    (pairwise, borda)
}

#[test]
fn real_debian_elections_give_the_published_winners_and_independently_counted_totals() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/preflib");
    // Debian 2002 (soi: unranked options tie last) elected Bdale Garbee,
    // Debian 2010 (toc) Stefano Zacchiroli: https://www.debian.org/vote/.
    for (name, voters, winner) in [("00002-00000001.soi", 475, 2), ("00002-00000006.toc", 436, 0)] {
        let file = data.join(name);
        let (n, orders) = orders(&std::fs::read_to_string(&file).expect("read"));
        let (pairwise, borda) = reference_counts(n, &orders);
        let schulze = report(&file, "schulze");
        assert_eq!(schulze["voters"], voters, "{name}");
        assert_eq!(schulze["winner"]["index"], winner, "{name}");
        assert_eq!(schulze["tied_for_first"], json!([winner]), "{name}");
        assert_eq!(schulze["counts"]["pairwise"]["pairwise"], json!(pairwise), "{name}");
        assert_eq!(report(&file, "borda")["counts"]["scores"], json!(borda), "{name}");
        let plurality: Vec<u64> =
            (0..n).map(|c| orders.iter().filter(|(_, g)| g[0] == [c]).map(|(k, _)| k).sum()).collect();
        if orders.iter().all(|(_, g)| g[0].len() == 1) {
            assert_eq!(report(&file, "plurality")["counts"]["scores"], json!(plurality), "{name}");
        }
        let approval: Vec<u64> = (0..n)
            .map(|c| orders.iter().filter(|(_, g)| g.iter().flatten().any(|&a| a == c)).map(|(k, _)| k).sum())
            .collect();
        assert_eq!(report(&file, "approval")["counts"]["scores"], json!(approval), "{name}");
        // The GPU backend (lavapipe in CI) counts the weak orders the same.
        for rule in ["schulze", "borda", "approval"] {
            let path = file.to_str().expect("utf-8");
            let gpu = hivemesh(&["tally", path, "--rule", rule, "--backend", "gpu", "--json"]);
            if !gpu.status.success() {
                assert!(std::env::var_os("HIVEMESH_REQUIRE_GPU_TESTS").is_none(), "no GPU adapter: {gpu:?}");
                continue;
            }
            let gpu: Value = serde_json::from_slice(&gpu.stdout).expect("json");
            let cpu = report(&file, rule);
            for key in ["counts", "winner", "tied_for_first", "ranking"] {
                assert_eq!(gpu[key], cpu[key], "{name} {rule} {key}");
            }
        }
    }
}

#[test]
fn a_debian_tally_sheet_is_counted_like_a_toi_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The layout of https://www.debian.org/vote/2020/vote_001_tally.txt:
    // one rank per option, equal ranks tie, '-' unranked.
    let sheet = "           Tally Sheet for the votes cast.\n\n\
                 \x20    Option 1--------->: Jonathan Carter\n   /  Option 2-------->: Sruthi Chandran\n\
                 \x20  |/  Option 3------->: Brian Gupta\n   ||/  Option 4------>: None Of The Above\n   |||/\n\
                 V: 122-\t\t6e7f2b\nV: 122-\t\t00aa11\nV: 122-\t\t22bb33\nV: -1-2\t\tc0ffee\n\
                 V: -1-2\t\tdecade\nV: ---1\t\tbeef00\nV: ----\t\tfeed42\n";
    let file = write(dir.path(), "vote_001_tally.txt", sheet);
    // Pairwise: Carter>Chandran 3, >Gupta 3, >NOTA 3; Chandran>Carter 2,
    // >Gupta 2, >NOTA 3+2; Gupta>NOTA 3; NOTA>Carter 2+1, >Chandran 1,
    // >Gupta 2+1 (Carter-NOTA and Gupta-NOTA are pairwise ties). Strongest
    // paths: Carter->Chandran 3, ->Gupta 3, ->NOTA 3 (through Chandran);
    // Chandran->Gupta 2, ->NOTA 5; Gupta and NOTA none, so they tie last.
    let schulze = report(&file, "schulze");
    check(
        &schulze,
        0,
        &[0],
        &[0, 1, 2, 3],
        self::schulze(
            &[0, 3, 3, 3, 2, 0, 2, 5, 0, 0, 0, 3, 3, 1, 3, 0],
            &[0, 3, 3, 3, 0, 0, 2, 5, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
    );
    assert_eq!(schulze["format"], "debian-tally-sheet");
    assert_eq!(schulze["voters"], 7);
    // Plurality: Carter 3, Chandran 2, NOTA 1; the ballot ranking nothing
    // votes for no one.
    check(&report(&file, "plurality"), 0, &[0], &[0, 1, 3, 2], scores(&[3, 2, 0, 1]));
    let human = hivemesh(&["tally", file.to_str().expect("utf-8"), "--rule", "plurality"]);
    let human = String::from_utf8(human.stdout).expect("utf-8");
    assert!(human.starts_with("source: Debian tally sheet (unsigned ballots;"), "{human}");
    assert!(human.contains("winner: Jonathan Carter (option 1)\n"), "{human}");
}
