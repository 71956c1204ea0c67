//! Lifeguard's suspicion rules on top of foca (Dadgar, Armon and Hayes,
//! "Lifeguard: Local Health Awareness for More Accurate Failure Detection",
//! 2018, arXiv:1707.00788; memberlist's `suspicion.go`), kept sans-IO.
//!
//! foca declares a suspect down after a fixed time, and only on the member
//! whose own probe failed. Here, as in Lifeguard:
//!
//! - every member that hears of a suspicion keeps its own suspicion timer,
//!   whose timeout shrinks from `max` to `min` as independent confirmations
//!   arrive: `max - (max - min) * ln(C + 1) / ln(K + 1)`, never below `min`
//!   (C confirmations heard, K expected);
//! - a confirmation is a member's claim that its own check of the suspect
//!   failed ([`SuspicionClaim`], gossiped as a foca custom broadcast, so one
//!   claim counts once however many members relay it);
//! - the buddy system: whoever suspects a member tells it directly (a
//!   `Suspect` notice), so a live member refutes at once instead of waiting
//!   to hear the gossip.
//!
//! One addition to Lifeguard: a member that hears a suspicion checks the
//! suspect itself with the same notice (answered by a `Refute` carrying the
//! refuting incarnation), and only an unanswered check becomes a claim. A
//! dead member is then confirmed by the whole cluster within one round trip
//! instead of one probe period per confirmation, so K is a share of the
//! cluster rather than Lifeguard's fixed 3. See docs/adr/0022-lifeguard.md.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{BroadcastHandler, Invalidates};
use hivemesh_protocol::identity::NodeId;
use lru::LruCache;
use serde::{Deserialize, Serialize};

use super::member_id::MemberId;

/// "My own check of `member` (at `generation`, `incarnation`) failed",
/// signed by nobody: see the ADR for what a lying member can and cannot do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct SuspicionClaim {
    pub by: NodeId,
    pub member: NodeId,
    pub generation: u64,
    pub incarnation: u16,
}

/// The broadcast key foca keeps in its queue: one entry per claim.
#[derive(Debug)]
pub(crate) struct ClaimKey(SuspicionClaim);

impl Invalidates for ClaimKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// A custom broadcast payload that is not a claim.
#[derive(Debug, thiserror::Error)]
#[error("malformed suspicion claim: {0}")]
pub struct ClaimError(#[from] postcard::Error);

/// Claims remembered to stop re-broadcasting them: enough for every member
/// of a large cluster to confirm a few suspicions at once.
const SEEN_CLAIMS: usize = 8192;

/// foca's broadcast handler: decodes claims, drops repeats, and hands new
/// ones to the machine through `inbox` (foca owns the handler, so the two
/// share the queue).
pub(crate) struct ClaimBroadcasts {
    seen: LruCache<SuspicionClaim, ()>,
    inbox: Arc<Mutex<Vec<SuspicionClaim>>>,
}

impl ClaimBroadcasts {
    pub(crate) fn new(inbox: Arc<Mutex<Vec<SuspicionClaim>>>) -> Self {
        let capacity = NonZeroUsize::new(SEEN_CLAIMS).unwrap_or(NonZeroUsize::MIN);
        Self { seen: LruCache::new(capacity), inbox }
    }
}

impl BroadcastHandler<MemberId> for ClaimBroadcasts {
    type Key = ClaimKey;
    type Error = ClaimError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&MemberId>,
    ) -> Result<Option<ClaimKey>, ClaimError> {
        let claim: SuspicionClaim = postcard::from_bytes(data)?;
        if self.seen.put(claim.clone(), ()).is_some() {
            return Ok(None);
        }
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.push(claim.clone());
        }
        Ok(Some(ClaimKey(claim)))
    }
}

/// Lifeguard's timeout: `max` with no confirmation, falling with the log of
/// the confirmations to `min` at `k` of them (memberlist `remainingSuspicionTime`).
pub fn suspicion_timeout(min: Duration, max: Duration, k: u32, confirmations: u32) -> Duration {
    if k == 0 || confirmations >= k || max <= min {
        return min;
    }
    let frac = f64::from(confirmations + 1).ln() / f64::from(k + 1).ln();
    max.saturating_sub((max - min).mul_f64(frac)).max(min)
}

/// One member under suspicion, as this node sees it.
#[derive(Debug)]
pub(crate) struct Suspicion {
    pub id: MemberId,
    pub incarnation: u16,
    pub started_ms: u64,
    /// Members that claimed their own check failed, this node included once
    /// it has claimed.
    pub confirmers: BTreeSet<NodeId>,
    /// foca's own down timer, held back when this node's probe failed.
    pub held: Option<foca::Timer<MemberId>>,
    /// This node has claimed (its own probe or check failed).
    pub claimed: bool,
    /// This node's direct check is waiting for a `Refute`.
    pub checking: bool,
}

impl Suspicion {
    pub fn new(id: MemberId, incarnation: u16, now_ms: u64) -> Self {
        Self {
            id,
            incarnation,
            started_ms: now_ms,
            confirmers: BTreeSet::new(),
            held: None,
            claimed: false,
            checking: false,
        }
    }

    /// Independent confirmations: claims by members other than the first
    /// suspecter, as Lifeguard counts them (the first claim starts the
    /// suspicion, the rest confirm it).
    pub fn confirmations(&self) -> u32 {
        u32::try_from(self.confirmers.len().saturating_sub(1)).unwrap_or(u32::MAX)
    }
}

/// Every suspicion this node is timing, by member.
#[derive(Debug, Default)]
pub(crate) struct Suspicions {
    pub records: HashMap<NodeId, Suspicion>,
}

impl Suspicions {
    /// The record for `id` at `incarnation`, started now when there is none
    /// or the one there is older (a lower incarnation or generation).
    pub fn entry(&mut self, id: &MemberId, incarnation: u16, now_ms: u64) -> Option<&mut Suspicion> {
        let fresh = match self.records.get(&id.node) {
            None => true,
            Some(s) => (s.id.generation, s.incarnation) < (id.generation, incarnation),
        };
        if fresh {
            self.records.insert(id.node, Suspicion::new(id.clone(), incarnation, now_ms));
        }
        self.records
            .get_mut(&id.node)
            .filter(|s| s.id.generation == id.generation && s.incarnation == incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_falls_from_max_to_min_with_the_log_of_confirmations() {
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(12));
        assert_eq!(suspicion_timeout(min, max, 3, 0), max);
        let one = suspicion_timeout(min, max, 3, 1);
        let two = suspicion_timeout(min, max, 3, 2);
        assert!(max > one && one > two && two > min, "{one:?} {two:?}");
        // ln 2 / ln 4 = 0.5: halfway.
        assert_eq!(one, Duration::from_secs(7));
        assert_eq!(suspicion_timeout(min, max, 3, 3), min);
        assert_eq!(suspicion_timeout(min, max, 3, 50), min);
        assert_eq!(suspicion_timeout(min, max, 0, 0), min, "no confirmation expected: min");
    }

    #[test]
    fn a_repeated_claim_is_neither_reported_nor_rebroadcast() {
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let mut handler = ClaimBroadcasts::new(inbox.clone());
        let claim =
            SuspicionClaim { by: NodeId([1; 32]), member: NodeId([2; 32]), generation: 7, incarnation: 3 };
        let bytes = postcard::to_stdvec(&claim).expect("encodes");
        assert!(handler.receive_item(&bytes, None).expect("valid").is_some());
        assert!(handler.receive_item(&bytes, None).expect("valid").is_none());
        assert_eq!(inbox.lock().expect("lock").as_slice(), &[claim]);
        assert!(handler.receive_item(&[0xff, 0xff, 0xff], None).is_err(), "garbage is an error");
    }

    #[test]
    fn a_newer_incarnation_restarts_the_record_and_an_older_one_is_ignored() {
        let id = MemberId::new(NodeId([9; 32]), 5, vec![]);
        let mut s = Suspicions::default();
        s.entry(&id, 2, 100).expect("new").confirmers.insert(NodeId([1; 32]));
        assert!(s.entry(&id, 1, 200).is_none(), "older incarnation");
        let newer = s.entry(&id, 3, 300).expect("newer");
        assert_eq!((newer.started_ms, newer.confirmers.len()), (300, 0));
    }
}
