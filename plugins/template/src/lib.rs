//! A template plugin: copy this crate, rename it, and edit.
//!
//! It adds a header naming the relay to every upstream request, and counts the
//! requests it saw in a declared counter. Build it with `scripts/build-plugins` (or
//! `cargo build --release --target wasm32-wasip2` in `plugins/`).

use relay_plugin_sdk::{
    Hooks, Manifest, Plugin, RequestDecision, RequestView, export, host, manifest, patch,
};

struct Template;

impl Plugin for Template {
    fn manifest() -> Manifest {
        let mut m = manifest("template", Hooks::BEFORE_REQUEST);
        m.metrics = vec!["requests".into()];
        // This plugin keeps nothing in globals between calls, so the host may run it
        // in warm, reused instances (much faster). Remove the line if yours does keep
        // state in globals: it then gets a fresh instance per request.
        m.stateless = true;
        m
    }

    fn init(config: String) -> Result<(), String> {
        // Reject configs you cannot use; the gateway refuses to start with them.
        match relay_plugin_sdk::serde_json::from_str::<relay_plugin_sdk::serde_json::Value>(&config)
        {
            Ok(v) if v.is_null() || v.is_object() => Ok(()),
            _ => Err("config must be a JSON object".into()),
        }
    }

    fn before_request(request: RequestView) -> RequestDecision {
        host::metric_add("requests", 1);
        let header = relay_plugin_sdk::config()
            .get("header")
            .and_then(|v| v.as_str())
            .unwrap_or("x-relay-template")
            .to_owned();
        let mut p = patch();
        p.set_headers.push((header, request.model));
        RequestDecision::Modify(p)
    }
}

export!(Template);
