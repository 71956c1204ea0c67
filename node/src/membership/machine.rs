//! The membership state machine: foca plus bootstrap re-announce, graceful
//! leave and sender authentication. Sans-IO: the caller feeds it frames,
//! timers and the current time, and carries out the outputs it returns.

mod suspicion;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::ExponentialBackoff;
use foca::{Codec, Foca, OwnedNotification, PostcardCodec};
use hivemesh_protocol::identity::NodeId;
use rand10::SeedableRng;
use rand10::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::config::MembershipConfig;
use super::lifeguard::{ClaimBroadcasts, SuspicionClaim, Suspicions};
use super::member_id::MemberId;
use super::view::{MemberEvent, MemberState, MemberView, MembershipStats, RejectReason};

type Swim = Foca<MemberId, PostcardCodec, StdRng, ClaimBroadcasts>;

/// A timer the caller must deliver back through [`Membership::handle_timer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timer {
    Swim(foca::Timer<MemberId>),
    Reannounce,
    /// A step of the Lifeguard suspicion of `node` at `incarnation`.
    Suspicion {
        node: NodeId,
        incarnation: u16,
        step: SuspicionStep,
    },
}

/// What a [`Timer::Suspicion`] does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuspicionStep {
    /// Tell the suspect again (the buddy notice; three in all).
    Notice(u8),
    /// This node's own check got no refutation: claim the suspicion.
    Verify,
    /// The suspicion timeout may have passed: declare the suspect down.
    Expire,
}

/// What the caller must do after an input.
#[derive(Clone, Debug)]
pub enum Output {
    /// Deliver `frame` to `to` over an authenticated connection.
    Send { to: MemberId, frame: Vec<u8> },
    /// Call `handle_timer(timer)` after `after` has elapsed.
    Schedule { after: Duration, timer: Timer },
    /// Something about the membership changed.
    Event(MemberEvent),
}

/// One membership message on the wire. The transport authenticates the
/// sending node, so no variant carries a signature.
#[derive(Serialize, Deserialize)]
enum WireFrame {
    Swim(Vec<u8>),
    /// "I am leaving": lets peers show `left` rather than `down`.
    Leaving,
    /// Lifeguard's buddy notice, to the suspect itself: "you are suspected
    /// at this generation and incarnation".
    Suspect {
        generation: u64,
        incarnation: u16,
    },
    /// The suspect's answer: "I am alive at this incarnation (or later)".
    Refute {
        generation: u64,
        incarnation: u16,
    },
    /// "My own check of `member` failed", sent straight to the members
    /// already known to suspect it (the same claim is also gossiped).
    Confirm {
        member: NodeId,
        generation: u64,
        incarnation: u16,
    },
}

/// Collects what foca asks for during one call.
#[derive(Default)]
struct Outbox {
    outputs: Vec<Output>,
    notifications: Vec<OwnedNotification<MemberId>>,
}

impl foca::Runtime<MemberId> for Outbox {
    fn notify(&mut self, notification: foca::Notification<'_, MemberId>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: MemberId, data: &[u8]) {
        if let Ok(frame) = postcard::to_stdvec(&WireFrame::Swim(data.to_vec())) {
            self.outputs.push(Output::Send { to, frame });
        }
    }

    fn submit_after(&mut self, event: foca::Timer<MemberId>, after: Duration) {
        self.outputs.push(Output::Schedule { after, timer: Timer::Swim(event) });
    }
}

#[derive(Default)]
struct Record {
    changed_at_ms: u64,
    left: bool,
}

/// SWIM membership for one node.
pub struct Membership {
    swim: Swim,
    outbox: Outbox,
    config: MembershipConfig,
    bootstrap: Vec<MemberId>,
    backoff_seed: u64,
    backoff: ExponentialBackoff,
    records: HashMap<NodeId, Record>,
    stats: MembershipStats,
    now_ms: u64,
    leaving: bool,
    suspicions: Suspicions,
    /// Claims foca's broadcast handler decoded, for `settle` to act on.
    claims: Arc<Mutex<Vec<SuspicionClaim>>>,
    /// This node's incarnation is at least this (raised by each refutation).
    incarnation_floor: u16,
    /// Picks which hearers of a suspicion check the suspect.
    rng: StdRng,
    /// foca has no active member, or has just rejoined: re-announce to
    /// every known member, not only the bootstrap peers.
    disconnected: bool,
}

impl Membership {
    /// `seed` drives foca's random choices and the backoff jitter: the same
    /// seed and inputs give the same outputs (the simulation relies on it).
    pub fn new(me: MemberId, config: MembershipConfig, seed: u64, now_ms: u64) -> Self {
        let claims = Arc::new(Mutex::new(Vec::new()));
        let handler = ClaimBroadcasts::new(claims.clone());
        let swim = Foca::with_custom_broadcast(
            me,
            config.to_foca(),
            StdRng::seed_from_u64(seed),
            PostcardCodec,
            handler,
        );
        let backoff = config.reannounce_backoff(seed);
        let mut outbox = Outbox::default();
        outbox.outputs.push(Output::Schedule { after: config.reannounce_min, timer: Timer::Reannounce });
        Self {
            swim,
            outbox,
            config,
            bootstrap: Vec::new(),
            backoff_seed: seed,
            backoff,
            records: HashMap::new(),
            stats: MembershipStats::default(),
            now_ms,
            leaving: false,
            suspicions: Suspicions::default(),
            claims,
            incarnation_floor: 0,
            rng: StdRng::seed_from_u64(seed.rotate_left(17)),
            disconnected: true,
        }
    }

    pub fn me(&self) -> &MemberId {
        self.swim.identity()
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    pub fn stats(&self) -> &MembershipStats {
        &self.stats
    }

    /// Active (alive or suspect) members, not counting this node.
    pub fn active_count(&self) -> usize {
        self.swim.num_members()
    }

    pub fn is_active(&self, node: &NodeId) -> bool {
        self.swim.iter_members().any(|m| m.id().node == *node)
    }

    /// Whether `peer` is one of the bootstrap peers.
    pub fn is_bootstrap(&self, node: &NodeId) -> bool {
        self.bootstrap.iter().any(|b| b.node == *node)
    }

    /// Keeps announcing to `peer` (with backoff) for as long as it is not an
    /// active member: bootstrap peers are how a node finds the swarm again.
    pub fn add_bootstrap(&mut self, peer: MemberId, now_ms: u64) {
        self.now_ms = now_ms;
        if peer.node == self.me().node || self.bootstrap.iter().any(|b| b.node == peer.node) {
            return;
        }
        self.bootstrap.push(peer.clone());
        self.backoff = self.config.reannounce_backoff(self.backoff_seed);
        self.announce(peer, now_ms);
    }

    /// Announces once (an mDNS discovery, say). foca's announce is
    /// fire-and-forget; a lost one is repaired by the periodic announces.
    pub fn announce(&mut self, peer: MemberId, now_ms: u64) {
        self.now_ms = now_ms;
        if self.leaving || peer.node == self.me().node {
            return;
        }
        let result = self.swim.announce(peer, &mut self.outbox);
        self.after_swim_call(result);
    }

    /// Feeds one frame received from `from`, the transport-authenticated
    /// sender. A SWIM packet claiming any other sender is dropped and counted.
    pub fn handle_frame(&mut self, from: NodeId, frame: &[u8], now_ms: u64) -> Result<(), RejectReason> {
        self.now_ms = now_ms;
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.len() as u64;
        let result = self.accept_frame(from, frame);
        match &result {
            Err(reason) => *self.stats.rejected.entry(reason.label()).or_default() += 1,
            Ok(()) => {
                // Someone is talking to this node: foca is connected again.
                self.disconnected = false;
                self.alive_evidence(from);
            }
        }
        result
    }

    fn accept_frame(&mut self, from: NodeId, frame: &[u8]) -> Result<(), RejectReason> {
        if self.leaving {
            return Ok(());
        }
        if frame.len() > self.config.max_packet_size + 16 {
            return Err(RejectReason::Oversized(frame.len()));
        }
        let wire: WireFrame =
            postcard::from_bytes(frame).map_err(|e| RejectReason::Malformed(e.to_string()))?;
        match wire {
            WireFrame::Leaving => {
                self.mark_left(from);
                Ok(())
            }
            WireFrame::Suspect { generation, incarnation } => {
                self.on_notice(from, generation, incarnation);
                Ok(())
            }
            WireFrame::Refute { generation, incarnation } => {
                self.on_refute(from, generation, incarnation);
                Ok(())
            }
            WireFrame::Confirm { member, generation, incarnation } => {
                self.hear_claim(SuspicionClaim { by: from, member, generation, incarnation });
                self.settle();
                Ok(())
            }
            WireFrame::Swim(packet) => {
                let header: foca::Header<MemberId> = PostcardCodec
                    .decode_header(&packet[..])
                    .map_err(|e| RejectReason::Malformed(e.to_string()))?;
                if header.src.node != from {
                    return Err(RejectReason::SpoofedSender { claimed: header.src.node, actual: from });
                }
                let result = self.swim.handle_data(&packet, &mut self.outbox);
                self.collect_events();
                self.settle();
                result.map_err(|e| RejectReason::Swim(e.to_string()))
            }
        }
    }

    pub fn handle_timer(&mut self, timer: Timer, now_ms: u64) {
        self.now_ms = now_ms;
        if self.leaving {
            return;
        }
        match timer {
            Timer::Swim(t) => {
                let result = self.swim.handle_timer(t, &mut self.outbox);
                self.after_swim_call(result);
            }
            Timer::Reannounce => self.reannounce(),
            Timer::Suspicion { node, incarnation, step } => self.on_suspicion_timer(node, incarnation, step),
        }
    }

    fn reannounce(&mut self) {
        let mut missing: Vec<MemberId> =
            self.bootstrap.iter().filter(|b| !self.is_active(&b.node)).cloned().collect();
        if self.disconnected {
            // foca stops probing and gossiping when it has no active member
            // or after a rejoin, so nothing else would ever speak first:
            // announce to every member it has heard of, down ones included.
            let known = self.swim.iter_membership_state().map(|m| m.id().clone());
            missing.extend(known.filter(|id| !self.bootstrap.iter().any(|b| b.node == id.node)));
        }
        let after = if missing.is_empty() {
            self.backoff = self.config.reannounce_backoff(self.backoff_seed);
            self.config.reannounce_max
        } else {
            tracing::debug!(missing = missing.len(), "re-announcing to bootstrap peers");
            for peer in missing {
                let result = self.swim.announce(peer, &mut self.outbox);
                self.after_swim_call(result);
            }
            self.backoff.next().unwrap_or(self.config.reannounce_max)
        };
        self.outbox.outputs.push(Output::Schedule { after, timer: Timer::Reannounce });
    }

    /// Tells every active member that this node is leaving, then declares
    /// itself down through SWIM. Afterwards every input is ignored.
    pub fn leave(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        if self.leaving {
            return;
        }
        if let Ok(frame) = postcard::to_stdvec(&WireFrame::Leaving) {
            let members: Vec<MemberId> = self.swim.iter_members().map(|m| m.id().clone()).collect();
            for to in members {
                self.outbox.outputs.push(Output::Send { to, frame: frame.clone() });
            }
        }
        // Set first: leaving makes foca report this node defunct, which is
        // expected here and not worth an event.
        self.leaving = true;
        let result = self.swim.leave_cluster(&mut self.outbox);
        self.after_swim_call(result);
    }

    fn mark_left(&mut self, node: NodeId) {
        self.records.entry(node).or_default().left = true;
        let current = self.swim.iter_members().find(|m| m.id().node == node).map(|m| m.id().clone());
        if let Some(id) = current {
            let result =
                self.swim.apply_many(std::iter::once(foca::Member::down(id)), true, &mut self.outbox);
            self.after_swim_call(result);
        }
    }

    /// Applies a force-leave claim (Serf's force-leave): the member's
    /// identity at `generation` or below is marked left and declared down
    /// through SWIM (which gossips the down state on). A newer identity (the
    /// peer restarted since) is not touched. Returns whether anything
    /// changed here, i.e. whether the claim is worth relaying.
    pub fn force_leave(&mut self, node: NodeId, generation: u64, now_ms: u64) -> bool {
        self.now_ms = now_ms;
        let Some(member) = self.swim.iter_membership_state().find(|m| m.id().node == node) else {
            return false;
        };
        if member.id().generation > generation {
            return false;
        }
        let (id, state) = (member.id().clone(), member.state());
        let record = self.records.entry(node).or_default();
        if record.left && state == foca::State::Down {
            return false;
        }
        record.left = true;
        record.changed_at_ms = now_ms;
        if state != foca::State::Down {
            let result =
                self.swim.apply_many(std::iter::once(foca::Member::down(id)), true, &mut self.outbox);
            self.after_swim_call(result);
        }
        true
    }

    /// Every node this one has heard of, in node order.
    pub fn members(&self) -> Vec<MemberView> {
        let mut views: Vec<MemberView> = self
            .swim
            .iter_membership_state()
            .map(|m| {
                let record = self.records.get(&m.id().node);
                let state = match m.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down if record.is_some_and(|r| r.left) => MemberState::Left,
                    foca::State::Down => MemberState::Down,
                };
                MemberView {
                    id: m.id().clone(),
                    state,
                    incarnation: m.incarnation(),
                    changed_at_ms: record.map_or(0, |r| r.changed_at_ms),
                }
            })
            .collect();
        views.sort_by_key(|v| v.id.node);
        views
    }

    /// Takes everything the machine wants done since the last call.
    pub fn drain(&mut self) -> Vec<Output> {
        for output in &self.outbox.outputs {
            if let Output::Send { frame, .. } = output {
                self.stats.frames_out += 1;
                self.stats.bytes_out += frame.len() as u64;
            }
        }
        std::mem::take(&mut self.outbox.outputs)
    }

    /// Collects foca's notifications after a call whose error is only
    /// worth a trace line (a timer or announce that no longer applies).
    fn after_swim_call(&mut self, result: Result<(), foca::Error>) {
        self.collect_events();
        self.settle();
        if let Err(e) = result {
            tracing::trace!(error = %e, "swim call had no effect");
        }
    }

    fn collect_events(&mut self) {
        let notifications = std::mem::take(&mut self.outbox.notifications);
        for n in notifications {
            if let Some(event) = self.record(n) {
                self.outbox.outputs.push(Output::Event(event));
            }
        }
    }

    fn record(&mut self, n: OwnedNotification<MemberId>) -> Option<MemberEvent> {
        let now = self.now_ms;
        let mut touch = |node: NodeId, left: Option<bool>| {
            let r = self.records.entry(node).or_default();
            r.changed_at_ms = now;
            if let Some(left) = left {
                r.left = left;
            }
            r.left
        };
        match n {
            OwnedNotification::MemberUp(id) => {
                touch(id.node, Some(false));
                Some(MemberEvent::Up(id))
            }
            OwnedNotification::MemberDown(id) => {
                if touch(id.node, None) {
                    Some(MemberEvent::Left(id))
                } else {
                    Some(MemberEvent::Down(id))
                }
            }
            OwnedNotification::Rename(old, new) => {
                touch(new.node, None);
                Some(MemberEvent::Renamed { old, new })
            }
            OwnedNotification::Active => {
                self.disconnected = false;
                Some(MemberEvent::Joined)
            }
            OwnedNotification::Idle => {
                self.disconnected = true;
                Some(MemberEvent::Alone)
            }
            OwnedNotification::Rejoin(id) => {
                self.disconnected = true;
                Some(MemberEvent::Rejoined(id))
            }
            OwnedNotification::Defunct if self.leaving => None,
            OwnedNotification::Defunct => Some(MemberEvent::Defunct),
        }
    }
}
