//! A multi-host test bed: one Linux network namespace per "host", joined by
//! veth pairs to a bridge that lives in a namespace of its own, each host
//! running one real `hivemesh run` process on its own address.
//!
//! Addresses: hosts get 198.18.0.1, 198.18.0.2, ... (the 198.18.0.0/15
//! benchmarking range, RFC 2544); [`Bed::add_nated_host`] puts a host
//! behind a masquerading router of its own (10.k.0.2 inside, the router's
//! 198.18.1.k outside); nothing outside the namespaces this module
//! creates is touched, and every object (namespaces, veths, the bridge, the
//! nftables rules) lives inside them, so deleting the namespaces removes it
//! all. [`Bed`]'s `Drop` kills the node processes and deletes the namespaces,
//! also when a test panics; [`Bed::new`] first sweeps namespaces left by
//! earlier runs that were killed (their test process is gone).
//!
//! Impairments use nftables inside a host's namespace (`tc netem` is not
//! available on these machines): loss is `numgen random mod 100 < P drop` on
//! the host's output, a partition drops traffic to and from a set of
//! addresses. There is no latency emulation.
//!
//! Needs root (`ip netns add`): `shell::available` says why not, and [`skip`]
//! turns that into one printed line, or a failure when
//! `HIVEMESH_REQUIRE_NETNS_TESTS=1` (set in `.ci/run`).
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Every namespace this module makes starts with this, then the test
/// process id, then a counter: `hm5-<pid>-<n>-<role>`.
const PREFIX: &str = "hm5-";

/// Pause between polls of the nodes. Each poll of a host starts one
/// `hivemesh members` process; polling faster takes CPU from the nodes on a
/// 2-core machine (and so disturbs what is measured).
pub const POLL: Duration = Duration::from_millis(400);

/// The listen port of every node (each host has its own address).
pub const PORT: u16 = 4001;

/// Where a host's provider listens, on the host's loopback (Host::take_jobs).
pub const PROVIDER_PORT: u16 = 11434;

#[path = "netns/host.rs"]
mod host;
#[path = "netns/shell.rs"]
mod shell;

pub use host::Host;
use shell::{delete_namespace, ip, nft, nft_delete_table, run_ok, text};
pub use shell::{skip, sweep_stale};

/// Several hosts on one bridge. See the module docs.
pub struct Bed {
    tag: String,
    switch: String,
    namespaces: Vec<String>,
    pub hosts: Vec<Host>,
    /// `--expected-size` given to every node.
    expected_size: usize,
    /// NAT routers made so far.
    routers: usize,
}

impl Bed {
    /// `n` hosts on one bridge, no node started yet.
    pub fn new(n: usize) -> Self {
        assert!((1..=250).contains(&n), "1 to 250 hosts");
        sweep_stale();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let tag = format!("{PREFIX}{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let switch = format!("{tag}-sw");
        let mut bed = Self {
            tag,
            switch: switch.clone(),
            namespaces: Vec::new(),
            hosts: Vec::new(),
            expected_size: n,
            routers: 0,
        };
        bed.add_namespace(&switch);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for i in 0..n {
            bed.add_host(i);
        }
        bed
    }

    fn add_namespace(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        // Recorded at once, so Drop deletes it even if the next step fails.
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    fn add_host(&mut self, i: usize) {
        let ns = format!("{}-h{i}", self.tag);
        self.add_namespace(&ns);
        let port = format!("p{i}");
        ip(&["-n", &self.switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip(&["-n", &self.switch, "link", "set", &port, "master", "br0", "up"]);
        let host = u32::try_from(i + 1).expect("small");
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + host);
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/15"), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        self.push_host(ns, addr);
    }

    /// Makes the data directory and identity of a host whose namespace is
    /// ready.
    fn push_host(&mut self, ns: String, addr: Ipv4Addr) {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Command::new(env!("CARGO_BIN_EXE_hivemesh"))
            .arg("id")
            .env("HIVEMESH_DATA_DIR", dir.path())
            .output()
            .expect("hivemesh id");
        assert!(id.status.success(), "hivemesh id: {id:?}");
        let peer_id = text(&id.stdout).trim().to_string();
        self.hosts.push(Host {
            ns,
            addr,
            peer_id,
            dir,
            node: None,
            env: Vec::new(),
            run_args: Vec::new(),
            tcp_only: false,
            jobs: false,
            provider: None,
        });
    }

    /// A host behind a masquerading NAT of its own: a router namespace with
    /// one leg on the bridge (198.18.1.k) and one on a private link
    /// (10.k.0.1/24) to the host (10.k.0.2, default route through the
    /// router). Peers see its connections come from 198.18.1.k; nothing
    /// can dial it first. Returns its index in [`Bed::hosts`].
    pub fn add_nated_host(&mut self) -> usize {
        self.routers += 1;
        let k = self.routers;
        assert!(k < 250, "at most 249 NATs");
        let k8 = u8::try_from(k).expect("small");
        let router = format!("{}-r{k}", self.tag);
        self.add_namespace(&router);
        let port = format!("r{k}");
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &router,
        ]);
        ip(&["-n", &self.switch, "link", "set", &port, "master", "br0", "up"]);
        ip(&["-n", &router, "addr", "add", &format!("198.18.1.{k}/15"), "dev", "eth0"]);
        ip(&["-n", &router, "link", "set", "eth0", "up"]);
        let i = self.hosts.len();
        let ns = format!("{}-h{i}", self.tag);
        self.add_namespace(&ns);
        ip(&["-n", &router, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip(&["-n", &router, "addr", "add", &format!("10.{k}.0.1/24"), "dev", "lan0"]);
        ip(&["-n", &router, "link", "set", "lan0", "up"]);
        run_ok("ip", &["netns", "exec", &router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], None);
        nft(
            &router,
            "table ip hm_nat {\n chain post {\n  type nat hook postrouting priority 100; policy accept;\n  \
             oifname \"eth0\" masquerade\n }\n}\n",
        );
        let addr = Ipv4Addr::new(10, k8, 0, 2);
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", &format!("10.{k}.0.1")]);
        self.push_host(ns, addr);
        i
    }

    /// Starts host `i`'s node (bootstrapping to host 0 unless it is host 0,
    /// over TCP for a host set TCP-only) and waits until its API is up.
    pub fn start(&mut self, i: usize) {
        // Over TCP when the joining host runs TCP only (a swarm key).
        let bootstrap =
            (i != 0).then(|| if self.hosts[i].tcp_only { self.hosts[0].tcp() } else { self.hosts[0].quic() });
        let expected = self.expected_size.to_string();
        let host = &mut self.hosts[i];
        assert!(host.node.is_none(), "host {i} already runs a node");
        let _ = std::fs::remove_file(host.dir.path().join("api.addr"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(host.log_path()).expect("log");
        let quic = format!("/ip4/{}/udp/{PORT}/quic-v1", host.addr);
        let tcp = format!("/ip4/{}/tcp/{PORT}", host.addr);
        let mut listen = Vec::new();
        if !host.tcp_only {
            listen.extend(["--listen", &quic]);
        }
        listen.extend(["--listen", &tcp]);
        let provider_url = format!("http://127.0.0.1:{PROVIDER_PORT}/v1");
        let jobs: Vec<&str> = if host.jobs {
            start_provider(host);
            vec!["--provider", &provider_url, "--provider-model", "fake"]
        } else {
            vec!["--no-jobs"]
        };
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &host.ns, env!("CARGO_BIN_EXE_hivemesh"), "run"])
            .args(jobs)
            .args(listen)
            .args(["--api", "127.0.0.1:0"])
            .args(["--expected-size", &expected])
            .args(&host.run_args)
            .env("HIVEMESH_DATA_DIR", host.dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(bootstrap) = &bootstrap {
            command.args(["--bootstrap", bootstrap]);
        }
        for (k, v) in &host.env {
            command.env(k, v);
        }
        host.node = Some(command.spawn().expect("start hivemesh run in a namespace"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !host.dir.path().join("api.addr").exists() {
            if let Some(Ok(Some(status))) = host.node.as_mut().map(Child::try_wait) {
                host.node = None;
                panic!("host {i}'s node exited ({status}): {}", tail(&host.log_path()));
            }
            assert!(Instant::now() < deadline, "host {i}'s node never recorded its API address");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn start_all(&mut self) {
        for i in 0..self.hosts.len() {
            self.start(i);
        }
    }

    /// Drops `percent` of every packet host `i` sends (0 removes the rule).
    pub fn set_loss(&self, i: usize, percent: u32) {
        let ns = &self.hosts[i].ns;
        nft_delete_table(ns, "hm_loss");
        if percent > 0 {
            let rules = format!(
                "table inet hm_loss {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  \
                 oifname \"eth0\" numgen random mod 100 < {percent} drop\n }}\n}}\n"
            );
            nft(ns, &rules);
        }
    }

    /// Cuts every packet between the hosts of `a` and those of `b`, both
    /// ways (dropped on output and on input at both ends).
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for (side, other) in [(a, b), (b, a)] {
            let addresses: Vec<String> = other.iter().map(|&j| self.hosts[j].addr.to_string()).collect();
            let set = addresses.join(", ");
            for &i in side {
                let rules = format!(
                    "table inet hm_part {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  \
                     ip daddr {{ {set} }} drop\n }}\n chain in {{\n  type filter hook input priority 0; \
                     policy accept;\n  ip saddr {{ {set} }} drop\n }}\n}}\n"
                );
                nft_delete_table(&self.hosts[i].ns, "hm_part");
                nft(&self.hosts[i].ns, &rules);
            }
        }
    }

    /// Removes every partition rule.
    pub fn heal(&self) {
        for host in &self.hosts {
            nft_delete_table(&host.ns, "hm_part");
        }
    }

    /// Polls until `done` holds for the hosts `watch` (each one's member
    /// states by peer id), or `limit` passes; returns the time it took, or
    /// `Err` with the states last seen. `each` sees every poll (for
    /// invariants such as "no false downs").
    pub fn wait_until(
        &self,
        watch: &[usize],
        limit: Duration,
        mut each: impl FnMut(usize, &[(String, String)]),
        done: impl Fn(usize, &[(String, String)]) -> bool,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            let mut all = true;
            let mut last = String::new();
            for &i in watch {
                let states = self.hosts[i].states().unwrap_or_default();
                each(i, &states);
                if !done(i, &states) {
                    all = false;
                    last.push_str(&format!("host {i}: {states:?}\n"));
                }
            }
            if all {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                return Err(last);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Index of the host whose node has `peer_id`.
    pub fn index_of(&self, peer_id: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.peer_id == peer_id)
    }

    /// The last lines of every host's log, for a failure message.
    pub fn logs(&self) -> String {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("--- host {i}\n{}\n", tail(&h.log_path())))
            .collect()
    }
}

/// The last 20 lines of a log file.
/// Starts the host's provider once (tests/python/fake_provider.py on its
/// loopback) and waits until it accepts connections.
fn start_provider(host: &mut Host) {
    if host.provider.is_some() {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/fake_provider.py");
    let child = Command::new("ip")
        .args(["netns", "exec", &host.ns, "python3"])
        .arg(&script)
        .args(["127.0.0.1", &PROVIDER_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the host's provider (python3)");
    host.provider = Some(child);
    let probe = format!("import socket; socket.create_connection(('127.0.0.1', {PROVIDER_PORT}), 1)");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = Command::new("ip").args(["netns", "exec", &host.ns, "python3", "-c", &probe]).output();
        if up.is_ok_and(|out| out.status.success()) {
            return;
        }
        assert!(Instant::now() < deadline, "the provider in {} never listened", host.ns);
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn tail(path: &Path) -> String {
    let all = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = all.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Drop for Bed {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.kill();
        }
        for name in self.namespaces.iter().rev() {
            delete_namespace(name);
        }
    }
}
