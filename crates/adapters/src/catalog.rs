//! The provider catalog: data, not a match statement. Each entry becomes one adapter
//! registered under its name.

use std::sync::Arc;

use relay_core::AdapterRegistry;

use crate::openai::OpenAiAdapter;

/// How a provider takes its credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// A named header carrying the bare key (`api-key` for Azure).
    Header(&'static str),
}

/// One provider of the catalog.
#[derive(Clone, Copy, Debug)]
pub struct ProviderSpec {
    /// The name channels use in `provider`.
    pub name: &'static str,
    /// Default base URL, version prefix included; `None` when every channel must set one.
    pub base_url: Option<&'static str>,
    /// Credential scheme.
    pub auth: Auth,
    /// Whether a channel must carry a credential.
    pub requires_key: bool,
    /// Local runtimes may live on loopback or private networks.
    pub local: bool,
    /// Whether the provider accepts `stream_options.include_usage` (else usage comes
    /// unasked, or is estimated).
    pub stream_options: bool,
}

const fn openai_compatible(name: &'static str, base_url: &'static str) -> ProviderSpec {
    ProviderSpec {
        name,
        base_url: Some(base_url),
        auth: Auth::Bearer,
        requires_key: true,
        local: false,
        stream_options: true,
    }
}

/// Every provider that speaks the OpenAI Chat Completions dialect.
pub const PROVIDERS: &[ProviderSpec] = &[
    openai_compatible("openai", "https://api.openai.com/v1"),
    openai_compatible("deepseek", "https://api.deepseek.com/v1"),
    // Alibaba DashScope in OpenAI-compatible mode.
    openai_compatible("qwen", "https://dashscope.aliyuncs.com/compatible-mode/v1"),
    openai_compatible("moonshot", "https://api.moonshot.cn/v1"),
    openai_compatible("zhipu", "https://open.bigmodel.cn/api/paas/v4"),
    openai_compatible("siliconflow", "https://api.siliconflow.cn/v1"),
    openai_compatible("openrouter", "https://openrouter.ai/api/v1"),
    openai_compatible("groq", "https://api.groq.com/openai/v1"),
    ProviderSpec {
        // Mistral sends usage in its last chunk unasked and rejects unknown parameters.
        stream_options: false,
        ..openai_compatible("mistral", "https://api.mistral.ai/v1")
    },
    openai_compatible("together", "https://api.together.xyz/v1"),
    ProviderSpec {
        requires_key: false,
        local: true,
        ..openai_compatible("ollama", "http://localhost:11434/v1")
    },
    ProviderSpec {
        requires_key: false,
        local: true,
        ..openai_compatible("vllm", "http://localhost:8000/v1")
    },
    // Any other OpenAI-compatible service: the channel sets base_url (and a key if the
    // service needs one).
    ProviderSpec {
        name: "openai-compatible",
        base_url: None,
        auth: Auth::Bearer,
        requires_key: false,
        local: false,
        stream_options: true,
    },
    // The in-tree mock upstream (`relay-mock`); the gateway starts one when a channel
    // names this provider without a base_url.
    ProviderSpec {
        name: "mock",
        base_url: None,
        auth: Auth::Bearer,
        requires_key: false,
        local: true,
        stream_options: true,
    },
];

/// A registry holding one adapter per catalog provider.
pub fn default_registry() -> AdapterRegistry {
    let mut registry = AdapterRegistry::new();
    for spec in PROVIDERS {
        registry.register(Arc::new(OpenAiAdapter::new(*spec)));
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::config::validate_base_url;

    #[test]
    fn catalog_is_complete_and_sane() {
        let registry = default_registry();
        for name in [
            "openai",
            "deepseek",
            "qwen",
            "moonshot",
            "zhipu",
            "siliconflow",
            "openrouter",
            "groq",
            "mistral",
            "together",
            "ollama",
            "vllm",
            "openai-compatible",
            "mock",
        ] {
            assert!(registry.get(name).is_some(), "{name} missing");
        }
        for spec in PROVIDERS {
            if let Some(url) = spec.base_url {
                validate_base_url(url, spec.local).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
                assert!(!url.ends_with('/'), "{}", spec.name);
            }
        }
    }
}
