//! Signed envelopes: every message another peer acts on travels in one.
//!
//! The signature covers a domain-separated encoding of every header field and
//! the payload, so a signature made for one kind of message (say, a ballot)
//! can never be replayed as another (say, a registry entry).

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::identity::{NodeId, NodeIdentity};
use crate::limits::MAX_PAYLOAD_BYTES;

/// The only envelope version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Prefix of every signed byte string; keeps hivemesh signatures apart from
/// signatures the same key might make in any other protocol.
const SIGNING_CONTEXT: &[u8] = b"hivemesh/envelope\0";

/// What kind of message an envelope carries. Part of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Domain(pub u16);

impl Domain {
    pub const PEER_ENTRY: Domain = Domain(1);
    pub const BALLOT: Domain = Domain(2);
    pub const JOB_CONTRIBUTION: Domain = Domain(3);
    /// A signed force-leave claim (`crate::trust::ForceLeave`).
    pub const FORCE_LEAVE: Domain = Domain(4);

    pub fn name(self) -> &'static str {
        match self {
            Domain::PEER_ENTRY => "peer-entry",
            Domain::BALLOT => "ballot",
            Domain::JOB_CONTRIBUTION => "job-contribution",
            Domain::FORCE_LEAVE => "force-leave",
            _ => "unknown",
        }
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// A signed message as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u8,
    pub domain: Domain,
    pub sender: NodeId,
    /// Strictly increasing per sender; what the replay window checks.
    pub seq: u64,
    /// Sender's wall clock in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub payload: Vec<u8>,
    pub signature: Signature,
}

/// Why an envelope was rejected. One variant per reason, so counters and logs
/// can say exactly what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("unknown envelope version {got} (this node speaks {supported})")]
    UnknownVersion { got: u8, supported: u8 },
    #[error("wrong domain: expected {expected}, got {got}")]
    WrongDomain { expected: Domain, got: Domain },
    #[error("payload of {size} bytes exceeds the limit of {max}")]
    PayloadTooLarge { size: usize, max: usize },
    #[error("sender {0:?} is not a valid ed25519 public key")]
    InvalidSender(NodeId),
    #[error("bad signature from {0}")]
    BadSignature(NodeId),
    #[error("replayed envelope: {sender} already sent sequence {seq}")]
    Replayed { sender: NodeId, seq: u64 },
    #[error("sequence {seq} from {sender} is below the replay window (oldest accepted: {oldest})")]
    SequenceTooOld { sender: NodeId, seq: u64, oldest: u64 },
    #[error("envelope timestamp {timestamp_ms} is more than {max_age_ms} ms older than now ({now_ms})")]
    Expired { timestamp_ms: u64, now_ms: u64, max_age_ms: u64 },
    #[error("envelope timestamp {timestamp_ms} is more than {max_skew_ms} ms ahead of now ({now_ms})")]
    FromTheFuture { timestamp_ms: u64, now_ms: u64, max_skew_ms: u64 },
}

impl EnvelopeError {
    /// A short stable label, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownVersion { .. } => "unknown_version",
            Self::WrongDomain { .. } => "wrong_domain",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::InvalidSender(_) => "invalid_sender",
            Self::BadSignature(_) => "bad_signature",
            Self::Replayed { .. } => "replayed",
            Self::SequenceTooOld { .. } => "sequence_too_old",
            Self::Expired { .. } => "expired",
            Self::FromTheFuture { .. } => "from_the_future",
        }
    }
}

impl Envelope {
    /// Signs `payload` as `identity`. Refuses payloads over the limit so a node
    /// never emits what its peers would reject.
    pub fn seal(
        identity: &NodeIdentity,
        domain: Domain,
        seq: u64,
        timestamp_ms: u64,
        payload: Vec<u8>,
    ) -> Result<Self, EnvelopeError> {
        check_payload_size(payload.len())?;
        let sender = identity.node_id();
        let bytes = signing_bytes(PROTOCOL_VERSION, domain, &sender, seq, timestamp_ms, &payload);
        let signature = identity.sign(&bytes);
        Ok(Self { version: PROTOCOL_VERSION, domain, sender, seq, timestamp_ms, payload, signature })
    }

    /// The exact bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        signing_bytes(self.version, self.domain, &self.sender, self.seq, self.timestamp_ms, &self.payload)
    }

    /// Stateless checks: version, domain, size, signature. Replay and age
    /// checks need state and a clock; see [`crate::Verifier`].
    pub fn verify_stateless(&self, expected: Domain) -> Result<(), EnvelopeError> {
        self.check_header(expected)?;
        let key = self.sender_key()?;
        key.verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| EnvelopeError::BadSignature(self.sender))
    }

    pub(crate) fn check_header(&self, expected: Domain) -> Result<(), EnvelopeError> {
        if self.version != PROTOCOL_VERSION {
            return Err(EnvelopeError::UnknownVersion { got: self.version, supported: PROTOCOL_VERSION });
        }
        if self.domain != expected {
            return Err(EnvelopeError::WrongDomain { expected, got: self.domain });
        }
        check_payload_size(self.payload.len())
    }

    pub(crate) fn sender_key(&self) -> Result<VerifyingKey, EnvelopeError> {
        self.sender.verifying_key().map_err(|_| EnvelopeError::InvalidSender(self.sender))
    }
}

fn check_payload_size(size: usize) -> Result<(), EnvelopeError> {
    if size > MAX_PAYLOAD_BYTES {
        return Err(EnvelopeError::PayloadTooLarge { size, max: MAX_PAYLOAD_BYTES });
    }
    Ok(())
}

fn signing_bytes(
    version: u8,
    domain: Domain,
    sender: &NodeId,
    seq: u64,
    timestamp_ms: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNING_CONTEXT.len() + 1 + 2 + 32 + 8 + 8 + 8 + payload.len());
    out.extend_from_slice(SIGNING_CONTEXT);
    out.push(version);
    out.extend_from_slice(&domain.0.to_be_bytes());
    out.extend_from_slice(&sender.0);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(payload);
    out
}
