//! Application messages that travel inside signed envelopes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, decode_message, encode_message};
use crate::envelope::{Domain, Envelope, EnvelopeError};
use crate::identity::{NodeId, NodeIdentity};
use crate::limits::{MAX_ADDRESSES, MAX_CANDIDATES, MAX_MODELS, MAX_STRING_BYTES};

/// Why a message could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("message claims to be written by {claimed} but is signed by {signer}")]
    AuthorMismatch { claimed: NodeId, signer: NodeId },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A message type that travels signed. `author` is who the content says wrote
/// it; opening checks it equals the envelope's signer, which is what stops a
/// node from publishing an entry in another node's name.
pub trait SignedMessage: Serialize + DeserializeOwned {
    const DOMAIN: Domain;
    fn author(&self) -> NodeId;
    /// Bounds and consistency checks on the decoded content.
    fn validate(&self) -> Result<(), MessageError>;
}

/// Encodes, validates and signs a message.
pub fn seal<T: SignedMessage>(
    identity: &NodeIdentity,
    seq: u64,
    timestamp_ms: u64,
    message: &T,
) -> Result<Envelope, MessageError> {
    message.validate()?;
    if message.author() != identity.node_id() {
        return Err(MessageError::AuthorMismatch { claimed: message.author(), signer: identity.node_id() });
    }
    Ok(Envelope::seal(identity, T::DOMAIN, seq, timestamp_ms, encode_message(message)?)?)
}

/// Decodes a message from an envelope that already passed a
/// [`crate::Verifier`], checking its domain, content bounds and author.
pub fn open<T: SignedMessage>(envelope: &Envelope) -> Result<T, MessageError> {
    if envelope.domain != T::DOMAIN {
        return Err(EnvelopeError::WrongDomain { expected: T::DOMAIN, got: envelope.domain }.into());
    }
    let message: T = decode_message(&envelope.payload)?;
    message.validate()?;
    if message.author() != envelope.sender {
        return Err(MessageError::AuthorMismatch { claimed: message.author(), signer: envelope.sender });
    }
    Ok(message)
}

/// What a node does in the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Takes jobs and answers questions.
    Worker,
    /// A well-known entry point; may also take jobs.
    Bootstrap,
    /// Follows the swarm but takes no jobs.
    Observer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub name: String,
    pub memory_mb: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Model names this node can run, as its providers call them.
    pub models: Vec<String>,
    pub gpu: Option<GpuInfo>,
}

/// One node's entry in the swarm registry; only that node may sign it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub node: NodeId,
    /// Listen addresses as multiaddr strings.
    pub addresses: Vec<String>,
    pub role: Role,
    pub capabilities: Capabilities,
    /// Jobs running now.
    pub load: u32,
    pub last_updated_ms: u64,
}

impl SignedMessage for PeerEntry {
    const DOMAIN: Domain = Domain::PEER_ENTRY;

    fn author(&self) -> NodeId {
        self.node
    }

    fn validate(&self) -> Result<(), MessageError> {
        check_strings("addresses", &self.addresses, MAX_ADDRESSES)?;
        check_strings("capabilities.models", &self.capabilities.models, MAX_MODELS)?;
        if let Some(gpu) = &self.capabilities.gpu {
            check_strings("capabilities.gpu.name", std::slice::from_ref(&gpu.name), 1)?;
        }
        Ok(())
    }
}

/// One value a peer adds to a job's document (its spec, a stage output, a
/// candidate, a ballot, the outcome). Signed by its author, so a replica can
/// check it however it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobContribution {
    pub job: JobId,
    pub author: NodeId,
    /// What this is, e.g. `spec`, `candidate`, `ballot`; at most 64 bytes of
    /// `[a-z0-9_.-]`.
    pub kind: String,
    pub body: Vec<u8>,
}

/// Longest contribution kind.
pub const MAX_KIND_BYTES: usize = 64;

impl SignedMessage for JobContribution {
    const DOMAIN: Domain = Domain::JOB_CONTRIBUTION;

    fn author(&self) -> NodeId {
        self.author
    }

    fn validate(&self) -> Result<(), MessageError> {
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c);
        if self.kind.is_empty() || self.kind.len() > MAX_KIND_BYTES || !self.kind.chars().all(allowed) {
            return Err(MessageError::Invalid {
                field: "kind",
                reason: format!("{:?} is not 1 to {MAX_KIND_BYTES} bytes of [a-z0-9_.-]", self.kind),
            });
        }
        Ok(())
    }
}

/// A job's identifier: 16 random bytes chosen by the asker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub [u8; 16]);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::identity::hex(&self.0))
    }
}

/// Text that `JobId::from_str` refused: a job id is exactly 32 hex digits
/// (16 bytes), as `Display` writes them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job id {text:?} is not 32 hex digits")]
pub struct InvalidJobId {
    /// The text as given.
    pub text: String,
}

impl std::str::FromStr for JobId {
    type Err = InvalidJobId;

    /// 32 hex digits, as `Display` writes them.
    fn from_str(text: &str) -> Result<Self, InvalidJobId> {
        let bytes = hex_decode(text).ok_or_else(|| InvalidJobId { text: text.to_string() })?;
        Ok(Self(bytes))
    }
}

fn hex_decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// How a job's ballots are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TallyRule {
    Plurality,
    WeightedPlurality,
    Approval,
    Borda,
    Schulze,
}

impl TallyRule {
    /// The name `FromStr` reads back (and `hivemesh tally --rule` takes).
    pub fn name(self) -> &'static str {
        match self {
            Self::Plurality => "plurality",
            Self::WeightedPlurality => "weighted",
            Self::Approval => "approval",
            Self::Borda => "borda",
            Self::Schulze => "schulze",
        }
    }
}

/// A name `TallyRule::from_str` does not know. It takes the names
/// [`TallyRule::name`] writes, plus `weighted-plurality` and `condorcet`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rule {name:?}: use plurality, weighted, approval, borda or schulze")]
pub struct UnknownTallyRule {
    /// The name as given.
    pub name: String,
}

impl std::str::FromStr for TallyRule {
    type Err = UnknownTallyRule;

    fn from_str(text: &str) -> Result<Self, UnknownTallyRule> {
        Ok(match text {
            "plurality" => Self::Plurality,
            "weighted" | "weighted-plurality" => Self::WeightedPlurality,
            "approval" => Self::Approval,
            "borda" => Self::Borda,
            "schulze" | "condorcet" => Self::Schulze,
            other => return Err(UnknownTallyRule { name: other.to_string() }),
        })
    }
}

/// What a voter chose, by candidate index within the job.
///
/// Ballot format versions (docs/adr/0013-weak-orders-and-schulze-ties.md):
/// - v1: `Single`, `Approve`, `Rank`.
/// - v2: adds `RankGroups`, as a new last variant, so every v1 ballot keeps
///   its bytes and signature (postcard encodes the variant index, 0 to 3). A
///   v1 node cannot decode variant 3 and rejects a v2 ballot as malformed
///   (a codec error); it never counts it as something else.
///
/// New variants must only ever be appended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BallotChoice {
    /// One candidate (plurality, weighted plurality).
    Single(u32),
    /// Every candidate the voter accepts (approval).
    Approve(Vec<u32>),
    /// Candidates best first (Borda, Schulze); unranked ones come last, tied.
    Rank(Vec<u32>),
    /// A weak order (Borda, Schulze; format v2): groups of candidates best
    /// first, the members of one group tied, unranked candidates tied last
    /// below every group. No empty group, no candidate twice across the
    /// groups, at most [`MAX_CANDIDATES`] candidates in all. `Rank(v)` means
    /// the same as `RankGroups` with one candidate per group.
    RankGroups(Vec<Vec<u32>>),
}

/// A voter's signed ballot for one job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ballot {
    pub job: JobId,
    pub voter: NodeId,
    pub rule: TallyRule,
    pub choice: BallotChoice,
    /// Used by weighted rules; must be 1 elsewhere so ballots stay canonical.
    pub weight: u32,
}

impl SignedMessage for Ballot {
    const DOMAIN: Domain = Domain::BALLOT;

    fn author(&self) -> NodeId {
        self.voter
    }

    fn validate(&self) -> Result<(), MessageError> {
        let shape_ok = matches!(
            (self.rule, &self.choice),
            (TallyRule::Plurality | TallyRule::WeightedPlurality, BallotChoice::Single(_))
                | (TallyRule::Approval, BallotChoice::Approve(_))
                | (
                    TallyRule::Borda | TallyRule::Schulze,
                    BallotChoice::Rank(_) | BallotChoice::RankGroups(_)
                )
        );
        if !shape_ok {
            return Err(invalid("choice", format!("{:?} ballots cannot carry {:?}", self.rule, self.choice)));
        }
        match (self.rule, self.weight) {
            (TallyRule::WeightedPlurality, 0) => return Err(invalid("weight", "must be at least 1".into())),
            (TallyRule::WeightedPlurality, _) | (_, 1) => {}
            (_, w) => return Err(invalid("weight", format!("must be 1 for unweighted rules, got {w}"))),
        }
        let (field, count) = match &self.choice {
            BallotChoice::Single(_) => return Ok(()),
            BallotChoice::Approve(list) | BallotChoice::Rank(list) => ("choice", list.len()),
            BallotChoice::RankGroups(groups) => {
                if let Some(empty) = groups.iter().position(Vec::is_empty) {
                    return Err(invalid("choice.groups", format!("group {empty} is empty")));
                }
                ("choice.groups", groups.iter().map(Vec::len).sum())
            }
        };
        if count > MAX_CANDIDATES {
            let what = if field == "choice" { "" } else { " in all groups" };
            return Err(invalid(field, format!("{count} candidates{what}, limit {MAX_CANDIDATES}")));
        }
        let named: &mut dyn Iterator<Item = u32> = match &self.choice {
            BallotChoice::Approve(list) | BallotChoice::Rank(list) => &mut list.iter().copied(),
            BallotChoice::RankGroups(groups) => &mut groups.iter().flatten().copied(),
            BallotChoice::Single(_) => return Ok(()),
        };
        match first_repeat(named) {
            Some(c) => Err(invalid(field, format!("candidate {c} appears twice"))),
            None => Ok(()),
        }
    }
}

/// A candidate named twice, if any. A bitmap for indices below
/// [`MAX_CANDIDATES`] (no allocation: this runs for every ballot opened);
/// larger indices, which no job accepts, are sorted and compared.
fn first_repeat(named: &mut dyn Iterator<Item = u32>) -> Option<u32> {
    let mut seen = [0u64; MAX_CANDIDATES / 64];
    let mut large: Vec<u32> = Vec::new();
    for c in named {
        match seen.get_mut(c as usize / 64) {
            Some(word) => {
                let bit = 1u64 << (c % 64);
                if *word & bit != 0 {
                    return Some(c);
                }
                *word |= bit;
            }
            None => large.push(c),
        }
    }
    large.sort_unstable();
    large.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

fn invalid(field: &'static str, reason: String) -> MessageError {
    MessageError::Invalid { field, reason }
}

fn check_strings(field: &'static str, values: &[String], max_count: usize) -> Result<(), MessageError> {
    if values.len() > max_count {
        return Err(invalid(field, format!("{} items, limit {max_count}", values.len())));
    }
    if let Some(long) = values.iter().find(|s| s.len() > MAX_STRING_BYTES) {
        return Err(invalid(field, format!("an item of {} bytes, limit {MAX_STRING_BYTES}", long.len())));
    }
    Ok(())
}
