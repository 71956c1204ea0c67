//! The asker's view of which peers have been failing a model: one circuit
//! breaker per (peer, model), the same failsafe-based breaker that guards
//! each provider (`hivemesh_llm::breaker`, ADR 0008). A peer whose breaker
//! is open is tried only after every other candidate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hivemesh_llm::breaker::{Breaker, BreakerState, Permit};
use libp2p::PeerId;

/// Consecutive failures that open a peer's breaker for a model.
pub const FAILURES_TO_OPEN: u32 = 3;
/// How long it stays open before one probe request is let through.
pub const OPEN_FOR: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct PeerBreakers {
    breakers: Mutex<HashMap<(PeerId, String), Breaker>>,
}

impl PeerBreakers {
    fn breaker(&self, peer: PeerId, model: &str) -> Breaker {
        let mut breakers = self.breakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        breakers
            .entry((peer, model.to_string()))
            .or_insert_with(|| Breaker::new(FAILURES_TO_OPEN, OPEN_FOR))
            .clone()
    }

    /// Permission to try `peer` for `model`; `None` while its breaker is
    /// open (or another request is its half-open probe).
    pub fn try_acquire(&self, peer: PeerId, model: &str) -> Option<Permit> {
        self.breaker(peer, model).try_acquire()
    }

    pub fn state(&self, peer: PeerId, model: &str) -> BreakerState {
        self.breaker(peer, model).state()
    }
}
