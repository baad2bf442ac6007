//! Per-plugin metrics: calls, errors, timeouts, a latency histogram, and the counters a
//! plugin declares. Lock-free on the hot path (atomics only).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (µs) of the latency histogram's buckets; the last bucket is open.
pub const LATENCY_BUCKETS_US: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 1_000, 10_000, 100_000];

/// One plugin's metrics.
#[derive(Debug)]
pub(crate) struct PluginMetrics {
    calls: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    rejected_open: AtomicU64,
    logs_dropped: AtomicU64,
    instances: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_ns_total: AtomicU64,
    declared: Vec<(String, AtomicU64)>,
}

/// A copy of one plugin's metrics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Hook calls made (successful or not).
    pub calls: u64,
    /// Calls that trapped or returned something invalid.
    pub errors: u64,
    /// Calls stopped at their deadline.
    pub timeouts: u64,
    /// Calls not made because the circuit was open.
    pub rejected_open: u64,
    /// Log lines dropped by the rate limit.
    pub logs_dropped: u64,
    /// Call counts per latency bucket (upper bounds in [`LATENCY_BUCKETS_US`], then
    /// one open bucket).
    pub latency_buckets: Vec<u64>,
    /// Mean call latency, in nanoseconds.
    pub mean_latency_ns: u64,
    /// Total call latency, in nanoseconds.
    pub latency_ns_total: u64,
    /// Instances made (a fresh one per request, or the warm ones of a stateless
    /// plugin; `calls / instances` is the reuse).
    pub instances: u64,
    /// The plugin's declared counters.
    pub counters: Vec<(String, u64)>,
}

impl PluginMetrics {
    /// Metrics with these declared counter names.
    pub(crate) fn new(declared: &[String]) -> Self {
        PluginMetrics {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            rejected_open: AtomicU64::new(0),
            logs_dropped: AtomicU64::new(0),
            instances: AtomicU64::new(0),
            buckets: Default::default(),
            latency_ns_total: AtomicU64::new(0),
            declared: declared
                .iter()
                .map(|n| (n.clone(), AtomicU64::new(0)))
                .collect(),
        }
    }

    /// A call finished after `took`.
    pub(crate) fn on_call(&self, took: Duration) {
        self.calls.fetch_add(1, Relaxed);
        let us = took.as_micros() as u64;
        let slot = LATENCY_BUCKETS_US
            .iter()
            .position(|b| us < *b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        if let Some(b) = self.buckets.get(slot) {
            b.fetch_add(1, Relaxed);
        }
        self.latency_ns_total
            .fetch_add(took.as_nanos() as u64, Relaxed);
    }

    /// A call trapped or returned something invalid.
    pub(crate) fn on_error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    /// A call hit its deadline.
    pub(crate) fn on_timeout(&self) {
        self.timeouts.fetch_add(1, Relaxed);
    }

    /// A call was skipped: the circuit is open.
    pub(crate) fn on_rejected(&self) {
        self.rejected_open.fetch_add(1, Relaxed);
    }

    /// An instance was made.
    pub(crate) fn on_instance(&self) {
        self.instances.fetch_add(1, Relaxed);
    }

    /// A log line was dropped.
    pub(crate) fn on_log_dropped(&self) {
        self.logs_dropped.fetch_add(1, Relaxed);
    }

    /// Add to a declared counter; false when `name` is not declared.
    pub(crate) fn add(&self, name: &str, delta: u64) -> bool {
        match self.declared.iter().find(|(n, _)| n == name) {
            Some((_, c)) => {
                c.fetch_add(delta, Relaxed);
                true
            }
            None => false,
        }
    }

    /// A copy of the current values.
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let calls = self.calls.load(Relaxed);
        let latency_ns_total = self.latency_ns_total.load(Relaxed);
        MetricsSnapshot {
            calls,
            errors: self.errors.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            rejected_open: self.rejected_open.load(Relaxed),
            logs_dropped: self.logs_dropped.load(Relaxed),
            instances: self.instances.load(Relaxed),
            latency_buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            mean_latency_ns: latency_ns_total.checked_div(calls).unwrap_or(0),
            latency_ns_total,
            counters: self
                .declared
                .iter()
                .map(|(n, c)| (n.clone(), c.load(Relaxed)))
                .collect(),
        }
    }
}
