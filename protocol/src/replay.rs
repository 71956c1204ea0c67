//! Per-sender sliding replay window (the IPsec / WireGuard scheme): accepts
//! each sequence number once, tolerates reordering within the window, and
//! keeps O(1) state per sender.

use crate::limits::REPLAY_WINDOW;

/// Outcome of looking a sequence number up without recording it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayCheck {
    Fresh,
    Replayed,
    /// Below the window; carries the oldest sequence still accepted.
    TooOld {
        oldest: u64,
    },
}

/// Window of the last [`REPLAY_WINDOW`] sequence numbers seen from one sender.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// Highest sequence accepted so far (None until the first one).
    highest: Option<u64>,
    /// Bit i set: sequence `highest - i` was seen.
    seen: u128,
}

const _: () = assert!(REPLAY_WINDOW == u128::BITS as u64);

impl ReplayWindow {
    pub fn check(&self, seq: u64) -> ReplayCheck {
        let Some(highest) = self.highest else { return ReplayCheck::Fresh };
        if seq > highest {
            return ReplayCheck::Fresh;
        }
        let age = highest - seq;
        if age >= REPLAY_WINDOW {
            return ReplayCheck::TooOld { oldest: highest + 1 - REPLAY_WINDOW };
        }
        if self.seen & (1u128 << age) != 0 { ReplayCheck::Replayed } else { ReplayCheck::Fresh }
    }

    /// Records `seq`; call only after [`Self::check`] said `Fresh` and the
    /// signature verified, so forgeries cannot burn sequence numbers.
    pub fn record(&mut self, seq: u64) {
        match self.highest {
            None => {
                self.highest = Some(seq);
                self.seen = 1;
            }
            Some(highest) if seq > highest => {
                let shift = seq - highest;
                self.seen = if shift >= REPLAY_WINDOW { 0 } else { self.seen << shift };
                self.seen |= 1;
                self.highest = Some(seq);
            }
            Some(highest) => {
                let age = highest - seq;
                if age < REPLAY_WINDOW {
                    self.seen |= 1u128 << age;
                }
            }
        }
    }
}
