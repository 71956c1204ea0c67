//! One host of the bed and the node process it runs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use serde_json::Value;

use super::PORT;

/// One simulated host: a namespace, its address, a data directory and (when
/// started) its node process.
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
    pub peer_id: String,
    pub(super) dir: tempfile::TempDir,
    pub(super) node: Option<Child>,
    /// Extra environment for the next start (e.g. a test clock offset).
    pub(super) env: Vec<(String, String)>,
    /// Extra `hivemesh run` arguments for the next start (e.g. a swarm key).
    pub(super) run_args: Vec<String>,
    /// Listen on TCP only and join over TCP (a node with a swarm key).
    pub(super) tcp_only: bool,
    /// Take part in jobs, with a provider of its own in the namespace
    /// (tests/python/fake_provider.py), instead of `--no-jobs`.
    pub(super) jobs: bool,
    pub(super) provider: Option<Child>,
}

impl Host {
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the running node's stderr goes (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    /// The QUIC address other nodes dial.
    pub fn quic(&self) -> String {
        format!("/ip4/{}/udp/{PORT}/quic-v1/p2p/{}", self.addr, self.peer_id)
    }

    /// The TCP address other nodes dial.
    pub fn tcp(&self) -> String {
        format!("/ip4/{}/tcp/{PORT}/p2p/{}", self.addr, self.peer_id)
    }

    /// Extra `hivemesh run` arguments for the next start; `tcp_only` makes
    /// the node listen on TCP alone and join over TCP (as a node with a
    /// swarm key must).
    pub fn set_run_args(&mut self, args: &[&str], tcp_only: bool) {
        self.run_args = args.iter().map(|a| a.to_string()).collect();
        self.tcp_only = tcp_only;
    }

    /// Makes the next start take part in jobs, answered by a provider of
    /// the host's own on its loopback (started once, kept across restarts).
    pub fn take_jobs(&mut self) {
        self.jobs = true;
    }

    /// Sends SIGHUP to the running node (`ip netns exec` execs the node, so
    /// the child is the node itself).
    pub fn hangup(&self) {
        let child = self.node.as_ref().expect("the host runs a node");
        let status = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill -HUP failed");
    }

    /// `GET /metrics` of the running node through curl inside the
    /// namespace; `None` when curl is missing or the node did not answer.
    pub fn metrics(&self) -> Option<String> {
        let api = std::fs::read_to_string(self.dir.path().join("api.addr")).ok()?;
        let url = format!("http://{}/metrics", api.trim().trim_start_matches("http://"));
        let out = Command::new("ip").args(["netns", "exec", &self.ns, "curl", "-sf", &url]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn is_running(&self) -> bool {
        self.node.is_some()
    }

    /// Runs `hivemesh args...` inside this host's namespace against its
    /// data directory (the CLI reaches the node's API on the namespace's
    /// loopback through DATA_DIR/api.addr).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_hivemesh")])
            .args(args)
            .env("HIVEMESH_DATA_DIR", self.dir.path())
            .env_remove("RUST_LOG")
            .output()
            .expect("run hivemesh in a namespace")
    }

    /// `hivemesh members --json` (or `--view VIEW`), parsed; `None` if the
    /// node did not answer.
    pub fn members(&self, view: Option<&str>) -> Option<Value> {
        let mut args = vec!["members", "--json"];
        if let Some(view) = view {
            args.extend(["--view", view]);
        }
        let out = self.cli(&args);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The state this host's node gives each peer id it lists.
    pub fn states(&self) -> Option<Vec<(String, String)>> {
        let report = self.members(None)?;
        let members = report["members"].as_array()?;
        Some(
            members
                .iter()
                .map(|m| {
                    (
                        m["peer_id"].as_str().unwrap_or_default().to_string(),
                        m["state"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
        )
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.node.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sets extra environment for the next start of this host's node.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut provider) = self.provider.take() {
            let _ = provider.kill();
            let _ = provider.wait();
        }
    }
}
