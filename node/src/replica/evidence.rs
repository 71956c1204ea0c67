//! Equivocation proofs this node holds, and the peers they exclude.
//!
//! A two-phase set per voter (docs/adr/0018, 0019): proofs only arrive, and
//! a clearance by this node's operator only marks the proof it saw as
//! cleared. Excluded = voters with a proof not cleared here. Every proof is
//! verified before it is stored or counted, whoever relayed it; a forged or
//! malformed ballot never marks anyone. Persisted in sled (tree
//! `evidence`), one record per voter, and verified again on load.

use std::collections::BTreeMap;

use hivemesh_protocol::{Equivocation, EquivocationProof, JobId, NodeId, ProofError, encode_message};
use serde::{Deserialize, Serialize};

use super::store::{Store, StoreError};

/// Most proofs sent in one gossip message.
pub const MAX_PROOFS_PER_MESSAGE: usize = 64;

/// Most voters with a record here; a proof about one more is refused (a
/// stranger could mint keys and equivocate with them to fill the disk).
pub const MAX_RECORDS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("not a proof of equivocation: {0}")]
    Proof(#[from] ProofError),
    #[error("evidence is already held about {MAX_RECORDS} voters; refusing a proof about another")]
    Full,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EvidenceError {
    /// A short stable label, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Proof(error) => error.reason(),
            Self::Full => "evidence_full",
            Self::Store(_) => "store",
        }
    }
}

/// What [`Evidence::learn`] did with a valid proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A voter newly excluded (or excluded again, for another job, after a
    /// clearance): tell the other members.
    New(Equivocation),
    /// Already held (excluded, or cleared here for that same job).
    Known,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    proof: EquivocationProof,
    job: JobId,
    /// When this node first verified it, in Unix milliseconds.
    learned_ms: u64,
    cleared: bool,
}

/// One proof as `GET /v1/byzantine` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceEntry {
    /// The equivocating voter, as a peer id.
    pub peer: String,
    /// The job it signed two different ballots for (32 hex digits).
    pub job: String,
    pub learned_ms: u64,
    /// Whether this node's operator cleared it (the peer is then no longer
    /// excluded here, unless it equivocates again in another job).
    pub cleared: bool,
    /// The two signed ballots, hex of postcard envelopes (the ballot file
    /// format of `hivemesh tally`).
    pub ballots: [String; 2],
}

/// Every proof this node holds, and who it excludes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvidenceReport {
    /// Peers left out of placement and of the eligible voters of new jobs.
    pub excluded: Vec<String>,
    /// Proofs verified and accepted since this process started.
    pub detections: u64,
    pub proofs: Vec<EvidenceEntry>,
}

pub struct Evidence {
    store: Store,
    records: BTreeMap<NodeId, Record>,
    detections: u64,
}

impl Evidence {
    /// Loads the stored records; one that no longer decodes or verifies is
    /// dropped with a warning (it proves nothing).
    pub fn load(store: Store) -> Self {
        let (stored, skipped) = store.evidence();
        for skip in skipped {
            tracing::warn!(tree = skip.tree, reason = %skip.reason, "skipped an unreadable stored record");
        }
        let mut records = BTreeMap::new();
        for (voter, bytes) in stored {
            let record: Record = match hivemesh_protocol::decode_message(&bytes) {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(%voter, %error, "dropped an unreadable stored proof");
                    continue;
                }
            };
            match record.proof.verify() {
                Ok(eq) if eq.voter == voter && eq.job == record.job => {
                    records.insert(voter, record);
                }
                Ok(_) => tracing::warn!(%voter, "dropped a stored proof filed under the wrong voter"),
                Err(error) => {
                    tracing::warn!(%voter, %error, "dropped a stored proof that no longer verifies")
                }
            }
        }
        Self { store, records, detections: 0 }
    }

    /// Verifies `proof` and, if it is new here, stores it durably (the
    /// voter is excluded from then on).
    pub fn learn(&mut self, proof: EquivocationProof, now_ms: u64) -> Result<Learned, EvidenceError> {
        // Gossip repeats held proofs every round: one that could change
        // nothing here is answered `Known` before its signatures are checked.
        if self.would_be_known(&proof) {
            return Ok(Learned::Known);
        }
        let equivocation = proof.verify()?;
        match self.records.get(&equivocation.voter) {
            Some(held) if !held.cleared || held.job == equivocation.job => return Ok(Learned::Known),
            Some(_) => {}
            None if self.records.len() >= MAX_RECORDS => return Err(EvidenceError::Full),
            None => {}
        }
        let record = Record { proof, job: equivocation.job, learned_ms: now_ms, cleared: false };
        self.persist(&equivocation.voter, &record)?;
        self.records.insert(equivocation.voter, record);
        self.detections += 1;
        Ok(Learned::New(equivocation))
    }

    /// Whether `proof`, if valid, would be `Known`: its claimed voter is
    /// already excluded here, or cleared for that same job. Unverified, so
    /// it may only ever lead to doing nothing.
    fn would_be_known(&self, proof: &EquivocationProof) -> bool {
        let sender = proof.ballots[0].sender;
        let Some(held) = self.records.get(&sender) else { return false };
        if !held.cleared {
            return true;
        }
        hivemesh_protocol::decode_message::<hivemesh_protocol::Ballot>(&proof.ballots[0].payload)
            .is_ok_and(|ballot| ballot.job == held.job)
    }

    /// Clears the proof held about `voter` on this node only; `Ok(false)`
    /// when there is none to clear. The same proof arriving again keeps it
    /// cleared; a proof for another job excludes the voter again.
    pub fn clear(&mut self, voter: &NodeId) -> Result<bool, StoreError> {
        let Some(record) = self.records.get(voter) else { return Ok(false) };
        if record.cleared {
            return Ok(false);
        }
        let cleared = Record { cleared: true, ..record.clone() };
        self.persist(voter, &cleared)?;
        self.records.insert(*voter, cleared);
        Ok(true)
    }

    fn persist(&self, voter: &NodeId, record: &Record) -> Result<(), StoreError> {
        let bytes = encode_message(record).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.store.put_evidence(voter, &bytes)
    }

    pub fn is_excluded(&self, node: &NodeId) -> bool {
        self.records.get(node).is_some_and(|r| !r.cleared)
    }

    /// The excluded voters, in node order.
    pub fn excluded(&self) -> Vec<NodeId> {
        self.records.iter().filter(|(_, r)| !r.cleared).map(|(node, _)| *node).collect()
    }

    /// Every proof held, cleared ones included (a clearance is this node's
    /// policy; the proof is still evidence for the others), for gossip.
    pub fn proofs(&self) -> Vec<EquivocationProof> {
        self.records.values().map(|r| r.proof.clone()).collect()
    }

    pub fn detections(&self) -> u64 {
        self.detections
    }

    pub fn report(&self) -> EvidenceReport {
        let peer =
            |node: &NodeId| node.to_peer_id().map(|p| p.to_string()).unwrap_or_else(|_| node.to_string());
        EvidenceReport {
            excluded: self.excluded().iter().map(peer).collect(),
            detections: self.detections,
            proofs: self
                .records
                .iter()
                .map(|(node, r)| EvidenceEntry {
                    peer: peer(node),
                    job: r.job.to_string(),
                    learned_ms: r.learned_ms,
                    cleared: r.cleared,
                    ballots: r
                        .proof
                        .ballots
                        .clone()
                        .map(|e| encode_message(&e).map(hex::encode).unwrap_or_default()),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use hivemesh_protocol::{Ballot, BallotChoice, Envelope, NodeIdentity, TallyRule, seal};

    use super::*;

    fn ballot(voter: &NodeIdentity, job: u8, choice: u32) -> Envelope {
        let ballot = Ballot {
            job: JobId([job; 16]),
            voter: voter.node_id(),
            rule: TallyRule::Plurality,
            choice: BallotChoice::Single(choice),
            weight: 1,
        };
        seal(voter, u64::from(choice), 1, &ballot).expect("seal")
    }

    fn proof(voter: &NodeIdentity, job: u8) -> EquivocationProof {
        EquivocationProof { ballots: [ballot(voter, job, 0), ballot(voter, job, 1)] }
    }

    #[test]
    fn a_proof_excludes_its_voter_until_cleared_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let voter = NodeIdentity::from_seed([3; 32]);
        let node = voter.node_id();
        {
            let mut evidence = Evidence::load(Store::open(dir.path()).expect("open"));
            assert!(matches!(evidence.learn(proof(&voter, 1), 10), Ok(Learned::New(eq)) if eq.voter == node));
            assert!(matches!(evidence.learn(proof(&voter, 1), 11), Ok(Learned::Known)));
            assert!(
                matches!(evidence.learn(proof(&voter, 2), 12), Ok(Learned::Known)),
                "one proof per voter"
            );
            assert_eq!(evidence.excluded(), vec![node]);
            assert_eq!(evidence.detections(), 1);
        }
        let mut evidence = Evidence::load(Store::open(dir.path()).expect("reopen"));
        assert!(evidence.is_excluded(&node), "the proof survives a restart");
        assert!(evidence.clear(&node).expect("clear"));
        assert!(!evidence.is_excluded(&node));
        assert!(!evidence.clear(&node).expect("clear again"), "nothing left to clear");
        // The same proof gossiped back keeps it cleared; another job's
        // proof excludes the voter again.
        assert!(matches!(evidence.learn(proof(&voter, 1), 13), Ok(Learned::Known)));
        assert!(!evidence.is_excluded(&node));
        assert!(matches!(evidence.learn(proof(&voter, 2), 14), Ok(Learned::New(_))));
        assert!(evidence.is_excluded(&node));
        assert_eq!(evidence.report().proofs.len(), 1);
    }

    #[test]
    fn an_invalid_proof_is_refused_and_marks_nobody() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut evidence = Evidence::load(Store::open(dir.path()).expect("open"));
        let voter = NodeIdentity::from_seed([3; 32]);
        let repeat = EquivocationProof { ballots: [ballot(&voter, 1, 0), ballot(&voter, 1, 0)] };
        let error = evidence.learn(repeat, 1).expect_err("a repeat is no proof");
        assert_eq!(error.reason(), "same_ballot");
        let mut forged = proof(&voter, 1);
        forged.ballots[1].signature = forged.ballots[0].signature;
        assert_eq!(evidence.learn(forged, 1).expect_err("forged").reason(), "bad_signature");
        assert!(evidence.excluded().is_empty());
        assert_eq!(evidence.detections(), 0);
    }
}
