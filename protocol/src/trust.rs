//! Statements about other peers that any node can check for itself: a proof
//! that a voter equivocated, and an operator's signed force-leave claim.
//!
//! Both are monotone facts (docs/adr/0018): learning one never has to be
//! undone by a later message, so they spread by gossip with no agreement
//! protocol (docs/adr/0019).

use serde::{Deserialize, Serialize};

use crate::envelope::{Domain, Envelope, EnvelopeError};
use crate::identity::NodeId;
use crate::messages::{Ballot, JobId, MessageError, SignedMessage, open};

/// Two different ballots for one job, both signed by the same voter.
///
/// Self-proving: whoever holds it checks both signatures and sees the
/// difference, so it needs no trust in whoever relayed it. A ballot that
/// does not verify (forged, malformed, signed by another key) proves
/// nothing about the voter it names, and [`EquivocationProof::verify`]
/// rejects the whole proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EquivocationProof {
    /// The two signed `Ballot` envelopes, in the order they were found.
    pub ballots: [Envelope; 2],
}

/// What a verified [`EquivocationProof`] establishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Equivocation {
    pub voter: NodeId,
    pub job: JobId,
}

/// Why an [`EquivocationProof`] proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("ballot {index}: {source}")]
    Signature { index: usize, source: EnvelopeError },
    #[error("ballot {index}: {source}")]
    Ballot { index: usize, source: MessageError },
    #[error("the ballots are signed by two voters ({first} and {second})")]
    DifferentVoters { first: NodeId, second: NodeId },
    #[error("the ballots are for two jobs ({first} and {second})")]
    DifferentJobs { first: JobId, second: JobId },
    #[error("the two ballots say the same thing: a repeat is not equivocation")]
    SameBallot,
}

impl ProofError {
    /// A short stable label, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Signature { .. } => "bad_signature",
            Self::Ballot { .. } => "malformed",
            Self::DifferentVoters { .. } => "different_voters",
            Self::DifferentJobs { .. } => "different_jobs",
            Self::SameBallot => "same_ballot",
        }
    }
}

impl EquivocationProof {
    /// Checks both signatures (the envelope header's version, domain and
    /// payload size included; not its age, since evidence stays valid), that
    /// each payload is a valid `Ballot` by its signer, and that the two are
    /// for one job and differ. Ballots are compared decoded, so two
    /// envelopes of the same ballot (another sequence number, another
    /// timestamp) are a repeat, not a proof.
    pub fn verify(&self) -> Result<Equivocation, ProofError> {
        let mut opened = Vec::with_capacity(2);
        for (index, envelope) in self.ballots.iter().enumerate() {
            envelope
                .verify_stateless(Domain::BALLOT)
                .map_err(|source| ProofError::Signature { index, source })?;
            opened.push(open::<Ballot>(envelope).map_err(|source| ProofError::Ballot { index, source })?);
        }
        let (first, second) = (&opened[0], &opened[1]);
        if first.voter != second.voter {
            return Err(ProofError::DifferentVoters { first: first.voter, second: second.voter });
        }
        if first.job != second.job {
            return Err(ProofError::DifferentJobs { first: first.job, second: second.job });
        }
        if first == second {
            return Err(ProofError::SameBallot);
        }
        Ok(Equivocation { voter: first.voter, job: first.job })
    }
}

/// "Mark this identity of `peer` as left": Serf's force-leave, signed.
///
/// An operator issues it from their own node for a peer that failed, so the
/// swarm stops waiting on it (suspicion, placement) at once. It names one
/// `generation` of the peer (the SWIM identity, see ADR 0015): a peer that
/// restarts takes a higher generation and is not affected, so the claim
/// never needs retracting. Who may issue one is the receiver's policy (in a
/// private swarm with an allowlist, only peers on it; docs/adr/0019).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForceLeave {
    pub issuer: NodeId,
    pub peer: NodeId,
    /// The peer's SWIM generation this claim is about, and every lower one.
    pub generation: u64,
}

impl SignedMessage for ForceLeave {
    const DOMAIN: Domain = Domain::FORCE_LEAVE;

    fn author(&self) -> NodeId {
        self.issuer
    }

    fn validate(&self) -> Result<(), MessageError> {
        if self.issuer == self.peer {
            return Err(MessageError::Invalid {
                field: "peer",
                reason: "a node cannot force itself out; it leaves gracefully instead".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeIdentity;
    use crate::messages::{BallotChoice, TallyRule, seal};

    fn ballot(voter: &NodeIdentity, job: u8, choice: u32, seq: u64) -> Envelope {
        let ballot = Ballot {
            job: JobId([job; 16]),
            voter: voter.node_id(),
            rule: TallyRule::Plurality,
            choice: BallotChoice::Single(choice),
            weight: 1,
        };
        seal(voter, seq, 1_000 + seq, &ballot).expect("seal")
    }

    #[test]
    fn two_different_signed_ballots_for_one_job_prove_equivocation() {
        let voter = NodeIdentity::from_seed([1; 32]);
        let proof = EquivocationProof { ballots: [ballot(&voter, 7, 0, 1), ballot(&voter, 7, 1, 2)] };
        assert_eq!(proof.verify(), Ok(Equivocation { voter: voter.node_id(), job: JobId([7; 16]) }));
    }

    #[test]
    fn a_repeat_other_jobs_other_voters_and_forgeries_prove_nothing() {
        let voter = NodeIdentity::from_seed([1; 32]);
        let other = NodeIdentity::from_seed([2; 32]);
        let repeat = EquivocationProof { ballots: [ballot(&voter, 7, 0, 1), ballot(&voter, 7, 0, 2)] };
        assert_eq!(repeat.verify(), Err(ProofError::SameBallot));
        let jobs = EquivocationProof { ballots: [ballot(&voter, 7, 0, 1), ballot(&voter, 8, 1, 2)] };
        assert!(matches!(jobs.verify(), Err(ProofError::DifferentJobs { .. })));
        let voters = EquivocationProof { ballots: [ballot(&voter, 7, 0, 1), ballot(&other, 7, 1, 2)] };
        assert!(matches!(voters.verify(), Err(ProofError::DifferentVoters { .. })));

        // A ballot naming `voter` but signed by `other`, with the sender
        // rewritten: the signature does not verify, so no proof.
        let mut forged = ballot(&other, 7, 1, 2);
        let mut payload: Ballot = crate::decode_message(&forged.payload).expect("decode");
        payload.voter = voter.node_id();
        forged.payload = crate::encode_message(&payload).expect("encode");
        forged.sender = voter.node_id();
        let proof = EquivocationProof { ballots: [ballot(&voter, 7, 0, 1), forged] };
        assert!(
            matches!(proof.verify(), Err(ProofError::Signature { index: 1, .. })),
            "{:?}",
            proof.verify()
        );

        // A signed envelope of another kind is not a ballot.
        let mut wrong_domain = ballot(&voter, 7, 1, 2);
        wrong_domain.domain = Domain::JOB_CONTRIBUTION;
        let proof = EquivocationProof { ballots: [ballot(&voter, 7, 0, 1), wrong_domain] };
        assert!(matches!(proof.verify(), Err(ProofError::Signature { index: 1, .. })));
    }

    #[test]
    fn a_force_leave_claim_about_the_issuer_itself_is_invalid() {
        let me = NodeIdentity::from_seed([1; 32]);
        let claim = ForceLeave { issuer: me.node_id(), peer: me.node_id(), generation: 1 };
        assert!(seal(&me, 1, 1, &claim).is_err());
        let other = NodeIdentity::from_seed([2; 32]).node_id();
        let envelope =
            seal(&me, 1, 1, &ForceLeave { generation: 1, peer: other, issuer: me.node_id() }).expect("seal");
        assert_eq!(open::<ForceLeave>(&envelope).expect("open").peer, other);
    }
}
