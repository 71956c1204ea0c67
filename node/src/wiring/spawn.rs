//! Starting a node.

use std::net::SocketAddr;
use std::time::Instant;

use super::config::NodeConfig;
use super::handle::NodeHandle;
use crate::api::{AccessConfigError, AccessRules, ApiConfig, ServeError};
use crate::keystore::{KeystoreError, load_or_create};
use crate::membership::start_generation;
use crate::net::{RunSettings, StartError, SwarmSettings, private, unix_ms};
use crate::replica::sync::JobSync;
use crate::replica::{Jobs, Replica, StoreError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// The swarm: transport, a QUIC address with a swarm key, a listener.
    #[error(transparent)]
    Net(#[from] StartError),
    #[error("the control API on {0} is reachable beyond loopback: it needs a bearer token")]
    ApiTokenRequired(SocketAddr),
    /// Binding the control API.
    #[error(transparent)]
    Api(#[from] ServeError),
    /// `--api-allow-host` / `--api-allow-origin` refused (ADR 0014).
    #[error(transparent)]
    ApiAccess(#[from] AccessConfigError),
    #[error("cannot open the node's state: {0}")]
    Store(#[from] StoreError),
}

/// Starts a node: loads (or creates) its identity, listens, starts the
/// control API, and begins joining through the bootstrap peers.
pub async fn spawn_node(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    let started = Instant::now();
    if let Some(address) = config.api.filter(|a| !a.ip().is_loopback() && config.api_token.is_none()) {
        return Err(NodeError::ApiTokenRequired(address));
    }
    let access = AccessRules::new(&config.api_allow_hosts, &config.api_allow_origins)?;
    let stored = load_or_create(&config.data_dir)?;
    let identity = stored.identity;
    let keypair = identity.to_libp2p_keypair();
    let node_id = identity.node_id();
    let identity = std::sync::Arc::new(identity);
    let replica = Replica::open(identity.clone(), &config.data_dir, config.replication.profile.clone())?;
    let jobs = Jobs::load(replica.store().clone(), node_id, config.replication.jobs.clone());
    let jobs = JobSync::new(jobs, identity, getrandom::u64().unwrap_or_else(|_| unix_ms()));
    let net = crate::net::listen(
        keypair,
        SwarmSettings {
            listen: &config.listen,
            bootstrap: &config.bootstrap,
            mdns: config.mdns,
            swarm_key: config.swarm_key,
            allow_peers: config.allow_peers.clone(),
        },
    )
    .await?;
    let listen = net.addresses().to_vec();

    // Above every generation this data directory used before, whatever the
    // clock says, so peers holding the old identity down accept the new one.
    let generation = start_generation(replica.store().generation(), unix_ms());
    replica.store().put_generation(generation)?;

    let client = net.client();
    let mut gateway = None;
    let federation = match config.federation.clone() {
        Some(setup) => {
            let provider = setup.client.clone();
            let (handle, task) =
                crate::federation::spawn(client.clone(), load_or_create(&config.data_dir)?.identity, setup);
            let server = crate::gateway::Server {
                node: client.clone(),
                client: provider,
                quotas: handle.quotas.clone(),
            };
            gateway =
                crate::gateway::spawn_server(client.streams(), server.clone()).map(|task| (server, task));
            Some((handle, task))
        }
        None => None,
    };
    let (api, api_task) = match config.api {
        Some(address) => {
            let jobs = federation.as_ref().map(|(handle, _)| handle.clone());
            let (bound, task) = crate::api::serve(ApiConfig {
                address,
                token: config.api_token.clone(),
                client: client.clone(),
                jobs,
                gateway: gateway.as_ref().map(|(server, _)| server.clone()),
                data_dir: &config.data_dir,
                access,
            })
            .await?;
            (Some(bound), Some(task))
        }
        None => (None, None),
    };
    let peer_id = net.peer_id();
    let fingerprint = config.swarm_key.as_ref().map(private::swarm_key_fingerprint);
    let task = net.run(RunSettings {
        node: node_id,
        generation,
        membership: config.membership.clone(),
        bootstrap: &config.bootstrap,
        started,
        api,
        replica,
        jobs,
        anti_entropy: config.replication.anti_entropy,
        majority_threshold: config.replication.majority_threshold,
        swarm_key: fingerprint.clone(),
    });
    let ready_in = started.elapsed();
    if let Some(fingerprint) = fingerprint {
        tracing::info!(%fingerprint, "private swarm: TCP with the swarm key only, QUIC off");
    }
    tracing::info!(%peer_id, ?listen, ?api, ?ready_in, "node ready");
    let gateway_task = gateway.map(|(_, task)| task);
    Ok(NodeHandle { peer_id, listen, api, ready_in, client, task, api_task, federation, gateway_task })
}
