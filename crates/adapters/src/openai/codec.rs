//! `openai-chat` as a [`DialectCodec`]: the typed [`wire`](super::wire) structs and their
//! IR conversions behind the codec traits, for requests that cross dialects.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde::de::IgnoredAny;

use relay_core::codec::{DialectCodec, EncoderOptions, StreamDecoder, StreamEncoder};
use relay_core::ir::{ChatRequest, ChatResponse, StreamEvent};
use relay_core::sse::{SseEvent, encode_event};
use relay_core::{DialectId, ErrorKind, JsonObject, RelayError, Side};

use super::errors::{error_body, parse_error_body};
use super::wire::{
    self, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChunkDecoder, ChunkEncoder,
};

/// The OpenAI Chat Completions codec.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenAiCodec;

fn invalid(what: &str, e: serde_json::Error) -> RelayError {
    RelayError::bad_request(format!("Invalid {what}: {e}"))
}

fn protocol(what: &str, e: impl std::fmt::Display) -> RelayError {
    RelayError::new(
        ErrorKind::UpstreamProtocol,
        Side::Upstream,
        format!("the upstream sent an invalid {what}: {e}"),
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DialectCodec for OpenAiCodec {
    fn id(&self) -> DialectId {
        DialectId::OPENAI_CHAT
    }

    fn decode_request(&self, body: &JsonObject) -> Result<ChatRequest, RelayError> {
        let bytes = serde_json::to_vec(body).map_err(|e| RelayError::internal(e.to_string()))?;
        let req: ChatCompletionRequest =
            serde_json::from_slice(&bytes).map_err(|e| invalid("chat completion request", e))?;
        wire::request_to_ir(req)
    }

    fn encode_response(&self, response: &ChatResponse) -> Result<Bytes, RelayError> {
        let mut wire = wire::response_from_ir(response)?;
        if wire.created == 0 {
            wire.created = unix_now();
        }
        if !wire.id.starts_with("chatcmpl") {
            wire.id = format!("chatcmpl-{}", wire.id);
        }
        serde_json::to_vec(&wire)
            .map(Bytes::from)
            .map_err(|e| RelayError::internal(e.to_string()))
    }

    fn stream_encoder(&self, options: EncoderOptions) -> Box<dyn StreamEncoder> {
        Box::new(OpenAiStreamEncoder {
            inner: ChunkEncoder::new(options.include_usage),
            model: options.model,
            started: false,
        })
    }

    fn error_body(&self, err: &RelayError) -> Bytes {
        error_body(err)
    }

    fn encode_request(&self, request: &ChatRequest) -> Result<Vec<u8>, RelayError> {
        let wire = wire::request_from_ir(request)?;
        serde_json::to_vec(&wire).map_err(|e| RelayError::internal(e.to_string()))
    }

    fn decode_response(&self, body: &[u8]) -> Result<ChatResponse, RelayError> {
        let wire: ChatCompletion =
            serde_json::from_slice(body).map_err(|e| protocol("chat completion", e))?;
        wire::response_to_ir(wire)
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(OpenAiStreamDecoder {
            inner: ChunkDecoder::new(),
            finished: false,
        })
    }

    fn error_message(&self, body: &[u8]) -> String {
        parse_error_body(body)
    }
}

#[derive(Deserialize)]
struct ErrorProbe {
    #[serde(default)]
    error: Option<IgnoredAny>,
}

struct OpenAiStreamDecoder {
    inner: ChunkDecoder,
    finished: bool,
}

impl StreamDecoder for OpenAiStreamDecoder {
    fn decode(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, RelayError> {
        if event.is_done() {
            return Ok(true);
        }
        let chunk: ChatCompletionChunk = match serde_json::from_slice(&event.data) {
            Ok(c) => c,
            Err(e) => {
                if serde_json::from_slice::<ErrorProbe>(&event.data)
                    .is_ok_and(|p| p.error.is_some())
                {
                    return Err(RelayError::upstream_status(
                        502,
                        format!(
                            "the upstream reported an error mid-stream: {}",
                            parse_error_body(&event.data)
                        ),
                    ));
                }
                return Err(protocol("stream chunk", e));
            }
        };
        if chunk.choices.is_empty() && chunk.extra.contains_key("error") {
            return Err(RelayError::upstream_status(
                502,
                format!(
                    "the upstream reported an error mid-stream: {}",
                    parse_error_body(&event.data)
                ),
            ));
        }
        let before = out.len();
        self.inner.decode(&chunk, out);
        self.finished |= out[before..]
            .iter()
            .any(|e| matches!(e, StreamEvent::Finish { .. }));
        Ok(false)
    }

    fn finish(&mut self) -> Result<(), RelayError> {
        if self.finished {
            Ok(())
        } else {
            Err(RelayError::new(
                ErrorKind::StreamCut,
                Side::Upstream,
                "the upstream stream ended before its final event",
            ))
        }
    }
}

struct OpenAiStreamEncoder {
    inner: ChunkEncoder,
    model: String,
    started: bool,
}

impl OpenAiStreamEncoder {
    fn write(&mut self, chunks: Vec<String>, out: &mut BytesMut) {
        for chunk in chunks {
            encode_event(out, None, chunk.as_bytes());
        }
    }
}

impl StreamEncoder for OpenAiStreamEncoder {
    fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        let chunks = match event {
            StreamEvent::Start { id, created, .. } => {
                self.started = true;
                let id = if id.starts_with("chatcmpl") {
                    id.clone()
                } else {
                    format!("chatcmpl-{id}")
                };
                let created = if *created == 0 { unix_now() } else { *created };
                self.inner.encode(&StreamEvent::Start {
                    id,
                    model: self.model.clone(),
                    created,
                })
            }
            other => {
                if !self.started {
                    self.started = true;
                    let start = StreamEvent::Start {
                        id: format!("chatcmpl-relay{:016x}", rand_id()),
                        model: self.model.clone(),
                        created: unix_now(),
                    };
                    let mut chunks = self.inner.encode(&start);
                    chunks.extend(self.inner.encode(other));
                    chunks
                } else {
                    self.inner.encode(other)
                }
            }
        };
        self.write(chunks, out);
    }

    fn finish(&mut self, out: &mut BytesMut) {
        let chunks = self.inner.finish();
        self.write(chunks, out);
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    fn error(&mut self, err: &RelayError, out: &mut BytesMut) {
        encode_event(out, None, &error_body(err));
    }
}

fn rand_id() -> u64 {
    // Only needs to differ between streams; the time is enough.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
