//! hivemesh membership and chitchat (quickwit's gossip crate) side by side,
//! in one process, one system after the other, N nodes on loopback each
//! (issue 16). Both are started the same way: every node is given node 0 as
//! its seed. Per system it reports:
//!
//! 1. convergence: seconds from the first node's start until every node
//!    holds every other one alive;
//! 2. detection: after convergence and a quiet 10 s, seconds from a hard
//!    stop of the last node (tasks aborted, no goodbye) until every other
//!    node holds it down (hivemesh: `down` or gone from the view, `suspect`
//!    is not enough; chitchat: out of `live_nodes()`);
//! 3. traffic: bytes sent per node per second during the quiet 10 s
//!    (hivemesh: `membership.bytes_out`, SWIM frames only; chitchat: the
//!    bytes its sockets hand to UDP, counted by a wrapping `Transport`);
//!
//! and the pairs (observer, running node) wrongly held down (hivemesh:
//! `down`; chitchat: dead) at the worst poll
//! after convergence. Views are polled every 50 ms; every phase gives up
//! after 120 s and says "not reached".
//!
//! Run: `cargo bench -p hivemesh-node --bench membership_vs_chitchat`
//! (N = 10 then 50); `-- --nodes 50` or `HIVEMESH_BENCH_NODES=50` for one
//! size.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::{
    ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use hivemesh_node::membership::MembershipConfig;
use hivemesh_node::{NodeConfig, NodeHandle, spawn_node};

/// The probe period (hivemesh) and gossip interval (chitchat).
const INTERVAL: Duration = Duration::from_secs(1);
const PHASE_LIMIT: Duration = Duration::from_secs(120);
const QUIET: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// How one observer holds one other node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    Alive,
    /// hivemesh's SWIM suspicion: not alive, not yet down.
    Suspect,
    /// Down (hivemesh) or dead (chitchat's failure detector).
    Down,
    /// Not in the view at all (never learned, or forgotten).
    Unknown,
}

/// N nodes of one system on loopback, indexed 0..N; node 0 is the seed.
trait Cluster {
    fn name(&self) -> &'static str;
    fn len(&self) -> usize;
    /// How node `observer` holds each node (its own entry is `Alive`).
    async fn view(&self, observer: usize) -> anyhow::Result<Vec<Held>>;
    /// Membership bytes sent so far, summed over the running nodes.
    async fn bytes_out(&self) -> anyhow::Result<u64>;
    /// Stops `node` without a goodbye.
    async fn stop_hard(&mut self, node: usize);
    /// Stops every node still running.
    async fn close(self);
}

/// One system's figures at one size; `None` when not reached in time.
struct Figures {
    converged: Option<Duration>,
    detected: Option<Duration>,
    bytes_per_node_s: f64,
    false_downs: usize,
}

/// Every running node's view, in `running` order.
async fn sweep(cluster: &impl Cluster, running: &[usize]) -> anyhow::Result<Vec<Vec<Held>>> {
    let mut views = Vec::with_capacity(running.len());
    for &node in running {
        views.push(cluster.view(node).await?);
    }
    Ok(views)
}

/// (observer, subject) pairs of running nodes where the subject is held
/// `state`; with `or_else`, every pair where it is not held `Alive`.
fn held(views: &[Vec<Held>], running: &[usize], state: Held, or_else: bool) -> usize {
    let bad = |h: Held| if or_else { h != Held::Alive } else { h == state };
    views.iter().map(|view| running.iter().filter(|&&s| bad(view[s])).count()).sum()
}

/// Why the views are not converged: nodes seeing all, pairs by state.
fn breakdown(views: &[Vec<Held>], running: &[usize]) -> String {
    let full = views.iter().filter(|view| running.iter().all(|&s| view[s] == Held::Alive)).count();
    format!(
        "{full}/{} nodes see all; pairs not alive: {} suspect, {} down, {} unknown",
        running.len(),
        held(views, running, Held::Suspect, false),
        held(views, running, Held::Down, false),
        held(views, running, Held::Unknown, false),
    )
}

/// Converges, idles 10 s counting bytes, stops the last node hard and waits
/// until every other one holds it down; closes the cluster.
async fn measure(mut cluster: impl Cluster, started: Instant) -> anyhow::Result<Figures> {
    let n = cluster.len();
    let mut running: Vec<usize> = (0..n).collect();
    let converged = loop {
        let views = sweep(&cluster, &running).await?;
        if held(&views, &running, Held::Alive, true) == 0 {
            break Some(started.elapsed());
        }
        if started.elapsed() > PHASE_LIMIT {
            println!(
                "  {}: not converged after {PHASE_LIMIT:?}: {}",
                cluster.name(),
                breakdown(&views, &running)
            );
            break None;
        }
        tokio::time::sleep(POLL).await;
    };
    println!("  {}: all see all: {}", cluster.name(), secs(converged));

    let mut false_downs = 0;
    let before = cluster.bytes_out().await?;
    let quiet_from = Instant::now();
    while quiet_from.elapsed() < QUIET {
        tokio::time::sleep(Duration::from_millis(500)).await;
        false_downs = false_downs.max(held(&sweep(&cluster, &running).await?, &running, Held::Down, false));
    }
    let sent = cluster.bytes_out().await?.saturating_sub(before);
    let bytes_per_node_s = sent as f64 / n as f64 / quiet_from.elapsed().as_secs_f64();
    println!("  {}: idle traffic: {bytes_per_node_s:.0} B/s per node", cluster.name());

    let victim = n - 1;
    running.retain(|&i| i != victim);
    let stopped = Instant::now();
    cluster.stop_hard(victim).await;
    let detected = loop {
        let views = sweep(&cluster, &running).await?;
        false_downs = false_downs.max(held(&views, &running, Held::Down, false));
        if views.iter().all(|view| matches!(view[victim], Held::Down | Held::Unknown)) {
            break Some(stopped.elapsed());
        }
        if stopped.elapsed() > PHASE_LIMIT {
            let alive =
                views.iter().filter(|view| !matches!(view[victim], Held::Down | Held::Unknown)).count();
            println!("  {}: {alive} nodes still hold the stopped node alive or suspect", cluster.name());
            break None;
        }
        tokio::time::sleep(POLL).await;
    };
    println!("  {}: stopped node down everywhere: {}", cluster.name(), secs(detected));
    cluster.close().await;
    Ok(Figures { converged, detected, bytes_per_node_s, false_downs })
}

/// hivemesh's real nodes (`spawn_node`), control API off.
struct Hivemesh {
    nodes: Vec<Option<NodeHandle>>,
    index: HashMap<String, usize>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Hivemesh {
    /// Starts `n` nodes; node i > 0 bootstraps through node 0 over TCP (even
    /// i) or QUIC (odd i), as `hivemesh mesh` alternates them.
    async fn start(n: usize) -> anyhow::Result<Self> {
        let mut nodes: Vec<Option<NodeHandle>> = Vec::with_capacity(n);
        let mut dirs = Vec::with_capacity(n);
        for i in 0..n {
            let dir = tempfile::tempdir()?;
            let mut config = NodeConfig::loopback(dir.path().to_path_buf());
            config.api = None;
            config.membership = MembershipConfig::lan(n as u32);
            if let Some(Some(seed)) = nodes.first() {
                let transport = if i % 2 == 0 { "tcp" } else { "quic-v1" };
                config.bootstrap = seed.address(transport).into_iter().collect();
            }
            nodes.push(Some(spawn_node(config).await.with_context(|| format!("hivemesh node {i}"))?));
            dirs.push(dir);
        }
        let index =
            nodes.iter().flatten().enumerate().map(|(i, node)| (node.peer_id.to_string(), i)).collect();
        Ok(Self { nodes, index, _dirs: dirs })
    }
}

impl Cluster for Hivemesh {
    fn name(&self) -> &'static str {
        "hivemesh"
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    async fn view(&self, observer: usize) -> anyhow::Result<Vec<Held>> {
        let node = self.nodes[observer].as_ref().context("a stopped node has no view")?;
        let mut held = vec![Held::Unknown; self.nodes.len()];
        held[observer] = Held::Alive;
        for member in node.members().await?.members {
            if let Some(&i) = self.index.get(&member.peer_id) {
                held[i] = match member.state.as_str() {
                    "alive" => Held::Alive,
                    "suspect" => Held::Suspect,
                    "down" => Held::Down,
                    _ => Held::Unknown,
                };
            }
        }
        Ok(held)
    }

    async fn bytes_out(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for node in self.nodes.iter().flatten() {
            total += node.status().await?.membership.bytes_out;
        }
        Ok(total)
    }

    async fn stop_hard(&mut self, node: usize) {
        if let Some(handle) = self.nodes[node].take() {
            handle.kill().await;
        }
    }

    async fn close(self) {
        for handle in self.nodes.into_iter().flatten() {
            handle.kill().await;
        }
    }
}

/// chitchat's UDP transport, counting the bytes each socket sends.
struct CountingUdp(Arc<AtomicU64>);

struct CountingSocket {
    inner: Box<dyn Socket>,
    sent: Arc<AtomicU64>,
}

#[async_trait]
impl Transport for CountingUdp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = UdpTransport.open(listen_addr).await?;
        Ok(Box::new(CountingSocket { inner, sent: self.0.clone() }))
    }
}

#[async_trait]
impl Socket for CountingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        let outcome = self.inner.send(to, envelope).await?;
        self.sent.fetch_add(outcome.num_bytes_sent as u64, Ordering::Relaxed);
        Ok(outcome)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.inner.recv().await
    }
}

/// chitchat nodes, each on its own UDP port with its own byte counter.
struct Chitchat {
    nodes: Vec<Option<ChitchatHandle>>,
    sent: Vec<Arc<AtomicU64>>,
}

impl Chitchat {
    /// chitchat's defaults but for the 1 s gossip interval: the default
    /// phi-accrual failure detector, no keys beyond its own heartbeat,
    /// protocol V1 (compressed digests) since every node runs this version.
    fn config(i: usize, addr: SocketAddr, seed: Option<SocketAddr>) -> ChitchatConfig {
        ChitchatConfig {
            chitchat_id: ChitchatId::new(format!("node-{i}"), 0, addr),
            cluster_id: "bench".to_string(),
            gossip_interval: INTERVAL,
            listen_addr: addr,
            seed_nodes: seed.iter().map(|s| s.to_string()).collect(),
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        }
    }

    async fn start(n: usize) -> anyhow::Result<Self> {
        // chitchat advertises the address it is given, so ports are picked
        // first (all held at once, so they differ), then released.
        let held: Vec<std::net::UdpSocket> =
            (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
        let addrs: Vec<SocketAddr> = held.iter().map(|s| s.local_addr()).collect::<Result<_, _>>()?;
        drop(held);
        let mut nodes = Vec::with_capacity(n);
        let mut sent = Vec::with_capacity(n);
        for (i, &addr) in addrs.iter().enumerate() {
            let counter = Arc::new(AtomicU64::new(0));
            let seed = (i > 0).then_some(addrs[0]);
            let handle =
                spawn_chitchat(Self::config(i, addr, seed), Vec::new(), &CountingUdp(counter.clone()))
                    .await
                    .with_context(|| format!("chitchat node {i} on {addr}"))?;
            nodes.push(Some(handle));
            sent.push(counter);
        }
        Ok(Self { nodes, sent })
    }
}

impl Cluster for Chitchat {
    fn name(&self) -> &'static str {
        "chitchat"
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    async fn view(&self, observer: usize) -> anyhow::Result<Vec<Held>> {
        let node = self.nodes[observer].as_ref().context("a stopped node has no view")?;
        let index = |id: &ChitchatId| id.node_id.strip_prefix("node-")?.parse::<usize>().ok();
        let (live, dead): (Vec<usize>, Vec<usize>) = node
            .with_chitchat(|c| {
                (c.live_nodes().filter_map(index).collect(), c.dead_nodes().filter_map(index).collect())
            })
            .await;
        let mut held = vec![Held::Unknown; self.nodes.len()];
        for (nodes, state) in [(dead, Held::Down), (live, Held::Alive)] {
            for i in nodes {
                if let Some(h) = held.get_mut(i) {
                    *h = state;
                }
            }
        }
        Ok(held)
    }

    async fn bytes_out(&self) -> anyhow::Result<u64> {
        let running = self.nodes.iter().zip(&self.sent).filter(|(node, _)| node.is_some());
        Ok(running.map(|(_, sent)| sent.load(Ordering::Relaxed)).sum())
    }

    async fn stop_hard(&mut self, node: usize) {
        if let Some(handle) = self.nodes[node].take() {
            // Aborting the server task drops its socket: no more gossip.
            handle.abort();
        }
    }

    async fn close(self) {
        for handle in self.nodes.into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle.shutdown()).await;
        }
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "not reached".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
}

/// chitchat's figure over hivemesh's, e.g. "3.1x".
fn ratio(chitchat: Option<f64>, hivemesh: Option<f64>) -> String {
    match (chitchat, hivemesh) {
        (Some(c), Some(h)) if h > 0.0 => format!("{:.2}x", c / h),
        _ => "-".to_string(),
    }
}

fn print_table(n: usize, h: &Figures, c: &Figures) {
    let s = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    println!("\nN = {n} nodes on loopback (one process, systems run one after the other)");
    println!("| figure | hivemesh | chitchat | chitchat/hivemesh |");
    println!("|---|---|---|---|");
    let rows = [
        (
            "all see all, from the first start",
            secs(h.converged),
            secs(c.converged),
            s(c.converged),
            s(h.converged),
        ),
        (
            "hard-stopped node down at all others",
            secs(h.detected),
            secs(c.detected),
            s(c.detected),
            s(h.detected),
        ),
        (
            "bytes sent per node per second, idle",
            format!("{:.0} B/s", h.bytes_per_node_s),
            format!("{:.0} B/s", c.bytes_per_node_s),
            Some(c.bytes_per_node_s),
            Some(h.bytes_per_node_s),
        ),
    ];
    for (what, hv, cv, cr, hr) in rows {
        println!("| {what} | {hv} | {cv} | {} |", ratio(cr, hr));
    }
    println!("| false downs (pairs, worst poll) | {} | {} | - |", h.false_downs, c.false_downs);
}

fn describe(n: usize) {
    let m = MembershipConfig::lan(n as u32);
    let fd = FailureDetectorConfig::default();
    println!(
        "hivemesh: foca SWIM, MembershipConfig::lan({n}): probe every {:?}, gossip every {:?} to 3 members; \
         libp2p request-response streams over TCP and QUIC (Noise, yamux); bootstrap via node 0, TCP/QUIC \
         alternating; bytes = SWIM frames only (no libp2p identify/ping/kad, replication, or TCP/QUIC/Noise \
         overhead)\n  {m:?}",
        m.probe_period, m.gossip_period,
    );
    println!(
        "chitchat 0.13: scuttlebutt, gossip every {INTERVAL:?} to up to 3 live nodes (plus a dead node or a \
         seed), phi-accrual failure detector at its defaults (phi threshold {}, window {}, max interval \
         {:?}, initial interval {:?}); UDP, protocol V1; seed node 0; bytes = chitchat payloads handed \
         to UDP (no IP/UDP headers)",
        fd.phi_threshold, fd.sampling_window_size, fd.max_interval, fd.initial_interval,
    );
}

/// `--nodes N` / `--nodes=N` or `HIVEMESH_BENCH_NODES`; 10 and 50 by default.
fn sizes() -> anyhow::Result<Vec<usize>> {
    let args: Vec<String> = std::env::args().collect();
    let from_args = args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix("--nodes") {
        Some("") => args.get(i + 1).cloned(),
        Some(rest) => rest.strip_prefix('=').map(str::to_string),
        None => None,
    });
    match from_args.or_else(|| std::env::var("HIVEMESH_BENCH_NODES").ok()) {
        Some(n) => {
            let n: usize = n.parse().with_context(|| format!("--nodes {n}: not a number"))?;
            anyhow::ensure!(n >= 3, "--nodes needs at least 3 nodes");
            Ok(vec![n])
        }
        None => Ok(vec![10, 50]),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    for n in sizes()? {
        println!("\n== membership side by side, N = {n} ==");
        describe(n);
        let started = Instant::now();
        let hivemesh = Hivemesh::start(n).await?;
        println!("  hivemesh: {n} nodes started in {:.2} s", started.elapsed().as_secs_f64());
        let h = measure(hivemesh, started).await?;
        // Let the aborted nodes' sockets go before the next system starts.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        let chitchat = Chitchat::start(n).await?;
        println!("  chitchat: {n} nodes started in {:.2} s", started.elapsed().as_secs_f64());
        let c = measure(chitchat, started).await?;
        print_table(n, &h, &c);
    }
    Ok(())
}
