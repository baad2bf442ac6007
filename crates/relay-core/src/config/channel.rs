use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret string (an upstream API key). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; only for building the upstream request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// One configured upstream: a provider, where it lives, how to authenticate, what it serves.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Unique id, referenced by presets.
    pub id: String,
    /// Provider name from the adapter catalog (`openai`, `deepseek`, `mock`...).
    pub provider: String,
    /// Base URL including the version prefix (`https://api.openai.com/v1`); the
    /// provider's default when absent.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Credentials; several rotate round robin.
    #[serde(default)]
    pub api_keys: Vec<Secret>,
    /// Read one more credential from this environment variable at load time.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Models this channel serves (names clients or presets ask for).
    #[serde(default)]
    pub models: Vec<String>,
    /// Rename a requested model to the name this upstream knows.
    #[serde(default)]
    pub model_map: BTreeMap<String, String>,
    /// Relative weight inside its priority tier.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Higher priorities are tried first.
    #[serde(default)]
    pub priority: i32,
    /// Groups (tags) this channel belongs to, for presets that target a group.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra headers sent upstream on every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Disabled channels are never selected.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// API version for providers that put one in the URL (Azure OpenAI's `api-version`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Allow a base URL on loopback or a private network (off by default, as a guard
    /// against server-side request forgery; local providers such as ollama allow it).
    #[serde(default)]
    pub allow_private_network: bool,
}

fn default_weight() -> u32 {
    1
}

fn default_true() -> bool {
    true
}

impl ChannelConfig {
    /// A minimal enabled channel; set the other fields as needed.
    pub fn new(id: impl Into<String>, provider: impl Into<String>) -> Self {
        ChannelConfig {
            id: id.into(),
            provider: provider.into(),
            base_url: None,
            api_keys: Vec::new(),
            api_key_env: None,
            models: Vec::new(),
            model_map: BTreeMap::new(),
            weight: 1,
            priority: 0,
            groups: Vec::new(),
            headers: BTreeMap::new(),
            enabled: true,
            api_version: None,
            allow_private_network: false,
        }
    }

    /// Whether this channel serves `model` (listed, or a key of the model map).
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model) || self.model_map.contains_key(model)
    }

    /// The upstream name of `model` on this channel.
    pub fn map_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map.get(model).map_or(model, String::as_str)
    }
}
