//! Bringing the swarm up: build it, listen, and hand it to a driver task.
//! Two steps, so that whatever needs the node's client (the federation, the
//! API) can start between them: [`listen`], then [`Listening::run`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::task::JoinHandle;

use super::behaviour::Behaviour;
use super::bootstrap::{UnresolvedBootstrap, split_peer};
use super::client::{JobChannels, NodeClient};
use super::describe::{error_chain, missing_address_hint};
use super::driver::{Channels, Driver, unix_ms};
use super::job_task::JobTask;
use super::private::PreSharedKey;
use crate::membership::{MemberId, Membership, MembershipConfig};
use crate::replica::Replica;
use crate::replica::sync::JobSync;
use hivemesh_protocol::NodeId;

/// What the swarm takes from the node's configuration.
pub struct SwarmSettings<'a> {
    /// Addresses to listen on (`/ip4/…/tcp/0`, `/ip4/…/udp/0/quic-v1`).
    pub listen: &'a [Multiaddr],
    /// Peers to join through; with a swarm key none may be QUIC.
    pub bootstrap: &'a [Multiaddr],
    /// Discover peers on the LAN by mDNS.
    pub mdns: bool,
    /// TCP wrapped in pnet with this key, QUIC off (ADR 0016).
    pub swarm_key: Option<PreSharedKey>,
    /// The only peers kept connected; `None` allows every peer (ADR 0016).
    pub allow_peers: Option<HashSet<PeerId>>,
}

/// Why the swarm could not come up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// libp2p could not build the transport or behaviour (its message).
    #[error("could not set up the libp2p transport: {0}")]
    Transport(String),
    /// A QUIC address to listen on or join through, with a swarm key.
    #[error(
        "{0}: with a swarm key the node speaks TCP only, QUIC has no pre-shared key (ADR 0016); use a /tcp/ address"
    )]
    QuicWithSwarmKey(Multiaddr),
    /// A listener failed: the address and the transport's error chain.
    #[error("cannot listen on {address}: {reason}")]
    Listen { address: Multiaddr, reason: String },
}

/// A swarm listening on its addresses, and the client to the driver that
/// will run it; nothing is driven until [`Listening::run`].
pub struct Listening {
    swarm: Swarm<Behaviour>,
    listen: Vec<Multiaddr>,
    client: NodeClient,
    channels: Channels,
    job_channels: JobChannels,
}

/// What the driver runs with, beyond the swarm.
pub struct RunSettings<'a> {
    /// This node (its identity's id; the swarm's peer id).
    pub node: NodeId,
    /// This node's generation (a restart counter in Unix ms, above every
    /// one this data directory used before).
    pub generation: u64,
    pub membership: MembershipConfig,
    /// Peers to join through: with `/p2p/<peer>` they are SWIM bootstrap
    /// members, without it they are dialled until the peer is known.
    pub bootstrap: &'a [Multiaddr],
    /// When `spawn_node` began (uptime in status reports).
    pub started: Instant,
    /// Where the control API is bound, for status reports.
    pub api: Option<SocketAddr>,
    pub replica: Replica,
    pub jobs: JobSync,
    /// Period of anti-entropy rounds with a random live member.
    pub anti_entropy: Duration,
    /// At or below this many nodes the default view is majority rule.
    pub majority_threshold: usize,
    /// Fingerprint of the swarm key, shown in status reports.
    pub swarm_key: Option<String>,
}

/// Builds the swarm and listens on `settings.listen`, waiting until every
/// listener has an address (at most 5 s).
pub async fn listen(
    keypair: libp2p::identity::Keypair,
    settings: SwarmSettings<'_>,
) -> Result<Listening, StartError> {
    let mut swarm = super::private::build_swarm(keypair, &settings)?;
    let mut listeners = HashMap::new();
    for address in settings.listen {
        let id = swarm.listen_on(address.clone()).map_err(|e| StartError::Listen {
            address: address.clone(),
            reason: listen_reason(address, &e),
        })?;
        listeners.insert(id, address.clone());
    }
    let listen = wait_for_listeners(&mut swarm, listeners).await?;
    let (client, channels, job_channels) = NodeClient::with_channels(swarm.behaviour().streams.new_control());
    Ok(Listening { swarm, listen, client, channels, job_channels })
}

impl Listening {
    /// The addresses the swarm listens on.
    pub fn addresses(&self) -> &[Multiaddr] {
        &self.listen
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// The client to the driver; requests wait until it runs.
    pub fn client(&self) -> NodeClient {
        self.client.clone()
    }

    /// Starts membership (joining through the bootstrap peers) and spawns
    /// the driver task that owns the swarm from now on, and the job task
    /// beside it (it ends with the driver).
    pub fn run(self, settings: RunSettings<'_>) -> JoinHandle<()> {
        let me = MemberId::new(
            settings.node,
            settings.generation,
            self.listen.iter().map(|a| a.to_vec()).collect(),
        );
        let seed = getrandom::u64().unwrap_or_else(|_| unix_ms());
        let mut membership = Membership::new(me, settings.membership.clone(), seed, unix_ms());
        let mut unresolved = UnresolvedBootstrap::default();
        for addr in settings.bootstrap {
            match split_peer(addr) {
                (transport, Some(node)) => {
                    membership.add_bootstrap(MemberId::placeholder(node, vec![transport.to_vec()]), unix_ms())
                }
                (transport, None) => {
                    unresolved.add(transport, settings.membership.reannounce_backoff(seed), Instant::now())
                }
            }
        }
        let JobChannels { commands, events, cache } = self.job_channels;
        let store = settings.replica.store().clone();
        let (job_task, jobs) = JobTask::new(settings.jobs, store, commands, events, cache);
        tokio::spawn(job_task.run());
        let driver = Driver::new(
            self.swarm,
            membership,
            self.listen,
            unresolved,
            self.channels,
            settings.started,
            settings.api,
            settings.replica,
            jobs,
            settings.anti_entropy,
            settings.majority_threshold,
            settings.swarm_key,
        );
        tokio::spawn(driver.run())
    }
}

/// The reason listening on `address` failed: the transport's error chain,
/// and a hint when the host has no such address.
fn listen_reason(address: &Multiaddr, error: &(dyn std::error::Error + 'static)) -> String {
    let reason = error_chain(error);
    match missing_address_hint(address) {
        Some(hint) => format!("{reason} ({hint})"),
        None => reason,
    }
}

/// Waits until every listener has reported an address (or 5 s passed); a
/// listener that fails is a startup error naming its address and the reason.
async fn wait_for_listeners(
    swarm: &mut Swarm<Behaviour>,
    mut waiting: HashMap<ListenerId, Multiaddr>,
) -> Result<Vec<Multiaddr>, StartError> {
    let mut listen = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(deadline);
    let failed = |waiting: &HashMap<ListenerId, Multiaddr>, id: ListenerId, error: &std::io::Error| {
        let address = waiting.get(&id).cloned().unwrap_or_else(Multiaddr::empty);
        StartError::Listen { reason: listen_reason(&address, error), address }
    };
    while !waiting.is_empty() {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    waiting.remove(&listener_id);
                    listen.push(address);
                }
                SwarmEvent::ListenerError { listener_id, error } => return Err(failed(&waiting, listener_id, &error)),
                SwarmEvent::ListenerClosed { listener_id, reason: Err(error), .. } => {
                    return Err(failed(&waiting, listener_id, &error));
                }
                _ => {}
            },
            _ = &mut deadline => break,
        }
    }
    Ok(listen)
}
