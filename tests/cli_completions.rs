//! `hivemesh completions SHELL` and `hivemesh man`: scripts the shells
//! accept, naming every command, and a man page; a closed stdout ends them
//! quietly.

mod common;

use std::process::{Command, Stdio};

use common::hivemesh;

/// Every top-level command, as `hivemesh --help` lists it.
fn commands(dir: &std::path::Path) -> Vec<String> {
    let help = String::from_utf8_lossy(&hivemesh(&["--help"], dir).stdout).to_string();
    let listed = help.split("Commands:").nth(1).expect("a Commands: section").split("Options:").next();
    let names: Vec<String> = listed
        .expect("commands then options")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    assert!(names.len() > 10 && names.contains(&"force-leave".to_string()), "{names:?}");
    names
}

#[test]
fn completion_scripts_parse_and_name_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = commands(dir.path());
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = hivemesh(&["completions", shell], dir.path());
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8_lossy(&out.stdout);
        for name in &names {
            assert!(script.contains(name.as_str()), "{shell} completes {name}");
        }
    }
    // bash checks the syntax of what it would source.
    let script = dir.path().join("hivemesh.bash");
    std::fs::write(&script, hivemesh(&["completions", "bash"], dir.path()).stdout).expect("write");
    let parsed = Command::new("bash").arg("-n").arg(&script).output().expect("bash");
    assert!(parsed.status.success(), "bash -n: {}", String::from_utf8_lossy(&parsed.stderr));

    let unknown = hivemesh(&["completions", "tcsh"], dir.path());
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("possible values"), "{unknown:?}");
}

#[test]
fn the_man_page_is_roff_listing_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = commands(dir.path());
    let out = hivemesh(&["man"], dir.path());
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH hivemesh 1"), "{page}");
    for name in &names {
        // roff escapes the hyphen: force\-leave.
        assert!(page.contains(&name.replace('-', "\\-")), "the page lists {name}");
    }
    // Each command has its own page, with every flag.
    let run = hivemesh(&["man", "run"], dir.path());
    assert!(run.status.success(), "{run:?}");
    let run = String::from_utf8_lossy(&run.stdout);
    assert!(run.contains(".TH hivemesh\\-run 1") || run.contains(".TH hivemesh-run 1"), "{run}");
    for flag in ["\\-\\-bootstrap", "\\-\\-swarm\\-key", "\\-\\-config"] {
        assert!(run.contains(flag), "run's page lists {flag}");
    }
    let unknown = hivemesh(&["man", "nope"], dir.path());
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("one of:"), "{unknown:?}");
}

#[test]
fn a_closed_stdout_ends_them_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [&["completions", "bash"][..], &["man"][..]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_hivemesh"))
            .args(args)
            .env("HIVEMESH_DATA_DIR", dir.path())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.code().is_some(), "{args:?} ended by a signal");
    }
}
