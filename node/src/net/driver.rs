//! The node's event loop: one task owns the swarm and the membership machine
//! and feeds one to the other. Timers are tokio sleeps that post back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns, request_response};
use tokio::sync::{broadcast, mpsc, oneshot};

use hivemesh_protocol::identity::NodeId;

use super::behaviour::{Behaviour, BehaviourEvent};
use super::bootstrap::UnresolvedBootstrap;
use super::describe::error_chain;
use super::dto::{MemberInfo, MembersReport, StatusReport};
use super::job_task::{JobLink, ToJobs};
use super::replication::ReplicationState;
use crate::membership::{MemberEvent, MemberId, Membership, Output, Timer};
use crate::replica::anti_entropy::RegistrySync;
use crate::replica::{JobFrame, Profile, Replica, ViewKind, ViewReport};

/// The node's wall clock in Unix ms (see [`crate::membership::clock`]).
pub fn unix_ms() -> u64 {
    crate::membership::clock::unix_ms()
}

pub enum Command {
    Members(oneshot::Sender<MembersReport>),
    Status(oneshot::Sender<StatusReport>),
    /// The cluster as one of the views sees it (`None`: the active view).
    View(Option<ViewKind>, oneshot::Sender<ViewReport>),
    /// One node's verified registry entry, if held.
    RegistryEntry(NodeId, oneshot::Sender<Option<hivemesh_protocol::PeerEntry>>),
    /// Replace this node's advertised profile and push the new entry.
    Advertise(Profile, oneshot::Sender<Result<(), crate::replica::PublishError>>),
    /// Leave gracefully, waiting at most `deadline` for the goodbyes to be
    /// delivered, then stop.
    Leave {
        deadline: Duration,
        done: oneshot::Sender<()>,
    },
    /// Stream a frame of a job's text to the asker (delivered locally when
    /// that is us); best effort.
    Frame {
        to: NodeId,
        frame: JobFrame,
    },
    /// Replace the allowlist; answers `false` when the node has none.
    SetAllowed(HashSet<PeerId>, oneshot::Sender<bool>),
    Trust(super::trust::TrustCommand),
}

/// Where the driver takes commands from and pushes what happens to.
pub struct Channels {
    pub commands: mpsc::Receiver<Command>,
    pub events: broadcast::Sender<MemberEvent>,
    pub job_frames: broadcast::Sender<JobFrame>,
}

pub struct Driver {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) membership: Membership,
    pub(super) listen: Vec<Multiaddr>,
    pub(super) unresolved: UnresolvedBootstrap,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<MemberEvent>,
    pub(super) job_frames: broadcast::Sender<JobFrame>,
    /// The job task, which runs the job sync machine (ADR 0021).
    pub(super) jobs: JobLink,
    pub(super) started: Instant,
    pub(super) api: Option<std::net::SocketAddr>,
    /// The signed registry and its anti-entropy, a sans-IO machine.
    pub(super) registry: RegistrySync,
    pub(super) replication: ReplicationState,
    /// Where a finished registry flush reports (`true`: durable).
    pub(super) registry_flush_done: mpsc::UnboundedSender<bool>,
    registry_flushed: mpsc::UnboundedReceiver<bool>,
    pub(super) majority_threshold: usize,
    anti_entropy_period: Duration,
    timers: mpsc::UnboundedSender<Timer>,
    timer_rx: mpsc::UnboundedReceiver<Timer>,
    mdns_announced: HashSet<PeerId>,
    in_flight: usize,
    pub(super) leaving: Option<(Instant, Vec<oneshot::Sender<()>>)>,
    /// Fingerprint of the swarm key; `Some` means TCP with pnet only.
    pub(super) swarm_key: Option<String>,
    /// Connections refused, by reason (ADR 0016).
    pub(super) refused: BTreeMap<String, u64>,
    /// Refusals already logged, by reason and peer or IP address: each is
    /// logged once, later ones at debug level.
    pub(super) refusals_logged: HashSet<String>,
    /// Open connections per peer: the path to it (remote address and who
    /// dialled), shown with the member.
    paths: HashMap<PeerId, Vec<(libp2p::swarm::ConnectionId, String)>>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        swarm: Swarm<Behaviour>,
        membership: Membership,
        listen: Vec<Multiaddr>,
        unresolved: UnresolvedBootstrap,
        channels: Channels,
        started: Instant,
        api: Option<std::net::SocketAddr>,
        replica: Replica,
        jobs: JobLink,
        anti_entropy_period: Duration,
        majority_threshold: usize,
        swarm_key: Option<String>,
    ) -> Self {
        let (timers, timer_rx) = mpsc::unbounded_channel();
        let Channels { commands, events, job_frames } = channels;
        let (registry_flush_done, registry_flushed) = mpsc::unbounded_channel();
        Self {
            swarm,
            membership,
            listen,
            unresolved,
            commands,
            events,
            job_frames,
            jobs,
            started,
            api,
            registry: RegistrySync::new(replica, getrandom::u64().unwrap_or_else(|_| unix_ms())),
            replication: ReplicationState::default(),
            registry_flush_done,
            registry_flushed,
            majority_threshold,
            anti_entropy_period,
            timers,
            timer_rx,
            mdns_announced: HashSet::new(),
            in_flight: 0,
            leaving: None,
            swarm_key,
            refused: BTreeMap::new(),
            refusals_logged: HashSet::new(),
            paths: HashMap::new(),
        }
    }

    pub async fn run(mut self) {
        self.rejoin_remembered_members();
        if let Err(error) = self.publish_entry(None) {
            tracing::error!(%error, "could not publish this node's registry entry");
        }
        self.apply_outputs();
        let mut bootstrap_tick = tokio::time::interval(Duration::from_millis(250));
        let mut anti_entropy = tokio::time::interval(self.anti_entropy_period);
        anti_entropy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = anti_entropy.tick() => {
                    self.anti_entropy_tick();
                    self.job_sync_tick();
                }
                Some(timer) = self.timer_rx.recv() => self.membership.handle_timer(timer, unix_ms()),
                Some(message) = self.jobs.from.recv() => self.on_from_jobs(message),
                Some(durable) = self.registry_flushed.recv() => self.on_registry_flushed(durable),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    // Every handle is gone: stop without a goodbye, as a
                    // crash would (`NodeHandle::leave` is the graceful way).
                    None => return,
                },
                _ = bootstrap_tick.tick() => self.dial_due_bootstrap(),
            }
            self.apply_outputs();
            if let Some((deadline, _)) = &self.leaving
                && (self.in_flight == 0 || Instant::now() >= *deadline)
            {
                break;
            }
        }
        if let Some((_, waiters)) = self.leaving.take() {
            tracing::info!(undelivered = self.in_flight, "left the swarm");
            for w in waiters {
                let _ = w.send(());
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Members(reply) => {
                let _ = reply.send(self.members_report());
            }
            Command::Status(reply) => {
                let report = Box::new(StatusReport {
                    peer_id: self.swarm.local_peer_id().to_string(),
                    listen: self.listen.iter().map(|a| a.to_string()).collect(),
                    api: self.api.map(|a| a.to_string()),
                    uptime_ms: self.started.elapsed().as_millis() as u64,
                    active_members: self.membership.active_count(),
                    membership: self.membership.stats().clone(),
                    replication: self.registry.replica().stats(),
                    refused: self.refused.clone(),
                    swarm_key: self.swarm_key.clone(),
                });
                // The job task adds its counters and answers.
                let _ = self.jobs.to.send(ToJobs::Status(report, reply));
            }
            Command::View(kind, reply) => self.view(kind, reply),
            Command::RegistryEntry(node, reply) => {
                let _ =
                    reply.send(self.registry.replica().registry().get(&node).map(|held| held.entry.clone()));
            }
            Command::Advertise(profile, reply) => {
                let _ = reply.send(self.publish_entry(Some(profile)).map(|_| ()));
            }
            Command::Leave { deadline, done } => self.start_leaving(deadline, done),
            Command::Frame { to, frame } => self.send_frame_to(to, frame),
            Command::SetAllowed(peers, reply) => {
                let _ = reply.send(self.set_allowed(peers));
            }
            Command::Trust(command) => self.on_trust_command(command),
        }
    }

    fn start_leaving(&mut self, deadline: Duration, done: oneshot::Sender<()>) {
        match &mut self.leaving {
            Some((_, waiters)) => waiters.push(done),
            None => {
                tracing::info!("leaving the swarm");
                self.membership.leave(unix_ms());
                self.leaving = Some((Instant::now() + deadline, vec![done]));
            }
        }
    }

    fn members_report(&self) -> MembersReport {
        let me = self.membership.me();
        MembersReport {
            me: MemberInfo::from_self(me),
            members: self.membership.members().iter().map(|view| self.member_info(view)).collect(),
        }
    }

    /// A member as reported, with this node's path to it.
    pub(super) fn member_info(&self, view: &crate::membership::MemberView) -> MemberInfo {
        let path = view
            .id
            .node
            .to_peer_id()
            .ok()
            .and_then(|peer| self.paths.get(&peer)?.last().map(|(_, path)| path.clone()));
        MemberInfo { path, ..MemberInfo::from_view(view) }
    }

    fn apply_outputs(&mut self) {
        for output in self.membership.drain() {
            match output {
                Output::Send { to, frame } => self.send_frame(&to, frame),
                Output::Schedule { after, timer } => {
                    let tx = self.timers.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = tx.send(timer);
                    });
                }
                Output::Event(event) => {
                    log_event(&event);
                    if let MemberEvent::Up(member) | MemberEvent::Renamed { new: member, .. } = &event {
                        self.dial_fresh_addresses(member);
                        self.registry_member(member, true);
                        self.job_member(member.node, true);
                    }
                    if let MemberEvent::Down(member) | MemberEvent::Left(member) = &event {
                        self.registry_member(member, false);
                        self.job_member(member.node, false);
                    }
                    if let MemberEvent::Rejoined(me) = &event {
                        // The next start must begin above this one (ADR 0015).
                        if let Err(error) = self.registry.replica().store().put_generation(me.generation) {
                            tracing::warn!(%error, "could not record the rejoined generation");
                        }
                    }
                    let _ = self.events.send(event);
                }
            }
        }
    }

    /// A member seen alive at its current addresses while we hold no
    /// connection to it: dial those now. A dial already under way may be to
    /// addresses remembered from before the member restarted on new ports (a
    /// QUIC handshake to a dead port takes 5 s to fail), and every request
    /// queued for the member would fail with it.
    fn dial_fresh_addresses(&mut self, member: &MemberId) {
        let Ok(peer) = member.node.to_peer_id() else { return };
        if self.swarm.is_connected(&peer) {
            return;
        }
        let addresses: Vec<Multiaddr> = member
            .addresses
            .iter()
            .filter_map(|bytes| Multiaddr::try_from(bytes.clone()).ok())
            .filter(|a| self.dialable(a))
            .collect();
        if addresses.is_empty() {
            return;
        }
        let dial =
            DialOpts::peer_id(peer).addresses(addresses).condition(PeerCondition::Disconnected).build();
        if let Err(error) = self.swarm.dial(dial) {
            tracing::debug!(%peer, %error, "could not dial a member's current addresses");
        }
    }

    fn send_frame(&mut self, to: &MemberId, frame: Vec<u8>) {
        let Ok(peer) = to.node.to_peer_id() else {
            tracing::debug!(node = %to.node, "not sending to a member whose id is not an ed25519 key");
            return;
        };
        for bytes in &to.addresses {
            if let Ok(addr) = Multiaddr::try_from(bytes.clone())
                && self.dialable(&addr)
            {
                self.swarm.add_peer_address(peer, addr);
            }
        }
        self.swarm.behaviour_mut().swim.send_request(&peer, frame);
        self.in_flight += 1;
    }

    /// Announces to the members recorded before the last shutdown or crash,
    /// so a restarted node is back in the cluster without its bootstrap list.
    fn rejoin_remembered_members(&mut self) {
        let me = self.membership.me().node;
        for (node, addresses) in self.registry.replica().store().members() {
            if node != me {
                self.membership.announce(MemberId::placeholder(node, addresses), unix_ms());
            }
        }
    }

    pub(super) fn is_bootstrap(&self, peer: &PeerId) -> bool {
        NodeId::from_peer_id(peer).is_ok_and(|node| self.membership.is_bootstrap(&node))
    }

    fn dial_due_bootstrap(&mut self) {
        if self.leaving.is_some() || self.unresolved.is_empty() {
            return;
        }
        for (addr, retry_in) in self.unresolved.due(Instant::now()) {
            let dial = DialOpts::unknown_peer_id().address(addr.clone()).build();
            let connection = dial.connection_id();
            match self.swarm.dial(dial) {
                Ok(()) => self.unresolved.dialing(connection, addr, retry_in),
                Err(e) => tracing::warn!(
                    "cannot dial bootstrap address {addr}: {}; retrying in {:.1} s",
                    error_chain(&e),
                    retry_in.as_secs_f64()
                ),
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Swim(e)) => self.on_swim(e),
            SwarmEvent::Behaviour(BehaviourEvent::State(e)) => self.on_state(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let addrs: Vec<Multiaddr> =
                    info.listen_addrs.into_iter().filter(|a| self.dialable(a)).collect();
                for addr in addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let found: Vec<(PeerId, Multiaddr)> =
                    found.into_iter().filter(|(_, a)| self.dialable(a)).collect();
                for (peer, addr) in found {
                    self.swarm.add_peer_address(peer, addr.clone());
                    if self.mdns_announced.insert(peer)
                        && let Ok(node) = NodeId::from_peer_id(&peer)
                    {
                        tracing::info!(%peer, %addr, "found a peer on the LAN (mDNS)");
                        let target = MemberId::placeholder(node, vec![addr.to_vec()]);
                        self.membership.announce(target, unix_ms());
                    }
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, .. } => {
                if let Some(paths) = self.paths.get_mut(&peer_id) {
                    paths.retain(|(id, _)| *id != connection_id);
                    if paths.is_empty() {
                        self.paths.remove(&peer_id);
                    }
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                self.unresolved.dial_ended(connection_id);
                let remote = endpoint.get_remote_address();
                let direction = if endpoint.is_dialer() { "dialled" } else { "accepted" };
                let address: Multiaddr =
                    remote.iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).collect();
                self.paths
                    .entry(peer_id)
                    .or_default()
                    .push((connection_id, format!("{address} ({direction})")));
                if endpoint.is_dialer()
                    && self.unresolved.resolve(remote)
                    && let Ok(node) = NodeId::from_peer_id(&peer_id)
                {
                    tracing::info!(%peer_id, %remote, "reached bootstrap peer");
                    // Log the next failure to reach a bootstrap again.
                    self.refusals_logged.retain(|logged| !logged.starts_with("unreachable "));
                    let target = MemberId::placeholder(node, vec![remote.to_vec()]);
                    self.membership.add_bootstrap(target, unix_ms());
                }
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, peer_id, .. } => {
                self.on_incoming_error(&send_back_addr, &error, peer_id)
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                self.on_outgoing_error(connection_id, peer_id, &error)
            }
            SwarmEvent::NewListenAddr { address, .. } if !self.listen.contains(&address) => {
                tracing::info!(%address, "listening");
                self.listen.push(address);
            }
            _ => {}
        }
    }

    fn on_swim(&mut self, event: request_response::Event<Vec<u8>, ()>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    match NodeId::from_peer_id(&peer) {
                        Ok(from) => {
                            if let Err(reason) = self.membership.handle_frame(from, &request, unix_ms()) {
                                tracing::debug!(%peer, %reason, "dropped membership frame");
                            }
                        }
                        Err(_) => tracing::debug!(%peer, "membership frame from a non-ed25519 peer dropped"),
                    }
                    let _ = self.swarm.behaviour_mut().swim.send_response(channel, ());
                }
                request_response::Message::Response { .. } => {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    if let Ok(to) = NodeId::from_peer_id(&peer) {
                        self.membership.delivery(to, true, unix_ms());
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                // Only a refused dial or a timeout says the peer is gone; a
                // connection closed under a request (a simultaneous-dial race,
                // say) is inconclusive: the next frame dials afresh.
                let conclusive = matches!(
                    error,
                    request_response::OutboundFailure::DialFailure
                        | request_response::OutboundFailure::Timeout
                );
                if let (true, Ok(to)) = (conclusive, NodeId::from_peer_id(&peer)) {
                    self.membership.delivery(to, false, unix_ms());
                }
                // A failed dial was reported with its reason when it failed.
                let dial_failed = matches!(error, request_response::OutboundFailure::DialFailure);
                if self.leaving.is_none() && !dial_failed && self.is_bootstrap(&peer) {
                    tracing::warn!(
                        "bootstrap peer {peer} unreachable: {error}; will keep retrying with backoff"
                    );
                } else {
                    tracing::debug!(%peer, %error, "membership frame not delivered");
                }
            }
            _ => {}
        }
    }
}

fn log_event(event: &MemberEvent) {
    match event {
        MemberEvent::Up(id) => tracing::info!(member = %id.node, "member up"),
        MemberEvent::Down(id) => tracing::info!(member = %id.node, "member down"),
        MemberEvent::Left(id) => tracing::info!(member = %id.node, "member left"),
        MemberEvent::Renamed { new, .. } => tracing::info!(member = %new.node, "member restarted"),
        MemberEvent::Joined => tracing::info!("joined the swarm"),
        MemberEvent::Alone => tracing::warn!("no live members left"),
        MemberEvent::Rejoined(_) => tracing::info!("declared down by peers; rejoined"),
        MemberEvent::Defunct => tracing::warn!("declared down by peers and cannot rejoin"),
    }
}

/// Why a dial failed, in one line: each address tried with its reason
/// (libp2p's own text leaves the transport's reason behind an empty one).
pub(super) fn dial_reason(error: &libp2p::swarm::DialError) -> String {
    match error {
        libp2p::swarm::DialError::Transport(tried) if !tried.is_empty() => {
            let reasons: Vec<String> = tried.iter().map(|(_, error)| error_chain(error)).collect();
            reasons.join("; ")
        }
        other => error_chain(other),
    }
}
