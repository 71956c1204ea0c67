//! What the membership machine reports: member views, events and counters.

use std::collections::BTreeMap;

use hivemesh_protocol::identity::NodeId;
use serde::Serialize;

use super::member_id::MemberId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
    /// Down after saying goodbye (a graceful leave).
    Left,
}

impl MemberState {
    pub fn label(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
            Self::Left => "left",
        }
    }
}

#[derive(Clone, Debug)]
pub struct MemberView {
    pub id: MemberId,
    pub state: MemberState,
    /// SWIM incarnation: bumped by the member to refute a suspicion.
    pub incarnation: u16,
    /// When this node last saw the member come up, go down or leave
    /// (milliseconds on the caller's clock; 0 when never).
    pub changed_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    Up(MemberId),
    Down(MemberId),
    Left(MemberId),
    Renamed {
        old: MemberId,
        new: MemberId,
    },
    /// This node is now known by at least one member.
    Joined,
    /// Every known member is down or gone.
    Alone,
    /// This node was declared down and came back under a new generation.
    Rejoined(MemberId),
    /// This node was declared down and cannot rejoin by itself.
    Defunct,
}

/// Why an incoming frame was dropped.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RejectReason {
    #[error("membership frame of {0} bytes exceeds the packet limit")]
    Oversized(usize),
    #[error("malformed membership frame: {0}")]
    Malformed(String),
    #[error("SWIM packet claims to be from {claimed} but arrived from {actual}")]
    SpoofedSender { claimed: NodeId, actual: NodeId },
    #[error("SWIM refused the packet: {0}")]
    Swim(String),
}

impl RejectReason {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Oversized(_) => "oversized",
            Self::Malformed(_) => "malformed",
            Self::SpoofedSender { .. } => "spoofed_sender",
            Self::Swim(_) => "swim",
        }
    }
}

/// Traffic and rejection counters (membership frames only, not transport
/// overhead).
#[derive(Clone, Debug, Default, Serialize)]
pub struct MembershipStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    /// Lifeguard (docs/adr/0022-lifeguard.md): suspicions this node timed.
    pub suspicions: u64,
    /// Suspicions this node confirmed (its own probe or check failed).
    pub suspicions_claimed: u64,
    /// Suspicions that ended because the suspect refuted.
    pub suspicions_refuted: u64,
    /// Members this node declared down when a suspicion timed out.
    pub suspicions_expired: u64,
    /// Suspicions that ended otherwise: the member was declared down by
    /// another member, or its refutation arrived through gossip.
    pub suspicions_ended_elsewhere: u64,
    /// Times this node raised its incarnation to refute a suspicion of itself.
    pub self_refutations: u64,
}
