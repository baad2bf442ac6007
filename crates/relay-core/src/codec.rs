//! Dialect codecs: one wire format to and from the [IR](crate::ir), for both sides of the
//! relay. A request from a client of dialect A to an upstream of dialect B goes
//! `A::decode_request → IR → B::encode_request`; the answer goes
//! `B::decode_response → IR → A::encode_response`, or for streams
//! `B::stream_decoder → IR events → A::stream_encoder`.
//!
//! Codecs are registered by [`DialectId`] in a [`CodecRegistry`]; nothing matches on
//! dialect names.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::dialect::{DialectId, JsonObject};
use crate::error::RelayError;
use crate::ir::{ChatRequest, ChatResponse, StreamEvent};
use crate::sse::SseEvent;

/// What a client stream encoder needs to know up front.
#[derive(Clone, Debug, Default)]
pub struct EncoderOptions {
    /// The client asked for usage in the stream (OpenAI's `include_usage`; dialects that
    /// always report usage ignore it).
    pub include_usage: bool,
    /// The model name to report to the client (what it asked for).
    pub model: String,
    /// An estimate of the prompt's tokens, for dialects that must report input usage
    /// before the upstream has (Anthropic's `message_start`).
    pub prompt_tokens_estimate: u64,
}

/// One wire format, both directions.
pub trait DialectCodec: Send + Sync + 'static {
    /// Which dialect.
    fn id(&self) -> DialectId;

    // ---- client side ----

    /// Decode a client's request (top-level fields, raw) into the IR. A feature the IR
    /// cannot carry is a 400 naming the field, never a silent drop.
    fn decode_request(&self, body: &JsonObject) -> Result<ChatRequest, RelayError>;
    /// Encode a whole answer for the client.
    fn encode_response(&self, response: &ChatResponse) -> Result<Bytes, RelayError>;
    /// A stream encoder for one client stream.
    fn stream_encoder(&self, options: EncoderOptions) -> Box<dyn StreamEncoder>;
    /// This dialect's JSON error body.
    fn error_body(&self, err: &RelayError) -> Bytes;

    // ---- upstream side ----

    /// Encode an IR request for an upstream of this dialect (the IR's `model` is the
    /// upstream model name). A feature this dialect cannot express is a 400.
    fn encode_request(&self, request: &ChatRequest) -> Result<Vec<u8>, RelayError>;
    /// Decode an upstream's whole answer.
    fn decode_response(&self, body: &[u8]) -> Result<ChatResponse, RelayError>;
    /// A stream decoder for one upstream stream.
    fn stream_decoder(&self) -> Box<dyn StreamDecoder>;
    /// A readable message from an upstream error body of this dialect.
    fn error_message(&self, body: &[u8]) -> String;
}

/// Upstream stream events of one dialect to IR events.
pub trait StreamDecoder: Send + 'static {
    /// Decode one SSE event, appending IR events. Returns `Ok(true)` once the stream's
    /// terminal event was seen. An error event from the upstream is an `Err`.
    fn decode(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, RelayError>;
    /// The upstream ended without a terminal event: `Ok` if that is a clean end in this
    /// dialect (Gemini has no terminal event), else the error describing the cut.
    fn finish(&mut self) -> Result<(), RelayError>;
}

/// IR events to one client dialect's stream bytes (SSE framing included).
pub trait StreamEncoder: Send + 'static {
    /// Encode one IR event.
    fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut);
    /// The stream ended cleanly: write whatever this dialect closes with.
    fn finish(&mut self, out: &mut BytesMut);
    /// The stream failed after it began: write this dialect's error event.
    fn error(&mut self, err: &RelayError, out: &mut BytesMut);
}

#[allow(dead_code)]
fn _codec_traits_are_object_safe(
    _: &dyn DialectCodec,
    _: &dyn StreamDecoder,
    _: &dyn StreamEncoder,
) {
}

/// Codecs by dialect.
#[derive(Clone, Default)]
pub struct CodecRegistry {
    codecs: HashMap<DialectId, Arc<dyn DialectCodec>>,
}

impl std::fmt::Debug for CodecRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.codecs.keys().map(|d| d.as_str()).collect();
        names.sort_unstable();
        f.debug_struct("CodecRegistry")
            .field("dialects", &names)
            .finish()
    }
}

impl CodecRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register (or replace) a codec under its dialect.
    pub fn register(&mut self, codec: Arc<dyn DialectCodec>) -> &mut Self {
        self.codecs.insert(codec.id(), codec);
        self
    }

    /// The codec of `dialect`.
    pub fn get(&self, dialect: DialectId) -> Option<&Arc<dyn DialectCodec>> {
        self.codecs.get(&dialect)
    }
}
