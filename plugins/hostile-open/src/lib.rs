//! `hostile-open`: the `hostile` plugin, failing open (tests only).
#![allow(clippy::unwrap_used, clippy::expect_used)]

const NAME: &str = "hostile-open";
const FAILURE: relay_plugin_sdk::FailureMode = relay_plugin_sdk::FailureMode::FailOpen;

include!("../../hostile/src/behaviour.rs");
