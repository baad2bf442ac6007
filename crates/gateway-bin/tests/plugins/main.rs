//! Plugin tests: real guest components (built by `scripts/build-plugins`) run by the
//! real gateway over loopback in front of `relay-mock`. The example plugins do their
//! jobs; the hostile ones (`plugins/hostile`) misbehave while other requests keep
//! being served.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub,
    dead_code
)]

#[path = "../relay/support.rs"]
mod support;

mod dist;
mod examples;
mod hostile;

pub use dist::{plugin_dir, root};

use std::time::{Duration, Instant};

use relay_mock::{Behavior, MockServer};
use support::*;

/// The `[plugins]` section for these registry entries (TOML snippets, one per
/// plugin, each the body of a `[[plugins.registry]]` table).
pub fn plugins_section(entries: &[&str]) -> String {
    let dir = plugin_dir();
    let mut s = format!(
        "[plugins]\ndir = {:?}\ncache_dir = {:?}\nmax_instances = 64\n",
        dir.display().to_string(),
        root().join("target/plugin-cache").display().to_string(),
    );
    for e in entries {
        s.push_str("\n[[plugins.registry]]\n");
        s.push_str(e);
        s.push('\n');
        if !e.contains("limits") {
            // Generous for a debug build on a loaded machine; the hostile tests set
            // their own.
            s.push_str("limits = { hook_deadline_ms = 250 }\n");
        }
    }
    s.push('\n');
    s
}

/// A preset `name` over channel `channel`, with these plugins (a TOML inline array).
pub fn preset(name: &str, channel: &str, plugins: &str) -> String {
    format!(
        "[[presets]]\nname = \"{name}\"\n[[presets.items]]\nchannels = [\"{channel}\"]\nmodel = \"m\"\nplugins = {plugins}\n\n"
    )
}

pub async fn mock(b: Behavior) -> MockServer {
    MockServer::start(b).await.unwrap()
}

pub fn tokens(n: u32) -> Behavior {
    Behavior {
        tokens: n,
        ..Behavior::default()
    }
}

pub fn chat_with(model: &str, stream: bool, text: &str) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    })
}

/// Post and time it.
pub async fn timed(gw: &TestGateway, body: &serde_json::Value) -> (Reply, Duration) {
    let t = Instant::now();
    let r = gw.post("/v1/chat/completions", body).await;
    (r, t.elapsed())
}
