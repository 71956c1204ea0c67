//! `hivemesh run --api-allow-host/--api-allow-origin` as a user runs them
//! (ADR 0014): the flags reach the node, a wildcard is a usage error, and
//! local commands (no Origin header) keep working. Every route is covered
//! in node/tests/api_origin.rs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::hivemesh;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// Sends `request` as written and returns the whole answer (the request
/// asks the server to close the connection).
fn raw(api: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(api).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    text(&answer)
}

fn status(answer: &str) -> u16 {
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn a_wildcard_or_a_host_with_a_port_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, value, says) in [
        ("--api-allow-origin", "*", "wildcard"),
        ("--api-allow-origin", "null", "null"),
        ("--api-allow-origin", "localhost:3000", "scheme://host"),
        // A typo in the port once allowed the origin on port 80 instead.
        ("--api-allow-origin", "http://ui.example:30OO", "port"),
        ("--api-allow-origin", "http://evil.example:abc", "port"),
        ("--api-allow-host", "node.example:7480", "no scheme, port"),
    ] {
        let out = hivemesh(&["run", "--no-jobs", flag, value], dir.path());
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains(flag) && err.contains(says), "{flag} {value}: {err}");
    }
}

#[test]
fn allowed_hosts_and_origins_reach_the_node_and_local_commands_still_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Command::new(env!("CARGO_BIN_EXE_hivemesh"))
        .args(["run", "--no-jobs", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
        .args(["--api-allow-origin", "http://localhost:3000,https://ui.example"])
        .env("HIVEMESH_API_ALLOW_HOST", "node.example")
        .env("HIVEMESH_DATA_DIR", dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hivemesh run");
    let api = common::wait_for_api(dir.path());
    let port = api.rsplit(':').next().expect("port").to_string();
    let get = |host: &str, extra: &str| {
        raw(&api, &format!("GET /v1/status HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"))
    };

    assert_eq!(status(&get(&format!("node.example:{port}"), "")), 200, "the name from the environment");
    let refused = get(&format!("attacker.example:{port}"), "");
    assert_eq!(status(&refused), 421, "{refused}");
    assert!(refused.contains("host_not_allowed"), "{refused}");
    for origin in ["http://localhost:3000", "https://ui.example"] {
        let preflight = raw(
            &api,
            &format!(
                "OPTIONS /v1/leave HTTP/1.1\r\nHost: {api}\r\nOrigin: {origin}\r\n\
                 Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(status(&preflight), 200, "{preflight}");
        let granted = format!("access-control-allow-origin: {origin}");
        assert!(preflight.to_ascii_lowercase().contains(&granted), "{preflight}");
    }
    let form = raw(
        &api,
        &format!(
            "POST /v1/leave HTTP/1.1\r\nHost: {api}\r\nOrigin: http://evil.example\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\nConnection: close\r\n\r\na=b"
        ),
    );
    assert_eq!(status(&form), 403, "{form}");

    let members = hivemesh(&["members", "--json"], dir.path());
    assert!(members.status.success(), "{members:?}");
    let leave = hivemesh(&["leave"], dir.path());
    assert!(leave.status.success(), "{leave:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = node.kill();
            panic!("the node did not stop after `hivemesh leave`");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
