//! Typed rows: what the store reads and writes.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Who owns a row: the config file (re-seeded at every start) or the admin API / CLI
/// (never overwritten by the config file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// Seeded from the config file.
    Config,
    /// Created through the admin API or the CLI.
    Admin,
}

impl Owner {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Config => "config",
            Owner::Admin => "admin",
        }
    }

    /// Parse the column value (anything unknown counts as admin-owned, the safe side).
    pub fn parse(s: &str) -> Self {
        if s == "config" {
            Owner::Config
        } else {
            Owner::Admin
        }
    }
}

/// What a key's quota counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaKind {
    /// Input plus output tokens.
    Tokens,
    /// Cost in micro-USD (from the pricing table).
    Cost,
}

impl QuotaKind {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Tokens => "tokens",
            QuotaKind::Cost => "cost",
        }
    }

    /// Parse the column value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tokens" => Some(QuotaKind::Tokens),
            "cost" => Some(QuotaKind::Cost),
            _ => None,
        }
    }
}

/// A key's quota: what it counts and how much may be used in total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Tokens or micro-USD.
    pub kind: QuotaKind,
    /// The total allowed.
    pub limit: i64,
}

/// An API key as stored (never the key itself).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's id (its name), used in usage rows.
    pub id: String,
    /// The public prefix (`rk-XXXXXXXX`) of a generated key; none for config keys.
    pub prefix: Option<String>,
    /// Hex SHA-256 of the key.
    #[serde(skip_serializing)]
    pub key_sha256: String,
    /// Presets the key may name (empty: any, unless `allowed_models` is set).
    pub allowed_presets: Vec<String>,
    /// Bare model names the key may name (empty: any, unless `allowed_presets` is set).
    pub allowed_models: Vec<String>,
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// The quota, if any.
    pub quota: Option<Quota>,
    /// Quota used so far (settled).
    pub quota_used: i64,
    /// Quota reserved by requests in flight.
    pub quota_reserved: i64,
    /// Expiry, Unix milliseconds.
    pub expires_at: Option<i64>,
    /// Revoked keys are refused.
    pub revoked: bool,
    /// The channel group the key routes to (stored; see ARCHITECTURE.md).
    pub group: Option<String>,
    /// Who owns the row.
    pub owner: Owner,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

impl KeyRecord {
    /// A key with no limits.
    pub fn new(id: impl Into<String>, key_sha256: impl Into<String>, owner: Owner) -> Self {
        KeyRecord {
            id: id.into(),
            prefix: None,
            key_sha256: key_sha256.into(),
            allowed_presets: Vec::new(),
            allowed_models: Vec::new(),
            rpm: None,
            tpm: None,
            quota: None,
            quota_used: 0,
            quota_reserved: 0,
            expires_at: None,
            revoked: false,
            group: None,
            owner,
            created_at: crate::now_ms(),
        }
    }
}

/// A channel as stored: its relay-core config (credentials decrypted) and owner.
#[derive(Clone, Debug)]
pub struct StoredChannel {
    /// The channel.
    pub config: relay_core::ChannelConfig,
    /// Who owns it.
    pub owner: Owner,
}

/// A preset as stored.
#[derive(Clone, Debug)]
pub struct StoredPreset {
    /// The preset.
    pub config: relay_core::PresetConfig,
    /// Who owns it.
    pub owner: Owner,
}

/// Prices of one model, USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached input tokens.
    pub input_per_mtok: f64,
    /// Output tokens.
    pub output_per_mtok: f64,
    /// Cached input tokens.
    pub cached_input_per_mtok: f64,
}

impl Price {
    /// Cost in micro-USD of a usage (cached input tokens are part of `input`).
    pub fn cost_micros(&self, input: u64, output: u64, cached: u64) -> i64 {
        let cached = cached.min(input);
        // USD per million tokens × tokens = micro-USD.
        let micros = (input - cached) as f64 * self.input_per_mtok
            + cached as f64 * self.cached_input_per_mtok
            + output as f64 * self.output_per_mtok;
        micros.round() as i64
    }
}

/// A plugin artifact's listing entry (the bytes stay in the store).
#[derive(Clone, Debug, Serialize)]
pub struct PluginInfo {
    /// Hex SHA-256 of the `.wasm` bytes: the plugin's identity.
    pub sha256: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Size in bytes.
    pub size: i64,
    /// Upload time, Unix milliseconds.
    pub created_at: i64,
}

/// A quota amount held for a request in flight, settled with its usage row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaHold {
    /// What the key's quota counts.
    pub kind: QuotaKind,
    /// The amount reserved in the database (0 when the reservation was made in process
    /// while the database was unreachable). For a tracked hold this is informational:
    /// settlement releases what the hold's `quota_holds` row holds, if it still exists.
    pub reserved: i64,
    /// Whether the reservation is tracked by a `quota_holds` row, as every hold this
    /// version makes is. False only for rows spilled by an older gateway (the field is
    /// missing there): they settle the old way, `quota_reserved -= reserved`.
    #[serde(default)]
    pub tracked: bool,
}

/// One usage row: a settlement record plus its cost and quota hold. The labels
/// (dialects, operation, outcome, error kind) borrow relay-core's static names when the
/// row comes from a record, so making a row allocates nothing for them; a row read back
/// from the spill file owns them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UsageRow {
    /// Unique request id.
    pub request_id: String,
    /// The key id.
    pub key_id: Option<String>,
    /// The preset or model the client named.
    pub requested_model: String,
    /// The preset item index.
    pub item: Option<i64>,
    /// The channel of the last attempt.
    pub channel: Option<String>,
    /// The model sent upstream.
    pub upstream_model: Option<String>,
    /// Client dialect.
    pub client_dialect: Cow<'static, str>,
    /// Upstream dialect.
    pub upstream_dialect: Option<Cow<'static, str>>,
    /// Operation.
    pub operation: Cow<'static, str>,
    /// Streamed.
    pub stream: bool,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cached input tokens.
    pub cached_tokens: i64,
    /// Reasoning tokens.
    pub reasoning_tokens: i64,
    /// Cost in micro-USD (0 without a price).
    pub cost_micros: i64,
    /// Estimated usage.
    pub estimated: bool,
    /// `ok`, `error`, `cancelled`.
    pub outcome: Cow<'static, str>,
    /// HTTP status.
    pub status: i64,
    /// Error kind label.
    pub error_kind: Option<Cow<'static, str>>,
    /// Attempts.
    pub attempts: i64,
    /// Latency in ms.
    pub latency_ms: i64,
    /// Time to first token in ms.
    pub ttft_ms: Option<i64>,
    /// Arrival, Unix milliseconds.
    pub started_at: i64,
    /// The quota held for this request, if the key has a quota.
    #[serde(default)]
    pub hold: Option<QuotaHold>,
}

impl UsageRow {
    /// What the request costs the key's quota.
    pub fn charge(&self, kind: QuotaKind) -> i64 {
        match kind {
            QuotaKind::Tokens => self.input_tokens + self.output_tokens,
            QuotaKind::Cost => self.cost_micros,
        }
    }
}

/// What usage is grouped by in a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageGroup {
    /// Per key.
    Key,
    /// Per preset (or model) the client named.
    Preset,
    /// Per channel.
    Channel,
    /// Per upstream model.
    Model,
}

impl UsageGroup {
    pub(crate) fn column(self) -> &'static str {
        match self {
            UsageGroup::Key => "key_id",
            UsageGroup::Preset => "requested_model",
            UsageGroup::Channel => "channel",
            UsageGroup::Model => "upstream_model",
        }
    }

    /// Parse `key`, `preset`, `channel`, `model`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "key" => Some(UsageGroup::Key),
            "preset" => Some(UsageGroup::Preset),
            "channel" => Some(UsageGroup::Channel),
            "model" => Some(UsageGroup::Model),
            _ => None,
        }
    }
}

/// One line of a usage report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UsageLine {
    /// The group's value (`None` for rows without one, e.g. no channel).
    pub group: Option<String>,
    /// Requests.
    pub requests: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cached input tokens.
    pub cached_tokens: i64,
    /// Cost in micro-USD.
    pub cost_micros: i64,
    /// Requests that did not end `ok`.
    pub errors: i64,
}

/// A usage report over a time range.
#[derive(Clone, Debug, Serialize)]
pub struct UsageReport {
    /// Grouped by.
    pub group_by: UsageGroup,
    /// From (inclusive), Unix ms.
    pub from: i64,
    /// To (exclusive), Unix ms.
    pub to: i64,
    /// One line per group value.
    pub lines: Vec<UsageLine>,
    /// Totals over all lines.
    pub total: UsageLine,
}

/// An audit log entry.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    /// Time, Unix ms.
    pub at: i64,
    /// Who (`admin-api`, `cli`, `config`).
    pub actor: String,
    /// What (`create`, `update`, `delete`, `revoke`...).
    pub action: String,
    /// On what (`channel:openai-main`).
    pub target: String,
    /// Details (never a secret).
    pub detail: Option<String>,
}
