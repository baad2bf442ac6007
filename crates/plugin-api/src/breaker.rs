//! A per-plugin circuit breaker: after `threshold` consecutive failures (traps,
//! timeouts, invalid output) the plugin is not called for `cooldown`; then one probe
//! call decides whether it closes again.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    epoch: Instant,
    failures: AtomicU32,
    /// Nanoseconds since `epoch` until which the circuit is open; 0 when closed.
    open_until: AtomicU64,
    trips: AtomicU64,
}

impl Breaker {
    /// A closed breaker.
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            trips: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Whether a call may go ahead. While open, false; once the cooldown is over, the
    /// first caller gets through as a probe (the circuit stays open for the others).
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until.load(Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now();
        if now < until {
            return false;
        }
        // Half-open: let one probe through by pushing the deadline out again.
        let next = now + self.cooldown.as_nanos() as u64;
        self.open_until
            .compare_exchange(until, next.max(1), Relaxed, Relaxed)
            .is_ok()
    }

    /// A call succeeded: close.
    pub(crate) fn on_success(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if self.open_until.load(Relaxed) != 0 {
            self.open_until.store(0, Relaxed);
        }
    }

    /// A call failed: count, and open at the threshold.
    pub(crate) fn on_failure(&self) {
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        if n >= self.threshold {
            let until = self.now() + self.cooldown.as_nanos() as u64;
            if self.open_until.swap(until.max(1), Relaxed) == 0 {
                self.trips.fetch_add(1, Relaxed);
            }
        }
    }

    /// Whether the circuit is open now.
    pub(crate) fn is_open(&self) -> bool {
        let until = self.open_until.load(Relaxed);
        until != 0 && self.now() < until
    }

    /// How many times it opened.
    pub(crate) fn trips(&self) -> u64 {
        self.trips.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(2, Duration::from_millis(20));
        b.on_failure();
        assert!(b.allow());
        b.on_failure();
        assert!(!b.allow());
        assert_eq!(b.trips(), 1);
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.allow(), "one probe");
        assert!(!b.allow(), "only one");
        b.on_success();
        assert!(b.allow());
    }
}
