//! Bootstrap addresses given without a PeerId: dialled with backoff until a
//! connection reveals who is there; then membership takes over.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use backon::ExponentialBackoff;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;

use hivemesh_protocol::identity::NodeId;

/// Splits `/…/p2p/<peer>` into the transport address and the node.
pub fn split_peer(addr: &Multiaddr) -> (Multiaddr, Option<NodeId>) {
    let mut transport = addr.clone();
    match transport.pop() {
        Some(Protocol::P2p(peer)) => (transport, NodeId::from_peer_id(&peer).ok()),
        _ => (addr.clone(), None),
    }
}

struct Pending {
    address: Multiaddr,
    backoff: ExponentialBackoff,
    next_attempt: Instant,
}

/// Addresses whose node is not known yet.
#[derive(Default)]
pub struct UnresolvedBootstrap {
    pending: Vec<Pending>,
    /// Dials in flight: the address and the wait before the next attempt,
    /// so a failure can be reported as the user wrote it.
    dialing: HashMap<ConnectionId, (Multiaddr, Duration)>,
}

impl UnresolvedBootstrap {
    pub fn add(&mut self, address: Multiaddr, backoff: ExponentialBackoff, now: Instant) {
        self.pending.push(Pending { address, backoff, next_attempt: now });
    }

    /// Addresses to dial now; each is rescheduled with its backoff.
    pub fn due(&mut self, now: Instant) -> Vec<(Multiaddr, Duration)> {
        let mut due = Vec::new();
        for p in &mut self.pending {
            if p.next_attempt <= now {
                let wait = p.backoff.next().unwrap_or(Duration::from_secs(30));
                p.next_attempt = now + wait;
                due.push((p.address.clone(), wait));
            }
        }
        due
    }

    /// A dial of `address` is under way as `connection`.
    pub fn dialing(&mut self, connection: ConnectionId, address: Multiaddr, retry_in: Duration) {
        self.dialing.insert(connection, (address, retry_in));
    }

    /// The dial `connection` ended; if it was a bootstrap dial, its address
    /// and the wait before the next attempt.
    pub fn dial_ended(&mut self, connection: ConnectionId) -> Option<(Multiaddr, Duration)> {
        self.dialing.remove(&connection)
    }

    /// A connection was made by dialling `address`: it is resolved.
    pub fn resolve(&mut self, address: &Multiaddr) -> bool {
        let before = self.pending.len();
        self.pending.retain(|p| &p.address != address);
        before != self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}
