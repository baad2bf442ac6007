use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use super::{ChannelConfig, PresetItem, RelayConfig, Strategy};
use crate::adapter::AdapterRegistry;

/// Every problem found in a config, each naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// One line per problem, e.g. `preset "fast", item 1: unknown channel "c9"`.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid relay config ({} problem", self.problems.len())?;
        if self.problems.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str("):")?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Check a base URL: http(s), a host, no query or fragment, and (unless allowed) not a
/// loopback, private, link-local or unspecified address.
pub fn validate_base_url(raw: &str, allow_private: bool) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("bad base_url {raw:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "bad base_url {raw:?}: scheme must be http or https"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "bad base_url {raw:?}: no query string or fragment allowed"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "bad base_url {raw:?}: credentials in the URL are not allowed; use api_keys"
        ));
    }
    let private = match url.host() {
        None => return Err(format!("bad base_url {raw:?}: no host")),
        Some(url::Host::Domain(d)) => {
            let d = d.to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => is_private(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_private(IpAddr::V6(ip)),
    };
    if private && !allow_private {
        return Err(format!(
            "base_url {raw:?} is on a loopback or private network; set allow_private_network = true on the channel if that is intended"
        ));
    }
    Ok(())
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64) // CGNAT 100.64/10
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg0 & 0xfe00) == 0xfc00 // unique local
                || (seg0 & 0xffc0) == 0xfe80 // link local
        }
    }
}

impl RelayConfig {
    /// Check the whole config against the registered adapters. Every problem is reported,
    /// not only the first.
    pub fn validate(&self, adapters: &AdapterRegistry) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut ids = HashSet::new();
        for (i, ch) in self.channels.iter().enumerate() {
            let at = if ch.id.is_empty() {
                format!("channel #{}", i + 1)
            } else {
                format!("channel {:?}", ch.id)
            };
            if ch.id.trim().is_empty() {
                problems.push(format!("{at}: empty id"));
            } else if !ids.insert(ch.id.as_str()) {
                problems.push(format!("{at}: duplicate channel id"));
            }
            check_channel(ch, &at, adapters, &mut problems);
        }

        let mut names = HashSet::new();
        for preset in &self.presets {
            let at = format!("preset {:?}", preset.name);
            if preset.name.trim().is_empty() {
                problems.push("a preset has an empty name".to_owned());
            } else if !names.insert(preset.name.as_str()) {
                problems.push(format!("{at}: duplicate preset name"));
            }
            if preset.items.is_empty() {
                problems.push(format!("{at}: no items"));
            }
            for (n, item) in preset.items.iter().enumerate() {
                let at = format!("{at}, item {}", n + 1);
                let model = item.model.as_deref().unwrap_or(&preset.name);
                self.check_item(item, model, &at, &mut problems);
            }
        }

        // Implicit presets: the channels serving one model must not all weigh 0.
        let mut models: Vec<&str> = self
            .channels
            .iter()
            .filter(|c| c.enabled)
            .flat_map(|c| {
                c.models
                    .iter()
                    .chain(c.model_map.keys())
                    .map(String::as_str)
            })
            .collect();
        models.sort_unstable();
        models.dedup();
        for model in models {
            let serving: Vec<&ChannelConfig> = self
                .channels
                .iter()
                .filter(|c| c.enabled && c.serves(model))
                .collect();
            if serving.iter().all(|c| c.weight == 0) {
                problems.push(format!(
                    "model {model:?}: every channel serving it has weight 0, so none can be chosen"
                ));
            }
        }

        check_retry_and_timeouts(
            &self.defaults.retry,
            &self.defaults.timeouts,
            "defaults",
            &mut problems,
        );

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    fn check_item(&self, item: &PresetItem, model: &str, at: &str, problems: &mut Vec<String>) {
        let targets: Vec<&ChannelConfig> = match (&item.group, item.channels.is_empty()) {
            (Some(_), false) => {
                problems.push(format!("{at}: set either `channels` or `group`, not both"));
                return;
            }
            (None, true) => {
                problems.push(format!("{at}: no target: set `channels` or `group`"));
                return;
            }
            (None, false) => {
                let mut seen = HashSet::new();
                let mut found = Vec::new();
                for id in &item.channels {
                    if !seen.insert(id.as_str()) {
                        problems.push(format!("{at}: channel {id:?} listed twice"));
                    }
                    match self.channels.iter().find(|c| &c.id == id) {
                        Some(c) => found.push(c),
                        None => problems.push(format!("{at}: unknown channel {id:?}")),
                    }
                }
                found
            }
            (Some(group), true) => {
                let found: Vec<&ChannelConfig> = self
                    .channels
                    .iter()
                    .filter(|c| c.groups.iter().any(|g| g == group))
                    .collect();
                if found.is_empty() {
                    problems.push(format!("{at}: no channel is in group {group:?}"));
                } else if !found.iter().any(|c| c.serves(model)) {
                    problems.push(format!(
                        "{at}: no channel in group {group:?} serves model {model:?}"
                    ));
                }
                found
            }
        };
        let enabled: Vec<&&ChannelConfig> = targets.iter().filter(|c| c.enabled).collect();
        if item.strategy == Strategy::Weighted
            && !enabled.is_empty()
            && enabled.iter().all(|c| c.weight == 0)
        {
            problems.push(format!(
                "{at}: every channel has weight 0, so none can be chosen"
            ));
        }
        if let Some(retry) = &item.retry {
            check_retry_and_timeouts(retry, &Default::default(), at, problems);
        }
        if let Some(t) = &item.timeouts {
            check_retry_and_timeouts(&Default::default(), t, at, problems);
        }
    }
}

fn check_channel(
    ch: &ChannelConfig,
    at: &str,
    adapters: &AdapterRegistry,
    problems: &mut Vec<String>,
) {
    let Some(adapter) = adapters.get(&ch.provider) else {
        problems.push(format!(
            "{at}: unknown provider {:?} (known: {})",
            ch.provider,
            adapters.providers().join(", ")
        ));
        return;
    };
    match ch.base_url.as_deref().or(adapter.default_base_url()) {
        None => problems.push(format!(
            "{at}: provider {:?} has no default base_url; set one",
            ch.provider
        )),
        Some(url) => {
            let allow = ch.allow_private_network || adapter.allows_private_network();
            if let Err(e) = validate_base_url(url, allow) {
                problems.push(format!("{at}: {e}"));
            }
        }
    }
    if ch.models.is_empty() && ch.model_map.is_empty() {
        problems.push(format!("{at}: empty model list: set `models`"));
    }
    if ch.models.iter().any(|m| m.trim().is_empty()) {
        problems.push(format!("{at}: an empty model name in `models`"));
    }
    if let Some(var) = &ch.api_key_env {
        if ch.enabled && std::env::var(var).map(|v| v.is_empty()).unwrap_or(true) {
            problems.push(format!(
                "{at}: environment variable {var} (api_key_env) is not set"
            ));
        }
    } else if ch.enabled && adapter.requires_key() && ch.api_keys.is_empty() {
        problems.push(format!(
            "{at}: provider {:?} needs a credential: set `api_keys` or `api_key_env`",
            ch.provider
        ));
    }
    for name in ch.headers.keys() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(format!("{at}: bad header name {name:?}"));
        }
    }
    for value in ch.headers.values() {
        if http::HeaderValue::from_str(value).is_err() {
            problems.push(format!("{at}: bad header value in `headers`"));
        }
    }
}

fn check_retry_and_timeouts(
    retry: &super::RetryPolicy,
    t: &super::Timeouts,
    at: &str,
    problems: &mut Vec<String>,
) {
    if retry.max_attempts == 0 {
        problems.push(format!("{at}: retry.max_attempts must be at least 1"));
    }
    if retry.max_attempts > 20 {
        problems.push(format!(
            "{at}: retry.max_attempts over 20 is a retry storm, not a policy"
        ));
    }
    if retry.backoff_base_ms > retry.backoff_max_ms {
        problems.push(format!(
            "{at}: retry.backoff_base_ms is larger than backoff_max_ms"
        ));
    }
    for (name, v) in [
        ("first_byte_ms", t.first_byte_ms),
        ("first_token_ms", t.first_token_ms),
        ("idle_ms", t.idle_ms),
        ("total_ms", t.total_ms),
    ] {
        if v == 0 {
            problems.push(format!("{at}: timeouts.{name} must be above 0"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_rules() {
        assert!(validate_base_url("https://api.openai.com/v1", false).is_ok());
        assert!(validate_base_url("ftp://x/v1", false).is_err());
        assert!(validate_base_url("not a url", false).is_err());
        assert!(validate_base_url("http://127.0.0.1:8080/v1", false).is_err());
        assert!(validate_base_url("http://127.0.0.1:8080/v1", true).is_ok());
        assert!(validate_base_url("http://10.1.2.3/v1", false).is_err());
        assert!(validate_base_url("http://[::1]:80/v1", false).is_err());
        assert!(validate_base_url("http://localhost:11434/v1", false).is_err());
        assert!(validate_base_url("https://u:p@api.example.com/v1", false).is_err());
        assert!(validate_base_url("https://api.example.com/v1?x=1", false).is_err());
    }
}
