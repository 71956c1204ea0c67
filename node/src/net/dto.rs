//! What the node reports about itself and its members: plain data the
//! driver fills in and the control API serialises (`/v1/members`,
//! `/v1/status`).

use std::collections::BTreeMap;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::membership::{MemberId, MemberView, MembershipStats};
use crate::replica::ReplicaStats;

/// One member as the control API reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemberInfo {
    pub peer_id: String,
    pub state: String,
    pub addresses: Vec<String>,
    pub incarnation: u16,
    /// Restart counter: the member's start time in ms, bumped on rejoin.
    pub generation: u64,
    /// Unix ms of the last up/down/left this node saw; 0 if none.
    pub last_change_ms: u64,
    /// How this node reaches the member now: the remote address of an open
    /// connection and who dialled (`/ip4/198.18.0.3/tcp/4001 (dialled)`);
    /// absent without a connection (a relayed path would show
    /// `/p2p-circuit` in the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl MemberInfo {
    pub(crate) fn from_view(view: &MemberView) -> Self {
        Self {
            peer_id: view.id.node.to_string(),
            state: view.state.label().to_string(),
            addresses: addresses_of(&view.id),
            incarnation: view.incarnation,
            generation: view.id.generation,
            last_change_ms: view.changed_at_ms,
            path: None,
        }
    }

    pub(crate) fn from_self(me: &MemberId) -> Self {
        Self {
            peer_id: me.node.to_string(),
            state: "alive".into(),
            addresses: addresses_of(me),
            incarnation: 0,
            generation: me.generation,
            last_change_ms: me.generation,
            path: None,
        }
    }
}

fn addresses_of(id: &MemberId) -> Vec<String> {
    id.addresses.iter().filter_map(|b| Multiaddr::try_from(b.clone()).ok()).map(|a| a.to_string()).collect()
}

/// This node and every member it knows, as `/v1/members?view=swim` lists them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MembersReport {
    pub me: MemberInfo,
    pub members: Vec<MemberInfo>,
}

impl MembersReport {
    /// How many members are in `state` (`alive`, `suspect`, `down`, `left`).
    pub fn count(&self, state: &str) -> usize {
        self.members.iter().filter(|m| m.state == state).count()
    }

    /// The state of `peer`; `None` when it is not a member here.
    pub fn state_of(&self, peer: &PeerId) -> Option<&str> {
        let peer = peer.to_string();
        self.members.iter().find(|m| m.peer_id == peer).map(|m| m.state.as_str())
    }
}

/// The node's status (`/v1/status`): identity, addresses, uptime in ms,
/// membership and replication counters.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub peer_id: String,
    pub listen: Vec<String>,
    pub api: Option<String>,
    pub uptime_ms: u64,
    pub active_members: usize,
    pub membership: MembershipStats,
    pub replication: ReplicaStats,
    /// Connections refused, by reason: `swarm_key` (a handshake failed on a
    /// node with a swarm key: no key or another one) and `not_allowed`
    /// (a peer not on the allowlist), ADR 0016.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    /// Fingerprint of the swarm key, when the node has one.
    pub swarm_key: Option<String>,
}
