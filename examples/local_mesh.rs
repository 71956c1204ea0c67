//! Three nodes on loopback, joined through the first one; prints what each
//! node sees once they agree. Run: cargo run --example local_mesh

use std::time::Duration;

use hivemesh::node::{NodeConfig, NodeHandle, spawn_node};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for i in 0..3 {
        let mut config = NodeConfig::loopback(root.path().join(format!("node-{i}")));
        config.bootstrap = nodes.first().and_then(|first| first.address("quic-v1")).into_iter().collect();
        nodes.push(spawn_node(config).await?);
    }
    // Membership converges in well under a second on loopback.
    loop {
        let mut done = true;
        for node in &nodes {
            done &= node.members().await?.count("alive") == nodes.len() - 1;
        }
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in &nodes {
        let report = node.members().await?;
        let peers: Vec<&str> = report.members.iter().map(|m| m.peer_id.as_str()).collect();
        println!("{} sees {:?}", node.peer_id, peers);
    }
    for node in nodes {
        node.leave(Duration::from_secs(2)).await;
    }
    Ok(())
}
