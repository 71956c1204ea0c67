//! Replicated state in the node: the signed registry, kept in sled, pushed to
//! members when it changes and repaired by periodic anti-entropy; and the
//! majority-rule view for small clusters.

pub mod anti_entropy;
mod evidence;
mod jobs;
mod store;
pub mod sync;
mod view;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use hivemesh_crdt::registry::{Digest, Merge, Reconciliation, Registry, RegistryError};
use hivemesh_protocol::{
    Capabilities, Envelope, GpuInfo, JobId, NodeId, NodeIdentity, PeerEntry, Role, decode_message,
    encode_message,
};
use serde::{Deserialize, Serialize};

pub use evidence::{Evidence, EvidenceEntry, EvidenceError, EvidenceReport, Learned, MAX_PROOFS_PER_MESSAGE};
pub use jobs::{JobChanged, JobError, JobStats, JobView, Jobs, JobsConfig, OUTCOME_KIND};
pub use store::{Store, StoreError};
pub use view::{MajorityInfo, ViewKind, ViewMember, ViewReport, member_entry, member_from_entry};

/// A seeded xorshift64 (Marsaglia 2003, "Xorshift RNGs"): uniform enough
/// for picking anti-entropy and repair partners, and reproducible under
/// the simulation's seed.
#[derive(Debug, Clone)]
pub(crate) struct Pick(u64);

impl Pick {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// An index below `len` (0 when `len` is 0).
    pub(crate) fn below(&mut self, len: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % len.max(1) as u64) as usize
    }
}

/// What this node offers, as its registry entry advertises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub role: Role,
    pub models: Vec<String>,
    pub gpu: Option<GpuInfo>,
}

impl Default for Profile {
    fn default() -> Self {
        Self { role: Role::Worker, models: Vec::new(), gpu: None }
    }
}

/// A request on `/hivemesh/state/1.0.0`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StateRequest {
    /// Registry entries the sender wants the receiver to hold.
    Push(Vec<Envelope>),
    /// Changes to a job document, from one of its participants.
    JobPush { job: JobId, changes: Vec<u8> },
    /// One automerge sync message for a job document; `first` opens a round.
    JobSync { job: JobId, first: bool, message: Vec<u8> },
    /// Streamed text of a job's model call, for the asker's listeners. Not
    /// state: lost frames are made good by the signed output in the document.
    JobFrame(JobFrame),
    /// Anti-entropy: the sender's versions; answered with a reconciliation.
    Digest(Digest),
    /// "Your view": the receiver's member list, as majority-rule entries (JSON).
    View,
    /// Equivocation proofs (at most [`MAX_PROOFS_PER_MESSAGE`]); each is
    /// verified by the receiver, whoever sent it (docs/adr/0019).
    Evidence(Vec<hivemesh_protocol::EquivocationProof>),
    /// A signed `ForceLeave` claim, relayed until every member holds it.
    ForceLeave(Envelope),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StateResponse {
    Ack {
        accepted: u32,
        rejected: Vec<String>,
    },
    Reconcile(Reconciliation),
    View(String),
    Refused(String),
    /// The answer to a `JobSync`: the next sync message, if there is one.
    JobSync(Option<Vec<u8>>),
    /// The answer to a `JobPush` or `JobSync` for a job this node has
    /// finished and compacted: it takes no more changes and no longer
    /// syncs, so the asker stops repairing it here. (Appended last: older
    /// nodes answer `Refused` instead, and take this for a malformed
    /// answer.)
    JobClosed(JobId),
}

/// A batch of tokens from one part of a job (a candidate, a stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFrame {
    pub job: JobId,
    pub part: String,
    /// The peer running that part (a peer id string).
    pub peer: String,
    /// Restarts of the part: listeners drop earlier text when it grows.
    pub attempt: u32,
    pub text: String,
}

/// Counters for the status report and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaStats {
    pub registry_entries: usize,
    pub pushes_sent: u64,
    pub anti_entropy_rounds: u64,
    pub entries_accepted: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub jobs: JobStats,
    /// Group commit: flushes run and what they released (ADR 0021).
    #[serde(default)]
    pub commit: sync::CommitStats,
    /// Refused input by reason: forged, bad_signature, malformed, ...
    pub rejected: BTreeMap<String, u64>,
    /// Refused equivocation proofs and force-leave claims, by reason
    /// (`proof.bad_signature`, `force_leave.issuer_not_allowed`, ...).
    #[serde(default)]
    pub trust_rejected: BTreeMap<String, u64>,
}

pub struct Replica {
    identity: Arc<NodeIdentity>,
    registry: Registry,
    store: Store,
    profile: Profile,
    stats: ReplicaStats,
    malformed: u64,
    evidence: Evidence,
}

impl Replica {
    /// Opens the store and reloads the registry, verifying every entry again.
    /// Without a `profile`, the one last advertised at run time is used.
    pub fn open(
        identity: Arc<NodeIdentity>,
        data_dir: &Path,
        profile: Option<Profile>,
    ) -> Result<Self, StoreError> {
        let store = Store::open(data_dir)?;
        let profile = profile.or_else(|| store.profile()).unwrap_or_default();
        let mut registry = Registry::new();
        let (entries, skipped) = store.entries();
        for skip in skipped {
            tracing::warn!(tree = skip.tree, reason = %skip.reason, "skipped an unreadable stored record");
        }
        for envelope in entries {
            if let Err(error) = registry.merge(envelope) {
                tracing::warn!(%error, "dropped a stored registry entry that no longer verifies");
            }
        }
        tracing::info!(entries = registry.len(), "registry loaded from disk");
        let evidence = Evidence::load(store.clone());
        Ok(Self {
            identity,
            registry,
            store,
            profile,
            stats: ReplicaStats::default(),
            malformed: 0,
            evidence,
        })
    }

    pub fn me(&self) -> NodeId {
        self.identity.node_id()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn evidence(&mut self) -> &mut Evidence {
        &mut self.evidence
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// The identity, shared (the job sync machine signs with it too).
    pub fn shared_identity(&self) -> Arc<NodeIdentity> {
        self.identity.clone()
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Signs this node's entry with `profile`, stores it durably, and returns
    /// it for pushing.
    pub fn publish(
        &mut self,
        profile: Option<Profile>,
        addresses: Vec<String>,
        load: u32,
        now_ms: u64,
    ) -> Result<Envelope, PublishError> {
        if let Some(profile) = profile {
            self.store.put_profile(&profile)?;
            self.profile = profile;
        }
        let entry = PeerEntry {
            node: self.me(),
            addresses,
            role: self.profile.role,
            capabilities: Capabilities { models: self.profile.models.clone(), gpu: self.profile.gpu.clone() },
            load,
            last_updated_ms: now_ms,
        };
        let envelope = self.registry.publish(&self.identity, entry)?;
        self.store.put_entry(&envelope)?;
        self.store.flush()?;
        Ok(envelope)
    }

    /// Merges entries from a peer and writes the accepted ones to sled;
    /// they are durable at the next flush, which the caller runs before it
    /// acknowledges them (group commit, ADR 0021).
    pub fn merge(&mut self, envelopes: Vec<Envelope>) -> (u32, Vec<String>) {
        let (mut accepted, mut rejected) = (0, Vec::new());
        for envelope in envelopes {
            let stored = envelope.clone();
            match self.registry.merge(envelope) {
                Ok(Merge::Added | Merge::Updated) => {
                    accepted += 1;
                    if let Err(error) = self.store.put_entry(&stored) {
                        tracing::error!(%error, "could not store a registry entry");
                    }
                }
                Ok(Merge::Stale) => {}
                Err(error) => {
                    tracing::debug!(%error, "registry entry rejected");
                    rejected.push(error.to_string());
                }
            }
        }
        self.stats.entries_accepted += u64::from(accepted);
        (accepted, rejected)
    }

    /// Decodes a frame from a peer; a malformed one is counted.
    pub fn decode<T: serde::de::DeserializeOwned>(
        &mut self,
        bytes: &[u8],
    ) -> Result<T, hivemesh_protocol::CodecError> {
        self.stats.bytes_in += bytes.len() as u64;
        decode_message(bytes).inspect_err(|_| self.malformed += 1)
    }

    pub fn encode<T: Serialize>(&mut self, message: &T) -> Vec<u8> {
        let bytes = encode_message(message).unwrap_or_else(|error| {
            tracing::error!(%error, "could not encode a state message; sending an empty frame");
            Vec::new()
        });
        self.stats.bytes_out += bytes.len() as u64;
        bytes
    }

    pub fn stats_mut(&mut self) -> &mut ReplicaStats {
        &mut self.stats
    }

    pub fn stats(&self) -> ReplicaStats {
        let mut stats = self.stats.clone();
        stats.registry_entries = self.registry.len();
        stats.rejected = self.registry.rejected().iter().map(|(k, v)| (k.to_string(), *v)).collect();
        if self.malformed > 0 {
            stats.rejected.insert("malformed_frame".into(), self.malformed);
        }
        stats
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
