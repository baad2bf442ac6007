//! Per-plugin limits: memory, time per hook, output size, log rate.

use std::time::Duration;

use serde::Deserialize;

/// What one plugin may use. The operator sets these per plugin in the registry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Linear memory of one instance, in bytes (a `memory.grow` past it fails).
    pub memory_bytes: usize,
    /// Wall time of one hook call, in milliseconds (rounded up to the epoch tick).
    pub hook_deadline_ms: u64,
    /// Largest decision a hook may return (patches, replacements, replies), in bytes.
    pub max_output_bytes: usize,
    /// Log lines (host `log` and guest stdout/stderr) per second; more are dropped.
    pub log_lines_per_sec: u32,
    /// Consecutive failures (traps, timeouts) that open the plugin's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit stays open before a probe call.
    pub breaker_cooldown_ms: u64,
    /// Run the hooks of a plugin that declares itself stateless in warm, reused
    /// instances (the default). `false` gives it a fresh instance per request anyway:
    /// the operator's choice when a plugin's claim is not trusted.
    pub reuse_instances: bool,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory_bytes: 32 * 1024 * 1024,
            hook_deadline_ms: 10,
            max_output_bytes: 1024 * 1024,
            log_lines_per_sec: 50,
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
            reuse_instances: true,
        }
    }
}

impl PluginLimits {
    /// The hook deadline.
    pub fn hook_deadline(&self) -> Duration {
        Duration::from_millis(self.hook_deadline_ms.max(1))
    }
}
