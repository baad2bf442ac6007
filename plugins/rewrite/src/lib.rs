//! `rewrite`: per-item upstream header and JSON body overrides.
//!
//! Config: `{"set_headers": {"x-tenant": "acme"}, "remove_headers": ["x-debug"],
//! "set_fields": {"temperature": 0.2}, "remove_fields": ["user"]}` (all optional).
//! `model` and `stream` cannot be overridden (the relay routes on them).

use relay_plugin_sdk::serde_json::{self, Value};
use relay_plugin_sdk::{
    Hooks, Manifest, Plugin, RequestDecision, RequestView, export, manifest, patch,
};

struct Rewrite;

impl Plugin for Rewrite {
    fn manifest() -> Manifest {
        let mut m = manifest("rewrite", Hooks::BEFORE_REQUEST);
        m.stateless = true;
        m
    }

    fn init(config: String) -> Result<(), String> {
        let v: Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let Some(obj) = v.as_object() else {
            return Err("config must be an object".into());
        };
        for key in obj.keys() {
            if ![
                "set_headers",
                "remove_headers",
                "set_fields",
                "remove_fields",
            ]
            .contains(&key.as_str())
            {
                return Err(format!("unknown key {key:?}"));
            }
        }
        if let Some(h) = v.get("set_headers").and_then(Value::as_object)
            && h.values().any(|v| !v.is_string())
        {
            return Err("set_headers values must be strings".into());
        }
        Ok(())
    }

    fn before_request(_request: RequestView) -> RequestDecision {
        let config = relay_plugin_sdk::config();
        let mut p = patch();
        if let Some(h) = config.get("set_headers").and_then(Value::as_object) {
            for (k, v) in h {
                if let Some(v) = v.as_str() {
                    p.set_headers.push((k.clone(), v.to_owned()));
                }
            }
        }
        if let Some(h) = config.get("remove_headers").and_then(Value::as_array) {
            p.remove_headers = h
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
        }
        if let Some(f) = config.get("set_fields").and_then(Value::as_object) {
            for (k, v) in f {
                p.set_fields.push((k.clone(), v.to_string()));
            }
        }
        if let Some(f) = config.get("remove_fields").and_then(Value::as_array) {
            p.remove_fields = f
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
        }
        RequestDecision::Modify(p)
    }
}

export!(Rewrite);
