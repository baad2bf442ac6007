use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a client names in `model`: an ordered list of items, tried in turn.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetConfig {
    /// The name clients use.
    pub name: String,
    /// Free text for `/v1/models` and the admin API.
    #[serde(default)]
    pub description: Option<String>,
    /// Items in failover order.
    pub items: Vec<PresetItem>,
}

/// One step of a preset: which channels, which model, how to retry.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetItem {
    /// Explicit channel ids.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Or every enabled channel in this group that serves the model.
    #[serde(default)]
    pub group: Option<String>,
    /// How to choose among them.
    #[serde(default)]
    pub strategy: Strategy,
    /// The model to ask for (before each channel's model map); the preset's name when
    /// absent.
    #[serde(default)]
    pub model: Option<String>,
    /// Overrides the default retry policy.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Overrides the default timeouts.
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    /// Plugins around each attempt: before-hooks run in this order, after and
    /// on-error hooks in reverse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginRef>,
}

/// One plugin of a preset item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// The plugin's registered name.
    pub name: String,
    /// The registered version; any registered version when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// This item's config for the plugin (any JSON; the plugin's `init` checks it).
    #[serde(default)]
    pub config: serde_json::Value,
    /// Off: the item runs as if the plugin were not listed.
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

/// How an item picks a channel for each attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Highest priority tier first, weighted random inside a tier.
    #[default]
    Weighted,
    /// Rotate through the channels in turn.
    RoundRobin,
    /// Always the first healthy channel in list order.
    Failover,
}

/// Retries inside one item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts per item, the first included (1 = no retry).
    pub max_attempts: u32,
    /// First backoff; doubles each retry, with full jitter.
    pub backoff_base_ms: u64,
    /// Largest backoff.
    pub backoff_max_ms: u64,
    /// A Retry-After longer than this is not waited for: the engine moves on instead.
    pub max_retry_after_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff_base_ms: 100,
            backoff_max_ms: 2_000,
            max_retry_after_ms: 10_000,
        }
    }
}

/// Timeouts of one attempt, and of the whole request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// From sending the request to the response head.
    pub first_byte_ms: u64,
    /// Streams: from sending the request to the first content event.
    pub first_token_ms: u64,
    /// Streams: the longest silence between two upstream frames.
    pub idle_ms: u64,
    /// The whole request, every attempt included.
    pub total_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            first_byte_ms: 60_000,
            first_token_ms: 60_000,
            idle_ms: 120_000,
            total_ms: 600_000,
        }
    }
}

impl Timeouts {
    /// First-byte timeout.
    pub fn first_byte(&self) -> Duration {
        Duration::from_millis(self.first_byte_ms)
    }
    /// First-token timeout.
    pub fn first_token(&self) -> Duration {
        Duration::from_millis(self.first_token_ms)
    }
    /// Idle timeout between stream frames.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
    /// Total timeout.
    pub fn total(&self) -> Duration {
        Duration::from_millis(self.total_ms)
    }
}
