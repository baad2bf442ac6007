//! A preset item's plugin chain: [`ItemChain`] implements relay-core's
//! [`ItemHooks`]; each request gets a [`Session`] that instantiates each plugin
//! lazily (a fresh instance per request per plugin; a stateless plugin's calls borrow
//! warm instances from its pool instead) and runs the hooks in order,
//! applying each plugin's failure mode; streams go through [`ChainStreamFilter`],
//! which enforces each plugin's stream mode.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use relay_core::adapter::DecodedResponse;
use relay_core::hooks::{
    AttemptFailure, ErrorAction, HookSession, ItemHooks, Reply, RequestAction, RequestPatch,
    StreamFilter,
};
use relay_core::{DialectId, ErrorKind, InboundRequest, JsonObject, RelayError, Side};
use serde_json::value::RawValue;

use crate::bindings::{
    self, BodyAccess, ChunkDecision, ChunkView, Denial, ErrorDecision, ErrorView, FailureMode,
    Hooks, RequestDecision, RequestView, ResponseDecision, ResponseView, StreamEndView, StreamMode,
};
use crate::host::{Live, LoadedPlugin, PluginFailure};
use crate::warm::WarmPool;

/// Upstream error bodies handed to `on-error`, at most.
const ERROR_BODY_MAX: usize = 64 * 1024;
/// The longest wait an `on-error` `retry` may ask for.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

/// One plugin of a chain, with this item's config.
#[derive(Debug, Clone)]
pub struct ChainEntry {
    /// The plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// The item's config for it (JSON text).
    pub config: Arc<str>,
    /// Idle warm instances, when the plugin reuses them.
    warm: Option<Arc<WarmPool>>,
}

impl ChainEntry {
    /// `plugin` with this item's `config`; a plugin that reuses instances gets a pool
    /// of warm ones for this config.
    pub fn new(plugin: Arc<LoadedPlugin>, config: Arc<str>) -> Self {
        let warm = plugin
            .reuses_instances()
            .then(|| Arc::new(WarmPool::new(plugin.warm_budget.clone())));
        ChainEntry {
            plugin,
            config,
            warm,
        }
    }
}

/// The plugins of one preset item, in list order.
#[derive(Debug)]
pub struct ItemChain {
    entries: Arc<[ChainEntry]>,
}

impl ItemChain {
    /// A chain of these entries (list order).
    pub fn new(entries: Vec<ChainEntry>) -> Self {
        ItemChain {
            entries: entries.into(),
        }
    }

    /// Start a session directly (benchmarks, `plugin check`).
    pub fn session(&self, request_id: &str, item: usize) -> Session {
        Session {
            entries: self.entries.clone(),
            live: (0..self.entries.len()).map(|_| None).collect(),
            request_id: request_id.to_owned(),
            item,
        }
    }
}

impl ItemHooks for ItemChain {
    fn start(&self, request_id: &str, item: usize) -> Box<dyn HookSession> {
        Box::new(self.session(request_id, item))
    }
}

/// One request's run through a chain: its plugin instances, made on first use.
pub struct Session {
    entries: Arc<[ChainEntry]>,
    live: Vec<Option<Live>>,
    request_id: String,
    item: usize,
}

fn implements(entry: &ChainEntry, hook: Hooks) -> bool {
    entry.plugin.manifest.hooks.contains(hook)
}

fn fail_closed(entry: &ChainEntry) -> bool {
    entry.plugin.failure_mode == FailureMode::FailClosed
}

/// The error a failed fail-closed plugin turns into.
fn failure_error(entry: &ChainEntry, failure: &PluginFailure) -> RelayError {
    RelayError::new(
        ErrorKind::Plugin,
        Side::Plugin,
        format!(
            "plugin `{}` failed ({failure}); the request was refused",
            entry.plugin.name
        ),
    )
    .with_status(StatusCode::SERVICE_UNAVAILABLE)
    .with_code("plugin_failed")
}

/// The error a denial turns into.
fn denial_error(entry: &ChainEntry, d: &Denial) -> RelayError {
    let status = StatusCode::from_u16(d.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::FORBIDDEN);
    let mut message = d.message.clone();
    truncate(&mut message, 1024);
    tracing::info!(plugin = %entry.plugin.name, status = status.as_u16(), code = ?d.code, "plugin denied");
    RelayError::new(ErrorKind::Plugin, Side::Plugin, message)
        .with_status(status)
        .with_code("plugin_denied")
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn messages_field(dialect: DialectId) -> &'static str {
    if dialect == DialectId::GEMINI {
        "contents"
    } else {
        "messages"
    }
}

fn too_large(len: usize, entry: &ChainEntry) -> Result<(), PluginFailure> {
    let max = entry.plugin.shared.limits.max_output_bytes;
    if len > max {
        return Err(PluginFailure::Invalid(format!(
            "returned {len} bytes; the limit is {max}"
        )));
    }
    Ok(())
}

impl Session {
    /// Call one hook of plugin `i`, instantiating it first if needed. A failure drops
    /// the instance (a trapped instance may not be entered again) and counts against
    /// the plugin's breaker.
    fn call<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(
            &bindings::Plugin,
            &mut wasmtime::Store<crate::state::HostState>,
        ) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        let Some(entry) = self.entries.get(i) else {
            return Err(PluginFailure::Invalid("no such plugin".into()));
        };
        let plugin = &entry.plugin;
        if !plugin.breaker.allow() {
            plugin.shared.metrics.on_rejected();
            return Err(PluginFailure::Open);
        }
        let instantiated = |made: Result<Live, PluginFailure>| {
            made.inspect_err(|_| {
                plugin.breaker.on_failure();
                plugin.shared.metrics.on_error();
            })
        };
        let called = |r: Result<R, PluginFailure>| {
            match &r {
                Ok(_) => plugin.breaker.on_success(),
                Err(e) => {
                    plugin.breaker.on_failure();
                    tracing::warn!(plugin = %plugin.name, request_id = %self.request_id, "plugin {e}");
                }
            }
            r
        };
        if let Some(pool) = &entry.warm {
            // Borrowed for this call only; a failed instance is not given back.
            let mut live = instantiated(pool.take(plugin, &entry.config))?;
            let r = live.call(plugin, f);
            if r.is_ok() {
                pool.give_back(live);
            }
            return called(r);
        }
        let slot = self
            .live
            .get_mut(i)
            .ok_or_else(|| PluginFailure::Invalid("no such plugin".into()))?;
        if slot.is_none() {
            *slot = Some(instantiated(plugin.instantiate(entry.config.clone()))?);
        }
        let Some(live) = slot.as_mut() else {
            return Err(PluginFailure::Invalid("no instance".into()));
        };
        let r = live.call(plugin, f);
        if r.is_err() {
            *slot = None;
        }
        called(r)
    }

    fn request_view(&self, entry: &ChainEntry, request: &InboundRequest) -> RequestView {
        let access = entry.plugin.manifest.body_access;
        let field = messages_field(request.dialect);
        RequestView {
            request_id: self.request_id.clone(),
            dialect: request.dialect.as_str().to_owned(),
            model: request.model.clone(),
            stream: request.stream,
            item: self.item as u32,
            messages_field: field.to_owned(),
            messages: match access {
                BodyAccess::None => None,
                _ => request.body.get(field).map(|v| v.get().to_owned()),
            },
            body: match access {
                BodyAccess::Full => serde_json::to_string(&request.body).ok(),
                _ => None,
            },
        }
    }
}

/// A WIT patch as relay-core's, checked.
fn convert_patch(
    p: bindings::RequestPatch,
    entry: &ChainEntry,
) -> Result<RequestPatch, PluginFailure> {
    let size: usize = p
        .set_headers
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        + p.set_fields
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + p.remove_headers.iter().map(String::len).sum::<usize>()
        + p.remove_fields.iter().map(String::len).sum::<usize>();
    too_large(size, entry)?;
    let header = |n: &str| {
        HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| PluginFailure::Invalid(format!("bad header name {n:?}")))
    };
    let mut out = RequestPatch::default();
    for (name, value) in p.set_headers {
        let value = HeaderValue::from_str(&value)
            .map_err(|_| PluginFailure::Invalid(format!("bad value for header {name:?}")))?;
        out.set_headers.push((header(&name)?, value));
    }
    for name in p.remove_headers {
        out.remove_headers.push(header(&name)?);
    }
    for (name, value) in p.set_fields {
        let raw = RawValue::from_string(value)
            .map_err(|e| PluginFailure::Invalid(format!("field {name:?} is not JSON: {e}")))?;
        out.set_fields.push((name, raw));
    }
    out.remove_fields = p.remove_fields;
    Ok(out)
}

impl HookSession for Session {
    fn before_request(&mut self, request: &InboundRequest) -> Result<RequestAction, RelayError> {
        let entries = self.entries.clone();
        let mut merged: Option<RequestPatch> = None;
        // Later plugins see earlier plugins' body changes.
        let mut patched: Option<InboundRequest> = None;
        for (i, entry) in entries.iter().enumerate() {
            if !implements(entry, Hooks::BEFORE_REQUEST) {
                continue;
            }
            let view = self.request_view(entry, patched.as_ref().unwrap_or(request));
            let decision = self
                .call(i, |p, s| p.call_before_request(s, &view))
                .and_then(|d| match d {
                    RequestDecision::Modify(p) => {
                        convert_patch(p, entry).map(RequestAction::Modify).map(Ok)
                    }
                    RequestDecision::Respond(r) => {
                        too_large(r.body.len() + r.content_type.len(), entry)?;
                        let status = StatusCode::from_u16(r.status).map_err(|_| {
                            PluginFailure::Invalid(format!("bad status {}", r.status))
                        })?;
                        let content_type = HeaderValue::from_str(&r.content_type)
                            .map_err(|_| PluginFailure::Invalid("bad content type".into()))?;
                        Ok(Ok(RequestAction::Respond(Reply {
                            status,
                            content_type,
                            body: Bytes::from(r.body),
                        })))
                    }
                    RequestDecision::Deny(d) => Ok(Err(denial_error(entry, &d))),
                    RequestDecision::Proceed => Ok(Ok(RequestAction::Proceed)),
                });
            match decision {
                Err(failure) if fail_closed(entry) => return Err(failure_error(entry, &failure)),
                Err(_) => continue,
                Ok(Err(deny)) => return Err(deny),
                Ok(Ok(RequestAction::Proceed)) => {}
                Ok(Ok(RequestAction::Respond(reply))) => return Ok(RequestAction::Respond(reply)),
                Ok(Ok(RequestAction::Modify(patch))) => {
                    if patch.touches_body() {
                        let mut owned = patched.take().unwrap_or_else(|| request.clone());
                        patch.apply_body(&mut owned);
                        patched = Some(owned);
                    }
                    match merged.as_mut() {
                        Some(m) => m.merge(patch),
                        None => merged = Some(patch),
                    }
                }
            }
        }
        Ok(match merged {
            Some(p) if !p.is_empty() => RequestAction::Modify(p),
            _ => RequestAction::Proceed,
        })
    }

    fn on_error(&mut self, failure: &AttemptFailure<'_>) -> ErrorAction {
        let entries = self.entries.clone();
        let err = failure.error;
        let body = err
            .upstream_body()
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(ERROR_BODY_MAX)]).into_owned());
        for (i, entry) in entries.iter().enumerate().rev() {
            if !implements(entry, Hooks::ON_ERROR) {
                continue;
            }
            let view = ErrorView {
                request_id: self.request_id.clone(),
                item: failure.item as u32,
                attempt: failure.attempt,
                kind: err.kind().as_str().to_owned(),
                status: err.upstream_code(),
                message: err.message().to_owned(),
                body: body.clone(),
                retryable: err.is_retryable(),
            };
            match self.call(i, |p, s| p.call_on_error(s, &view)) {
                Ok(ErrorDecision::Default) => {}
                Ok(ErrorDecision::Retry(ms)) => {
                    return ErrorAction::Retry(
                        Duration::from_millis(u64::from(ms)).min(RETRY_AFTER_MAX),
                    );
                }
                Ok(ErrorDecision::Fallback) => return ErrorAction::Fallback,
                Ok(ErrorDecision::Abort) => return ErrorAction::Abort,
                Err(_) if fail_closed(entry) => return ErrorAction::Abort,
                Err(_) => {}
            }
        }
        ErrorAction::Default
    }

    fn after_response(
        &mut self,
        request: &InboundRequest,
        response: &mut DecodedResponse,
    ) -> Result<(), RelayError> {
        let entries = self.entries.clone();
        for (i, entry) in entries.iter().enumerate().rev() {
            if !implements(entry, Hooks::AFTER_RESPONSE) {
                continue;
            }
            let view = ResponseView {
                request_id: self.request_id.clone(),
                model: request.model.clone(),
                dialect: request.dialect.as_str().to_owned(),
                body: match entry.plugin.manifest.body_access {
                    BodyAccess::None => None,
                    _ => Some(String::from_utf8_lossy(&response.body).into_owned()),
                },
            };
            let result = self
                .call(i, |p, s| p.call_after_response(s, &view))
                .and_then(|d| apply_response(d, entry, response));
            match result {
                Ok(Ok(())) => {}
                Ok(Err(deny)) => return Err(deny),
                Err(failure) if fail_closed(entry) => return Err(failure_error(entry, &failure)),
                Err(_) => {}
            }
        }
        Ok(())
    }

    fn into_stream_filter(self: Box<Self>) -> Option<Box<dyn StreamFilter>> {
        let stages: Vec<Stage> = self
            .entries
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, e)| {
                implements(e, Hooks::ON_STREAM_CHUNK) || implements(e, Hooks::ON_STREAM_END)
            })
            .map(|(i, e)| Stage {
                index: i,
                mode: e.plugin.manifest.stream_mode,
                seen: 0,
                window: String::new(),
                held: BytesMut::new(),
                bypass: false,
            })
            .collect();
        if stages.is_empty() {
            return None;
        }
        Some(Box::new(ChainStreamFilter {
            session: *self,
            stages,
        }))
    }
}

fn apply_response(
    d: ResponseDecision,
    entry: &ChainEntry,
    response: &mut DecodedResponse,
) -> Result<Result<(), RelayError>, PluginFailure> {
    match d {
        ResponseDecision::Proceed => {}
        ResponseDecision::Deny(d) => return Ok(Err(denial_error(entry, &d))),
        ResponseDecision::Replace(body) => {
            too_large(body.len(), entry)?;
            response.body = Bytes::from(body);
        }
        ResponseDecision::Modify(fields) => {
            too_large(fields.iter().map(|(k, v)| k.len() + v.len()).sum(), entry)?;
            let mut object: JsonObject = serde_json::from_slice(&response.body).map_err(|e| {
                PluginFailure::Invalid(format!("the response is not a JSON object: {e}"))
            })?;
            for (name, value) in fields {
                let raw = RawValue::from_string(value).map_err(|e| {
                    PluginFailure::Invalid(format!("field {name:?} is not JSON: {e}"))
                })?;
                object.insert(name, raw);
            }
            let body = serde_json::to_vec(&object)
                .map_err(|e| PluginFailure::Invalid(format!("cannot encode the response: {e}")))?;
            response.body = Bytes::from(body);
        }
    }
    Ok(Ok(()))
}

/// One plugin's place in a stream: its mode and what it keeps.
struct Stage {
    index: usize,
    mode: StreamMode,
    seen: u32,
    /// `window(n)`: the last n bytes of text; `buffer(n)`: all text so far.
    window: String,
    /// `buffer(n)`: the client bytes held back.
    held: BytesMut,
    /// A fail-open plugin that failed: its stage lets everything through.
    bypass: bool,
}

/// The stream filter of a chain (stages in reverse list order).
pub struct ChainStreamFilter {
    session: Session,
    stages: Vec<Stage>,
}

/// The text content of server-sent events in any dialect: the strings under `content`
/// and `text` keys (OpenAI `delta.content`, Anthropic `delta.text`, Gemini
/// `content.parts[].text`).
pub fn event_text(raw: &[u8]) -> String {
    fn walk(v: &serde_json::Value, key: Option<&str>, out: &mut String) {
        match v {
            serde_json::Value::String(s) if matches!(key, Some("content" | "text")) => {
                out.push_str(s)
            }
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    walk(v, Some(k), out);
                }
            }
            serde_json::Value::Array(items) => {
                for v in items {
                    walk(v, key, out);
                }
            }
            _ => {}
        }
    }
    let mut out = String::new();
    for line in raw.split(|b| *b == b'\n') {
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data.trim_ascii()) {
            walk(&v, None, &mut out);
        }
    }
    out
}

fn keep_tail(s: &mut String, n: usize) {
    if s.len() > n {
        let mut cut = s.len() - n;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s.drain(..cut);
    }
}

impl ChainStreamFilter {
    /// Run stage `k` on `chunk`.
    fn stage_chunk(&mut self, k: usize, chunk: &mut BytesMut) -> Result<(), RelayError> {
        let Some(stage) = self.stages.get_mut(k) else {
            return Ok(());
        };
        if stage.bypass || chunk.is_empty() {
            return Ok(());
        }
        let index = stage.index;
        let Some(entry) = self.session.entries.get(index).cloned() else {
            return Ok(());
        };
        let text = event_text(chunk);
        let mode = stage.mode;
        let call = implements(&entry, Hooks::ON_STREAM_CHUNK)
            && !(text.is_empty() && matches!(mode, StreamMode::Buffer(_)));
        let decision = if call {
            let view = ChunkView {
                request_id: self.session.request_id.clone(),
                index: stage.seen,
                text: text.clone(),
                window: match mode {
                    StreamMode::Passthrough => String::new(),
                    _ => stage.window.clone(),
                },
                raw: String::from_utf8_lossy(chunk).into_owned(),
            };
            stage.seen += 1;
            self.session
                .call(index, |p, s| p.call_on_stream_chunk(s, &view))
                .and_then(|d| {
                    if let ChunkDecision::Replace(r) = &d {
                        too_large(r.len(), &entry)?;
                    }
                    Ok(d)
                })
        } else {
            Ok(ChunkDecision::Pass)
        };
        let Some(stage) = self.stages.get_mut(k) else {
            return Ok(());
        };
        match decision {
            Err(failure) if fail_closed(&entry) => return Err(failure_error(&entry, &failure)),
            Err(_) => {
                // Fail open: release anything held and stop looking.
                stage.bypass = true;
                let held = stage.held.split();
                if !held.is_empty() {
                    let rest = chunk.split();
                    chunk.unsplit(held);
                    chunk.unsplit(rest);
                }
                return Ok(());
            }
            Ok(ChunkDecision::Stop(d)) => return Err(denial_error(&entry, &d)),
            Ok(ChunkDecision::Drop) => chunk.clear(),
            Ok(ChunkDecision::Replace(r)) => {
                chunk.clear();
                chunk.extend_from_slice(r.as_bytes());
            }
            Ok(ChunkDecision::Pass) => {}
        }
        match mode {
            StreamMode::Passthrough => {}
            StreamMode::Window(n) => {
                stage.window.push_str(&text);
                keep_tail(&mut stage.window, n as usize);
            }
            StreamMode::Buffer(max) => {
                stage.window.push_str(&text);
                stage.held.unsplit(chunk.split());
                if stage.held.len() > max as usize {
                    let failure = PluginFailure::Invalid(format!(
                        "the stream is over the plugin's buffer of {max} bytes"
                    ));
                    if fail_closed(&entry) {
                        return Err(failure_error(&entry, &failure));
                    }
                    stage.bypass = true;
                    chunk.unsplit(stage.held.split());
                }
            }
        }
        Ok(())
    }

    /// The stream ends at stage `k`: `on-stream-end`, then what it releases.
    fn stage_end(&mut self, k: usize) -> Result<BytesMut, RelayError> {
        let Some(stage) = self.stages.get_mut(k) else {
            return Ok(BytesMut::new());
        };
        let held = stage.held.split();
        if stage.bypass {
            return Ok(held);
        }
        let index = stage.index;
        let Some(entry) = self.session.entries.get(index).cloned() else {
            return Ok(held);
        };
        if !implements(&entry, Hooks::ON_STREAM_END) {
            return Ok(held);
        }
        let view = StreamEndView {
            request_id: self.session.request_id.clone(),
            chunks: stage.seen,
            text: match stage.mode {
                StreamMode::Buffer(_) => std::mem::take(&mut stage.window),
                _ => String::new(),
            },
        };
        match self
            .session
            .call(index, |p, s| p.call_on_stream_end(s, &view))
        {
            Err(failure) if fail_closed(&entry) => Err(failure_error(&entry, &failure)),
            Err(_) | Ok(ChunkDecision::Pass) => Ok(held),
            Ok(ChunkDecision::Drop) => Ok(BytesMut::new()),
            Ok(ChunkDecision::Replace(r)) => {
                if too_large(r.len(), &entry).is_err() {
                    return Ok(held);
                }
                Ok(BytesMut::from(r.as_bytes()))
            }
            Ok(ChunkDecision::Stop(d)) => Err(denial_error(&entry, &d)),
        }
    }
}

impl StreamFilter for ChainStreamFilter {
    fn on_chunk(&mut self, chunk: &mut BytesMut) -> Result<(), RelayError> {
        for k in 0..self.stages.len() {
            self.stage_chunk(k, chunk)?;
        }
        Ok(())
    }

    fn on_end(&mut self, tail: &mut BytesMut) -> Result<(), RelayError> {
        // `tail` passed every stage (the terminal event, if no stage holds it); what a
        // stage releases goes through the stages after it, ahead of the tail.
        let carry = tail.split();
        for k in 0..self.stages.len() {
            let mut released = self.stage_end(k)?;
            for later in k + 1..self.stages.len() {
                self.stage_chunk(later, &mut released)?;
            }
            tail.unsplit(released);
        }
        tail.unsplit(carry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_found_in_each_dialect() {
        let openai = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n";
        assert_eq!(event_text(openai), "Hello");
        let anthropic = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
        assert_eq!(event_text(anthropic), "Hi");
        let gemini = b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Yo\"}],\"role\":\"model\"}}]}\n\n";
        assert_eq!(event_text(gemini), "Yo");
        assert_eq!(event_text(b"data: [DONE]\n\n"), "");
    }

    #[test]
    fn windows_keep_their_tail_on_char_boundaries() {
        let mut s = String::from("héllo wörld");
        keep_tail(&mut s, 5);
        assert!(s.len() <= 5);
        assert!(s.ends_with("rld"));
    }
}
