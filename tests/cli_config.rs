//! `hivemesh run --config` and `hivemesh config` as a user runs them: each
//! setting from its default, the config file, `HIVEMESH_<KEY>` or a flag,
//! highest last, with errors that name the key and the file's line.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

/// `hivemesh ARGS` on `data_dir` with exactly the `HIVEMESH_*` variables in
/// `env` (none inherited from the caller's environment).
fn command(args: &[&str], data_dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hivemesh"));
    command.args(args).arg("--data-dir").arg(data_dir).env_remove("RUST_LOG");
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("HIVEMESH_")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command
}

fn run(args: &[&str], data_dir: &Path, env: &[(&str, &str)]) -> Output {
    command(args, data_dir, env).output().expect("run hivemesh")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `hivemesh config --json ARGS`: the settings by key.
fn effective(args: &[&str], data_dir: &Path, env: &[(&str, &str)]) -> serde_json::Value {
    let mut all = vec!["config", "--json"];
    all.extend_from_slice(args);
    let out = run(&all, data_dir, env);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut by_key = serde_json::Map::new();
    for setting in doc["settings"].as_array().expect("settings") {
        by_key.insert(setting["key"].as_str().expect("key").to_owned(), setting.clone());
    }
    by_key.insert("file".into(), doc["file"].clone());
    serde_json::Value::Object(by_key)
}

/// A node on loopback (QUIC on port 0, API on port 0 unless `args` or the
/// config says otherwise); waits for its API, or panics with its stderr.
fn start_node(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(data_dir.join("node.log")).expect("log file");
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let mut node = command(&all, data_dir, env)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start hivemesh run");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data_dir.join("api.addr").exists() {
        if let Some(status) = node.try_wait().expect("wait") {
            let log = std::fs::read_to_string(data_dir.join("node.log")).unwrap_or_default();
            panic!("the node exited ({status}) before serving its API: {log}");
        }
        assert!(Instant::now() < deadline, "the node never recorded its API address");
        std::thread::sleep(Duration::from_millis(20));
    }
    node
}

/// The models the node on `data_dir` advertises in its registry entry.
fn advertised_models(data_dir: &Path) -> serde_json::Value {
    let out = common::hivemesh(&["members", "--view", "registry", "--json"], data_dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    report["me"]["models"].clone()
}

fn stop(mut node: Child) {
    node.kill().expect("kill");
    node.wait().expect("reap");
}

/// A node setup a config file can hold whole: loopback, no jobs.
const LOOPBACK: &str = "listen = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\napi = \"127.0.0.1:0\"\nno_jobs = true\n";

#[test]
fn run_takes_its_settings_from_the_default_file_in_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hivemesh.toml"), format!("{LOOPBACK}models = [\"from-file\"]\n"))
        .expect("write config");
    let node = start_node(dir.path(), &[], &[]);
    assert_eq!(advertised_models(dir.path()), serde_json::json!(["from-file"]));
    stop(node);
}

#[test]
fn the_environment_beats_the_file_and_a_flag_beats_the_environment() {
    let config_dir = tempfile::tempdir().expect("tempdir");
    let file = config_dir.path().join("node.toml");
    std::fs::write(&file, format!("{LOOPBACK}models = [\"from-file\"]\n")).expect("write config");
    let file = file.to_str().expect("utf-8 path");
    let env = [("HIVEMESH_MODELS", "from-env,second")];

    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path(), &["--config", file], &env);
    assert_eq!(advertised_models(dir.path()), serde_json::json!(["from-env", "second"]));
    stop(node);

    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path(), &["--config", file, "--models", "from-flag"], &env);
    assert_eq!(advertised_models(dir.path()), serde_json::json!(["from-flag"]));
    stop(node);
}

#[test]
fn a_setting_from_a_lower_layer_is_not_used_when_a_higher_one_sets_it() {
    // The file's API address is taken: were it used, the node could not start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hivemesh.toml");
    let text = format!("listen = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nno_jobs = true\napi = \"{taken}\"\n");
    std::fs::write(&file, text).expect("write config");
    let refused = run(&["run"], dir.path(), &[]);
    assert!(!refused.status.success(), "the file's address is in use, so run must fail");

    let node = start_node(dir.path(), &[], &[("HIVEMESH_API", "127.0.0.1:0")]);
    let addr = std::fs::read_to_string(dir.path().join("api.addr")).expect("api.addr");
    assert_ne!(addr.trim(), taken, "the environment's address was used");
    stop(node);
}

/// `GET PATH` on the node's API (HTTP/1.1 over loopback), the body.
fn api_get(api: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(api).expect("connect to the API");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

#[test]
fn provider_settings_and_profiles_live_in_the_same_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens on the provider's port; no call is made at start.
    let text = "listen = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\napi = \"127.0.0.1:0\"\n\
                provider = \"http://127.0.0.1:9/v1\"\nprovider_model = \"llama-3-8b\"\n\n\
                [profiles.terse]\nbase = \"fast\"\nstage_attempts = 1\n";
    std::fs::write(dir.path().join("hivemesh.toml"), text).expect("write config");
    let node = start_node(dir.path(), &[], &[]);
    let api = std::fs::read_to_string(dir.path().join("api.addr")).expect("api.addr");
    let api = api.trim().trim_start_matches("http://");
    let models: serde_json::Value = serde_json::from_str(&api_get(api, "/v1/models")).expect("JSON");
    let ids: Vec<&str> =
        models["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert!(ids.contains(&"council:terse") && ids.contains(&"council:fast"), "{ids:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while advertised_models(dir.path()) != serde_json::json!(["llama-3-8b"]) {
        assert!(Instant::now() < deadline, "the file's provider model was not advertised");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(node);

    // A profile the loader refuses is an error naming `profiles` and its line.
    std::fs::write(dir.path().join("hivemesh.toml"), "\n[profiles.bad]\nbase = \"nope\"\n")
        .expect("write config");
    let out = run(&["config"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("`profiles`") && err.contains("line 2") && err.contains("unknown base profile"),
        "{err}"
    );
}

#[test]
fn config_shows_each_value_and_where_it_came_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hivemesh.toml");
    std::fs::write(
        &file,
        "# a node\nexpected_size = 7\nmax_calls = 2\nbootstrap = [\"/ip4/127.0.0.1/tcp/4001\"]\n",
    )
    .expect("write config");
    let env = [("HIVEMESH_MAX_CALLS", "3"), ("HIVEMESH_API_TOKEN", "s3cret"), ("HIVEMESH_MAX_TOKENS", "64")];
    let config = effective(&["--max-tokens", "99"], dir.path(), &env);

    assert_eq!(config["file"], file.to_str().expect("utf-8 path"), "the default file is picked up");
    assert_eq!(config["expected_size"]["value"], 7);
    assert_eq!(config["expected_size"]["source"], "file");
    assert_eq!(config["expected_size"]["path"], file.to_str().expect("utf-8 path"));
    assert_eq!(config["expected_size"]["line"], 2);
    assert_eq!(config["bootstrap"]["value"], serde_json::json!(["/ip4/127.0.0.1/tcp/4001"]));
    assert_eq!(config["bootstrap"]["line"], 4);
    assert_eq!(config["max_calls"]["value"], 3);
    assert_eq!(config["max_calls"]["source"], "env");
    assert_eq!(config["max_calls"]["var"], "HIVEMESH_MAX_CALLS");
    assert_eq!(config["max_tokens"]["value"], 99);
    assert_eq!(config["max_tokens"]["source"], "flag");
    assert_eq!(config["max_tokens"]["flag"], "--max-tokens");
    assert_eq!(config["api"]["value"], "127.0.0.1:7480");
    assert_eq!(config["api"]["source"], "default");
    assert_eq!(config["api_token"]["source"], "env");
    assert_eq!(config["api_token"]["value"], "(hidden)", "a secret is never printed");
    assert_eq!(config["swarm_key"]["source"], serde_json::Value::Null, "set nowhere");

    // The text form says the same, one `key = value  # origin` line each.
    let out = run(&["config"], dir.path(), &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        |key: &str| text.lines().find(|line| line.starts_with(&format!("{key} = "))).unwrap_or("").to_owned();
    assert_eq!(line("expected_size"), format!("expected_size = 7  # {} line 2", file.display()));
    assert_eq!(line("max_calls"), "max_calls = 3  # environment variable HIVEMESH_MAX_CALLS");
    assert_eq!(line("api"), "api = \"127.0.0.1:7480\"  # default");
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn without_a_file_every_value_is_a_default_or_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        ("HIVEMESH_NO_JOBS", "true"),
        ("HIVEMESH_MODELS", "a,b"),
        ("HIVEMESH_BOOTSTRAP", "/ip4/127.0.0.1/tcp/1,/ip4/127.0.0.1/tcp/2"),
        ("HIVEMESH_PROVIDER_MODEL", "1.0"),
    ];
    let config = effective(&[], dir.path(), &env);
    assert_eq!(config["provider_model"]["value"], "1.0", "text stays text, not the number 1");
    assert_eq!(
        config["bootstrap"]["value"],
        serde_json::json!(["/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2"])
    );
    assert_eq!(config["file"], serde_json::Value::Null);
    assert_eq!(config["no_jobs"]["value"], true);
    assert_eq!(config["no_jobs"]["source"], "env");
    assert_eq!(config["models"]["value"], serde_json::json!(["a", "b"]), "split at commas like --models");
    assert_eq!(config["provider"]["value"], "local");
    assert_eq!(config["provider"]["source"], "default");
}

#[test]
fn an_unknown_key_is_an_error_naming_it_and_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "api = \"127.0.0.1:0\"\n\nno_job = true\n").expect("write config");
    let file = file.to_str().expect("utf-8 path");
    for command in [&["config", "--config", file][..], &["run", "--config", file][..]] {
        let out = run(command, dir.path(), &[]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = stderr(&out);
        assert!(err.contains("unknown key `no_job`") && err.contains(&format!("{file} line 3")), "{err}");
    }
}

#[test]
fn a_value_of_the_wrong_type_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hivemesh.toml");
    std::fs::write(&file, "expected_size = \"many\"\n").expect("write config");
    let out = run(&["config"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("`expected_size`") && err.contains("line 1") && err.contains("\"many\""), "{err}");

    // A value the flag's own parser refuses, from the environment.
    std::fs::remove_file(&file).expect("remove");
    let out = run(&["config"], dir.path(), &[("HIVEMESH_BOOTSTRAP", "192.0.2.1:4001")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("`bootstrap`") && err.contains("HIVEMESH_BOOTSTRAP") && err.contains("not a multiaddr"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().expect("utf-8 path");
    for command in [&["config", "--config", missing][..], &["run", "--config", missing][..]] {
        let out = run(command, dir.path(), &[]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(stderr(&out).contains(&format!("config file {missing} not found")), "{}", stderr(&out));
    }
}

#[test]
fn a_file_that_is_not_toml_is_an_error_naming_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hivemesh.toml"), "api = \"127.0.0.1:0\"\nlisten = [\n")
        .expect("write config");
    let out = run(&["config"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("not valid TOML") && err.contains("line 2"), "{err}");
}

/// README's configuration reference is `hivemesh config --reference`'s output.
#[test]
fn readme_holds_the_generated_config_reference() {
    const START: &str = "<!-- config-reference:start -->\n";
    const END: &str = "<!-- config-reference:end -->";
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(&["config", "--reference"], dir.path(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let generated = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(generated.contains("| `no_jobs` | `HIVEMESH_NO_JOBS` | `--no-jobs` | `false` |"), "{generated}");

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let start = readme.find(START).expect("README.md lacks <!-- config-reference:start -->") + START.len();
    let end = start + readme[start..].find(END).expect("README.md lacks <!-- config-reference:end -->");
    assert_eq!(readme[start..end], generated, "regenerate with `hivemesh config --reference`");
}
