//! Configuration: channels, presets of ordered items, defaults, and their validation.
//!
//! These are plain serde types (TOML in the gateway, or built in code by an embedding
//! app). [`RelayConfig::validate`] checks everything at once and names each problem
//! precisely; the engine only ever runs a validated config.

mod channel;
mod preset;
mod validate;

pub use channel::{ChannelConfig, Secret};
pub use preset::{PluginRef, PresetConfig, PresetItem, RetryPolicy, Strategy, Timeouts};
pub use validate::{ConfigError, validate_base_url};

use serde::{Deserialize, Serialize};

/// Everything the relay engine needs to route requests.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Upstream channels.
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
    /// Named presets a client can put in `model`.
    #[serde(default)]
    pub presets: Vec<PresetConfig>,
    /// Defaults for items that do not set their own retry policy or timeouts.
    #[serde(default)]
    pub defaults: Defaults,
    /// Settings of the shared upstream HTTP client.
    #[serde(default)]
    pub upstream: UpstreamSettings,
}

/// The shared upstream HTTP client.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    /// TCP connect timeout.
    pub connect_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this long.
    pub pool_idle_timeout_ms: u64,
    /// Idle keep-alive connections kept per upstream host.
    pub pool_max_idle_per_host: usize,
    /// Largest non-streaming upstream response body accepted.
    pub max_response_bytes: usize,
    /// A PEM file of CA certificates trusted for `https` upstreams besides the public
    /// roots: for upstreams behind a private CA (self-hosted models, an internal proxy).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout_ms: 5_000,
            pool_idle_timeout_ms: 90_000,
            pool_max_idle_per_host: 1_024,
            max_response_bytes: 64 * 1024 * 1024,
            ca_file: None,
        }
    }
}

/// Defaults applied to every item, including implicit presets.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
}
