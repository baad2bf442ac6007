//! Operations shared by the admin API and the CLI: key creation and updates from a
//! spec, config validation of a candidate change, the one-request channel test,
//! masking for responses.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use relay_core::config::{Defaults, UpstreamSettings};
use relay_core::{
    ChannelConfig, ClientDialect, Operation, PresetConfig, PresetItem, Relay, RelayConfig,
    RelayRequest, RouteParams,
};
use relay_store::{KeyRecord, Owner, Quota, QuotaKind, SharedStore};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::AdminError;

/// A key's policy, as the admin API and CLI take it. On update, absent fields stay.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// The key's id (its name); required on create.
    #[serde(default)]
    pub name: Option<String>,
    /// Presets it may name.
    #[serde(default)]
    pub allowed_presets: Option<Vec<String>>,
    /// Bare models it may name.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// A quota in tokens.
    #[serde(default)]
    pub quota_tokens: Option<i64>,
    /// A quota in USD (kept in micro-USD).
    #[serde(default)]
    pub quota_usd: Option<f64>,
    /// Expiry, Unix milliseconds.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Channel group.
    #[serde(default)]
    pub group: Option<String>,
    /// Revoke (or un-revoke).
    #[serde(default)]
    pub revoked: Option<bool>,
}

impl KeySpec {
    fn apply(&self, k: &mut KeyRecord) -> Result<(), AdminError> {
        let mut problems = Vec::new();
        if let Some(v) = &self.allowed_presets {
            k.allowed_presets = v.clone();
        }
        if let Some(v) = &self.allowed_models {
            k.allowed_models = v.clone();
        }
        if let Some(v) = self.rpm {
            k.rpm = (v > 0).then_some(v);
        }
        if let Some(v) = self.tpm {
            k.tpm = (v > 0).then_some(v);
        }
        match (self.quota_tokens, self.quota_usd) {
            (Some(_), Some(_)) => problems.push("set one of quota_tokens or quota_usd".to_owned()),
            (Some(t), None) if t < 0 => {
                problems.push("quota_tokens must not be negative".to_owned())
            }
            (Some(t), None) => {
                k.quota = Some(Quota {
                    kind: QuotaKind::Tokens,
                    limit: t,
                })
            }
            (None, Some(u)) if !(u.is_finite() && u >= 0.0) => {
                problems.push("quota_usd must be a non-negative number".to_owned())
            }
            (None, Some(u)) => {
                k.quota = Some(Quota {
                    kind: QuotaKind::Cost,
                    limit: (u * 1e6).round() as i64,
                })
            }
            (None, None) => {}
        }
        if let Some(v) = self.expires_at {
            k.expires_at = Some(v);
        }
        if let Some(g) = &self.group {
            k.group = (!g.is_empty()).then(|| g.clone());
        }
        if let Some(r) = self.revoked {
            k.revoked = r;
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AdminError::invalid_config(problems))
        }
    }
}

/// A created key: the clear key (shown once) and the stored record.
#[derive(Debug, Serialize)]
pub struct CreatedKey {
    /// The key; it cannot be shown again.
    pub key: String,
    /// The record.
    #[serde(flatten)]
    pub record: KeyRecord,
}

/// Create a key from a spec.
pub async fn create_key(
    store: &SharedStore,
    spec: &KeySpec,
    actor: &str,
) -> Result<CreatedKey, AdminError> {
    let name = spec
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| AdminError::bad_request("`name` is required"))?;
    let generated = relay_store::keys::generate();
    let mut record = KeyRecord::new(name, generated.sha256.clone(), Owner::Admin);
    record.prefix = Some(generated.prefix.clone());
    spec.apply(&mut record)?;
    store.create_key(&record, actor).await?;
    Ok(CreatedKey {
        key: generated.clear,
        record,
    })
}

/// Update a key's policy from a spec.
pub async fn update_key(
    store: &SharedStore,
    id: &str,
    spec: &KeySpec,
    actor: &str,
) -> Result<KeyRecord, AdminError> {
    let mut record = store
        .key(id)
        .await?
        .ok_or_else(|| AdminError::not_found(format!("key {id:?}")))?;
    spec.apply(&mut record)?;
    store.update_key(&record, actor).await?;
    Ok(record)
}

/// Validate a relay config the way the engine will (every problem listed); built-in
/// mock channels get a placeholder URL.
pub fn validate_relay(mut relay: RelayConfig) -> Result<(), Vec<String>> {
    for ch in relay
        .channels
        .iter_mut()
        .filter(|c| c.provider == "mock" && c.base_url.is_none())
    {
        ch.base_url = Some("http://127.0.0.1:1/v1".into());
        ch.allow_private_network = true;
    }
    relay
        .validate(&relay_adapters::default_registry())
        .map_err(|e| e.problems)
}

/// The stored config with one channel replaced (or added, or removed when `None`),
/// validated.
pub async fn check_channel_change(
    store: &SharedStore,
    id: &str,
    change: Option<&ChannelConfig>,
    defaults: Defaults,
    upstream: UpstreamSettings,
) -> Result<(), AdminError> {
    let mut channels: Vec<ChannelConfig> = store
        .channels()
        .await?
        .into_iter()
        .map(|c| c.config)
        .collect();
    channels.retain(|c| c.id != id);
    if let Some(c) = change {
        channels.push(c.clone());
    }
    let presets = store
        .presets()
        .await?
        .into_iter()
        .map(|p| p.config)
        .collect();
    validate_relay(RelayConfig {
        channels,
        presets,
        defaults,
        upstream,
    })
    .map_err(AdminError::invalid_config)
}

/// The stored config with one preset replaced, added or removed, validated.
pub async fn check_preset_change(
    store: &SharedStore,
    name: &str,
    change: Option<&PresetConfig>,
    defaults: Defaults,
    upstream: UpstreamSettings,
) -> Result<(), AdminError> {
    let channels = store
        .channels()
        .await?
        .into_iter()
        .map(|c| c.config)
        .collect();
    let mut presets: Vec<PresetConfig> = store
        .presets()
        .await?
        .into_iter()
        .map(|p| p.config)
        .collect();
    presets.retain(|p| p.name != name);
    if let Some(p) = change {
        presets.push(p.clone());
    }
    validate_relay(RelayConfig {
        channels,
        presets,
        defaults,
        upstream,
    })
    .map_err(AdminError::invalid_config)
}

/// A channel as JSON with its credentials masked.
pub fn masked_channel(c: &ChannelConfig) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    v["api_keys"] = json!(
        c.api_keys
            .iter()
            .map(|k| relay_store::crypto::mask(k.expose()))
            .collect::<Vec<_>>()
    );
    v
}

/// What a channel test saw.
#[derive(Debug, Serialize)]
pub struct ChannelTest {
    /// Whether the channel answered 2xx.
    pub ok: bool,
    /// The status.
    pub status: u16,
    /// Milliseconds to the whole answer.
    pub latency_ms: u64,
    /// The model asked for.
    pub model: String,
    /// The start of the answer body (or the error).
    pub body: String,
}

/// Send one live request (`"ping"`, one output token) to a channel, alone.
pub async fn test_channel(
    channel: ChannelConfig,
    model: Option<String>,
) -> Result<ChannelTest, AdminError> {
    let model = model
        .or_else(|| channel.models.first().cloned())
        .or_else(|| channel.model_map.keys().next().cloned())
        .ok_or_else(|| {
            AdminError::bad_request("the channel serves no model; name one with `model`")
        })?;
    let preset = PresetConfig {
        name: "__channel_test".into(),
        description: None,
        items: vec![PresetItem {
            channels: vec![channel.id.clone()],
            model: Some(model.clone()),
            ..PresetItem::default()
        }],
    };
    let item_retry = relay_core::config::RetryPolicy {
        max_attempts: 1,
        ..Default::default()
    };
    let config = RelayConfig {
        channels: vec![channel],
        presets: vec![preset],
        defaults: Defaults {
            retry: item_retry,
            ..Defaults::default()
        },
        upstream: UpstreamSettings::default(),
    };
    let relay = Relay::builder(config)
        .adapters(relay_adapters::default_registry())
        .build()
        .map_err(|e| AdminError::bad_request(e.to_string()))?;
    let body = br#"{"model":"__channel_test","max_tokens":1,"messages":[{"role":"user","content":"ping"}]}"#;
    let inbound = relay_adapters::openai::OpenAiDialect
        .parse_request(Operation::Chat, body, &RouteParams::default())
        .map_err(|e| AdminError::bad_request(e.to_string()))?;
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(60), async {
        match relay
            .handle(RelayRequest::new(inbound, "channel-test"))
            .await
        {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                (
                    status,
                    String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned(),
                )
            }
            Err(e) => (e.status_code().as_u16(), e.message().to_owned()),
        }
    })
    .await;
    let (status, body) = answer.unwrap_or((504, "no answer within 60 s".into()));
    Ok(ChannelTest {
        ok: (200..300).contains(&status),
        status,
        latency_ms: started.elapsed().as_millis() as u64,
        model,
        body,
    })
}
