//! `relay-gateway plugin check`: load one component, check it against the WIT, list
//! what it imports and exports, run its `init` and each hook it declares once on a
//! sample request, and time them.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use relay_core::adapter::DecodedResponse;
use relay_core::hooks::{AttemptFailure, HookSession};
use relay_core::{DialectId, InboundRequest, JsonObject, Operation, RelayError};

use crate::bindings::Hooks;
use crate::chain::{ChainEntry, ItemChain};
use crate::error::PluginError;
use crate::host::{HostSettings, PluginHost, PluginSpec};
use crate::limits::PluginLimits;

/// What `check` found.
#[derive(Debug)]
pub struct CheckReport {
    /// The file.
    pub path: String,
    /// Its size.
    pub bytes: usize,
    /// SHA-256 (hex).
    pub sha256: String,
    /// Compile (or cache read) plus link time, ms.
    pub load_ms: f64,
    /// The component's imports.
    pub imports: Vec<String>,
    /// The component's exports.
    pub exports: Vec<String>,
    /// The manifest, printed.
    pub manifest: String,
    /// `init` with the given config.
    pub init: Result<(), String>,
    /// Each hook run: name, outcome, microseconds.
    pub runs: Vec<(String, String, f64)>,
    /// The metrics after the runs, printed.
    pub metrics: String,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: a relay:plugin@0.2.0 component", self.path)?;
        writeln!(
            f,
            "  size      {} bytes, sha256 {}",
            self.bytes, self.sha256
        )?;
        writeln!(
            f,
            "  load      {:.1} ms (compile or cache, link)",
            self.load_ms
        )?;
        writeln!(f, "  manifest  {}", self.manifest)?;
        writeln!(f, "  imports (capabilities):")?;
        for i in &self.imports {
            writeln!(f, "    {i}")?;
        }
        writeln!(f, "  exports:")?;
        for e in &self.exports {
            writeln!(f, "    {e}")?;
        }
        match &self.init {
            Ok(()) => writeln!(f, "  init      ok")?,
            Err(e) => writeln!(f, "  init      REJECTED: {e}")?,
        }
        writeln!(
            f,
            "  hooks on a sample request (fresh instance on the first call):"
        )?;
        for (hook, outcome, us) in &self.runs {
            writeln!(f, "    {hook:<16} {us:>9.1} us  {outcome}")?;
        }
        write!(f, "  metrics   {}", self.metrics)
    }
}

fn sample_request() -> InboundRequest {
    let body: JsonObject = serde_json::from_str(
        r#"{"model":"check-model","stream":false,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Write to jane.doe@example.com or call +1 415 555 0100 about card 4111 1111 1111 1111."}]}"#,
    )
    .unwrap_or_default();
    InboundRequest {
        dialect: DialectId::OPENAI_CHAT,
        op: Operation::Chat,
        model: "check-model".into(),
        stream: false,
        include_usage: false,
        body,
        prompt_chars: 90,
        ir: None,
    }
}

const SAMPLE_ANSWER: &str = r#"{"id":"chatcmpl-check","object":"chat.completion","model":"check-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there."},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":3,"total_tokens":23}}"#;
const SAMPLE_CHUNK: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello there.\"}}]}\n\n";
const SAMPLE_ERROR: &str = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;

/// Check the component at `path` with this item `config`.
pub fn check(path: &Path, config: &serde_json::Value) -> Result<CheckReport, PluginError> {
    let bytes = std::fs::read(path).map_err(|e| PluginError::Load {
        plugin: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })?;
    let host = PluginHost::new(HostSettings {
        max_instances: 16,
        ..HostSettings::default()
    })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let spec = PluginSpec {
        name,
        version: "check".into(),
        path: path.to_owned(),
        secrets: Default::default(),
        limits: PluginLimits::default(),
        failure_mode: None,
    };
    let started = Instant::now();
    let plugin = Arc::new(host.prepare(&spec, &bytes)?);
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let (imports, exports) = host.describe(&plugin);
    let config: Arc<str> = Arc::from(config.to_string());
    let init = crate::factory::init(&plugin, &config);
    let m = &plugin.manifest;
    let manifest = format!(
        "name={:?} hooks={:?} body-access={:?} stream-mode={:?} failure-mode={:?} secrets={:?} metrics={:?} stateless={}",
        m.name,
        m.hooks,
        m.body_access,
        m.stream_mode,
        m.failure_mode,
        m.secrets,
        m.metrics,
        m.stateless
    );

    let chain = ItemChain::new(vec![ChainEntry::new(plugin.clone(), config)]);
    let request = sample_request();
    let mut runs = Vec::new();
    let hooks = plugin.manifest.hooks;
    let mut time = |hook: &str, f: &mut dyn FnMut() -> String| {
        let declared = match hook {
            "before-request" => hooks.contains(Hooks::BEFORE_REQUEST),
            "after-response" => hooks.contains(Hooks::AFTER_RESPONSE),
            "on-error" => hooks.contains(Hooks::ON_ERROR),
            "on-stream-chunk" => hooks.contains(Hooks::ON_STREAM_CHUNK),
            _ => hooks.contains(Hooks::ON_STREAM_END),
        };
        if !declared {
            runs.push((
                hook.to_owned(),
                "not in the manifest: not called".to_owned(),
                0.0,
            ));
            return;
        }
        let t = Instant::now();
        let outcome = f();
        runs.push((hook.to_owned(), outcome, t.elapsed().as_secs_f64() * 1e6));
    };
    let mut session: Box<dyn HookSession> = Box::new(chain.session("req_check", 0));
    time("before-request", &mut || {
        format!("{:?}", short(session.before_request(&request)))
    });
    let mut answer = DecodedResponse {
        body: Bytes::from_static(SAMPLE_ANSWER.as_bytes()),
        content_type: HeaderValue::from_static("application/json"),
        usage: None,
    };
    time("after-response", &mut || {
        let r = session.after_response(&request, &mut answer);
        match r {
            Ok(()) if answer.body == SAMPLE_ANSWER.as_bytes() => "proceed".into(),
            Ok(()) => format!("modified: {}", String::from_utf8_lossy(&answer.body)),
            Err(e) => format!("refused: {e}"),
        }
    });
    let error = RelayError::upstream_status(429, "quota")
        .with_upstream_body(Bytes::from_static(SAMPLE_ERROR.as_bytes()));
    time("on-error", &mut || {
        format!(
            "{:?}",
            session.on_error(&AttemptFailure {
                error: &error,
                attempt: 1,
                item: 0,
            })
        )
    });
    if let Some(mut filter) = session.into_stream_filter() {
        let mut chunk = BytesMut::from(SAMPLE_CHUNK.as_bytes());
        time(
            "on-stream-chunk",
            &mut || match filter.on_chunk(&mut chunk) {
                Ok(()) if chunk.as_ref() == SAMPLE_CHUNK.as_bytes() => "pass".into(),
                Ok(()) if chunk.is_empty() => "dropped or held".into(),
                Ok(()) => format!("replaced: {:?}", String::from_utf8_lossy(&chunk)),
                Err(e) => format!("stopped: {e}"),
            },
        );
        let mut tail = BytesMut::from(&b"data: [DONE]\n\n"[..]);
        time("on-stream-end", &mut || match filter.on_end(&mut tail) {
            Ok(()) => format!("released {} bytes", tail.len()),
            Err(e) => format!("stopped: {e}"),
        });
    }
    let metrics = serde_json::to_string(&plugin.metrics()).unwrap_or_default();
    Ok(CheckReport {
        path: path.display().to_string(),
        bytes: bytes.len(),
        sha256: plugin.sha256.clone(),
        load_ms,
        imports,
        exports,
        manifest,
        init,
        runs,
        metrics,
    })
}

fn short(r: Result<relay_core::hooks::RequestAction, RelayError>) -> String {
    match r {
        Ok(relay_core::hooks::RequestAction::Proceed) => "proceed".into(),
        Ok(relay_core::hooks::RequestAction::Modify(p)) => {
            let fields: Vec<String> = p
                .set_fields
                .iter()
                .map(|(k, v)| format!("{k}={}", v.get()))
                .collect();
            let headers: Vec<String> = p
                .set_headers
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                .collect();
            format!(
                "modify: headers {headers:?} -{:?}; fields {fields:?} -{:?}",
                p.remove_headers, p.remove_fields
            )
        }
        Ok(relay_core::hooks::RequestAction::Respond(r)) => {
            format!("respond {}: {}", r.status, String::from_utf8_lossy(&r.body))
        }
        Err(e) => format!("deny: {e}"),
    }
}
