//! `hivemesh run`, `members` and `leave`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use hivemesh::node::api::{Method, api_addr_file, call, resolve_api_url};
use hivemesh::node::membership::MembershipConfig;
use hivemesh::node::{Multiaddr, NodeConfig, spawn_node};

pub struct RunArgs {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub api: SocketAddr,
    pub expected_size: u32,
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

pub async fn members(data_dir: &Path, node: Option<&str>, json: bool) -> anyhow::Result<()> {
    let base = resolve_api_url(node, data_dir).map_err(|e| anyhow!(e))?;
    let report = call(Method::GET, &format!("{base}/v1/members")).await.map_err(|e| anyhow!(e))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let report: hivemesh::node::MembersReport =
        serde_json::from_value(report).context("the node's member list has an unexpected shape")?;
    println!("this node: {}", report.me.peer_id);
    println!("{:<54} {:<8} {:>5} {:>14}  addresses", "peer id", "state", "inc", "last change");
    for m in &report.members {
        println!(
            "{:<54} {:<8} {:>5} {:>14}  {}",
            m.peer_id,
            m.state,
            m.incarnation,
            format_age(m.last_change_ms),
            m.addresses.join(" ")
        );
    }
    let alive = report.count("alive") + report.count("suspect");
    println!("{} members known, {alive} alive or suspect", report.members.len());
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
