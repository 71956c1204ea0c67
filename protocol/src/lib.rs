//! The hivemesh wire protocol: node identity, signed envelopes, message
//! types, framing and limits.
//!
//! Sans-IO: nothing here opens a socket, spawns a task or reads a clock.
//! Callers pass bytes and the current time in, and get values or errors out,
//! which is what lets the same code run in the node and in the simulation.

pub mod codec;
pub mod envelope;
pub mod identity;
pub mod limits;
pub mod messages;
pub mod replay;
pub mod trust;
pub mod verifier;

pub use codec::{CodecError, FrameDecoder, decode_frame, decode_message, encode_frame, encode_message};
pub use envelope::{Domain, Envelope, EnvelopeError, PROTOCOL_VERSION};
pub use identity::{InvalidNodeId, KeyError, NodeId, NodeIdentity};
pub use libp2p_identity::PeerId;
pub use messages::{
    Ballot, BallotChoice, Capabilities, GpuInfo, InvalidJobId, JobContribution, JobId, MessageError,
    PeerEntry, Role, SignedMessage, TallyRule, UnknownTallyRule, open, seal,
};
pub use trust::{Equivocation, EquivocationProof, ForceLeave, ProofError};
pub use verifier::{Verifier, VerifyPolicy, verify_batch_stateless};
