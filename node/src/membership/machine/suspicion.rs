//! The machine's side of Lifeguard (see `membership::lifeguard`): holding
//! foca's down timers, buddy notices, direct checks, claims and refutations.

use std::time::Duration;

use foca::{Member, State};
use hivemesh_protocol::identity::NodeId;
use rand10::RngExt;

use super::super::lifeguard::{SuspicionClaim, suspicion_timeout};
use super::{MemberId, Membership, Output, SuspicionStep, Timer, WireFrame};

/// Buddy notices per suspicion and node: at 0, ½ and 1 probe RTT.
const NOTICES: u8 = 3;

/// Lifeguard's K, the confirmations after which the timeout is at its
/// minimum (memberlist: `SuspicionMult - 2` = 2 on a LAN; 3 here because a
/// check is answered by the suspect itself, not only by probes).
const EXPECTED_CONFIRMATIONS: u32 = 3;

impl Membership {
    /// Acts on what the last foca call left: foca's down timers (held here
    /// and released by the Lifeguard timeout) and newly heard claims.
    pub(super) fn settle(&mut self) {
        if self.leaving {
            return;
        }
        loop {
            let mut held = Vec::new();
            self.outbox.outputs.retain(|output| match output {
                Output::Schedule {
                    timer: Timer::Swim(t @ foca::Timer::ChangeSuspectToDown { .. }), ..
                } => {
                    held.push(t.clone());
                    false
                }
                _ => true,
            });
            let claims = self.claims.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default();
            if held.is_empty() && claims.is_empty() {
                return;
            }
            for timer in held {
                self.own_probe_failed(timer);
            }
            for claim in claims {
                self.hear_claim(claim);
            }
        }
    }

    /// foca's own probe of a member failed: this node suspects it, holds
    /// foca's down timer, tells the suspect and checks it like any hearer.
    /// The probe alone is no claim: on a busy machine a first probe often
    /// waits on a connection still being set up, so only a refused notice,
    /// or silence for a probe period, makes it one.
    fn own_probe_failed(&mut self, timer: foca::Timer<MemberId>) {
        let foca::Timer::ChangeSuspectToDown { member_id, incarnation, .. } = &timer else {
            return;
        };
        let (id, incarnation, now) = (member_id.clone(), *incarnation, self.now_ms);
        let Some(record) = self.suspicions.entry(&id, incarnation, now) else {
            return;
        };
        let fresh = record.confirmers.is_empty() && !record.checking && !record.claimed;
        record.held = Some(timer);
        let check = !record.claimed && !record.checking;
        record.checking |= check;
        if fresh {
            self.stats.suspicions += 1;
        }
        if check {
            self.start_check(&id, incarnation);
        }
        self.schedule_expiry(id.node, incarnation);
    }

    /// Another member's claim arrived (first time only: foca's handler
    /// drops repeats). About this node: refute. About a member still
    /// suspected at that incarnation: count it and check the suspect.
    pub(super) fn hear_claim(&mut self, claim: SuspicionClaim) {
        let me = self.me().clone();
        if claim.by == me.node {
            return;
        }
        if claim.member == me.node {
            if claim.generation == me.generation {
                self.refute_self(claim.incarnation, claim.by);
            }
            return;
        }
        let Some(id) = self.still_suspect(claim.member, claim.generation, claim.incarnation) else {
            return;
        };
        let now = self.now_ms;
        let Some(record) = self.suspicions.entry(&id, claim.incarnation, now) else {
            return;
        };
        let fresh = record.confirmers.is_empty() && !record.checking && !record.claimed;
        record.confirmers.insert(claim.by);
        // A sample of about 2K hearers checks the suspect: enough claims to
        // reach K for a dead member without every member gossiping one.
        let check = fresh && self.sample_checker();
        if let Some(record) = self.suspicions.records.get_mut(&id.node) {
            record.checking |= check;
        }
        if fresh {
            self.stats.suspicions += 1;
        }
        if check {
            self.start_check(&id, claim.incarnation);
        }
        self.schedule_expiry(id.node, claim.incarnation);
    }

    /// Tells the suspect (the first buddy notice) and gives it one probe
    /// period to answer before this node's check becomes a claim.
    fn start_check(&mut self, id: &MemberId, incarnation: u16) {
        self.notify_suspect(id, incarnation, 0);
        self.push_timer(self.config.probe_period, id.node, incarnation, SuspicionStep::Verify);
    }

    /// The identity under which `node` is an active member here, if it is.
    fn active_id(&self, node: NodeId) -> Option<MemberId> {
        self.swim.iter_members().find(|m| m.id().node == node).map(|m| m.id().clone())
    }

    /// The member's identity if this node still knows it active at
    /// `generation` and has not seen it refute past `incarnation`.
    fn still_suspect(&self, node: NodeId, generation: u64, incarnation: u16) -> Option<MemberId> {
        self.swim
            .iter_members()
            .find(|m| m.id().node == node)
            .filter(|m| m.id().generation == generation && m.incarnation() <= incarnation)
            .map(|m| m.id().clone())
    }

    fn claim(&mut self, id: &MemberId, incarnation: u16) {
        tracing::debug!(member = %id.node, incarnation, "claiming a suspicion (own probe or check failed)");
        self.stats.suspicions_claimed += 1;
        let claim =
            SuspicionClaim { by: self.me().node, member: id.node, generation: id.generation, incarnation };
        match postcard::to_stdvec(&claim) {
            Ok(bytes) => {
                if let Err(e) = self.swim.add_broadcast(&bytes) {
                    tracing::debug!(error = %e, "suspicion claim not broadcast");
                }
            }
            Err(e) => tracing::debug!(error = %e, "suspicion claim not encoded"),
        }
    }

    /// Tells the members already known to suspect `id` that this node's
    /// check failed too, so their timers shorten without waiting for gossip.
    fn confirm_to(&mut self, confirmers: &[NodeId], id: &MemberId, incarnation: u16) {
        let frame = WireFrame::Confirm { member: id.node, generation: id.generation, incarnation };
        let Ok(frame) = postcard::to_stdvec(&frame) else {
            return;
        };
        for node in confirmers {
            if let Some(to) = self.active_id(*node) {
                self.outbox.outputs.push(Output::Send { to, frame: frame.clone() });
            }
        }
    }

    /// Sends the buddy notice `sent` (0-based) and schedules the next one.
    fn notify_suspect(&mut self, id: &MemberId, incarnation: u16, sent: u8) {
        let frame = WireFrame::Suspect { generation: id.generation, incarnation };
        if let Ok(frame) = postcard::to_stdvec(&frame) {
            self.outbox.outputs.push(Output::Send { to: id.clone(), frame });
        }
        if sent + 1 < NOTICES {
            let after = self.config.probe_rtt / 2;
            self.push_timer(after, id.node, incarnation, SuspicionStep::Notice(sent + 1));
        }
    }

    fn schedule_expiry(&mut self, node: NodeId, incarnation: u16) {
        let Some(record) = self.suspicions.records.get(&node) else {
            return;
        };
        let deadline = record.started_ms + self.timeout_ms(record.confirmations());
        let after = Duration::from_millis(deadline.saturating_sub(self.now_ms));
        self.push_timer(after, node, incarnation, SuspicionStep::Expire);
    }

    /// Lifeguard's timeout for `confirmations`: K = 3, or 0 when the
    /// cluster is too small to confirm (memberlist: `n - 2 < k`).
    fn timeout_ms(&self, confirmations: u32) -> u64 {
        let n = self.active_count() + 1;
        let k =
            if n.saturating_sub(2) < EXPECTED_CONFIRMATIONS as usize { 0 } else { EXPECTED_CONFIRMATIONS };
        let timeout =
            suspicion_timeout(self.config.suspicion_min, self.config.suspicion_max, k, confirmations);
        u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this hearer checks the suspect itself: probability 2K over
    /// the other members, so about 2K checks per suspicion.
    fn sample_checker(&mut self) -> bool {
        let others = self.active_count().max(1) as f64;
        let p = (2.0 * f64::from(EXPECTED_CONFIRMATIONS) / others).min(1.0);
        self.rng.random_bool(p)
    }

    fn push_timer(&mut self, after: Duration, node: NodeId, incarnation: u16, step: SuspicionStep) {
        self.outbox
            .outputs
            .push(Output::Schedule { after, timer: Timer::Suspicion { node, incarnation, step } });
    }

    pub(super) fn on_suspicion_timer(&mut self, node: NodeId, incarnation: u16, step: SuspicionStep) {
        let current = self.suspicions.records.get(&node).filter(|r| r.incarnation == incarnation);
        let Some(record) = current else {
            return;
        };
        let generation = record.id.generation;
        let Some(id) = self.still_suspect(node, generation, incarnation) else {
            // Down by another member's word, gone, or refuted through gossip.
            self.suspicions.records.remove(&node);
            self.stats.suspicions_ended_elsewhere += 1;
            return;
        };
        match step {
            SuspicionStep::Notice(sent) => self.notify_suspect(&id, incarnation, sent),
            SuspicionStep::Verify => {
                let me = self.me().node;
                let Some(record) = self.suspicions.records.get_mut(&node).filter(|r| r.checking) else {
                    return;
                };
                record.checking = false;
                record.claimed = true;
                let worth_claiming = record.confirmations() < EXPECTED_CONFIRMATIONS;
                let known: Vec<NodeId> = record.confirmers.iter().copied().filter(|n| *n != me).collect();
                record.confirmers.insert(me);
                if worth_claiming {
                    self.claim(&id, incarnation);
                    self.confirm_to(&known, &id, incarnation);
                } else {
                    self.stats.suspicions_claimed += 1;
                }
                self.schedule_expiry(node, incarnation);
            }
            SuspicionStep::Expire => self.expire(id, incarnation),
        }
    }

    /// Declares the suspect down if its timeout has passed and this node's
    /// own probe or check of it failed; otherwise waits for the new deadline.
    fn expire(&mut self, id: MemberId, incarnation: u16) {
        let Some(record) = self.suspicions.records.get(&id.node) else {
            return;
        };
        let due = record.started_ms + self.timeout_ms(record.confirmations());
        if record.checking {
            return;
        }
        if self.now_ms < due {
            // The deadline moved (the cluster grew, so K did): wait for it.
            let after = Duration::from_millis(due - self.now_ms);
            self.push_timer(after, id.node, incarnation, SuspicionStep::Expire);
            return;
        }
        if !record.claimed {
            // Only heard of: nothing of this node's own to declare it on.
            self.suspicions.records.remove(&id.node);
            return;
        }
        tracing::debug!(
            member = %id.node,
            confirmations = record.confirmations(),
            after_ms = self.now_ms - record.started_ms,
            own_probe = record.held.is_some(),
            "suspicion timed out: declaring the member down"
        );
        let held = self.suspicions.records.remove(&id.node).and_then(|r| r.held);
        self.stats.suspicions_expired += 1;
        let result = match held {
            Some(timer) => self.swim.handle_timer(timer, &mut self.outbox),
            None => self.swim.apply_many(
                std::iter::once(Member::new(id, incarnation, State::Down)),
                true,
                &mut self.outbox,
            ),
        };
        self.after_swim_call(result);
    }

    /// The transport's word on a frame this node sent to `to`: acknowledged
    /// by the peer's node (`delivered`), or failed (refused, closed, timed
    /// out). An acknowledgement is proof of life; a failure ends this node's
    /// check of a suspect at once, as a claim.
    pub fn delivery(&mut self, to: NodeId, delivered: bool, now_ms: u64) {
        self.now_ms = now_ms;
        let Some(record) = self.suspicions.records.get(&to).filter(|_| !self.leaving) else {
            return;
        };
        if delivered {
            self.alive_evidence(to);
        } else if record.checking {
            let incarnation = record.incarnation;
            self.on_suspicion_timer(to, incarnation, SuspicionStep::Verify);
        }
    }

    /// Something from `node` arrived or was acknowledged since it was
    /// suspected: it is alive, so this node neither claims nor declares it
    /// (its refutation, raised by the notices, travels by gossip).
    pub(super) fn alive_evidence(&mut self, node: NodeId) {
        if self.suspicions.records.remove(&node).is_some() {
            self.stats.suspicions_refuted += 1;
        }
    }

    /// A buddy notice from `from`: refute it if it is about this identity,
    /// and answer `from` with the refuting incarnation.
    pub(super) fn on_notice(&mut self, from: NodeId, generation: u64, incarnation: u16) {
        if generation == self.me().generation {
            self.refute_self(incarnation, from);
        }
    }

    /// Raises this node's incarnation past `incarnation` (once: foca bumps
    /// it and gossips), then tells `to` directly.
    fn refute_self(&mut self, incarnation: u16, to: NodeId) {
        let Some(floor) = incarnation.checked_add(1) else {
            return;
        };
        if floor > self.incarnation_floor {
            self.incarnation_floor = floor;
            self.stats.self_refutations += 1;
            tracing::debug!(incarnation, suspected_by = %to, "refuting a suspicion of this node");
            let me = self.me().clone();
            let result = self.swim.apply_many(
                std::iter::once(Member::new(me, incarnation, State::Suspect)),
                true,
                &mut self.outbox,
            );
            self.after_swim_call(result);
        }
        let to = self.active_id(to).unwrap_or_else(|| MemberId::placeholder(to, Vec::new()));
        let frame =
            WireFrame::Refute { generation: self.me().generation, incarnation: self.incarnation_floor };
        if let Ok(frame) = postcard::to_stdvec(&frame) {
            self.outbox.outputs.push(Output::Send { to, frame });
        }
    }

    /// The suspect's own word, over an authenticated connection: it is alive
    /// at `incarnation`. Ends the suspicion here and lets foca gossip it.
    pub(super) fn on_refute(&mut self, from: NodeId, generation: u64, incarnation: u16) {
        let known = self.swim.iter_members().find(|m| m.id().node == from && m.id().generation == generation);
        let Some(member) = known else {
            return;
        };
        let id = member.id().clone();
        if incarnation > member.incarnation() {
            let result = self.swim.apply_many(
                std::iter::once(Member::new(id, incarnation, State::Alive)),
                true,
                &mut self.outbox,
            );
            self.after_swim_call(result);
        }
        let ended = self.suspicions.records.get(&from).is_some_and(|r| r.incarnation < incarnation);
        if ended {
            self.suspicions.records.remove(&from);
            self.stats.suspicions_refuted += 1;
        }
    }
}
