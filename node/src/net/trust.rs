//! The driver's side of trust between peers (docs/adr/0019): equivocation
//! proofs (verified, stored, gossiped to every live member and repaired by
//! anti-entropy) and signed force-leave claims (checked against this node's
//! policy, applied to SWIM, relayed once).

use hivemesh_protocol::{Domain, EquivocationProof, ForceLeave, MessageError, NodeId, PeerId, open, seal};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::client::{ClientError, NodeClient};
use super::driver::{Command, Driver, unix_ms};
use super::replication::Pending;
use crate::replica::{
    EvidenceError, EvidenceReport, Learned, MAX_PROOFS_PER_MESSAGE, StateRequest, StoreError,
};

/// A request from the node's own API about trust.
pub enum TrustCommand {
    /// Verify and hold a proof; `true` when it was new here.
    Report(Box<EquivocationProof>, oneshot::Sender<Result<bool, EvidenceError>>),
    Evidence(oneshot::Sender<EvidenceReport>),
    /// Clear this node's mark on a peer; `true` when there was one.
    Clear(NodeId, oneshot::Sender<Result<bool, StoreError>>),
    ForceLeave(NodeId, oneshot::Sender<Result<ForceLeaveReport, ForceLeaveError>>),
}

/// What a force-leave did on the issuing node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForceLeaveReport {
    /// The peer, as a peer id.
    pub peer: String,
    /// The SWIM generation marked left (and every lower one).
    pub generation: u64,
    /// Its state here before the claim: `alive`, `suspect`, `down` or `left`.
    pub previous_state: String,
    /// Live members the signed claim was sent to (each relays it once).
    pub sent_to: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ForceLeaveError {
    #[error("peer {0} is not a member this node knows of")]
    UnknownPeer(String),
    #[error("a node cannot force itself out; use `hivemesh leave`")]
    Itself,
    #[error("cannot sign the claim: {0}")]
    Sign(#[from] MessageError),
}

/// Why a received force-leave claim was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ClaimRefused {
    #[error("not a valid force-leave claim: {0}")]
    Invalid(#[from] MessageError),
    #[error("issuer {0} is not on this node's allowlist")]
    IssuerNotAllowed(NodeId),
}

impl ClaimRefused {
    /// The label counted in `hivemesh_rejected_total{layer="trust"}`.
    fn label(&self) -> &'static str {
        match self {
            Self::Invalid(MessageError::Envelope(_)) => "force_leave.bad_signature",
            Self::Invalid(_) => "force_leave.malformed",
            Self::IssuerNotAllowed(_) => "force_leave.issuer_not_allowed",
        }
    }
}

impl Driver {
    pub(super) fn on_trust_command(&mut self, command: TrustCommand) {
        match command {
            TrustCommand::Report(proof, reply) => {
                let result = self.learn_proof(*proof, None);
                let _ = reply.send(result.map(|learned| matches!(learned, Learned::New(_))));
            }
            TrustCommand::Evidence(reply) => {
                let _ = reply.send(self.replica().evidence().report());
            }
            TrustCommand::Clear(node, reply) => {
                let result = self.replica().evidence().clear(&node);
                if let Ok(true) = result {
                    tracing::info!(peer = %node, "an operator cleared the equivocation mark on this node");
                }
                let _ = reply.send(result);
            }
            TrustCommand::ForceLeave(node, reply) => {
                let _ = reply.send(self.issue_force_leave(node));
            }
        }
    }

    /// Verifies and stores one proof; a new one is logged and sent on to
    /// every live member but `from`.
    fn learn_proof(
        &mut self,
        proof: EquivocationProof,
        from: Option<PeerId>,
    ) -> Result<Learned, EvidenceError> {
        let learned = self.replica().evidence().learn(proof.clone(), unix_ms());
        match &learned {
            Ok(Learned::New(equivocation)) => {
                tracing::warn!(
                    peer = %equivocation.voter, job = %equivocation.job,
                    "verified proof of equivocation (two different signed ballots for one job): the peer is left \
                     out of placement and voting here until an operator clears it (`hivemesh byzantine clear`)"
                );
                self.send_to_live(&StateRequest::Evidence(vec![proof]), from);
            }
            Ok(Learned::Known) => {}
            Err(error) => {
                tracing::debug!(%error, "refused an equivocation proof");
                *self
                    .replica()
                    .stats_mut()
                    .trust_rejected
                    .entry(format!("proof.{}", error.reason()))
                    .or_default() += 1;
            }
        }
        learned
    }

    /// Answers a peer's `Evidence` gossip: (accepted, rejection reasons).
    pub(super) fn on_evidence(&mut self, from: PeerId, proofs: Vec<EquivocationProof>) -> (u32, Vec<String>) {
        let (mut accepted, mut rejected) = (0, Vec::new());
        if proofs.len() > MAX_PROOFS_PER_MESSAGE {
            rejected.push(format!(
                "{} proofs in one message; the limit is {MAX_PROOFS_PER_MESSAGE}",
                proofs.len()
            ));
        }
        for proof in proofs.into_iter().take(MAX_PROOFS_PER_MESSAGE) {
            match self.learn_proof(proof, Some(from)) {
                Ok(Learned::New(_)) => accepted += 1,
                Ok(Learned::Known) => {}
                Err(error) => rejected.push(error.to_string()),
            }
        }
        (accepted, rejected)
    }

    fn send_to_live(&mut self, request: &StateRequest, except: Option<PeerId>) -> usize {
        let mut sent = 0;
        for member in self.live_members() {
            let Some(peer) = self.peer_of(&member) else { continue };
            if Some(peer) != except {
                self.send_state(peer, request, Pending::Unanswered);
                sent += 1;
            }
        }
        sent
    }

    fn issue_force_leave(&mut self, node: NodeId) -> Result<ForceLeaveReport, ForceLeaveError> {
        let me = self.replica().me();
        if node == me {
            return Err(ForceLeaveError::Itself);
        }
        let peer = node.to_peer_id().map(|p| p.to_string()).unwrap_or_else(|_| node.to_string());
        let member = self.membership.members().into_iter().find(|m| m.id.node == node);
        let Some(member) = member else { return Err(ForceLeaveError::UnknownPeer(peer)) };
        let claim = ForceLeave { issuer: me, peer: node, generation: member.id.generation };
        let now = unix_ms();
        let envelope = seal(self.replica().identity(), now, now, &claim)?;
        self.membership.force_leave(node, claim.generation, now);
        tracing::info!(%peer, generation = claim.generation, previous = member.state.label(), "force-leave issued");
        let sent_to = self.send_to_live(&StateRequest::ForceLeave(envelope), None);
        Ok(ForceLeaveReport {
            peer,
            generation: claim.generation,
            previous_state: member.state.label().to_string(),
            sent_to,
        })
    }

    /// A claim from a peer: applied when it verifies and its issuer may make
    /// it here (on the allowlist, when this node has one); relayed to the
    /// live members once, when it changed something here.
    pub(super) fn on_force_leave(
        &mut self,
        from: PeerId,
        envelope: hivemesh_protocol::Envelope,
    ) -> Result<(), ClaimRefused> {
        let checked = envelope
            .verify_stateless(Domain::FORCE_LEAVE)
            .map_err(MessageError::from)
            .and_then(|()| open::<ForceLeave>(&envelope))
            .map_err(ClaimRefused::from)
            .and_then(|claim| match self.swarm.behaviour().allow.as_ref() {
                Some(list) if !claim.issuer.to_peer_id().is_ok_and(|p| list.allowed_peers().contains(&p)) => {
                    Err(ClaimRefused::IssuerNotAllowed(claim.issuer))
                }
                _ => Ok(claim),
            });
        let claim = match checked {
            Ok(claim) => claim,
            Err(refused) => {
                tracing::debug!(%refused, "refused a force-leave claim");
                *self.replica().stats_mut().trust_rejected.entry(refused.label().to_string()).or_default() +=
                    1;
                return Err(refused);
            }
        };
        if claim.peer == self.replica().me() {
            tracing::warn!(issuer = %claim.issuer, "a force-leave names this node; SWIM rejoins it under a new generation");
            return Ok(());
        }
        if self.membership.force_leave(claim.peer, claim.generation, unix_ms()) {
            tracing::info!(peer = %claim.peer, issuer = %claim.issuer, "force-leave applied");
            self.send_to_live(&StateRequest::ForceLeave(envelope), Some(from));
        }
        Ok(())
    }
}

impl NodeClient {
    /// Verifies `proof` on the node and spreads it; `Ok(true)` when new.
    pub async fn report_equivocation(
        &self,
        proof: EquivocationProof,
    ) -> Result<Result<bool, EvidenceError>, ClientError> {
        self.command(|tx| Command::Trust(TrustCommand::Report(Box::new(proof), tx))).await
    }

    pub async fn evidence(&self) -> Result<EvidenceReport, ClientError> {
        self.command(|tx| Command::Trust(TrustCommand::Evidence(tx))).await
    }

    pub async fn clear_evidence(&self, node: NodeId) -> Result<Result<bool, StoreError>, ClientError> {
        self.command(|tx| Command::Trust(TrustCommand::Clear(node, tx))).await
    }

    pub async fn force_leave(
        &self,
        node: NodeId,
    ) -> Result<Result<ForceLeaveReport, ForceLeaveError>, ClientError> {
        self.command(|tx| Command::Trust(TrustCommand::ForceLeave(node, tx))).await
    }
}
