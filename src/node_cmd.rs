//! `hivemesh run`, `members` and `leave`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use hivemesh::node::api::{Method, api_addr_file, call, call_with, resolve_api_url};
use hivemesh::node::membership::MembershipConfig;
use hivemesh::node::replica::{Profile, ViewReport};
use hivemesh::node::{Multiaddr, NodeConfig, ReplicationConfig, spawn_node};
use hivemesh::protocol::{GpuInfo, Role};

use crate::cli::AdvertiseArgs;

pub struct RunArgs {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub api: SocketAddr,
    pub expected_size: u32,
    pub profile: Option<Profile>,
    pub anti_entropy: Duration,
    pub majority_threshold: usize,
}

/// The profile given by `--models`, `--role` and `--gpu`; `None` when no
/// flag was given (a restarted node then keeps what it last advertised).
pub fn given_profile(args: &AdvertiseArgs) -> anyhow::Result<Option<Profile>> {
    if args.models.is_empty() && args.role.is_none() && args.gpu.is_none() {
        return Ok(None);
    }
    profile(args).map(Some)
}

/// The advertised profile from `--models`, `--role` and `--gpu`.
pub fn profile(args: &AdvertiseArgs) -> anyhow::Result<Profile> {
    let role = match args.role.as_deref().unwrap_or("worker") {
        "worker" => Role::Worker,
        "bootstrap" => Role::Bootstrap,
        "observer" => Role::Observer,
        other => anyhow::bail!("unknown --role {other:?}; expected worker, bootstrap or observer"),
    };
    let gpu = match &args.gpu {
        None => None,
        Some(text) => {
            let (name, memory) = text
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("--gpu {text:?}: expected NAME:MEMORY_MB, e.g. \"RTX 4090:24564\""))?;
            let memory_mb =
                memory.trim().parse().with_context(|| format!("--gpu {text:?}: bad memory in MB"))?;
            Some(GpuInfo { name: name.trim().to_owned(), memory_mb })
        }
    };
    let models = args.models.iter().map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()).collect();
    Ok(Profile { role, models, gpu })
}

pub async fn run(data_dir: &Path, args: RunArgs) -> anyhow::Result<()> {
    let listen = if args.listen.is_empty() {
        vec!["/ip4/0.0.0.0/udp/4001/quic-v1".parse()?, "/ip4/0.0.0.0/tcp/4001".parse()?]
    } else {
        args.listen
    };
    let config = NodeConfig {
        data_dir: data_dir.to_path_buf(),
        listen,
        bootstrap: args.bootstrap,
        mdns: args.mdns,
        api: Some(args.api),
        membership: MembershipConfig::lan(args.expected_size),
        replication: ReplicationConfig {
            anti_entropy: args.anti_entropy,
            majority_threshold: args.majority_threshold,
            profile: args.profile,
            jobs: Default::default(),
        },
        federation: None,
    };
    let mut node = spawn_node(config).await.context("could not start the node")?;
    println!("peer id: {}", node.peer_id);
    for addr in &node.listen {
        println!("listening: {addr}/p2p/{}", node.peer_id);
    }
    if let Some(api) = node.api {
        println!("control API: http://{api} (try `hivemesh members`)");
    }
    println!("ready in {} ms; Ctrl-C leaves the swarm gracefully", node.ready_in.as_millis());
    tokio::select! {
        _ = shutdown_signal() => {
            eprintln!("leaving the swarm…");
            node.leave(Duration::from_secs(3)).await;
        }
        _ = node.stopped() => eprintln!("node stopped (left on request)"),
    }
    let _ = std::fs::remove_file(api_addr_file(data_dir));
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn members(
    data_dir: &Path,
    node: Option<&str>,
    view: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let base = resolve_api_url(node, data_dir).map_err(|e| anyhow!(e))?;
    let url = match view {
        Some(view) => format!("{base}/v1/members?view={view}"),
        None => format!("{base}/v1/members"),
    };
    let report = call(Method::GET, &url).await.map_err(|e| anyhow!(e))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let report: ViewReport =
        serde_json::from_value(report).context("the node's member list has an unexpected shape")?;
    println!(
        "this node: {} ({:?} view; active view: {:?})",
        report.me.member.peer_id, report.view, report.active_view
    );
    println!(
        "{:<54} {:<8} {:>5} {:>14}  {:<24} addresses",
        "peer id", "state", "inc", "last change", "models"
    );
    for m in std::iter::once(&report.me).chain(&report.members) {
        println!(
            "{:<54} {:<8} {:>5} {:>14}  {:<24} {}",
            m.member.peer_id,
            m.member.state,
            m.member.incarnation,
            format_age(m.member.last_change_ms),
            if m.models.is_empty() { "-".to_owned() } else { m.models.join(",") },
            m.member.addresses.join(" ")
        );
    }
    let alive =
        report.members.iter().filter(|m| matches!(m.member.state.as_str(), "alive" | "suspect")).count();
    println!("{} members known besides this node, {alive} alive or suspect", report.members.len());
    if let Some(majority) = &report.majority {
        let m = &majority.metrics;
        println!(
            "majority rule over {} views ({} of {} peers answered): {} conflicts, {} tie-breaks, {} µs",
            m.peer_count,
            majority.peers_answered,
            majority.peers_asked,
            m.conflicts,
            m.tie_breaks,
            m.duration_micros
        );
    }
    Ok(())
}

pub async fn advertise(data_dir: &Path, node: Option<&str>, profile: &Profile) -> anyhow::Result<()> {
    let base = resolve_api_url(node, data_dir).map_err(|e| anyhow!(e))?;
    let body = serde_json::to_value(profile)?;
    call_with(Method::POST, &format!("{base}/v1/advertise"), Some(&body)).await.map_err(|e| anyhow!(e))?;
    println!("advertised: role {:?}, models [{}]", profile.role, profile.models.join(", "));
    Ok(())
}

fn format_age(unix_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if unix_ms == 0 { "-".into() } else { format!("{:.1}s ago", now.saturating_sub(unix_ms) as f64 / 1000.0) }
}

pub async fn leave(data_dir: &Path, node: Option<&str>) -> anyhow::Result<()> {
    let base = resolve_api_url(node, data_dir).map_err(|e| anyhow!(e))?;
    call(Method::POST, &format!("{base}/v1/leave")).await.map_err(|e| anyhow!(e))?;
    println!("the node at {base} is leaving the swarm");
    Ok(())
}
