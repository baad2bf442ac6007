//! The provider catalog: data, not a match statement. Each entry becomes one
//! [`ProviderAdapter`] registered under its name, paired with its dialect's codec.

use std::sync::Arc;

use relay_core::codec::CodecRegistry;
use relay_core::{AdapterRegistry, DialectId};

use crate::provider::ProviderAdapter;

/// How a provider takes its credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// A named header carrying the bare key (`x-api-key`, `x-goog-api-key`, `api-key`).
    Header(&'static str),
}

/// How a provider's URLs are laid out under its base URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `{base}/chat/completions`, `{base}/embeddings`.
    OpenAi,
    /// `{base}/openai/deployments/{deployment}/chat/completions?api-version=...`; the
    /// deployment is the upstream model name (map models to deployments with
    /// `model_map`), the version the channel's `api_version` or the default here.
    AzureOpenAi {
        /// The api-version used when the channel sets none.
        default_api_version: &'static str,
    },
    /// `{base}/v1/messages`.
    Anthropic,
    /// `{base}/models/{model}:generateContent`, `...:streamGenerateContent?alt=sse`.
    Gemini,
}

/// One provider of the catalog.
#[derive(Clone, Copy, Debug)]
pub struct ProviderSpec {
    /// The name channels use in `provider`.
    pub name: &'static str,
    /// The dialect it speaks.
    pub dialect: DialectId,
    /// Its URL layout.
    pub layout: Layout,
    /// Default base URL; `None` when every channel must set one.
    pub base_url: Option<&'static str>,
    /// Credential scheme.
    pub auth: Auth,
    /// Headers sent on every request (API version pins).
    pub headers: &'static [(&'static str, &'static str)],
    /// Whether a channel must carry a credential.
    pub requires_key: bool,
    /// Local runtimes may live on loopback or private networks.
    pub local: bool,
    /// OpenAI dialect: whether the provider accepts `stream_options.include_usage` (else
    /// usage comes unasked, or is estimated).
    pub stream_options: bool,
}

const fn openai_compatible(name: &'static str, base_url: &'static str) -> ProviderSpec {
    ProviderSpec {
        name,
        dialect: DialectId::OPENAI_CHAT,
        layout: Layout::OpenAi,
        base_url: Some(base_url),
        auth: Auth::Bearer,
        headers: &[],
        requires_key: true,
        local: false,
        stream_options: true,
    }
}

/// Every provider Relay knows.
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
        base_url: None,
        requires_key: false,
        ..openai_compatible("openai-compatible", "")
    },
    // Azure OpenAI: base_url is the resource (`https://NAME.openai.azure.com`).
    ProviderSpec {
        layout: Layout::AzureOpenAi {
            default_api_version: "2024-10-21",
        },
        base_url: None,
        auth: Auth::Header("api-key"),
        ..openai_compatible("azure-openai", "")
    },
    ProviderSpec {
        name: "anthropic",
        dialect: DialectId::ANTHROPIC_MESSAGES,
        layout: Layout::Anthropic,
        base_url: Some("https://api.anthropic.com"),
        auth: Auth::Header("x-api-key"),
        headers: &[("anthropic-version", "2023-06-01")],
        requires_key: true,
        local: false,
        stream_options: false,
    },
    ProviderSpec {
        name: "gemini",
        dialect: DialectId::GEMINI,
        layout: Layout::Gemini,
        base_url: Some("https://generativelanguage.googleapis.com/v1beta"),
        auth: Auth::Header("x-goog-api-key"),
        headers: &[],
        requires_key: true,
        local: false,
        stream_options: false,
    },
    // The in-tree mock upstream (`relay-mock`); the gateway starts one when a channel
    // names this provider without a base_url.
    ProviderSpec {
        base_url: None,
        requires_key: false,
        local: true,
        ..openai_compatible("mock", "")
    },
];

/// The codecs of every dialect Relay speaks.
pub fn default_codecs() -> CodecRegistry {
    let mut codecs = CodecRegistry::new();
    codecs.register(Arc::new(crate::openai::OpenAiCodec));
    codecs.register(Arc::new(crate::anthropic::AnthropicCodec));
    codecs.register(Arc::new(crate::gemini::GeminiCodec));
    codecs
}

/// A registry holding one adapter per catalog provider.
pub fn default_registry() -> AdapterRegistry {
    let codecs = default_codecs();
    let mut registry = AdapterRegistry::new();
    for spec in PROVIDERS {
        if let Some(adapter) = ProviderAdapter::new(*spec, &codecs) {
            registry.register(Arc::new(adapter));
        }
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
            "azure-openai",
            "anthropic",
            "gemini",
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

    /// `build_request` turns these into headers with `from_static`, which panics on an
    /// invalid (or upper-case) name or value: every one must be valid.
    #[test]
    fn catalog_headers_are_valid_static_headers() {
        for spec in PROVIDERS {
            if let Auth::Header(name) = spec.auth {
                let parsed = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
                assert_eq!(parsed.as_str(), name, "{}: auth header name", spec.name);
            }
            for (name, value) in spec.headers {
                let parsed = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
                assert_eq!(parsed.as_str(), *name, "{}: header name", spec.name);
                http::HeaderValue::from_str(value).unwrap();
            }
        }
    }
}
