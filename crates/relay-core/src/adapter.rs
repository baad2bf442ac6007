//! The upstream side: the [`Adapter`] trait a provider implements, the
//! [`StreamTranslator`] it hands out per streamed attempt, and the registry that finds
//! adapters by provider name.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::config::{ChannelConfig, Secret};
use crate::dialect::{DialectId, InboundRequest};
use crate::error::RelayError;
use crate::sse::SseEvent;
use crate::usage::Usage;

/// Everything an adapter needs to build one attempt's upstream request.
#[derive(Debug)]
pub struct UpstreamCall<'a> {
    /// The client's request.
    pub request: &'a InboundRequest,
    /// The chosen channel.
    pub channel: &'a ChannelConfig,
    /// The channel's base URL, without a trailing slash.
    pub base_url: &'a str,
    /// This attempt's credential (rotated), if the channel has any.
    pub api_key: Option<&'a Secret>,
    /// The model name the upstream knows (after the channel's model map).
    pub model: &'a str,
}

/// A decoded non-streaming upstream answer, already in the client's dialect.
#[derive(Debug)]
pub struct DecodedResponse {
    /// The body for the client.
    pub body: Bytes,
    /// Its content type.
    pub content_type: HeaderValue,
    /// Usage, if the upstream reported it.
    pub usage: Option<Usage>,
}

/// What one upstream stream event meant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamProgress {
    /// The event carried content (text, a tool call, reasoning, a finish reason): the
    /// response may be committed to the client.
    pub content: bool,
    /// The stream is over (terminal event seen); stop reading the upstream.
    pub done: bool,
}

/// Turns one upstream stream into the client's stream, event by event, and keeps the
/// usage it sees. One instance per streamed attempt.
pub trait StreamTranslator: Send + 'static {
    /// Handle one upstream event, appending client bytes to `out`. An `Err` is an
    /// upstream error inside the stream.
    fn on_event(
        &mut self,
        event: SseEvent,
        out: &mut BytesMut,
    ) -> Result<StreamProgress, RelayError>;
    /// The upstream ended without a terminal event. Append what a clean end needs, or
    /// return the error that describes the cut.
    fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), RelayError>;
    /// Append an error event in the client's dialect.
    fn encode_error(&mut self, err: &RelayError, out: &mut BytesMut);
    /// Usage reported by the upstream so far.
    fn usage(&self) -> Option<Usage>;
    /// Characters of content produced so far (to estimate usage when none is reported).
    fn produced_chars(&self) -> usize;
}

/// One provider kind: how to reach it, authenticate, encode requests and decode answers.
///
/// Adapters are registered by provider name in an [`AdapterRegistry`]; the engine never
/// matches on provider names.
pub trait Adapter: Send + Sync + 'static {
    /// The provider name (`openai`, `deepseek`...).
    fn provider(&self) -> &str;
    /// The dialect this provider speaks upstream.
    fn dialect(&self) -> DialectId;
    /// The base URL used when a channel sets none.
    fn default_base_url(&self) -> Option<&str>;
    /// Whether a channel may point at loopback or private addresses without opting in
    /// (local runtimes such as ollama and vllm).
    fn allows_private_network(&self) -> bool {
        false
    }
    /// Whether a channel needs at least one credential.
    fn requires_key(&self) -> bool {
        true
    }
    /// Whether this adapter can serve clients of `dialect`.
    fn accepts(&self, dialect: DialectId) -> bool;
    /// Build the upstream request.
    fn build_request(&self, call: &UpstreamCall<'_>) -> Result<http::Request<Bytes>, RelayError>;
    /// Classify an upstream error answer (status, headers, at most a capped body).
    fn classify_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> RelayError;
    /// Decode a successful non-streaming answer for the client.
    fn decode_response(
        &self,
        call: &UpstreamCall<'_>,
        body: Bytes,
    ) -> Result<DecodedResponse, RelayError>;
    /// A translator for a successful streamed answer.
    fn stream_translator(
        &self,
        call: &UpstreamCall<'_>,
    ) -> Result<Box<dyn StreamTranslator>, RelayError>;
}

#[allow(dead_code)]
fn _adapter_is_object_safe(_: &dyn Adapter, _: &dyn StreamTranslator) {}

/// Adapters by provider name.
#[derive(Clone, Default)]
pub struct AdapterRegistry {
    adapters: HashMap<String, Arc<dyn Adapter>>,
}

impl std::fmt::Debug for AdapterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.adapters.keys().collect();
        names.sort();
        f.debug_struct("AdapterRegistry")
            .field("providers", &names)
            .finish()
    }
}

impl AdapterRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register (or replace) an adapter under its provider name.
    pub fn register(&mut self, adapter: Arc<dyn Adapter>) -> &mut Self {
        self.adapters.insert(adapter.provider().to_owned(), adapter);
        self
    }

    /// The adapter of `provider`.
    pub fn get(&self, provider: &str) -> Option<&Arc<dyn Adapter>> {
        self.adapters.get(provider)
    }

    /// Registered provider names, sorted.
    pub fn providers(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.adapters.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}
