//! `error-policy`: reads providers' error bodies and chooses what to do.
//!
//! A 429 can mean "slow down" (retry soon) or "your quota is gone" (retrying is
//! pointless: fall back to the next preset item). The body says which: OpenAI's
//! `error.code` / `error.type` (`insufficient_quota`, `rate_limit_exceeded`),
//! Anthropic's `error.type`, Gemini's `error.status` (`RESOURCE_EXHAUSTED`) and the
//! message text.
//!
//! Config (all optional): `{"fallback_on": ["insufficient_quota", "quota"],
//! "retry_on": ["rate_limit_exceeded"], "retry_after_ms": 100, "abort_on": []}`;
//! each entry is matched against the codes and (case-insensitively) the message.

use relay_plugin_sdk::serde_json::{self, Value};
use relay_plugin_sdk::{ErrorDecision, ErrorView, Hooks, Manifest, Plugin, export, host, manifest};

struct ErrorPolicy;

fn list(config: &Value, key: &str, default: &[&str]) -> Vec<String> {
    match config.get(key).and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_ascii_lowercase)
            .collect(),
        None => default.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// The codes and message an error body carries, lowercased.
fn facts(body: &str) -> (Vec<String>, String) {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return (Vec::new(), body.to_ascii_lowercase());
    };
    let err = v.get("error").unwrap_or(&v);
    let mut codes = Vec::new();
    for key in ["code", "type", "status"] {
        if let Some(s) = err.get(key).and_then(Value::as_str) {
            codes.push(s.to_ascii_lowercase());
        }
    }
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    (codes, message)
}

fn matches(rules: &[String], codes: &[String], message: &str) -> bool {
    rules
        .iter()
        .any(|r| codes.iter().any(|c| c == r) || message.contains(r.as_str()))
}

impl Plugin for ErrorPolicy {
    fn manifest() -> Manifest {
        let mut m = manifest("error-policy", Hooks::ON_ERROR);
        m.metrics = vec!["fallbacks".into(), "retries".into()];
        m.stateless = true;
        m
    }

    fn init(config: String) -> Result<(), String> {
        match serde_json::from_str::<Value>(&config) {
            Ok(Value::Null | Value::Object(_)) => Ok(()),
            _ => Err("config must be a JSON object".into()),
        }
    }

    fn on_error(error: ErrorView) -> ErrorDecision {
        let Some(body) = error.body else {
            return ErrorDecision::Default;
        };
        let config = relay_plugin_sdk::config();
        let (codes, message) = facts(&body);
        if matches(&list(&config, "abort_on", &[]), &codes, &message) {
            return ErrorDecision::Abort;
        }
        if matches(
            &list(&config, "fallback_on", &["insufficient_quota", "quota"]),
            &codes,
            &message,
        ) {
            host::metric_add("fallbacks", 1);
            host::log(
                host::LogLevel::Info,
                "quota exhausted upstream: falling back",
            );
            return ErrorDecision::Fallback;
        }
        if matches(
            &list(&config, "retry_on", &["rate_limit_exceeded"]),
            &codes,
            &message,
        ) {
            host::metric_add("retries", 1);
            let after = config
                .get("retry_after_ms")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .min(60_000) as u32;
            return ErrorDecision::Retry(after);
        }
        ErrorDecision::Default
    }
}

export!(ErrorPolicy);
