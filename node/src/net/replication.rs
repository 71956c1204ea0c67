//! The driver's replicated-state side: it moves state requests between
//! libp2p and the registry machine (`crate::replica::anti_entropy`) and
//! the job sync machine (ADR 0021), answers "your view" requests from
//! SWIM's member list, and builds the view reports.

use std::collections::HashMap;

use hivemesh_crdt::majority::{Entry, resolve};
use hivemesh_protocol::{Envelope, NodeId};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use super::driver::{Driver, unix_ms};
use super::dto::MemberInfo;
use crate::membership::{MemberId, MemberState};
use crate::replica::anti_entropy::{Input, Output, RegistryRequest};
use crate::replica::sync::{RequestId, Token};
use crate::replica::{
    MajorityInfo, Profile, PublishError, Replica, StateRequest, StateResponse, ViewKind, ViewMember,
    ViewReport, member_entry, member_from_entry,
};

/// Which machine an outstanding state request belongs to.
pub enum Pending {
    /// Nothing waits on the answer (token frames, relayed claims).
    Unanswered,
    /// A request of the registry machine.
    Registry(RequestId),
    /// A request of the job sync machine (`crate::replica::sync`).
    Job(RequestId),
}

/// The driver's bookkeeping for the registry machine.
#[derive(Default)]
pub struct ReplicationState {
    pub pending: HashMap<OutboundRequestId, Pending>,
    /// Peers' requests waiting for a machine's answer (registry or job
    /// sync; one token space).
    pub responding: HashMap<Token, ResponseChannel<Vec<u8>>>,
    /// Majority views being gathered, by the machine's token.
    pub views: HashMap<Token, oneshot::Sender<ViewReport>>,
    pub next_token: u64,
}

impl Driver {
    pub(super) fn replica(&mut self) -> &mut Replica {
        self.registry.replica_mut()
    }

    pub(super) fn live_members(&self) -> Vec<MemberId> {
        self.registry.live().cloned().collect()
    }

    pub(super) fn peer_of(&mut self, member: &MemberId) -> Option<PeerId> {
        let peer = member.node.to_peer_id().ok()?;
        for bytes in &member.addresses {
            if let Ok(addr) = Multiaddr::try_from(bytes.clone()) {
                self.swarm.add_peer_address(peer, addr);
            }
        }
        Some(peer)
    }

    pub(super) fn send_state(&mut self, peer: PeerId, request: &StateRequest, pending: Pending) {
        let bytes = self.replica().encode(request);
        let id = self.swarm.behaviour_mut().state.send_request(&peer, bytes);
        self.replication.pending.insert(id, pending);
    }

    fn next_token(&mut self) -> Token {
        self.replication.next_token += 1;
        Token(self.replication.next_token)
    }

    /// Signs this node's entry (with a new profile, if given), stores it and
    /// pushes it to every live member.
    pub fn publish_entry(&mut self, profile: Option<Profile>) -> Result<Envelope, PublishError> {
        let addresses = self.listen.iter().map(|a| a.to_string()).collect();
        let envelope = self.registry.publish(profile, addresses, unix_ms());
        self.apply_registry_outputs();
        envelope
    }

    /// A member's liveness, for the registry machine.
    pub(super) fn registry_member(&mut self, member: &MemberId, live: bool) {
        let input = if live { Input::MemberUp(member.clone()) } else { Input::MemberGone(member.node) };
        self.registry.handle(input);
        self.apply_registry_outputs();
    }

    /// One anti-entropy round with a random live member.
    pub fn anti_entropy_tick(&mut self) {
        self.registry.handle(Input::Tick);
        self.apply_registry_outputs();
    }

    /// Carries out what the registry machine produced (a send that cannot
    /// be made feeds the machine its failure, which may produce more).
    fn apply_registry_outputs(&mut self) {
        loop {
            let outputs = self.registry.drain();
            if outputs.is_empty() {
                return;
            }
            for output in outputs {
                match output {
                    Output::Send { to, id, request } => match self.peer_of(&to) {
                        Some(peer) => self.send_state(peer, &request, Pending::Registry(id)),
                        None => self.registry.handle(Input::Response { id, response: None }),
                    },
                    Output::Respond { token, response } => self.respond_owed(token, &response),
                    Output::Views { token, views, asked } => self.majority_view_done(token, views, asked),
                    Output::Flush => self.start_registry_flush(),
                }
            }
        }
    }

    /// Flushes the store on a blocking thread (never on this task); the
    /// loop hears back.
    fn start_registry_flush(&mut self) {
        let (store, done) = (self.registry.replica().store().clone(), self.registry_flush_done.clone());
        tokio::task::spawn_blocking(move || {
            let durable = store
                .flush()
                .map_err(
                    |error| tracing::error!(%error, "flushing the registry failed; its acks are refused"),
                )
                .is_ok();
            let _ = done.send(durable);
        });
    }

    pub(super) fn on_registry_flushed(&mut self, durable: bool) {
        self.registry.handle(Input::Flushed { durable });
        self.apply_registry_outputs();
    }

    pub fn on_state(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_state_request(peer, request, channel)
                }
                request_response::Message::Response { request_id, response } => {
                    let Some(pending) = self.replication.pending.remove(&request_id) else { return };
                    let response = self
                        .replica()
                        .decode::<StateResponse>(&response)
                        .map_err(|error| tracing::debug!(%peer, %error, "malformed state response"))
                        .ok();
                    self.on_state_response(pending, response);
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                tracing::debug!(%peer, %error, "state request failed");
                if let Some(pending) = self.replication.pending.remove(&request_id) {
                    self.on_state_response(pending, None);
                }
            }
            _ => {}
        }
    }

    fn on_state_request(&mut self, peer: PeerId, request: Vec<u8>, channel: ResponseChannel<Vec<u8>>) {
        let request = match self.replica().decode::<StateRequest>(&request) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%peer, %error, "malformed state request");
                let refused = StateResponse::Refused(format!("malformed request: {error}"));
                return self.respond_state(channel, &refused);
            }
        };
        let response = match request {
            request @ (StateRequest::JobPush { .. }
            | StateRequest::JobSync { .. }
            | StateRequest::JobFrame(_)) => {
                return self.answer_job_request(&peer, request, channel);
            }
            StateRequest::Push(envelopes) => {
                return self.answer_registry(peer, RegistryRequest::Push(envelopes), channel);
            }
            StateRequest::Digest(digest) => {
                return self.answer_registry(peer, RegistryRequest::Digest(digest), channel);
            }
            StateRequest::Evidence(proofs) => {
                let (accepted, rejected) = self.on_evidence(peer, proofs);
                StateResponse::Ack { accepted, rejected }
            }
            StateRequest::ForceLeave(claim) => match self.on_force_leave(peer, claim) {
                Ok(()) => StateResponse::Ack { accepted: 1, rejected: Vec::new() },
                Err(refused) => StateResponse::Refused(refused.to_string()),
            },
            StateRequest::View => StateResponse::View(serde_json::Value::Array(self.own_view()).to_string()),
        };
        self.respond_state(channel, &response);
    }

    fn answer_registry(&mut self, peer: PeerId, request: RegistryRequest, channel: ResponseChannel<Vec<u8>>) {
        let Ok(from) = NodeId::from_peer_id(&peer) else {
            let refused = StateResponse::Refused("registry requests need an ed25519 peer id".into());
            return self.respond_state(channel, &refused);
        };
        let token = self.owe_response(channel);
        self.registry.handle(Input::Request { from, request, token });
        self.apply_registry_outputs();
    }

    /// Keeps a peer's response channel until a machine answers its token.
    pub(super) fn owe_response(&mut self, channel: ResponseChannel<Vec<u8>>) -> Token {
        let token = self.next_token();
        self.replication.responding.insert(token, channel);
        token
    }

    pub(super) fn respond_owed(&mut self, token: Token, response: &StateResponse) {
        if let Some(channel) = self.replication.responding.remove(&token) {
            self.respond_state(channel, response);
        }
    }

    pub(super) fn respond_state(&mut self, channel: ResponseChannel<Vec<u8>>, response: &StateResponse) {
        let bytes = self.replica().encode(response);
        let _ = self.swarm.behaviour_mut().state.send_response(channel, bytes);
    }

    fn on_state_response(&mut self, pending: Pending, response: Option<StateResponse>) {
        match pending {
            Pending::Job(id) => self.on_job_response(id, response),
            Pending::Registry(id) => {
                self.registry.handle(Input::Response { id, response });
                self.apply_registry_outputs();
            }
            Pending::Unanswered => {
                if let Some(StateResponse::Refused(reason)) = response {
                    tracing::debug!(%reason, "a peer refused a state request");
                }
            }
        }
    }

    /// This node's member list (itself included) as majority-rule entries.
    fn own_view(&self) -> Vec<serde_json::Value> {
        let mut entries = vec![member_entry(&MemberInfo::from_self(self.membership.me()))];
        entries.extend(self.membership.members().iter().map(|m| member_entry(&MemberInfo::from_view(m))));
        entries
    }

    /// The default view: majority at or below the threshold, else registry.
    pub fn active_view(&self) -> ViewKind {
        // Cluster size counts this node too.
        if self.membership.active_count() < self.majority_threshold {
            ViewKind::Majority
        } else {
            ViewKind::Registry
        }
    }

    pub fn view(&mut self, kind: Option<ViewKind>, reply: oneshot::Sender<ViewReport>) {
        let kind = kind.unwrap_or_else(|| self.active_view());
        let me = self.view_member(MemberInfo::from_self(self.membership.me()));
        let members: Vec<ViewMember> = match kind {
            ViewKind::Swim => {
                self.membership.members().iter().map(|m| self.view_member(self.member_info(m))).collect()
            }
            ViewKind::Registry => self
                .membership
                .members()
                .iter()
                .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
                .filter(|m| self.registry.replica().registry().get(&m.id.node).is_some())
                .map(|m| self.view_member(self.member_info(m)))
                .collect(),
            ViewKind::Majority => {
                let own: Vec<Entry> =
                    self.own_view().into_iter().filter_map(|value| Entry::from_json(value).ok()).collect();
                let token = self.next_token();
                self.replication.views.insert(token, reply);
                self.registry.handle(Input::CollectViews { own, token });
                return self.apply_registry_outputs();
            }
        };
        let _ = reply.send(ViewReport {
            view: kind,
            active_view: self.active_view(),
            me,
            members,
            majority: None,
        });
    }

    fn view_member(&self, member: MemberInfo) -> ViewMember {
        let entry = member
            .peer_id
            .parse::<PeerId>()
            .ok()
            .and_then(|peer| NodeId::from_peer_id(&peer).ok())
            .and_then(|node| self.registry.replica().registry().get(&node))
            .map(|held| &held.entry);
        ViewMember::new(member, entry)
    }

    /// Resolves the gathered member lists by majority rule into a report.
    fn majority_view_done(&mut self, token: Token, views: Vec<Vec<Entry>>, asked: usize) {
        let Some(reply) = self.replication.views.remove(&token) else { return };
        let Ok(resolution) = resolve(&views) else { return };
        let me_id = self.swarm.local_peer_id().to_string();
        let mut me = None;
        let mut members = Vec::new();
        for entry in &resolution.entries {
            let Some(member) = member_from_entry(entry.fields()) else { continue };
            let member = self.view_member(member);
            if member.member.peer_id == me_id {
                me = Some(member);
            } else {
                members.push(member);
            }
        }
        let me = me.unwrap_or_else(|| self.view_member(MemberInfo::from_self(self.membership.me())));
        let majority = MajorityInfo {
            peers_asked: asked,
            peers_answered: views.len() - 1,
            metrics: resolution.metrics.clone(),
        };
        let report = ViewReport {
            view: ViewKind::Majority,
            active_view: self.active_view(),
            me,
            members,
            majority: Some(majority),
        };
        let _ = reply.send(report);
    }
}
