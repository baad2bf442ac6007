//! # relay-plugin-api
//!
//! Relay's WebAssembly plugin host. Plugins are components of the world
//! `relay:plugin@0.2.0` (`wit/plugin.wit`); this crate runs them around each attempt of
//! a preset item by implementing relay-core's [`hooks`](relay_core::hooks) traits.
//!
//! - [`PluginHost`]: one wasmtime engine (pooling allocator, epoch interruption,
//!   compiled components cached on disk), one linker, the epoch ticker, the registry
//!   of loaded plugins; it is relay-core's [`PluginFactory`](relay_core::hooks::PluginFactory).
//! - [`ItemChain`] / [`Session`]: one item's plugins; a fresh instance per request per
//!   plugin, or warm reused instances for a plugin that declares itself stateless
//!   (`warm`); hooks in order, each plugin's failure mode, breaker and metrics.
//! - [`PluginLimits`]: memory cap, hook deadline, output cap, log rate, breaker.
//! - [`check`]: what `relay-gateway plugin check` reports.
//!
//! The sandbox: no WASI files, sockets, environment or arguments; stdout and stderr go
//! to the log; memory is capped by the pooling allocator and a store limiter; each
//! hook call has an epoch deadline; a plugin sees only its own config, declared
//! secrets, its own key-value namespace and declared counters.

mod bindings;
mod breaker;
mod chain;
pub mod check;
mod error;
mod factory;
mod host;
mod kv;
mod limits;
mod metrics;
mod prometheus;
mod state;
mod stdio;
mod warm;

pub use bindings::{BodyAccess, FailureMode, Manifest, StreamMode};
pub use chain::{ChainEntry, ChainStreamFilter, ItemChain, Session, event_text};
pub use error::PluginError;
pub use factory::init;
pub use host::{
    EPOCH_TICK, HostSettings, LoadedPlugin, PluginFailure, PluginHost, PluginSpec, WIT_VERSION,
};
pub use limits::PluginLimits;
pub use metrics::{LATENCY_BUCKETS_US, MetricsSnapshot};
