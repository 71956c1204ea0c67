//! Private swarms (ADR 0016) between separate "hosts" (network namespaces,
//! tests/support/netns.rs): a swarm key keeps out nodes with no key or
//! another key, and an allowlist keeps out peers not on it until a SIGHUP
//! reload admits them.
//!
//! Needs root; otherwise each test prints one line and returns (or fails
//! when HIVEMESH_REQUIRE_NETNS_TESTS=1, as in CI).

#[path = "support/equivocation.rs"]
mod equivocation;
#[path = "support/netns.rs"]
mod netns;

use std::time::{Duration, Instant};

use netns::Bed;

/// Generous bound for convergence on a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(60);
/// How long outsiders get to try, after the insiders converged, while
/// both sides are polled.
const OUTSIDERS_TRY: Duration = Duration::from_secs(6);

fn swarm_key(bed: &Bed, name: &str) -> std::path::PathBuf {
    let out = bed.hosts[0].cli(&["swarm-key"]);
    assert!(out.status.success(), "swarm-key: {out:?}");
    let path = bed.hosts[0].data_dir().join(name);
    std::fs::write(&path, &out.stdout).expect("write key");
    path
}

fn lists(states: &[(String, String)], bed: &Bed, j: usize) -> bool {
    states.iter().any(|(peer, _)| *peer == bed.hosts[j].peer_id)
}

/// Every host in `watch` lists every other host of `alive` as alive.
fn converge(bed: &Bed, watch: &[usize], alive: &[usize], what: &str) -> Duration {
    bed.wait_until(
        watch,
        LIMIT,
        |_, _| {},
        |i, states| {
            alive
                .iter()
                .filter(|&&j| j != i)
                .all(|&j| states.iter().any(|(p, s)| *p == bed.hosts[j].peer_id && s == "alive"))
        },
    )
    .unwrap_or_else(|states| panic!("{what}: no convergence:\n{states}\n{}", bed.logs()))
}

/// Polls every host of `inside` and `outside` for at least `how_long` and
/// until `tried` holds (the outsiders' attempts were seen; at most
/// [`LIMIT`]): no insider ever lists an outsider (in the default view or
/// the swim view, which keeps down members too), and no outsider lists an
/// insider.
fn never_see_each_other(
    bed: &Bed,
    inside: &[usize],
    outside: &[usize],
    how_long: Duration,
    tried: impl Fn() -> bool,
) {
    let started = Instant::now();
    while started.elapsed() < how_long || !tried() {
        assert!(started.elapsed() < LIMIT, "the outsiders' attempts were never refused:\n{}", bed.logs());
        for (watchers, others) in [(inside, outside), (outside, inside)] {
            for &i in watchers {
                let states = bed.hosts[i].states().unwrap_or_default();
                let swim = bed.hosts[i].members(Some("swim")).unwrap_or_default();
                for &j in others {
                    assert!(
                        !lists(&states, bed, j) && !swim.to_string().contains(&bed.hosts[j].peer_id),
                        "host {i} lists host {j}: {states:?}\n{}",
                        bed.logs()
                    );
                }
            }
        }
        std::thread::sleep(netns::POLL);
    }
}

/// How many log lines of host `i` contain `needle`.
fn log_lines(bed: &Bed, i: usize, needle: &str) -> usize {
    let log = std::fs::read_to_string(bed.hosts[i].log_path()).unwrap_or_default();
    log.lines().filter(|l| l.contains(needle)).count()
}

/// `hivemesh_connections_refused_total{reason}` on host `i`; `None` when the
/// metrics could not be read (no curl in the namespace).
fn refused(bed: &Bed, i: usize, reason: &str) -> Option<u64> {
    let text = bed.hosts[i].metrics()?;
    let prefix = format!("hivemesh_connections_refused_total{{reason=\"{reason}\"}} ");
    let line = text.lines().find(|l| l.starts_with(&prefix))?;
    line[prefix.len()..].trim().parse().ok()
}

#[test]
fn nodes_without_the_swarm_key_never_join_a_keyed_swarm() {
    if netns::skip("private_swarm (swarm key)") {
        return;
    }
    let (a, b, c, d) = (0, 1, 2, 3);
    let mut bed = Bed::new(4);
    let key = swarm_key(&bed, "swarm.key");
    let other = swarm_key(&bed, "other.key");
    let (key, other) = (key.to_string_lossy().into_owned(), other.to_string_lossy().into_owned());
    bed.hosts[a].set_run_args(&["--swarm-key", &key], true);
    bed.hosts[b].set_run_args(&["--swarm-key", &key], true);
    // C has no key (and dials A's TCP address: A has no QUIC at all); D
    // has another key.
    bed.hosts[c].set_run_args(&[], true);
    bed.hosts[d].set_run_args(&["--swarm-key", &other], true);
    let started = Instant::now();
    bed.start(a);
    bed.start(b);
    let took = converge(&bed, &[a, b], &[a, b], "keyed A and B");
    eprintln!("figure: two keyed hosts converge {:.1} s after B started", took.as_secs_f64());
    bed.start(c);
    bed.start(d);
    // A refuses C and D at the handshake (a peer without the key may wait
    // for the handshake's 10 s timeout), each logged once however often
    // they retry.
    let needle = |j: usize| format!("refused a connection from /ip4/{}/", bed.hosts[j].addr);
    let tried = || [c, d].iter().all(|&j| log_lines(&bed, a, &needle(j)) > 0);
    never_see_each_other(&bed, &[a, b], &[c, d], OUTSIDERS_TRY, tried);
    // A stayed keyed to B all along.
    converge(&bed, &[a, b], &[a, b], "keyed A and B after the outsiders tried");

    for outsider in [c, d] {
        assert_eq!(log_lines(&bed, a, &needle(outsider)), 1, "one line per refused host:\n{}", bed.logs());
    }
    match refused(&bed, a, "swarm_key") {
        Some(n) => assert!(n >= 2, "A counted {n} swarm-key refusals"),
        None => eprintln!("no curl in the namespace: /metrics not checked"),
    }
    // The refused side says why once, however often it retries. D (another
    // key) sees either a failed handshake (counted as a swarm-key refusal of
    // its own) or a timeout, depending on who gives up first.
    let why = "the swarm-key handshake failed (it has no key or another one)";
    assert!(log_lines(&bed, d, why) <= 1, "D says why once:\n{}", bed.logs());
    for outsider in [c, d] {
        let lines = log_lines(&bed, outsider, "cannot reach bootstrap");
        assert!(lines <= 1, "host {outsider} logged {lines} lines about its bootstrap:\n{}", bed.logs());
    }
    // The keyed node prints the key's fingerprint, and listens on no QUIC.
    let status = bed.hosts[a].cli(&["members", "--json"]);
    assert!(status.status.success());
    assert!(!String::from_utf8_lossy(&status.stdout).contains("quic"), "A advertises no QUIC address");
    eprintln!("figure: swarm-key case took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn peers_off_the_allowlist_are_refused_until_a_reload_admits_them() {
    if netns::skip("private_swarm (allowlist)") {
        return;
    }
    let (a, b, e) = (0, 1, 2);
    let mut bed = Bed::new(3);
    let list = |bed: &Bed, peers: &[usize]| {
        let mut text = String::from("# the council\n\n");
        for &j in peers {
            text.push_str(&format!("{}  # host {j}\n", bed.hosts[j].peer_id));
        }
        text
    };
    let files: Vec<std::path::PathBuf> =
        [a, b].iter().map(|&i| bed.hosts[i].data_dir().join("allow.txt")).collect();
    for file in &files {
        std::fs::write(file, list(&bed, &[a, b])).expect("allowlist");
    }
    for (i, file) in [a, b].into_iter().zip(&files) {
        let file = file.to_string_lossy().into_owned();
        bed.hosts[i].set_run_args(&["--allow-peers", &file], false);
    }
    bed.start(a);
    bed.start(b);
    converge(&bed, &[a, b], &[a, b], "allowed A and B");
    bed.start(e);
    let needle = format!("refused a connection from {}", bed.hosts[e].peer_id);
    never_see_each_other(&bed, &[a, b], &[e], OUTSIDERS_TRY, || log_lines(&bed, a, &needle) > 0);
    assert_eq!(log_lines(&bed, a, &needle), 1, "A logs E's refusal once:\n{}", bed.logs());
    match refused(&bed, a, "not_allowed") {
        Some(n) => assert!(n >= 1, "A counted {n} allowlist refusals"),
        None => eprintln!("no curl in the namespace: /metrics not checked"),
    }

    // A bad file on reload keeps the old list (E still out) and names the line.
    std::fs::write(&files[0], "not-a-peer-id\n").expect("bad allowlist");
    bed.hosts[a].hangup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_lines(&bed, a, "allowlist not reloaded") == 0 {
        assert!(Instant::now() < deadline, "no error for a bad allowlist:\n{}", bed.logs());
        std::thread::sleep(netns::POLL);
    }
    assert_eq!(log_lines(&bed, a, "line 1"), 1, "the error names the line:\n{}", bed.logs());
    converge(&bed, &[a, b], &[a, b], "A and B after a bad reload");

    // Adding E on both and a SIGHUP admits it.
    for file in &files {
        std::fs::write(file, list(&bed, &[a, b, e])).expect("allowlist");
    }
    bed.hosts[a].hangup();
    bed.hosts[b].hangup();
    let took = converge(&bed, &[a, b, e], &[a, b, e], "E admitted after SIGHUP");
    eprintln!(
        "figure: a SIGHUP-admitted peer is alive everywhere {:.1} s after the reload",
        took.as_secs_f64()
    );

    // Removing E again and a SIGHUP closes its open connections: A and B
    // mark it suspect or down (it can no longer answer a probe), and E them.
    for file in &files {
        std::fs::write(file, list(&bed, &[a, b])).expect("allowlist");
    }
    bed.hosts[a].hangup();
    bed.hosts[b].hangup();
    let gone = |i: usize, states: &[(String, String)], of: Vec<usize>| {
        of.iter().filter(|&&j| j != i).all(|&j| {
            states.iter().any(|(p, s)| *p == bed.hosts[j].peer_id && (s == "down" || s == "suspect"))
        })
    };
    let took = bed
        .wait_until(
            &[a, b, e],
            LIMIT,
            |_, _| {},
            |i, states| gone(i, states, if i == e { vec![a, b] } else { vec![e] }),
        )
        .unwrap_or_else(|states| panic!("E removed: still alive somewhere:\n{states}\n{}", bed.logs()));
    eprintln!(
        "figure: a peer removed by SIGHUP is suspect or down on both sides {:.1} s later",
        took.as_secs_f64()
    );
}

/// `hivemesh ask --mode council --peers N --json Q` on host `i`: the job.
fn ask(bed: &Bed, i: usize, peers: usize) -> serde_json::Value {
    let peers = peers.to_string();
    let out = bed.hosts[i].cli(&[
        "ask",
        "--mode",
        "council",
        "--peers",
        &peers,
        "--json",
        "What is the capital of France?",
    ]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ask on host {i}: {e}: {out:?}\n{}", bed.logs()))
}

#[test]
fn jobs_between_separate_hosts_honour_quotas_equivocation_proofs_and_swarm_keys() {
    if netns::skip("private_swarm (jobs)") {
        return;
    }
    // Hosts 0-3 share a swarm key and take part in jobs, each with a
    // provider of its own; host 3 lets no remote peer spend its credits.
    // Host 4 has no key and takes jobs too.
    let mut bed = Bed::new(5);
    let key = swarm_key(&bed, "swarm.key");
    let key = key.to_string_lossy().into_owned();
    for i in 0..5 {
        bed.hosts[i].take_jobs();
    }
    for i in 0..3 {
        bed.hosts[i].set_run_args(&["--swarm-key", &key], true);
    }
    bed.hosts[3].set_run_args(&["--swarm-key", &key, "--peer-quota", "calls=0"], true);
    bed.hosts[4].set_run_args(&[], true);
    for i in 0..4 {
        bed.start(i);
    }
    converge(&bed, &[0, 1, 2, 3], &[0, 1, 2, 3], "four keyed hosts");
    bed.start(4);

    // A council asked on host 0 over all four: host 3 refuses (quota), the
    // job completes without it.
    let job = ask(&bed, 0, 4);
    assert_eq!(job["outcome"]["status"], "done", "{job:#}");
    let refused = &bed.hosts[3].peer_id;
    let missing = job["outcome"]["missing"].to_string();
    assert!(
        missing.contains(refused.as_str()) && missing.contains("quota"),
        "host 3 left out for its quota: {job:#}"
    );

    // An equivocation proof about host 2, handed to host 0, reaches every
    // keyed host; the next job, asked on host 1, leaves host 2 out.
    let file = bed.hosts[0].data_dir().join("equivocation.json");
    std::fs::write(&file, equivocation::ballot_file(bed.hosts[2].data_dir(), 0x24))
        .expect("write the ballot file");
    let out = bed.hosts[0].cli(&["byzantine", "report", &file.to_string_lossy()]);
    assert!(out.status.success(), "byzantine report: {out:?}");
    let offender = bed.hosts[2].peer_id.clone();
    let started = Instant::now();
    while ![0, 1, 2, 3].iter().all(|&i| {
        let out = bed.hosts[i].cli(&["byzantine", "list", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        report["excluded"] == serde_json::json!([offender])
    }) {
        assert!(started.elapsed() < LIMIT, "the proof did not reach every keyed host:\n{}", bed.logs());
        std::thread::sleep(netns::POLL);
    }
    let job = ask(&bed, 1, 4);
    let participants = job["spec"]["participants"].to_string();
    assert!(!participants.contains(offender.as_str()), "host 2 placed after its proof: {job:#}");
    assert!(participants.contains(bed.hosts[0].peer_id.as_str()), "{job:#}");

    // Host 4, without the key, asks a council of four: only it takes part,
    // and no keyed host ever holds its job or its ballot.
    let job = ask(&bed, 4, 4);
    let outsider = job["spec"]["participants"].as_array().map(Vec::len);
    assert_eq!(outsider, Some(1), "the keyed hosts were not placed: {job:#}");
    let id = job["id"].as_str().expect("job id").to_string();
    for i in 0..4 {
        let out = bed.hosts[i].cli(&["jobs", "--json", "--limit", "100"]);
        assert!(out.status.success(), "jobs on host {i}: {out:?}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(&id), "host {i} holds the outsider's job");
    }
}
