//! `hostile`: a plugin that misbehaves on purpose (tests only), failing closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

const NAME: &str = "hostile";
const FAILURE: relay_plugin_sdk::FailureMode = relay_plugin_sdk::FailureMode::FailClosed;
/// A fresh instance per request.
const STATELESS: bool = false;

include!("behaviour.rs");
