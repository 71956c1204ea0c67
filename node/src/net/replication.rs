//! The driver's replicated-state side: pushing registry entries to members,
//! anti-entropy with a random live member, answering and collecting "your
//! view" requests for the majority view.

use std::collections::HashMap;

use hivemesh_crdt::majority::{Entry, resolve};
use hivemesh_protocol::{Envelope, NodeId};
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use super::driver::{Driver, unix_ms};
use super::dto::MemberInfo;
use crate::membership::{MemberId, MemberState};
use crate::replica::{
    MajorityInfo, Profile, PublishError, StateRequest, StateResponse, ViewKind, ViewMember, ViewReport,
    member_entry, member_from_entry,
};

/// What an outstanding state request was for.
pub enum Pending {
    Push,
    Digest(PeerId),
    View(u64),
    /// A request of the job sync machine (`crate::replica::sync`).
    Job(crate::replica::sync::RequestId),
}

/// A majority view being gathered: our own view plus each peer's answer.
pub struct ViewCollection {
    waiting: usize,
    asked: usize,
    views: Vec<Vec<Entry>>,
    reply: oneshot::Sender<ViewReport>,
}

#[derive(Default)]
pub struct ReplicationState {
    pub pending: HashMap<OutboundRequestId, Pending>,
    pub collections: HashMap<u64, ViewCollection>,
    pub next_collection: u64,
    /// The live members last written to disk.
    pub remembered: Vec<(NodeId, Vec<Vec<u8>>)>,
}

impl Driver {
    pub(super) fn live_members(&self) -> Vec<MemberId> {
        self.membership
            .members()
            .into_iter()
            .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .map(|m| m.id)
            .collect()
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
        let bytes = self.replica.encode(request);
        let id = self.swarm.behaviour_mut().state.send_request(&peer, bytes);
        self.replication.pending.insert(id, pending);
    }

    /// Signs this node's entry (with a new profile, if given), stores it and
    /// pushes it to every live member.
    pub fn publish_entry(&mut self, profile: Option<Profile>) -> Result<Envelope, PublishError> {
        let addresses = self.listen.iter().map(|a| a.to_string()).collect();
        let envelope = self.replica.publish(profile, addresses, 0, unix_ms())?;
        for member in self.live_members() {
            self.push_to(&member, vec![envelope.clone()]);
        }
        Ok(envelope)
    }

    fn push_to(&mut self, member: &MemberId, envelopes: Vec<Envelope>) {
        if let Some(peer) = self.peer_of(member) {
            self.replica.stats_mut().pushes_sent += 1;
            self.send_state(peer, &StateRequest::Push(envelopes), Pending::Push);
        }
    }

    /// A member came up: give it our entry and reconcile registries, so a
    /// restarted node catches up at once rather than at the next round.
    pub fn on_member_up(&mut self, member: &MemberId) {
        self.remember_members();
        if let Some(own) = self.replica.registry().get(&self.replica.me()) {
            let own = own.envelope.clone();
            self.push_to(member, vec![own]);
        }
        self.anti_entropy_with(member);
    }

    fn anti_entropy_with(&mut self, member: &MemberId) {
        if let Some(peer) = self.peer_of(member) {
            self.replica.stats_mut().anti_entropy_rounds += 1;
            let digest = self.replica.registry().digest();
            self.send_state(peer, &StateRequest::Digest(digest), Pending::Digest(peer));
            self.gossip_evidence(peer);
        }
    }

    /// One anti-entropy round with a random live member.
    pub fn anti_entropy_tick(&mut self) {
        self.remember_members();
        let live = self.live_members();
        if live.is_empty() {
            return;
        }
        let pick = getrandom::u64().unwrap_or_else(|_| unix_ms()) as usize % live.len();
        self.anti_entropy_with(&live[pick]);
    }

    /// Records the live members durably when they changed, so a restarted
    /// node can rejoin without its bootstrap list.
    pub fn remember_members(&mut self) {
        let live = self.live_members();
        let remembered: Vec<(NodeId, Vec<Vec<u8>>)> =
            live.iter().map(|m| (m.node, m.addresses.clone())).collect();
        if !remembered.is_empty() && remembered != self.replication.remembered {
            let store = self.replica.store();
            if let Err(error) = store.put_members(&remembered).and_then(|()| store.flush()) {
                tracing::warn!(%error, "could not record the live members");
            }
            self.replication.remembered = remembered;
        }
    }

    pub fn on_state(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let response = match self.replica.decode::<StateRequest>(&request) {
                        Err(error) => {
                            tracing::debug!(%peer, %error, "malformed state request");
                            StateResponse::Refused(format!("malformed request: {error}"))
                        }
                        Ok(
                            request @ (StateRequest::JobPush { .. }
                            | StateRequest::JobSync { .. }
                            | StateRequest::JobFrame(_)),
                        ) => return self.answer_job_request(&peer, request, channel),
                        Ok(StateRequest::Evidence(proofs)) => {
                            let (accepted, rejected) = self.on_evidence(peer, proofs);
                            StateResponse::Ack { accepted, rejected }
                        }
                        Ok(StateRequest::ForceLeave(claim)) => match self.on_force_leave(peer, claim) {
                            Ok(()) => StateResponse::Ack { accepted: 1, rejected: Vec::new() },
                            Err(refused) => StateResponse::Refused(refused.to_string()),
                        },
                        Ok(request) => match self.replica.answer(request) {
                            Some(response) => response,
                            None => {
                                StateResponse::View(serde_json::Value::Array(self.own_view()).to_string())
                            }
                        },
                    };
                    let bytes = self.replica.encode(&response);
                    let _ = self.swarm.behaviour_mut().state.send_response(channel, bytes);
                }
                request_response::Message::Response { request_id, response } => {
                    let Some(pending) = self.replication.pending.remove(&request_id) else { return };
                    match self.replica.decode::<StateResponse>(&response) {
                        Ok(response) => self.on_state_response(peer, pending, response),
                        Err(error) => {
                            tracing::debug!(%peer, %error, "malformed state response");
                            self.on_state_failure(pending);
                        }
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                tracing::debug!(%peer, %error, "state request failed");
                if let Some(pending) = self.replication.pending.remove(&request_id) {
                    self.on_state_failure(pending);
                }
            }
            _ => {}
        }
    }

    fn on_state_response(&mut self, peer: PeerId, pending: Pending, response: StateResponse) {
        match (pending, response) {
            (Pending::Job(id), response) => self.on_job_response(id, Some(response)),
            (Pending::Digest(peer), StateResponse::Reconcile(reconciliation)) => {
                self.replica.merge(reconciliation.send);
                let wanted = self.replica.registry().envelopes_for(&reconciliation.want);
                if !wanted.is_empty() {
                    self.replica.stats_mut().pushes_sent += 1;
                    self.send_state(peer, &StateRequest::Push(wanted), Pending::Push);
                }
            }
            (Pending::View(collection), StateResponse::View(json)) => {
                let view = hivemesh_crdt::majority::parse_views(&format!("[{json}]"))
                    .map_err(|error| tracing::debug!(%error, "a peer's view did not parse"))
                    .ok()
                    .and_then(|mut views| views.pop());
                self.collect_view(collection, view);
            }
            (Pending::Push, StateResponse::Ack { rejected, .. }) if !rejected.is_empty() => {
                tracing::warn!(?rejected, "a peer refused registry entries we pushed");
            }
            (pending, StateResponse::Refused(reason)) => {
                tracing::debug!(%peer, %reason, "a peer refused a state request");
                self.on_state_failure(pending);
            }
            _ => {}
        }
    }

    fn on_state_failure(&mut self, pending: Pending) {
        match pending {
            Pending::View(collection) => self.collect_view(collection, None),
            Pending::Job(id) => self.on_job_response(id, None),
            _ => {}
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
                .filter(|m| self.replica.registry().get(&m.id.node).is_some())
                .map(|m| self.view_member(self.member_info(m)))
                .collect(),
            ViewKind::Majority => return self.start_majority_view(reply),
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
            .and_then(|node| self.replica.registry().get(&node))
            .map(|held| &held.entry);
        ViewMember::new(member, entry)
    }

    fn start_majority_view(&mut self, reply: oneshot::Sender<ViewReport>) {
        let own: Vec<Entry> =
            self.own_view().into_iter().filter_map(|value| Entry::from_json(value).ok()).collect();
        let id = self.replication.next_collection;
        self.replication.next_collection += 1;
        let live = self.live_members();
        self.replication
            .collections
            .insert(id, ViewCollection { waiting: live.len(), asked: live.len(), views: vec![own], reply });
        for member in &live {
            if let Some(peer) = self.peer_of(member) {
                self.send_state(peer, &StateRequest::View, Pending::View(id));
            } else {
                self.collect_view(id, None);
            }
        }
        if live.is_empty() {
            self.collect_view_done(id);
        }
    }

    fn collect_view(&mut self, id: u64, view: Option<Vec<Entry>>) {
        let Some(collection) = self.replication.collections.get_mut(&id) else { return };
        collection.waiting = collection.waiting.saturating_sub(1);
        collection.views.extend(view);
        if collection.waiting == 0 {
            self.collect_view_done(id);
        }
    }

    fn collect_view_done(&mut self, id: u64) {
        let Some(collection) = self.replication.collections.remove(&id) else { return };
        let Ok(resolution) = resolve(&collection.views) else { return };
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
            peers_asked: collection.asked,
            peers_answered: collection.views.len() - 1,
            metrics: resolution.metrics.clone(),
        };
        let report = ViewReport {
            view: ViewKind::Majority,
            active_view: self.active_view(),
            me,
            members,
            majority: Some(majority),
        };
        let _ = collection.reply.send(report);
    }
}
