//! # relay-adapters
//!
//! Providers and dialect codecs for `relay-core`.
//!
//! - [`catalog`]: the provider catalog (OpenAI and the OpenAI-compatible services, with
//!   their base URLs and auth defaults) and [`default_registry`], which registers one
//!   adapter per catalog entry by name.
//! - [`openai`]: the `openai-chat` dialect: the client-side codec ([`openai::OpenAiDialect`]),
//!   the upstream adapter with its pass-through fast path, and the typed wire structs.

pub mod catalog;
pub mod openai;

pub use catalog::{PROVIDERS, ProviderSpec, default_registry};
