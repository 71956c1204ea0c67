//! The identity foca gossips about: who a member is and how to reach it.

use hivemesh_protocol::identity::NodeId;
use serde::{Deserialize, Serialize};

/// At most this many listen addresses travel inside a member identity, so a
/// SWIM packet can still carry several membership updates.
pub const MAX_ADDRESSES_PER_MEMBER: usize = 6;

/// Longest accepted address (binary multiaddr form).
pub const MAX_ADDRESS_BYTES: usize = 128;

/// A member as SWIM sees it.
///
/// `node` is the stable name (foca's `Addr`): at most one identity per node is
/// kept. `generation` orders identities of the same node: a restarted process
/// starts from the wall clock in milliseconds, or just above the highest
/// generation its data directory used if the clock is behind that
/// ([`super::start_generation`]), and `renew` bumps it, so the newest one
/// always wins and a restarted node rejoins at once instead of waiting for
/// its old identity to be forgotten.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    pub node: NodeId,
    pub generation: u64,
    /// Listen addresses as binary multiaddrs; the I/O layer parses them.
    pub addresses: Vec<Vec<u8>>,
}

impl MemberId {
    pub fn new(node: NodeId, generation: u64, mut addresses: Vec<Vec<u8>>) -> Self {
        addresses.retain(|a| !a.is_empty() && a.len() <= MAX_ADDRESS_BYTES);
        addresses.truncate(MAX_ADDRESSES_PER_MEMBER);
        Self { node, generation, addresses }
    }

    /// An identity to announce to when only the node is known (a bootstrap
    /// address or an mDNS discovery): foca accepts an announce addressed to
    /// any identity of the receiving node.
    pub fn placeholder(node: NodeId, addresses: Vec<Vec<u8>>) -> Self {
        Self::new(node, 0, addresses)
    }
}

impl std::fmt::Debug for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.node, self.generation)
    }
}

impl foca::Identity for MemberId {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(Self { generation: self.generation.wrapping_add(1), ..self.clone() })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}
