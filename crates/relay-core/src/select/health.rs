//! Channel health: a consecutive-failure circuit breaker and a latency EWMA.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Consecutive upstream failures that open a channel's circuit.
pub const FAILURE_THRESHOLD: u32 = 5;
/// How long an open circuit keeps a channel out of selection (then one probe is let
/// through; a success closes it, a failure opens it again).
pub const OPEN_FOR: Duration = Duration::from_secs(30);

/// Milliseconds since the process started (monotonic).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Shared by every channel of a routing table: the latest time any circuit stays open,
/// so selection can skip all health checks while no circuit is open.
#[derive(Debug, Default)]
pub struct HealthBoard {
    open_until_max: AtomicU64,
}

impl HealthBoard {
    /// Whether some circuit may be open now.
    pub fn any_open(&self, now: u64) -> bool {
        self.open_until_max.load(Ordering::Relaxed) > now
    }

    /// The time of day only matters once a circuit has opened: `None` while none ever
    /// has (no clock read on the hot path), else whether one may be open now.
    pub fn open_now(&self) -> Option<u64> {
        let until = self.open_until_max.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let now = now_ms();
        (until > now).then_some(now)
    }
}

/// One channel's health.
#[derive(Debug, Default)]
pub struct Health {
    failures: AtomicU32,
    open_until: AtomicU64,
    latency_ewma_us: AtomicU64,
}

impl Health {
    /// Whether the circuit is open at `now` (from [`now_ms`]).
    pub fn is_open(&self, now: u64) -> bool {
        self.open_until.load(Ordering::Relaxed) > now
    }

    /// Consecutive failures so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Smoothed time to response head, in microseconds (0 before any success).
    pub fn latency_ewma_us(&self) -> u64 {
        self.latency_ewma_us.load(Ordering::Relaxed)
    }

    /// Record a success and its time to the response head.
    pub fn on_success(&self, latency: Duration) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Relaxed) != 0 {
            self.open_until.store(0, Ordering::Relaxed);
        }
        let sample = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.latency_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.latency_ewma_us.store(new, Ordering::Relaxed);
    }

    /// Record an upstream failure; opens the circuit at the threshold.
    pub fn on_failure(&self, board: &HealthBoard) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURE_THRESHOLD {
            let until = now_ms() + OPEN_FOR.as_millis() as u64;
            self.open_until.store(until, Ordering::Relaxed);
            board.open_until_max.fetch_max(until, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_threshold_and_closes_on_success() {
        let board = HealthBoard::default();
        let h = Health::default();
        for _ in 0..FAILURE_THRESHOLD - 1 {
            h.on_failure(&board);
        }
        assert!(!h.is_open(now_ms()));
        h.on_failure(&board);
        assert!(h.is_open(now_ms()));
        assert!(board.any_open(now_ms()));
        h.on_success(Duration::from_millis(3));
        assert!(!h.is_open(now_ms()));
        assert_eq!(h.latency_ewma_us(), 3000);
    }
}
