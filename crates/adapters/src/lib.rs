//! # relay-adapters
//!
//! Providers and dialect codecs for `relay-core`.
//!
//! - [`catalog`]: the provider catalog (OpenAI and the OpenAI-compatible services,
//!   Azure OpenAI, Anthropic, Gemini: base URLs, auth, URL layouts) and
//!   [`default_registry`], which registers one [`ProviderAdapter`] per entry by name.
//! - [`provider`]: the adapter: same-dialect fast path, cross-dialect translation.
//! - [`translate`]: stream translators built from codecs.
//! - [`openai`], [`anthropic`], [`gemini`]: each dialect's typed wire structs and codec
//!   (`DialectCodec`), plus OpenAI's fast request parser.

pub mod anthropic;
pub mod catalog;
pub mod client;
pub mod gemini;
pub mod openai;
pub mod provider;
pub mod translate;
mod uri_cache;

pub use catalog::{PROVIDERS, ProviderSpec, default_codecs, default_registry};
pub use client::CodecClient;
pub use provider::ProviderAdapter;
