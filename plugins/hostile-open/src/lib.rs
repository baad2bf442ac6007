//! `hostile-open`: the `hostile` plugin, failing open (tests only). It declares itself
//! stateless, so the tests also cover warm instances under misbehaviour (and, with
//! `"mode": "count"`, show what a false claim means: globals carry over).
#![allow(clippy::unwrap_used, clippy::expect_used)]

const NAME: &str = "hostile-open";
const FAILURE: relay_plugin_sdk::FailureMode = relay_plugin_sdk::FailureMode::FailOpen;
/// Warm, reused instances.
const STATELESS: bool = true;

include!("../../hostile/src/behaviour.rs");
