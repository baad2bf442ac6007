//! # relay-gateway
//!
//! The standalone gateway over `relay-core`: an OpenAI-compatible HTTP front
//! (`/v1/chat/completions`, `/v1/embeddings`, `/v1/models`, `/healthz`), API keys,
//! request limits, structured logs with request ids, graceful shutdown, and the TOML
//! config that wires channels and presets. The binary (`relay-gateway`) is a thin CLI
//! over [`Gateway`].
//!
//! Modules: [`config`] (the TOML file), [`plugins`] (the plugin registry and `plugin check`), [`auth`] (keys), [`routes`] (inbound routes),
//! [`respond`] (the one error-to-response function), [`server`] (accept loop, drain),
//! [`usage_log`] (settlement records as log lines), [`startup_pages`] (start-up's
//! code pages given back once serving); with a store: [`tenancy`] (keys,
//! limits, quotas, usage to the store, config from the store), [`background`] (the
//! store's own thread and runtime, at a lower priority), [`keys`] (the key cache),
//! [`limits`] (RPM/TPM buckets), [`admin`] (the admin API), [`cli`] (store commands).

pub mod admin;
pub mod auth;
pub mod background;
pub mod cli;
pub mod config;
pub mod keys;
pub mod limits;
pub mod plugins;
pub mod respond;
pub mod routes;
pub mod server;
pub mod startup_pages;
pub mod tenancy;
pub mod usage_log;

pub use config::GatewayConfig;
pub use server::{Gateway, RunningGateway, StartError};
