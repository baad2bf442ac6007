//! `guard`: refuses requests whose messages contain a configured term, and stops a
//! streamed (or replaces a complete) answer that contains one. Streams are watched in
//! `window(256)` mode, so a term split across chunks is still caught. Fails closed.
//!
//! Config: `{"terms": ["project zebra", ...], "message": "optional refusal text"}`;
//! matching ignores ASCII case. Terms longer than 256 bytes are refused by `init`.

use relay_plugin_sdk::serde_json::{self, Value};
use relay_plugin_sdk::{
    BodyAccess, ChunkDecision, ChunkView, FailureMode, Hooks, Manifest, Plugin, RequestDecision,
    RequestView, ResponseDecision, ResponseView, StreamMode, deny, export, host, manifest,
};

const WINDOW: u32 = 256;

struct Guard;

fn terms() -> Vec<String> {
    relay_plugin_sdk::config()
        .get("terms")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_ascii_lowercase)
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn found(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    terms().into_iter().find(|t| lower.contains(t.as_str()))
}

fn message() -> String {
    relay_plugin_sdk::config()
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("this content is not allowed here")
        .to_owned()
}

impl Plugin for Guard {
    fn manifest() -> Manifest {
        let mut m = manifest(
            "guard",
            Hooks::BEFORE_REQUEST | Hooks::AFTER_RESPONSE | Hooks::ON_STREAM_CHUNK,
        );
        m.body_access = BodyAccess::Messages;
        m.stream_mode = StreamMode::Window(WINDOW);
        m.failure_mode = FailureMode::FailClosed;
        m.metrics = vec!["blocked".into()];
        m.stateless = true;
        m
    }

    fn init(config: String) -> Result<(), String> {
        let v: Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let terms = v
            .get("terms")
            .and_then(Value::as_array)
            .ok_or("config needs \"terms\": [..]")?;
        for t in terms {
            let t = t.as_str().ok_or("terms must be strings")?;
            if t.len() > WINDOW as usize {
                return Err(format!("term longer than {WINDOW} bytes"));
            }
        }
        Ok(())
    }

    fn before_request(request: RequestView) -> RequestDecision {
        let text = request.messages.unwrap_or_default();
        match found(&text) {
            Some(term) => {
                host::metric_add("blocked", 1);
                host::log(
                    host::LogLevel::Info,
                    &format!("request refused: term {term:?}"),
                );
                RequestDecision::Deny(deny(400, message()))
            }
            None => RequestDecision::Proceed,
        }
    }

    fn after_response(response: ResponseView) -> ResponseDecision {
        match response.body.as_deref().and_then(found) {
            Some(_) => {
                host::metric_add("blocked", 1);
                ResponseDecision::Deny(deny(451, message()))
            }
            None => ResponseDecision::Proceed,
        }
    }

    fn on_stream_chunk(chunk: ChunkView) -> ChunkDecision {
        if chunk.text.is_empty() {
            return ChunkDecision::Pass;
        }
        let seen = format!("{}{}", chunk.window, chunk.text);
        match found(&seen) {
            Some(_) => {
                host::metric_add("blocked", 1);
                ChunkDecision::Stop(deny(451, message()))
            }
            None => ChunkDecision::Pass,
        }
    }
}

export!(Guard);
