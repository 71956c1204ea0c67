//! The swarm registry: one signed entry per node, merged as a last-writer-wins
//! map (a state-based CRDT). See docs/adr/0006-registry-signed-lww.md.
//!
//! Each entry is a `PeerEntry` sealed in an envelope by the node it
//! describes, so it can be checked however many hops it travelled; a merge
//! keeps, per node, the entry with the greatest `last_updated_ms` (ties: the
//! greater payload bytes, so every replica picks the same one).

use std::collections::BTreeMap;

use hivemesh_protocol::{Envelope, MessageError, NodeId, NodeIdentity, PeerEntry, SignedMessage, open, seal};
use serde::{Deserialize, Serialize};

/// Most entries one registry holds; beyond it new nodes are refused (counted).
pub const MAX_REGISTRY_ENTRIES: usize = 100_000;

/// A verified entry and the envelope that proves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEntry {
    pub entry: PeerEntry,
    pub envelope: Envelope,
}

/// What merging one envelope did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// A node not seen before.
    Added,
    /// Newer than what we held.
    Updated,
    /// Not newer than what we held; nothing changed.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("registry entry rejected: {0}")]
    Invalid(#[from] MessageError),
    #[error("registry is full ({MAX_REGISTRY_ENTRIES} nodes); entry for a new node refused")]
    Full,
    #[error("cannot publish: a newer entry of this node (last_updated_ms {held}) is already held")]
    OlderThanHeld { held: u64 },
}

impl RegistryError {
    /// A short stable label, for metrics. An entry signed by anyone other
    /// than the node it names is `forged`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(MessageError::AuthorMismatch { .. }) => "forged",
            Self::Invalid(MessageError::Envelope(error)) => error.reason(),
            Self::Invalid(MessageError::Codec(_)) => "malformed",
            Self::Invalid(MessageError::Invalid { .. }) => "invalid_content",
            Self::Full => "registry_full",
            Self::OlderThanHeld { .. } => "older_than_held",
        }
    }
}

/// A node's version of each entry, for anti-entropy.
pub type Digest = Vec<(NodeId, u64)>;

/// What one side of an anti-entropy round must send and ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// Entries the other side lacks or holds older.
    pub send: Vec<Envelope>,
    /// Nodes whose entries the other side holds newer.
    pub want: Vec<NodeId>,
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: BTreeMap<NodeId, SignedEntry>,
    rejected: BTreeMap<&'static str, u64>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies an entry from anywhere (network, disk) and merges it. Errors
    /// are counted under their reason and change nothing.
    pub fn merge(&mut self, envelope: Envelope) -> Result<Merge, RegistryError> {
        let result = self.merge_verified(envelope);
        if let Err(error) = &result {
            *self.rejected.entry(error.reason()).or_default() += 1;
        }
        result
    }

    fn merge_verified(&mut self, envelope: Envelope) -> Result<Merge, RegistryError> {
        envelope.verify_stateless(PeerEntry::DOMAIN).map_err(MessageError::from)?;
        let entry: PeerEntry = open(&envelope)?;
        let len = self.entries.len();
        match self.entries.get_mut(&entry.node) {
            Some(held) if !newer(&entry, &envelope, held) => Ok(Merge::Stale),
            Some(held) => {
                *held = SignedEntry { entry, envelope };
                Ok(Merge::Updated)
            }
            None if len >= MAX_REGISTRY_ENTRIES => Err(RegistryError::Full),
            None => {
                self.entries.insert(entry.node, SignedEntry { entry, envelope });
                Ok(Merge::Added)
            }
        }
    }

    /// Signs and stores this node's own entry. `last_updated_ms` is raised
    /// above the held one if the clock went backwards, so the update wins.
    pub fn publish(
        &mut self,
        identity: &NodeIdentity,
        mut entry: PeerEntry,
    ) -> Result<Envelope, RegistryError> {
        if let Some(held) = self.entries.get(&identity.node_id()) {
            entry.last_updated_ms = entry.last_updated_ms.max(held.entry.last_updated_ms + 1);
        }
        let envelope = seal(identity, entry.last_updated_ms, entry.last_updated_ms, &entry)?;
        match self.merge(envelope.clone())? {
            Merge::Stale => Err(RegistryError::OlderThanHeld { held: entry.last_updated_ms }),
            Merge::Added | Merge::Updated => Ok(envelope),
        }
    }

    pub fn get(&self, node: &NodeId) -> Option<&SignedEntry> {
        self.entries.get(node)
    }

    /// Entries in NodeId order.
    pub fn entries(&self) -> impl Iterator<Item = &SignedEntry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Rejected entries so far, by reason.
    pub fn rejected(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejected
    }

    pub fn digest(&self) -> Digest {
        self.entries.iter().map(|(node, held)| (*node, held.entry.last_updated_ms)).collect()
    }

    /// Compares a peer's digest with ours: what to send it, what to ask for.
    /// Linear in both sizes (both are in NodeId order).
    pub fn reconcile(&self, theirs: &[(NodeId, u64)]) -> Reconciliation {
        let mut theirs: Vec<(NodeId, u64)> = theirs.to_vec();
        theirs.sort_unstable();
        theirs.dedup_by_key(|(node, _)| *node);
        let mut out = Reconciliation::default();
        let mut remote = theirs.iter().peekable();
        for (node, held) in &self.entries {
            while let Some((other, _)) = remote.next_if(|(other, _)| other < node) {
                out.want.push(*other);
            }
            match remote.next_if(|(other, _)| other == node) {
                Some((_, version)) if *version > held.entry.last_updated_ms => out.want.push(*node),
                Some((_, version)) if *version == held.entry.last_updated_ms => {}
                _ => out.send.push(held.envelope.clone()),
            }
        }
        out.want.extend(remote.map(|(node, _)| *node));
        out
    }

    /// The held envelopes for these nodes (those we have).
    pub fn envelopes_for(&self, nodes: &[NodeId]) -> Vec<Envelope> {
        nodes.iter().filter_map(|node| self.entries.get(node)).map(|held| held.envelope.clone()).collect()
    }
}

fn newer(entry: &PeerEntry, envelope: &Envelope, held: &SignedEntry) -> bool {
    (entry.last_updated_ms, &envelope.payload) > (held.entry.last_updated_ms, &held.envelope.payload)
}
