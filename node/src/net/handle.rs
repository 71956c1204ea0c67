//! Starting a node, and the handle that talks to it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::behaviour::Behaviour;
use super::bootstrap::{UnresolvedBootstrap, split_peer};
use super::describe::{error_chain, missing_address_hint};
use super::driver::{Channels, Command, Driver, unix_ms};
use super::job_cache::JobCache;
use super::job_sync::JobCommand;
use crate::federation::{FederationConfig, FederationHandle};
use crate::keystore::{KeystoreError, load_or_create};
use crate::membership::{
    MemberEvent, MemberId, MemberView, Membership, MembershipConfig, MembershipStats, start_generation,
};
use crate::replica::sync::JobSync;
use crate::replica::{
    JobChanged, JobError, JobFrame, JobView, Jobs, JobsConfig, Profile, Replica, ReplicaStats, ViewKind,
    ViewReport,
};
use hivemesh_protocol::{JobId, NodeId};

/// How to run one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Where the HTTP control API listens; `None` for no API.
    pub api: Option<SocketAddr>,
    /// Bearer token every API request must carry; required when the API is
    /// bound beyond loopback.
    pub api_token: Option<String>,
    /// Names (or IP addresses) the API also answers to in the `Host`
    /// header, beyond the address it is bound to and `localhost`: e.g. the
    /// name of a proxy in front of it (`--api-allow-host`). Any other Host
    /// gets 421 (ADR 0014).
    pub api_allow_hosts: Vec<String>,
    /// Web origins (`scheme://host[:port]`, exact) whose pages may call the
    /// API, with CORS answers (`--api-allow-origin`). A request from any
    /// other page's origin gets 403; requests without `Origin` (curl, SDKs)
    /// pass. `*` and `null` are refused at start (ADR 0014).
    pub api_allow_origins: Vec<String>,
    pub membership: MembershipConfig,
    pub replication: ReplicationConfig,
    /// Taking part in LLM jobs; `None` for a node that only relays state.
    pub federation: Option<FederationConfig>,
    /// The swarm key (`--swarm-key`, ADR 0016): every connection is TCP
    /// wrapped in libp2p pnet with this key, and QUIC is off (QUIC
    /// addresses to listen on are an error; learned ones are never dialled).
    pub swarm_key: Option<super::private::PreSharedKey>,
    /// The only peers this node keeps connections with (`--allow-peers`,
    /// ADR 0016); `None` allows every peer. Changed at run time with
    /// [`NodeClient::set_allowed_peers`].
    pub allow_peers: Option<HashSet<PeerId>>,
}

/// How the node replicates its state.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Period of anti-entropy rounds with a random live member.
    pub anti_entropy: Duration,
    /// At or below this many nodes (this one included), the default view is
    /// majority rule over peers' views; above it, the registry.
    pub majority_threshold: usize,
    /// What this node advertises in the registry at start; `None` keeps the
    /// profile last advertised at run time (or the default on a new node).
    pub profile: Option<Profile>,
    /// Limits and compaction of the job documents this node holds.
    pub jobs: JobsConfig,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            anti_entropy: Duration::from_secs(5),
            majority_threshold: 25,
            profile: None,
            jobs: JobsConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Loopback-only defaults with ephemeral ports: what tests and local
    /// meshes want.
    pub fn loopback(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: vec![
                "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("static multiaddr"),
                "/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr"),
            ],
            bootstrap: Vec::new(),
            mdns: false,
            api: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            api_token: None,
            api_allow_hosts: Vec::new(),
            api_allow_origins: Vec::new(),
            membership: MembershipConfig::lan(16),
            replication: ReplicationConfig::default(),
            federation: None,
            swarm_key: None,
            allow_peers: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    #[error("could not set up the libp2p transport: {0}")]
    Transport(String),
    #[error(
        "{0}: with a swarm key the node speaks TCP only, QUIC has no pre-shared key (ADR 0016); use a /tcp/ address"
    )]
    QuicWithSwarmKey(Multiaddr),
    #[error("the node runs without --allow-peers: there is no allowlist to change")]
    NoAllowlist,
    #[error("cannot listen on {address}: {reason}")]
    Listen { address: Multiaddr, reason: String },
    #[error("cannot bind the control API on {address}: {source}")]
    Api { address: SocketAddr, source: std::io::Error },
    #[error("the control API on {0} is reachable beyond loopback: it needs a bearer token")]
    ApiTokenRequired(SocketAddr),
    #[error(transparent)]
    ApiAccess(#[from] crate::api::AccessConfigError),
    #[error("the node has stopped")]
    Stopped,
    #[error("cannot open the node's state: {0}")]
    Store(#[from] crate::replica::StoreError),
    #[error("replication: {0}")]
    Replication(String),
    #[error(transparent)]
    Job(#[from] JobError),
}

/// One member as the control API reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemberInfo {
    pub peer_id: String,
    pub state: String,
    pub addresses: Vec<String>,
    pub incarnation: u16,
    /// Restart counter: the member's start time in ms, bumped on rejoin.
    pub generation: u64,
    /// Unix ms of the last up/down/left this node saw; 0 if none.
    pub last_change_ms: u64,
    /// How this node reaches the member now: the remote address of an open
    /// connection and who dialled (`/ip4/198.18.0.3/tcp/4001 (dialled)`);
    /// absent without a connection (a relayed path would show
    /// `/p2p-circuit` in the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl MemberInfo {
    pub(crate) fn from_view(view: &MemberView) -> Self {
        Self {
            peer_id: view.id.node.to_string(),
            state: view.state.label().to_string(),
            addresses: addresses_of(&view.id),
            incarnation: view.incarnation,
            generation: view.id.generation,
            last_change_ms: view.changed_at_ms,
            path: None,
        }
    }

    pub(crate) fn from_self(me: &MemberId) -> Self {
        Self {
            peer_id: me.node.to_string(),
            state: "alive".into(),
            addresses: addresses_of(me),
            incarnation: 0,
            generation: me.generation,
            last_change_ms: me.generation,
            path: None,
        }
    }
}

fn addresses_of(id: &MemberId) -> Vec<String> {
    id.addresses.iter().filter_map(|b| Multiaddr::try_from(b.clone()).ok()).map(|a| a.to_string()).collect()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MembersReport {
    pub me: MemberInfo,
    pub members: Vec<MemberInfo>,
}

impl MembersReport {
    pub fn count(&self, state: &str) -> usize {
        self.members.iter().filter(|m| m.state == state).count()
    }

    pub fn state_of(&self, peer: &PeerId) -> Option<&str> {
        let peer = peer.to_string();
        self.members.iter().find(|m| m.peer_id == peer).map(|m| m.state.as_str())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub peer_id: String,
    pub listen: Vec<String>,
    pub api: Option<String>,
    pub uptime_ms: u64,
    pub active_members: usize,
    pub membership: MembershipStats,
    pub replication: ReplicaStats,
    /// Connections refused, by reason: `swarm_key` (a handshake failed on a
    /// node with a swarm key: no key or another one) and `not_allowed`
    /// (a peer not on the allowlist), ADR 0016.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    /// Fingerprint of the swarm key, when the node has one.
    pub swarm_key: Option<String>,
}

/// A running node. Dropping every handle (and API client) stops it without a
/// goodbye; `leave` is the graceful way out.
pub struct NodeHandle {
    pub peer_id: PeerId,
    pub listen: Vec<Multiaddr>,
    pub api: Option<SocketAddr>,
    /// Time from `spawn_node` to listening with the API up.
    pub ready_in: Duration,
    client: NodeClient,
    events: broadcast::Sender<MemberEvent>,
    task: JoinHandle<()>,
    api_task: Option<JoinHandle<()>>,
    federation: Option<(FederationHandle, JoinHandle<()>)>,
    /// Serves forwarded OpenAI requests (ADR 0020); with jobs only.
    gateway_task: Option<JoinHandle<()>>,
}

/// A cheap, cloneable way to ask a node things (the HTTP API uses one).
#[derive(Clone)]
pub struct NodeClient {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<MemberEvent>,
    job_events: broadcast::Sender<JobChanged>,
    job_frames: broadcast::Sender<JobFrame>,
    job_cache: JobCache,
    streams: libp2p_stream::Control,
}

impl NodeClient {
    pub async fn members(&self) -> Result<MembersReport, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Members(tx)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    pub async fn status(&self) -> Result<StatusReport, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Status(tx)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// The cluster as `kind` sees it; `None` for the node's active view.
    pub async fn view(&self, kind: Option<ViewKind>) -> Result<ViewReport, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::View(kind, tx)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Replaces what this node advertises; resolves once the new entry is
    /// durable and on its way to every live member.
    pub async fn advertise(&self, profile: Profile) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Advertise(profile, tx)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?.map_err(NodeError::Replication)
    }

    /// Starts holding `job` and replicating it with `peers`.
    pub async fn open_job(&self, job: JobId, peers: Vec<NodeId>) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.job_command(JobCommand::Open { job, peers, reply }, rx).await
    }

    /// Like [`NodeClient::open_job`] without waiting for durability: the
    /// command is queued ahead of anything sent after it, so a contribution
    /// from work started next is pushed to these peers too. Only when the
    /// queue is full does it go behind (sent by a task), and then the job's
    /// sync rounds carry what a push missed.
    pub fn open_job_queued(&self, job: JobId, peers: Vec<NodeId>) {
        let (reply, _) = oneshot::channel();
        let command = Command::Job(JobCommand::Open { job, peers, reply });
        if let Err(mpsc::error::TrySendError::Full(command)) = self.commands.try_send(command) {
            let commands = self.commands.clone();
            tokio::spawn(async move { commands.send(command).await });
        }
    }

    /// Opens `job` with `peers` and signs this node's first contribution to
    /// it, in one step; resolves once both are durable and the contribution
    /// is on its way to the peers.
    pub async fn create_job(
        &self,
        job: JobId,
        peers: Vec<NodeId>,
        kind: &str,
        body: Vec<u8>,
    ) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        let kind = kind.to_string();
        self.job_command(JobCommand::Create { job, peers, kind, body, reply }, rx).await
    }

    /// Signs and stores this node's `kind` contribution to `job`; resolves once
    /// it is durable and on its way to the job's peers.
    pub async fn contribute(&self, job: JobId, kind: &str, body: Vec<u8>) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.job_command(JobCommand::Contribute { job, kind: kind.to_string(), body, reply }, rx).await
    }

    /// Every verified contribution to `job`: from the shared per-job state
    /// when the job changed while held, else read by the driver from memory
    /// or sled.
    pub async fn job(&self, job: JobId) -> Result<Arc<JobView>, NodeError> {
        if let Some(view) = self.job_cache.get(&job) {
            return Ok(view);
        }
        let (reply, rx) = oneshot::channel();
        self.job_command(JobCommand::View { job, reply }, rx).await.map(Arc::new)
    }

    /// Known jobs, newest first: (id, created ms, finished ms).
    pub async fn jobs(&self, limit: usize) -> Result<Vec<(JobId, u64, Option<u64>)>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Job(JobCommand::List { limit, reply }))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Sends streamed text of a job to `to` (the asker); best effort.
    pub async fn send_frame(&self, to: NodeId, frame: JobFrame) -> Result<(), NodeError> {
        self.commands
            .send(Command::Job(JobCommand::Frame { to, frame }))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Like `send_frame`, from synchronous code: a full command queue drops
    /// the frame (the signed output in the document is what counts).
    pub fn try_send_frame(&self, to: NodeId, frame: JobFrame) {
        let _ = self.commands.try_send(Command::Job(JobCommand::Frame { to, frame }));
    }

    /// Streamed text arriving for jobs this node asked.
    /// Opens raw streams to peers (the gateway, ADR 0020).
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    pub fn job_frames(&self) -> broadcast::Receiver<JobFrame> {
        self.job_frames.subscribe()
    }

    /// Each durable change to a job document (local or from peers): the
    /// job as it now stands and the contributions the change brought.
    pub fn job_changes(&self) -> broadcast::Receiver<JobChanged> {
        self.job_events.subscribe()
    }

    /// Members coming up, going down, leaving, renamed (typed SWIM events).
    pub fn member_events(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    /// Sends one command and waits for its answer.
    pub(super) async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    async fn job_command<T>(
        &self,
        command: JobCommand,
        rx: oneshot::Receiver<Result<T, JobError>>,
    ) -> Result<T, NodeError> {
        self.commands.send(Command::Job(command)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?.map_err(NodeError::Job)
    }

    /// Replaces the allowlist (a SIGHUP reload): peers no longer on it are
    /// disconnected at once. `NoAllowlist` when the node started without one.
    pub async fn set_allowed_peers(&self, peers: HashSet<PeerId>) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::SetAllowed(peers, tx)).await.map_err(|_| NodeError::Stopped)?;
        if rx.await.map_err(|_| NodeError::Stopped)? { Ok(()) } else { Err(NodeError::NoAllowlist) }
    }

    /// Asks the node to leave; resolves once it has stopped.
    pub async fn leave(&self, deadline: Duration) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Leave { deadline, done: tx }).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }
}

impl NodeHandle {
    pub fn client(&self) -> NodeClient {
        self.client.clone()
    }

    pub async fn members(&self) -> Result<MembersReport, NodeError> {
        self.client.members().await
    }

    pub async fn status(&self) -> Result<StatusReport, NodeError> {
        self.client.status().await
    }

    /// Submitting and cancelling jobs, when the node takes part in them.
    pub fn federation(&self) -> Option<FederationHandle> {
        self.federation.as_ref().map(|(handle, _)| handle.clone())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    /// A dialable address with `/p2p/<peer>`, preferring `transport`
    /// ("quic-v1" or "tcp").
    pub fn address(&self, transport: &str) -> Option<Multiaddr> {
        let addr = self.listen.iter().find(|a| a.to_string().contains(transport))?;
        Some(addr.clone().with(libp2p::multiaddr::Protocol::P2p(self.peer_id)))
    }

    /// Graceful leave: peers mark this node "left" at once.
    pub async fn leave(self, deadline: Duration) {
        let _ = self.client.leave(deadline).await;
        let _ = self.task.await;
        if let Some(api) = self.api_task {
            api.abort();
        }
        if let Some((_, federation)) = self.federation {
            federation.abort();
        }
        if let Some(gateway) = self.gateway_task {
            gateway.abort();
        }
    }

    /// Stops the node without a goodbye, as a crash would: its tasks are
    /// aborted and awaited, so its data directory (sled holds an exclusive
    /// lock on it) is free for a restart once this returns.
    pub async fn kill(self) {
        self.task.abort();
        if let Some(api) = &self.api_task {
            api.abort();
        }
        if let Some((_, federation)) = &self.federation {
            federation.abort();
        }
        if let Some(gateway) = &self.gateway_task {
            gateway.abort();
        }
        let _ = self.task.await;
        if let Some(api) = self.api_task {
            let _ = api.await;
        }
        if let Some((_, federation)) = self.federation {
            let _ = federation.await;
        }
        if let Some(gateway) = self.gateway_task {
            let _ = gateway.await;
        }
    }

    /// Resolves when the node stops (after a leave requested over the API).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.task).await;
        if let Some(api) = self.api_task.take() {
            api.abort();
        }
        if let Some((_, federation)) = self.federation.take() {
            federation.abort();
        }
        if let Some(gateway) = self.gateway_task.take() {
            gateway.abort();
        }
    }
}

/// Starts a node: loads (or creates) its identity, listens, starts the
/// control API, and begins joining through the bootstrap peers.
pub async fn spawn_node(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    let started = Instant::now();
    if let Some(address) = config.api.filter(|a| !a.ip().is_loopback() && config.api_token.is_none()) {
        return Err(NodeError::ApiTokenRequired(address));
    }
    let access = crate::api::AccessRules::new(&config.api_allow_hosts, &config.api_allow_origins)?;
    let stored = load_or_create(&config.data_dir)?;
    let identity = stored.identity;
    let keypair = identity.to_libp2p_keypair();
    let node_id = identity.node_id();
    let identity = std::sync::Arc::new(identity);
    let replica = Replica::open(identity.clone(), &config.data_dir, config.replication.profile.clone())?;
    let jobs = Jobs::load(replica.store().clone(), node_id, config.replication.jobs.clone());
    let jobs = JobSync::new(jobs, identity, getrandom::u64().unwrap_or_else(|_| unix_ms()));
    let mut swarm = super::private::build_swarm(keypair, &config)?;

    let mut listeners = HashMap::new();
    for address in &config.listen {
        let id = swarm.listen_on(address.clone()).map_err(|e| NodeError::Listen {
            address: address.clone(),
            reason: listen_reason(address, &e),
        })?;
        listeners.insert(id, address.clone());
    }
    let listen = wait_for_listeners(&mut swarm, listeners).await?;

    // Above every generation this data directory used before, whatever the
    // clock says, so peers holding the old identity down accept the new one.
    let generation = start_generation(replica.store().generation(), unix_ms());
    replica.store().put_generation(generation)?;
    let me = MemberId::new(node_id, generation, listen.iter().map(|a| a.to_vec()).collect());
    let seed = getrandom::u64().unwrap_or_else(|_| unix_ms());
    let mut membership = Membership::new(me, config.membership.clone(), seed, unix_ms());
    let mut unresolved = UnresolvedBootstrap::default();
    for addr in &config.bootstrap {
        match split_peer(addr) {
            (transport, Some(node)) => {
                membership.add_bootstrap(MemberId::placeholder(node, vec![transport.to_vec()]), unix_ms())
            }
            (transport, None) => {
                unresolved.add(transport, config.membership.reannounce_backoff(seed), Instant::now())
            }
        }
    }

    let (commands_tx, commands_rx) = mpsc::channel(64);
    let (events, _) = broadcast::channel(1024);
    let (job_events, _) = broadcast::channel(4096);
    let (job_frames, _) = broadcast::channel(4096);
    let streams = swarm.behaviour().streams.new_control();
    let job_cache = JobCache::default();
    let client = NodeClient {
        commands: commands_tx,
        events: events.clone(),
        job_events: job_events.clone(),
        job_frames: job_frames.clone(),
        job_cache: job_cache.clone(),
        streams: streams.clone(),
    };
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
            gateway = crate::gateway::spawn_server(streams, server.clone()).map(|task| (server, task));
            Some((handle, task))
        }
        None => None,
    };
    let (api, api_task) = match config.api {
        Some(address) => {
            let jobs = federation.as_ref().map(|(handle, _)| handle.clone());
            let (bound, task) = crate::api::serve(crate::api::ApiConfig {
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
    let peer_id = *swarm.local_peer_id();
    let driver = Driver::new(
        swarm,
        membership,
        listen.clone(),
        unresolved,
        Channels { commands: commands_rx, events: events.clone(), job_events, job_frames, job_cache },
        started,
        api,
        replica,
        jobs,
        &config.replication,
        config.swarm_key.as_ref().map(super::private::swarm_key_fingerprint),
    );
    let task = tokio::spawn(driver.run());
    let ready_in = started.elapsed();
    if let Some(key) = &config.swarm_key {
        let fingerprint = super::private::swarm_key_fingerprint(key);
        tracing::info!(%fingerprint, "private swarm: TCP with the swarm key only, QUIC off");
    }
    tracing::info!(%peer_id, ?listen, ?api, ?ready_in, "node ready");
    let gateway_task = gateway.map(|(_, task)| task);
    Ok(NodeHandle {
        peer_id,
        listen,
        api,
        ready_in,
        client,
        events,
        task,
        api_task,
        federation,
        gateway_task,
    })
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
    swarm: &mut libp2p::Swarm<Behaviour>,
    mut waiting: HashMap<ListenerId, Multiaddr>,
) -> Result<Vec<Multiaddr>, NodeError> {
    let mut listen = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(deadline);
    let failed = |waiting: &HashMap<ListenerId, Multiaddr>, id: ListenerId, error: &std::io::Error| {
        let address = waiting.get(&id).cloned().unwrap_or_else(Multiaddr::empty);
        NodeError::Listen { reason: listen_reason(&address, error), address }
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
