//! The wall clock the node reads, in Unix milliseconds, and the one test-only
//! way to shift it.
//!
//! A real clock can be wrong by hours (a host whose RTC was reset, a VM
//! restored from a snapshot). To test that a node restarted with its clock
//! behind is not locked out, a test process sets
//! [`TEST_CLOCK_OFFSET_ENV`]; nothing else reads it, and nothing outside tests
//! should set it.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// TEST ONLY: signed milliseconds added to every wall-clock reading of this
/// process (e.g. `-3600000` for a clock one hour behind). Read once, at the
/// first reading; unset, empty or unparsable means 0.
pub const TEST_CLOCK_OFFSET_ENV: &str = "HIVEMESH_TEST_CLOCK_OFFSET_MS";

/// Unix time in milliseconds as this node sees it: the system clock plus the
/// test-only offset (0 outside tests). 0 for a clock before 1970.
pub fn unix_ms() -> u64 {
    let system = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    shifted(system, test_offset_ms())
}

/// The test-only offset in milliseconds; see [`TEST_CLOCK_OFFSET_ENV`].
pub fn test_offset_ms() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let offset =
            std::env::var(TEST_CLOCK_OFFSET_ENV).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        if offset != 0 {
            tracing::warn!(
                offset_ms = offset,
                "TEST ONLY: the wall clock is shifted by {TEST_CLOCK_OFFSET_ENV}"
            );
        }
        offset
    })
}

fn shifted(ms: u64, offset: i64) -> u64 {
    ms.saturating_add_signed(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_shifts_the_reading_and_saturates() {
        assert_eq!(shifted(10_000, -3_000), 7_000);
        assert_eq!(shifted(10_000, 3_000), 13_000);
        assert_eq!(shifted(1_000, -3_000), 0);
    }
}
