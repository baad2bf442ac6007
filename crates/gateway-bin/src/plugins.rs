//! The `[plugins]` section: the plugin registry (name + version → component file),
//! limits and secrets per plugin, the compile cache, and the kill switch; and the
//! `plugin check` report.
//!
//! ```toml
//! [plugins]
//! enabled = true                      # false: every preset item runs without plugins
//! dir = "plugins/dist"                # where `<name>.wasm` files are looked up
//! cache_dir = "/var/cache/relay"      # compiled components, by content and engine hash
//!
//! [[plugins.registry]]
//! name = "guard"
//! version = "0.1.0"
//! # path = "guard.wasm"               # default: <dir>/<name>.wasm
//! # failure_mode = "closed"           # override the plugin's declared mode
//! limits = { hook_deadline_ms = 10, memory_bytes = 33554432 }
//! secrets = { API_TOKEN = "env:GUARD_TOKEN" }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use relay_plugin_api::{FailureMode, HostSettings, PluginHost, PluginLimits, PluginSpec};
use serde::Deserialize;

/// The `[plugins]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// The kill switch: false ignores every preset item's `plugins` list.
    pub enabled: bool,
    /// Where registry entries without a `path` are found (`<dir>/<name>.wasm`), and
    /// what relative paths are relative to.
    pub dir: Option<PathBuf>,
    /// Where compiled components are cached; none when absent.
    pub cache_dir: Option<PathBuf>,
    /// Plugin instances alive at once (the pooling allocator's slots).
    pub max_instances: u32,
    /// The largest memory any one plugin may be given.
    pub max_memory_bytes: usize,
    /// The plugins.
    pub registry: Vec<RegistryEntry>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        let host = HostSettings::default();
        PluginsConfig {
            enabled: true,
            dir: None,
            cache_dir: None,
            max_instances: host.max_instances,
            max_memory_bytes: host.max_memory_bytes,
            registry: Vec::new(),
        }
    }
}

/// One registered plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// The name preset items use.
    pub name: String,
    /// Its version.
    #[serde(default = "default_version")]
    pub version: String,
    /// The component file; `<dir>/<name>.wasm` when absent.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Override the plugin's declared failure mode.
    #[serde(default)]
    pub failure_mode: Option<FailureSetting>,
    /// Limits (defaults: 32 MiB, 10 ms per hook, 1 MiB output, 50 log lines/s).
    #[serde(default)]
    pub limits: PluginLimits,
    /// Secret values by name: a literal, or `env:NAME` to read the environment at
    /// start. The plugin can read only the names its manifest declares.
    #[serde(default)]
    pub secrets: HashMap<String, String>,
}

fn default_version() -> String {
    "0.1.0".into()
}

/// `failure_mode` in the registry.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureSetting {
    /// Go on without the plugin.
    Open,
    /// Refuse the request.
    Closed,
}

impl PluginsConfig {
    /// Whether any plugin is registered and the switch is on.
    pub fn active(&self) -> bool {
        self.enabled && !self.registry.is_empty()
    }

    /// Start the host and load every registered plugin (compiling, or reading the
    /// cache). `Ok(None)` when plugins are off or none is registered.
    pub fn start(&self) -> Result<Option<PluginHost>, String> {
        if !self.enabled {
            if !self.registry.is_empty() {
                tracing::warn!(
                    "plugins are disabled ([plugins] enabled = false): preset items run without them"
                );
            }
            return Ok(None);
        }
        if self.registry.is_empty() {
            return Ok(None);
        }
        let host = PluginHost::new(HostSettings {
            cache_dir: self.cache_dir.clone(),
            max_instances: self.max_instances,
            max_memory_bytes: self.max_memory_bytes,
        })
        .map_err(|e| e.to_string())?;
        for entry in &self.registry {
            host.load(&self.spec(entry)).map_err(|e| e.to_string())?;
        }
        Ok(Some(host))
    }

    fn spec(&self, entry: &RegistryEntry) -> PluginSpec {
        let dir = self.dir.clone().unwrap_or_default();
        let path = match &entry.path {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => dir.join(p),
            None => dir.join(format!("{}.wasm", entry.name)),
        };
        PluginSpec {
            name: entry.name.clone(),
            version: entry.version.clone(),
            path,
            secrets: entry
                .secrets
                .iter()
                .filter_map(|(k, v)| secret_value(v).map(|v| (k.clone(), v)))
                .collect(),
            limits: entry.limits.clone(),
            failure_mode: entry.failure_mode.map(|f| match f {
                FailureSetting::Open => FailureMode::FailOpen,
                FailureSetting::Closed => FailureMode::FailClosed,
            }),
        }
    }
}

fn secret_value(v: &str) -> Option<String> {
    match v.strip_prefix("env:") {
        Some(var) => std::env::var(var).ok(),
        None => Some(v.to_owned()),
    }
}

/// `relay-gateway plugin check`: validate, describe and exercise one component.
pub fn check(path: &Path, config: &str) -> Result<String, String> {
    let config: serde_json::Value =
        serde_json::from_str(config).map_err(|e| format!("--config is not JSON: {e}"))?;
    let report = relay_plugin_api::check::check(path, &config).map_err(|e| e.to_string())?;
    Ok(report.to_string())
}
