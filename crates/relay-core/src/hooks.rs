//! The plugin hook contract: the phases the engine calls around each preset item and
//! attempt, the views and decisions they exchange, and the factory that turns a preset
//! item's `plugins` list into a hook chain.
//!
//! relay-core only defines the contract; the WebAssembly host (`relay-plugin-api`)
//! implements it. An item whose plugin list is empty (or whose plugins are all
//! disabled, or when no factory is registered) gets no chain at all, and the engine's
//! fast path is unchanged: no allocation, no clone.
//!
//! Phases (see ARCHITECTURE.md, "Plugins"):
//!
//! | phase | when | order | may |
//! |---|---|---|---|
//! | [`HookSession::before_request`] | before the first attempt on an item | list | patch, deny, respond |
//! | [`HookSession::on_error`] | after each failed attempt | reverse | retry, fall back, abort |
//! | [`HookSession::after_response`] | a complete answer | reverse | modify, replace, deny |
//! | [`StreamFilter::on_chunk`] / [`StreamFilter::on_end`] | a streamed answer | reverse | pass, replace, drop, stop |

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use serde_json::value::RawValue;

use crate::adapter::DecodedResponse;
use crate::config::PluginRef;
use crate::dialect::InboundRequest;
use crate::error::RelayError;

/// Builds hook chains for preset items. Registered on the
/// [`RelayBuilder`](crate::engine::RelayBuilder); called when a config is loaded or
/// reloaded, never on the request path.
pub trait PluginFactory: Send + Sync + 'static {
    /// The chain for one preset item, or `Ok(None)` when none of its plugins is
    /// enabled. An error (unknown plugin, config the plugin rejects) rejects the config.
    fn chain(
        &self,
        preset: &str,
        item: usize,
        plugins: &[PluginRef],
    ) -> Result<Option<Arc<dyn ItemHooks>>, String>;
}

/// The plugin chain of one preset item.
pub trait ItemHooks: Send + Sync + std::fmt::Debug + 'static {
    /// Start the hooks of one request on this item.
    fn start(&self, request_id: &str, item: usize) -> Box<dyn HookSession>;
}

/// The hooks of one request on one item: per-request state (for a Wasm host, the
/// request's plugin instances) lives here and is dropped with it.
pub trait HookSession: Send {
    /// Before the item's first attempt, in list order. `Err` refuses the request.
    fn before_request(&mut self, request: &InboundRequest) -> Result<RequestAction, RelayError>;

    /// After a failed attempt, in reverse order; the first decision other than
    /// [`ErrorAction::Default`] wins.
    fn on_error(&mut self, failure: &AttemptFailure<'_>) -> ErrorAction;

    /// A complete answer, in reverse order. `Err` replaces it with an error.
    fn after_response(
        &mut self,
        request: &InboundRequest,
        response: &mut DecodedResponse,
    ) -> Result<(), RelayError>;

    /// A stream is about to begin: the filter its chunks go through, if any plugin
    /// of the chain looks at streams.
    fn into_stream_filter(self: Box<Self>) -> Option<Box<dyn StreamFilter>>;
}

/// Filters a streamed answer, in the client's dialect, on its way out.
pub trait StreamFilter: Send {
    /// `chunk` holds the bytes produced since the last call (whole events). Rewrite it,
    /// empty it (drop, or hold back), or return `Err` to end the stream with that error.
    fn on_chunk(&mut self, chunk: &mut BytesMut) -> Result<(), RelayError>;

    /// The stream ends cleanly: append anything held back to `tail` (which the
    /// terminal event follows), or return `Err` to end it with an error instead.
    fn on_end(&mut self, tail: &mut BytesMut) -> Result<(), RelayError>;
}

/// A failed attempt, as `on_error` sees it.
#[derive(Debug)]
pub struct AttemptFailure<'a> {
    /// The error.
    pub error: &'a RelayError,
    /// Attempts so far in this request.
    pub attempt: u32,
    /// The preset item (0-based).
    pub item: usize,
}

/// What `before_request` decided.
#[derive(Debug)]
pub enum RequestAction {
    /// Go on unchanged.
    Proceed,
    /// Go on with these changes.
    Modify(RequestPatch),
    /// Answer without calling the upstream.
    Respond(Reply),
}

/// Changes to a request: upstream headers of every attempt of the item, and top-level
/// body fields.
#[derive(Debug, Default, Clone)]
pub struct RequestPatch {
    /// Headers to set on each upstream request.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers to remove from each upstream request.
    pub remove_headers: Vec<HeaderName>,
    /// Top-level body fields to set.
    pub set_fields: Vec<(String, Box<RawValue>)>,
    /// Top-level body fields to remove.
    pub remove_fields: Vec<String>,
}

/// Body fields a patch may not touch: the engine routes on them.
pub const PROTECTED_FIELDS: &[&str] = &["model", "stream"];

impl RequestPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set_headers.is_empty()
            && self.remove_headers.is_empty()
            && self.set_fields.is_empty()
            && self.remove_fields.is_empty()
    }

    /// Whether it changes the body.
    pub fn touches_body(&self) -> bool {
        !self.set_fields.is_empty() || !self.remove_fields.is_empty()
    }

    /// Add `later`'s changes after this one's (later wins).
    pub fn merge(&mut self, later: RequestPatch) {
        for (name, _) in &later.set_headers {
            self.remove_headers.retain(|h| h != name);
        }
        self.set_headers.extend(later.set_headers);
        self.remove_headers.extend(later.remove_headers);
        for name in &later.remove_fields {
            self.set_fields.retain(|(n, _)| n != name);
        }
        self.set_fields.extend(later.set_fields);
        self.remove_fields.extend(later.remove_fields);
    }

    /// Apply the body changes to `request` (protected fields are left alone). The
    /// decoded IR is dropped so that adapters decode the patched body.
    pub fn apply_body(&self, request: &mut InboundRequest) {
        if !self.touches_body() {
            return;
        }
        for name in &self.remove_fields {
            if !PROTECTED_FIELDS.contains(&name.as_str()) {
                request.body.shift_remove(name);
            }
        }
        for (name, value) in &self.set_fields {
            if !PROTECTED_FIELDS.contains(&name.as_str()) {
                request.body.insert(name.clone(), value.clone());
            }
        }
        request.ir = None;
    }

    /// Apply the header changes to an upstream request's headers.
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        for name in &self.remove_headers {
            headers.remove(name);
        }
        for (name, value) in &self.set_headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// A complete answer made by a plugin.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its content type.
    pub content_type: HeaderValue,
    /// Its body.
    pub body: Bytes,
}

/// What `on_error` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// What the engine does anyway.
    Default,
    /// Retry after this long, within the item's attempt budget.
    Retry(Duration),
    /// Leave this item now and go on with the next.
    Fallback,
    /// Fail the request with this error.
    Abort,
}

#[allow(dead_code)]
fn _hooks_are_object_safe(
    _: &dyn PluginFactory,
    _: &dyn ItemHooks,
    _: &dyn HookSession,
    _: &dyn StreamFilter,
) {
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn later_patches_win_and_protected_fields_stay() {
        let mut a = RequestPatch {
            set_fields: vec![
                ("temperature".into(), raw("0.1")),
                ("model".into(), raw("\"x\"")),
            ],
            remove_headers: vec![HeaderName::from_static("x-a")],
            ..RequestPatch::default()
        };
        a.merge(RequestPatch {
            set_headers: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("1"),
            )],
            remove_fields: vec!["temperature".into()],
            ..RequestPatch::default()
        });
        assert!(a.remove_headers.is_empty());
        assert_eq!(a.set_fields.len(), 1);
        let mut h = HeaderMap::new();
        a.apply_headers(&mut h);
        assert_eq!(h["x-a"], "1");
    }
}
