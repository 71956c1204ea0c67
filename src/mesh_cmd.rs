//! `hivemesh mesh`: N real nodes on loopback in one process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hivemesh::node::membership::{MemberEvent, MembershipConfig};
use hivemesh::node::net::private::{PreSharedKey, is_quic, read_swarm_key, swarm_key_fingerprint};
use hivemesh::node::replica::Profile;
use hivemesh::node::{NodeConfig, NodeHandle, spawn_node};
use hivemesh::protocol::{NodeId, Role};
use tokio::sync::mpsc;

use crate::node_cmd::shutdown_signal;
use crate::output::{errln, outln};

pub struct MeshArgs {
    pub nodes: usize,
    pub mdns: bool,
    /// `--swarm-key`: every node of the mesh uses it (TCP only).
    pub swarm_key: Option<std::path::PathBuf>,
    pub measure: bool,
    pub speedup: u32,
    pub ask: Option<String>,
    pub mode: String,
    pub profile: String,
    /// `--json` (with `--ask`): the outcome as one JSON document on stdout,
    /// every progress line on stderr.
    pub json: bool,
    pub llm: crate::cli::LlmArgs,
}

/// A progress line: stdout for people, stderr when stdout holds JSON.
macro_rules! say {
    ($json:expr, $($arg:tt)*) => {
        if $json { errln!($($arg)*) } else { outln!($($arg)*) }
    };
}

pub async fn run(data_dir: &Path, args: MeshArgs) -> anyhow::Result<()> {
    let n = args.nodes.max(1);
    let json = args.json;
    // Every node takes part in jobs with its own client; in one process they
    // share one model client (and so one copy of the embedded model).
    let federation =
        if args.measure { None } else { Some(crate::llm_cmd::federation(&args.llm, data_dir).await?) };
    let key = args.swarm_key.as_deref().map(read_swarm_key).transpose()?;
    if let Some(key) = &key {
        say!(json, "private mesh: swarm key fingerprint {} (TCP only)", swarm_key_fingerprint(key));
    }
    let started = Instant::now();
    let (mut nodes, mut events) =
        start_keyed_nodes(&data_dir.join("mesh"), n, args.mdns, args.speedup, federation.as_ref(), key)
            .await?;
    let ready: Duration = nodes.iter().map(|n| n.ready_in).sum::<Duration>() / n as u32;
    say!(
        json,
        "started {n} nodes in {:.2} s (mean start-to-ready {} ms)",
        started.elapsed().as_secs_f64(),
        ready.as_millis()
    );
    for (i, node) in nodes.iter().enumerate().take(10) {
        say!(
            json,
            "  node-{i} {} api http://{}",
            node.peer_id,
            node.api.map(|a| a.to_string()).unwrap_or_default()
        );
    }

    let converged =
        wait_converged(&nodes, &mut events, started, n <= 10, json, Duration::from_secs(120)).await?;
    say!(
        json,
        "converged: every node sees {} others alive, {:.2} s after the first start",
        n - 1,
        converged.as_secs_f64()
    );

    if let Some(question) = &args.ask {
        let outcome = crate::mesh_ask::ask(&nodes, question, &args).await;
        leave_all(nodes).await;
        return outcome;
    }
    if args.measure {
        let joiner = join_one(&nodes, &mut events, data_dir, n, args.speedup, key).await?;
        nodes.push(joiner);
        return measure(nodes, &mut events).await;
    }
    if let Some(api) = nodes[0].api {
        outln!(
            "\nthe mesh is up. try:  curl -s http://{api}/v1/members   or   hivemesh members --node http://{api}"
        );
        outln!(
            "ask it:  curl -sN http://{api}/v1/chat/completions -H 'content-type: application/json' \\\n  \
             -d '{{\"model\":\"council\",\"messages\":[{{\"role\":\"user\",\"content\":\"What is the capital of France?\"}}]}}'"
        );
        outln!("   or:  hivemesh ask --node http://{api} \"What is the capital of France?\"");
    }
    outln!("Ctrl-C makes every node leave gracefully.");
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            Some((i, event)) = events.recv() => print_event(started, i, &event, false),
        }
    }
    errln!("leaving…");
    leave_all(nodes).await;
    Ok(())
}

/// Member events of a local mesh, with the index of the node that saw each.
pub type MeshEvents = mpsc::UnboundedReceiver<(usize, MemberEvent)>;

/// Starts `n` nodes on loopback under `dir` (`node-0`, `node-1`, ...), each
/// taking part in jobs when `federation` is given, bootstrapped in a chain.
pub async fn start_nodes(
    dir: &Path,
    n: usize,
    mdns: bool,
    speedup: u32,
    federation: Option<&(hivemesh::node::federation::FederationConfig, Vec<String>)>,
) -> anyhow::Result<(Vec<NodeHandle>, MeshEvents)> {
    start_keyed_nodes(dir, n, mdns, speedup, federation, None).await
}

/// [`start_nodes`], every node holding `key` when given (TCP only, ADR 0016).
pub async fn start_keyed_nodes(
    dir: &Path,
    n: usize,
    mdns: bool,
    speedup: u32,
    federation: Option<&(hivemesh::node::federation::FederationConfig, Vec<String>)>,
    key: Option<PreSharedKey>,
) -> anyhow::Result<(Vec<NodeHandle>, MeshEvents)> {
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut nodes: Vec<NodeHandle> = Vec::with_capacity(n);
    for i in 0..n {
        let mut config = keyed(NodeConfig::loopback(dir.join(format!("node-{i}"))), key);
        config.mdns = mdns;
        config.membership = MembershipConfig::lan(n as u32).faster(speedup);
        if let Some((setup, offered)) = federation {
            config.federation = Some(setup.clone());
            config.replication.profile =
                Some(Profile { role: Role::Worker, models: offered.clone(), gpu: None });
        }
        // A chain: each node knows only the previous one, alternating QUIC
        // and TCP, so convergence is the protocol's doing.
        if let Some(prev) = nodes.last() {
            let transport = if i % 2 == 0 || key.is_some() { "tcp" } else { "quic-v1" };
            config.bootstrap = prev.address(transport).into_iter().collect();
        }
        let node = spawn_node(config).await.with_context(|| format!("could not start node-{i}"))?;
        let mut sub = node.subscribe();
        let tx = events_tx.clone();
        tokio::spawn(async move {
            loop {
                match sub.recv().await {
                    Ok(event) => {
                        if tx.send((i, event)).is_err() {
                            break;
                        }
                    }
                    // Missed events are missed; later ones still count.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(node = i, missed, "mesh: member events dropped (subscriber lagged)");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        nodes.push(node);
    }
    Ok((nodes, events))
}

/// Starts one more node bootstrapped to node-0 and times how long until
/// every node sees it alive: until the last of the `n` nodes reports it
/// `Up`, taken from the member events as they arrive (the kill figure is
/// timed the same way), not by polling every node's member list, which on
/// 50 nodes and two cores took a large part of a second per round.
async fn join_one(
    nodes: &[NodeHandle],
    events: &mut mpsc::UnboundedReceiver<(usize, MemberEvent)>,
    data_dir: &Path,
    n: usize,
    speedup: u32,
    key: Option<PreSharedKey>,
) -> anyhow::Result<NodeHandle> {
    let mut config = keyed(NodeConfig::loopback(data_dir.join("mesh").join(format!("node-{n}"))), key);
    config.mdns = false;
    config.membership = MembershipConfig::lan(n as u32 + 1).faster(speedup);
    let transport = if key.is_some() { "tcp" } else { "quic-v1" };
    config.bootstrap = nodes[0].address(transport).into_iter().collect();
    while events.try_recv().is_ok() {}
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    // Ups seen before the joiner's id is known: (node index, member, when).
    let mut early: Vec<(usize, NodeId, Instant)> = Vec::new();
    let spawn = spawn_node(config);
    tokio::pin!(spawn);
    let joiner = loop {
        tokio::select! {
            spawned = &mut spawn => break spawned.context("could not start the joining node")?,
            Some((i, event)) = events.recv() => if let MemberEvent::Up(id) = event {
                early.push((i, id.node, Instant::now()));
            },
        }
    };
    let joiner_node =
        NodeId::from_peer_id(&joiner.peer_id).map_err(|_| anyhow::anyhow!("joiner has no ed25519 id"))?;
    let mut seen: Vec<Option<Instant>> = vec![None; nodes.len()];
    for (i, node, at) in early {
        if node == joiner_node && i < seen.len() {
            seen[i].get_or_insert(at);
        }
    }
    while seen.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(!left.is_zero(), "the new node was not seen by all within 120 s");
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some((i, MemberEvent::Up(id)))) if id.node == joiner_node && i < seen.len() => {
                seen[i].get_or_insert_with(Instant::now);
            }
            Ok(None) => anyhow::bail!("the nodes' member events ended before the join was seen"),
            _ => {}
        }
    }
    let last = seen.iter().flatten().max().copied().unwrap_or(started);
    outln!(
        "a new node's join was visible to all {} nodes {:.2} s after it started",
        nodes.len(),
        last.duration_since(started).as_secs_f64()
    );
    Ok(joiner)
}

/// `config` with the swarm key, listening on TCP only when there is one.
fn keyed(mut config: NodeConfig, key: Option<PreSharedKey>) -> NodeConfig {
    if key.is_some() {
        config.listen.retain(|a| !is_quic(a));
    }
    config.swarm_key = key;
    config
}

/// Every node leaves gracefully, in parallel.
pub async fn leave_all(nodes: Vec<NodeHandle>) {
    let mut set = tokio::task::JoinSet::new();
    for node in nodes {
        set.spawn(node.leave(Duration::from_secs(2)));
    }
    while set.join_next().await.is_some() {}
}

/// One member event, on stderr when `json` (stdout holds the document).
fn print_event(started: Instant, node: usize, event: &MemberEvent, json: bool) {
    let t = started.elapsed().as_secs_f64();
    match event {
        MemberEvent::Up(id) => say!(json, "[{t:7.2}s] node-{node}: {} up", short(&id.node.to_string())),
        MemberEvent::Down(id) => say!(json, "[{t:7.2}s] node-{node}: {} down", short(&id.node.to_string())),
        MemberEvent::Left(id) => say!(json, "[{t:7.2}s] node-{node}: {} left", short(&id.node.to_string())),
        other => say!(json, "[{t:7.2}s] node-{node}: {other:?}"),
    }
}

fn short(peer: &str) -> &str {
    &peer[peer.len().saturating_sub(8)..]
}

/// Waits until every node sees every other one alive; returns the time
/// since `started`. Progress goes to stderr when `json`.
pub async fn wait_converged(
    nodes: &[NodeHandle],
    events: &mut mpsc::UnboundedReceiver<(usize, MemberEvent)>,
    started: Instant,
    verbose: bool,
    json: bool,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let n = nodes.len();
    let deadline = Instant::now() + limit;
    let mut last_full = 0;
    loop {
        let mut full = 0;
        for node in nodes {
            let report = node.members().await?;
            if report.count("alive") + report.count("suspect") == n - 1 {
                full += 1;
            }
        }
        if full != last_full {
            say!(json, "[{:7.2}s] {full}/{n} nodes see every other node", started.elapsed().as_secs_f64());
            last_full = full;
        }
        if full == n {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(Instant::now() < deadline, "the mesh did not converge within {limit:?}");
        let tick = tokio::time::sleep(Duration::from_millis(50));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                _ = &mut tick => break,
                Some((i, event)) = events.recv() => if verbose { print_event(started, i, &event, json) },
            }
        }
    }
}

/// Has a node advertise new models `rounds` times (a different node each
/// time) and times how long until every node's registry holds the update;
/// reports p50/p99 and the replication bytes sent per update.
async fn registry_updates(nodes: &[NodeHandle], rounds: usize) -> anyhow::Result<()> {
    let bytes_out = || async {
        let mut total = 0u64;
        for node in nodes {
            total += node.status().await?.replication.bytes_out;
        }
        anyhow::Ok(total)
    };
    let before = bytes_out().await?;
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let author = &nodes[round % nodes.len()];
        let author_id = NodeId::from_peer_id(&author.peer_id)?;
        let model = format!("model-update-{round}");
        let profile = Profile { role: Role::Worker, models: vec![model.clone()], gpu: None };
        let sent = Instant::now();
        author.client().advertise(profile).await?;
        let mut waiting: Vec<&NodeHandle> = nodes.iter().filter(|n| n.peer_id != author.peer_id).collect();
        while !waiting.is_empty() {
            anyhow::ensure!(
                sent.elapsed() < Duration::from_secs(60),
                "a registry update did not reach every node"
            );
            // Every waiting node asked at once, for the one entry: a sweep
            // asking one after another, or for whole member views, took
            // longer than the update itself.
            let entries = futures_util::future::join_all(
                waiting.iter().map(|node| async move { node.client().registry_entry(author_id).await }),
            )
            .await;
            let mut still = Vec::new();
            for (node, entry) in waiting.into_iter().zip(entries) {
                let seen = entry?.is_some_and(|entry| entry.capabilities.models == [model.clone()]);
                if !seen {
                    still.push(node);
                }
            }
            waiting = still;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(sent.elapsed());
    }
    let bytes = (bytes_out().await? - before) as f64 / rounds as f64;
    times.sort();
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    outln!(
        "registry update on all {} nodes: p50 {:.1} ms, p99 {:.1} ms over {rounds} updates; {bytes:.0} bytes sent per update",
        nodes.len(),
        pick(0.5),
        pick(0.99)
    );
    Ok(())
}

/// Kills the last node, times how long until every other node marks it
/// down, and reports membership traffic.
async fn measure(
    mut nodes: Vec<NodeHandle>,
    events: &mut mpsc::UnboundedReceiver<(usize, MemberEvent)>,
) -> anyhow::Result<()> {
    let mut bytes_before = 0u64;
    for node in &nodes {
        bytes_before += node.status().await?.membership.bytes_out;
    }
    let idle_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut bytes_after = 0u64;
    for node in &nodes {
        bytes_after += node.status().await?.membership.bytes_out;
    }
    let per_node =
        (bytes_after - bytes_before) as f64 / nodes.len() as f64 / idle_from.elapsed().as_secs_f64();
    outln!("membership traffic while converged: {per_node:.0} bytes/s per node (frames only)");
    registry_updates(&nodes, 20).await?;

    let victim = nodes.pop().context("no node to kill")?;
    let victim_node = hivemesh::protocol::identity::NodeId::from_peer_id(&victim.peer_id)
        .map_err(|_| anyhow::anyhow!("victim has no ed25519 id"))?;
    while events.try_recv().is_ok() {}
    let killed_at = Instant::now();
    victim.kill().await;
    let mut marked = vec![false; nodes.len()];
    let deadline = killed_at + Duration::from_secs(120);
    while marked.iter().any(|m| !m) {
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(!left.is_zero(), "not every node marked the killed node down within 120 s");
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some((i, MemberEvent::Down(id)))) if id.node == victim_node && i < marked.len() => {
                marked[i] = true;
            }
            Ok(None) => anyhow::bail!("the nodes' member events ended before the kill was seen"),
            _ => {}
        }
    }
    outln!(
        "killed node marked down by all {} others {:.2} s after the kill",
        nodes.len(),
        killed_at.elapsed().as_secs_f64()
    );
    leave_all(nodes).await;
    Ok(())
}
