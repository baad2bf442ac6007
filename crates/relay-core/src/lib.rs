//! # relay-core
//!
//! The embeddable heart of Relay: take an LLM API request in a client's wire format,
//! resolve the preset it names, pick an upstream channel, call it, stream the answer back,
//! retry and fail over while nothing has reached the client, and settle token usage once.
//!
//! This crate has no HTTP server, no storage and no plugin runtime (plugins reach it
//! through the [`hooks`] traits); providers come in as
//! [`Adapter`]s registered by name (see the `relay-adapters` crate), usage leaves through a
//! [`UsageSink`].
//!
//! ```no_run
//! # async fn demo(config: relay_core::RelayConfig, adapters: relay_core::AdapterRegistry,
//! #               inbound: relay_core::InboundRequest) -> Result<(), Box<dyn std::error::Error>> {
//! use relay_core::{Relay, RelayRequest, MemorySink};
//! let sink = MemorySink::new(1024);
//! let relay = Relay::builder(config).adapters(adapters).usage_sink(sink.clone()).build()?;
//! let response = relay.handle(RelayRequest::new(inbound, "req-1")).await?;
//! # let _ = response; Ok(()) }
//! ```
//!
//! Modules:
//! - [`config`]: channels, presets, defaults, validation;
//! - [`dialect`]: wire-format ids and the inbound request;
//! - [`adapter`]: the provider trait, stream translators, the registry;
//! - [`select`]: the routing table, strategies, health;
//! - [`engine`]: the relay loop, the response body, settlement;
//! - [`sse`]: incremental server-sent-events parsing and encoding;
//! - [`usage`]: usage records and sinks;
//! - [`hooks`]: the plugin hook contract (implemented by `relay-plugin-api`);
//! - [`error`]: the one error type.

pub mod adapter;
pub mod codec;
pub mod config;
pub mod dialect;
pub mod engine;
pub mod error;
pub mod hooks;
pub mod ir;
pub mod select;
pub mod sse;
pub mod usage;

pub use adapter::{
    Adapter, AdapterRegistry, DecodedResponse, StreamProgress, StreamTranslator, UpstreamCall,
};
pub use config::{
    ChannelConfig, ConfigError, PresetConfig, PresetItem, RelayConfig, Secret, Strategy,
};
pub use dialect::{
    ClientDialect, DialectId, InboundRequest, JsonObject, Operation, RouteParams, parse_json_object,
};
pub use engine::{BuildError, Relay, RelayBody, RelayRequest, UpstreamBody, UpstreamClient};
pub use error::{Disposition, ErrorKind, RelayError, Side};
pub use usage::{MemorySink, NullSink, Outcome, Usage, UsageRecord, UsageSink};
