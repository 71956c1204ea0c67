//! Where a restarted node's generation starts.
//!
//! Peers order the identities of one node by generation (see
//! [`super::MemberId`]) and keep a `down` identity for a long time (foca's
//! `remove_down_after`, a day): an identity whose generation is not above the
//! one they hold down is ignored, so the node never reappears. Starting from
//! the wall clock alone locks a node out when it restarts with its clock
//! behind its previous start. The generation is therefore persisted in the
//! data directory and a start takes the larger of the saved value plus one
//! and the clock (docs/adr/0015-multihost-test-bed-and-restart-generation.md).

/// The generation a node starts with: `max(saved + 1, now_ms)`, or `now_ms`
/// for a new data directory. `saved` is the highest generation this data
/// directory has used (a start or a rejoin); `now_ms` is Unix milliseconds.
pub fn start_generation(saved: Option<u64>, now_ms: u64) -> u64 {
    match saved {
        Some(saved) => now_ms.max(saved.saturating_add(1)),
        None => now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    #[test]
    fn a_new_data_directory_starts_from_the_clock() {
        assert_eq!(start_generation(None, 1_700_000_000_000), 1_700_000_000_000);
    }

    #[test]
    fn a_clock_behind_the_last_start_still_starts_above_it() {
        let first = 1_700_000_000_000;
        let restart = start_generation(Some(first), first - HOUR_MS);
        assert_eq!(restart, first + 1);
        // And again, still behind: each start is above the one before.
        assert_eq!(start_generation(Some(restart), first - HOUR_MS + 5), first + 2);
    }

    #[test]
    fn a_clock_ahead_of_the_last_start_is_used_as_it_is() {
        let first = 1_700_000_000_000;
        assert_eq!(start_generation(Some(first), first + HOUR_MS), first + HOUR_MS);
    }

    #[test]
    fn a_saved_maximum_does_not_overflow() {
        assert_eq!(start_generation(Some(u64::MAX), 5), u64::MAX);
    }
}
