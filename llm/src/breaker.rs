//! A circuit breaker per provider+model: failsafe's state machine, plus a
//! single-probe rule for half-open (failsafe alone lets every caller through).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use failsafe::backoff::{Constant, constant};
use failsafe::failure_policy::{ConsecutiveFailures, consecutive_failures};
use failsafe::{Config, Instrument, StateMachine};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Breaker states as reported in stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Clone, Default)]
struct StateTracker(Arc<AtomicU8>);

impl Instrument for StateTracker {
    fn on_call_rejected(&self) {}
    fn on_open(&self) {
        self.0.store(OPEN, Ordering::SeqCst);
    }
    fn on_half_open(&self) {
        self.0.store(HALF_OPEN, Ordering::SeqCst);
    }
    fn on_closed(&self) {
        self.0.store(CLOSED, Ordering::SeqCst);
    }
}

/// Opens for `open_for` after `failures` consecutive failures, then lets
/// exactly one probe call through; a failed probe opens it again.
#[derive(Clone)]
pub struct Breaker {
    machine: StateMachine<ConsecutiveFailures<Constant>, StateTracker>,
    state: StateTracker,
    probe_in_flight: Arc<AtomicBool>,
}

/// Permission to make one call; report its outcome, or drop it to abstain.
pub struct Permit {
    breaker: Breaker,
    is_probe: bool,
    settled: bool,
}

impl Breaker {
    pub fn new(failures: u32, open_for: Duration) -> Self {
        let state = StateTracker::default();
        let policy = consecutive_failures(failures.max(1), constant(open_for));
        let machine = Config::new().failure_policy(policy).instrument(state.clone()).build();
        Self { machine, state, probe_in_flight: Arc::new(AtomicBool::new(false)) }
    }

    pub fn state(&self) -> BreakerState {
        match self.state.0.load(Ordering::SeqCst) {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// `None` while open, and while another caller's half-open probe is running.
    pub fn try_acquire(&self) -> Option<Permit> {
        if !self.machine.is_call_permitted() {
            return None;
        }
        let is_probe = self.state() == BreakerState::HalfOpen;
        if is_probe && self.probe_in_flight.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(Permit { breaker: self.clone(), is_probe, settled: false })
    }
}

impl Permit {
    pub fn success(mut self) {
        self.breaker.machine.on_success();
        self.settle();
    }

    pub fn failure(mut self) {
        self.breaker.machine.on_error();
        self.settle();
    }

    fn settle(&mut self) {
        self.settled = true;
        if self.is_probe {
            self.breaker.probe_in_flight.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.settle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_then_lets_one_probe_through_and_closes_on_success() {
        let breaker = Breaker::new(2, Duration::from_millis(30));
        breaker.try_acquire().expect("closed").failure();
        breaker.try_acquire().expect("closed").failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.try_acquire().is_none(), "open breaker must refuse");
        std::thread::sleep(Duration::from_millis(40));
        let probe = breaker.try_acquire().expect("half-open probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.try_acquire().is_none(), "only one probe at a time");
        probe.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.try_acquire().is_some());
    }

    #[test]
    fn failed_probe_reopens() {
        let breaker = Breaker::new(1, Duration::from_millis(20));
        breaker.try_acquire().expect("closed").failure();
        std::thread::sleep(Duration::from_millis(30));
        breaker.try_acquire().expect("probe").failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.try_acquire().is_none());
    }
}
