//! The gateway's TOML config: server settings and API keys, plus the relay-core config
//! (channels, presets, defaults, upstream) at the top level.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use relay_core::config::{Defaults, UpstreamSettings};
use relay_core::{ChannelConfig, PresetConfig, RelayConfig};

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listener and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// API keys clients use.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Upstream channels.
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
    /// Presets.
    #[serde(default)]
    pub presets: Vec<PresetConfig>,
    /// Retry and timeout defaults.
    #[serde(default)]
    pub defaults: Defaults,
    /// Upstream client settings.
    #[serde(default)]
    pub upstream: UpstreamSettings,
    /// WebAssembly plugins: registry, limits, cache, kill switch.
    #[serde(default)]
    pub plugins: crate::plugins::PluginsConfig,
    /// Store upkeep: replica heartbeats and the reconciliation of quota holds left by
    /// gateway processes that died (used only with a store).
    #[serde(default)]
    pub store: StoreConfig,
}

/// Store upkeep, run in the background by every gateway process with a store. Each
/// process (replica) upserts its `replicas` row every `heartbeat_interval_ms`; every
/// `reconcile_interval_ms` it releases the quota holds of replicas not seen for
/// `replica_stale_after_ms` (a crashed process's reservations). Applied at start and on
/// SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// How often this process says it is alive.
    pub heartbeat_interval_ms: u64,
    /// A replica not seen for this long is gone, and its holds (once this old) are
    /// released. At least twice `heartbeat_interval_ms`; keep it well above the clock
    /// skew between hosts.
    pub replica_stale_after_ms: u64,
    /// How often this process looks for the holds of gone replicas.
    pub reconcile_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            heartbeat_interval_ms: 10_000,
            replica_stale_after_ms: 60_000,
            reconcile_interval_ms: 30_000,
        }
    }
}

impl StoreConfig {
    /// The problems of these settings (empty when they make sense).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.heartbeat_interval_ms == 0 || self.reconcile_interval_ms == 0 {
            problems.push(
                "store.heartbeat_interval_ms and store.reconcile_interval_ms must be above 0"
                    .to_owned(),
            );
        }
        if self.replica_stale_after_ms < self.heartbeat_interval_ms.saturating_mul(2) {
            problems.push(format!(
                "store.replica_stale_after_ms ({}) must be at least twice \
                 store.heartbeat_interval_ms ({}), or live replicas would look gone",
                self.replica_stale_after_ms, self.heartbeat_interval_ms
            ));
        }
        problems
    }
}

/// Listener and request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Time allowed to receive request headers.
    pub header_timeout_ms: u64,
    /// Time allowed to receive a request body.
    pub body_timeout_ms: u64,
    /// On shutdown, how long in-flight requests and streams may take to finish.
    pub drain_timeout_ms: u64,
    /// Open client connections at most; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Worker threads, each running its own single-threaded runtime on a shared
    /// listener (a request stays on one thread: no cross-thread wake-ups). 0 = one per
    /// CPU this process may run on.
    pub workers: usize,
    /// After start-up, drop this process's resident pages of its own executable that
    /// only start-up used (see `startup_pages`); they stay in the page cache. Lowers
    /// idle RSS by several MiB; `false` keeps them mapped.
    pub release_startup_pages: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 8 * 1024 * 1024,
            header_timeout_ms: 30_000,
            body_timeout_ms: 60_000,
            drain_timeout_ms: 30_000,
            max_connections: 16_384,
            workers: 0,
            release_startup_pages: true,
        }
    }
}

/// One client API key. Give either the key itself or its SHA-256 (hex).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A name for logs and usage records (never the key).
    pub name: String,
    /// The key in clear (convenient for local setups).
    #[serde(default)]
    pub key: Option<String>,
    /// Or the hex SHA-256 of the key (`relay-gateway hash-key`).
    #[serde(default)]
    pub key_sha256: Option<String>,
}

/// A config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown fields.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
}

impl GatewayConfig {
    /// Read and parse a TOML file (validation happens when the relay is built).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| LoadError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parse TOML text; settings that cannot work together are refused here.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: GatewayConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let problems = config.store.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems.join("; "))
        }
    }

    /// The relay-core part.
    pub fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            channels: self.channels.clone(),
            presets: self.presets.clone(),
            defaults: self.defaults.clone(),
            upstream: self.upstream.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_upkeep_defaults_and_refusals() {
        let config = GatewayConfig::parse("").unwrap();
        assert_eq!(config.store, StoreConfig::default());
        assert_eq!(
            (
                config.store.heartbeat_interval_ms,
                config.store.replica_stale_after_ms,
                config.store.reconcile_interval_ms
            ),
            (10_000, 60_000, 30_000)
        );
        let short = GatewayConfig::parse(
            "[store]\nheartbeat_interval_ms = 200\nreplica_stale_after_ms = 1500\nreconcile_interval_ms = 300\n",
        )
        .unwrap();
        assert_eq!(short.store.replica_stale_after_ms, 1500);
        let err = GatewayConfig::parse(
            "[store]\nheartbeat_interval_ms = 1000\nreplica_stale_after_ms = 1500\n",
        )
        .unwrap_err();
        assert!(err.contains("replica_stale_after_ms"), "{err}");
        let err = GatewayConfig::parse("[store]\nreconcile_interval_ms = 0\n").unwrap_err();
        assert!(err.contains("above 0"), "{err}");
        assert!(GatewayConfig::parse("[store]\nheartbeat_ms = 5\n").is_err());
    }
}
