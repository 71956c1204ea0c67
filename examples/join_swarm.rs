//! Join an existing swarm through a bootstrap address and print membership
//! changes as they happen.
//!
//! Run: cargo run --example join_swarm -- /ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooW...
//! (for instance the address `hivemesh run` prints). Ctrl-C leaves.

use std::time::Duration;

use hivemesh::node::membership::MembershipConfig;
use hivemesh::node::{Multiaddr, NodeConfig, spawn_node};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bootstrap: Multiaddr = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: join_swarm BOOTSTRAP_MULTIADDR"))?
        .parse()?;
    let data_dir = tempfile::tempdir()?;
    let mut config = NodeConfig::loopback(data_dir.path().to_path_buf());
    config.bootstrap = vec![bootstrap];
    config.membership = MembershipConfig::lan(50);
    let node = spawn_node(config).await?;
    println!("joined as {}; waiting for members (Ctrl-C to leave)", node.peer_id);
    let mut events = node.subscribe();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            Ok(event) = events.recv() => println!("{event:?}"),
        }
    }
    node.leave(Duration::from_secs(3)).await;
    Ok(())
}
