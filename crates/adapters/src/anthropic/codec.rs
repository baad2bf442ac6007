//! [`AnthropicCodec`]: the `anthropic-messages` [`DialectCodec`], with its stream decoder
//! (Anthropic upstream events to IR events) and stream encoder (IR events to an Anthropic
//! client stream).

use bytes::{Bytes, BytesMut};
use relay_core::codec::{DialectCodec, EncoderOptions, StreamDecoder, StreamEncoder};
use relay_core::ir::{ChatRequest, ChatResponse, StreamEvent};
use relay_core::sse::{SseEvent, encode_event};
use relay_core::{DialectId, ErrorKind, JsonObject, RelayError, Side, Usage};
use serde::Serialize;

use super::wire::{self, BlockDelta, ContentBlock, MessageUsage, MessagesResponse};

/// The Anthropic Messages codec (`POST /v1/messages`), for clients and upstreams.
///
/// See [`wire`] for how each field maps to the IR. Streams:
/// - decoding follows the event types (`message_start`, `content_block_*`,
///   `message_delta`, `message_stop`; `ping` and unknown events are ignored). Tool calls
///   are numbered 0, 1... in the order their blocks start. `message_start` yields `Start`
///   and `Usage`; `message_delta` yields `Finish` and the merged, cumulative `Usage`.
///   Redacted-thinking and server-tool blocks are skipped (IR stream events cannot carry
///   them). An `error` event is an upstream error with Anthropic's status for its type
///   (`overloaded_error` is a retryable 529); an end without `message_stop` is a cut.
/// - encoding writes what the official SDKs' `messages.stream()` accumulates:
///   `message_start` (id `msg_`-prefixed, the client's model, input usage), one content
///   block at a time (text, thinking, tool use) with contiguous indexes, then, at the end
///   of the stream, `message_delta` (stop reason, cumulative usage) and `message_stop`;
///   a failure is an `error` event. Only choice 0 is written.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnthropicCodec;

impl DialectCodec for AnthropicCodec {
    fn id(&self) -> DialectId {
        DialectId::ANTHROPIC_MESSAGES
    }

    fn decode_request(&self, body: &JsonObject) -> Result<ChatRequest, RelayError> {
        wire::request_to_ir(wire::parse_request(body)?)
    }

    fn encode_response(&self, response: &ChatResponse) -> Result<Bytes, RelayError> {
        let message = wire::response_from_ir(response)?;
        serde_json::to_vec(&message)
            .map(Bytes::from)
            .map_err(|e| RelayError::internal(format!("encoding an anthropic message: {e}")))
    }

    fn stream_encoder(&self, options: EncoderOptions) -> Box<dyn StreamEncoder> {
        Box::new(MessageStreamEncoder::new(options))
    }

    fn error_body(&self, err: &RelayError) -> Bytes {
        wire::error_body(err)
    }

    fn encode_request(&self, request: &ChatRequest) -> Result<Vec<u8>, RelayError> {
        let body = wire::request_from_ir(request)?;
        serde_json::to_vec(&body)
            .map_err(|e| RelayError::internal(format!("encoding an anthropic request: {e}")))
    }

    fn decode_response(&self, body: &[u8]) -> Result<ChatResponse, RelayError> {
        let message: MessagesResponse = serde_json::from_slice(body).map_err(|e| {
            protocol(format!(
                "the upstream's answer is not an anthropic message: {e}"
            ))
        })?;
        if message.kind == "error" {
            let kind = serde_json::from_slice::<wire::ErrorResponse>(body)
                .map(|e| e.error.kind)
                .unwrap_or_default();
            return Err(RelayError::upstream_status(
                wire::error_type_status(&kind),
                wire::parse_error_body(body),
            ));
        }
        if message.kind != wire::MESSAGE_TYPE {
            return Err(protocol(format!(
                "the upstream's answer has type `{}`, not `message`",
                message.kind
            )));
        }
        Ok(wire::response_to_ir(message))
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(MessageStreamDecoder::default())
    }

    fn error_message(&self, body: &[u8]) -> String {
        wire::parse_error_body(body)
    }
}

fn protocol(message: String) -> RelayError {
    RelayError::new(ErrorKind::UpstreamProtocol, Side::Upstream, message)
}

// ---------------------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------------------

/// What an upstream content block is, by its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockKind {
    Text,
    Thinking,
    /// A tool call, with its ordinal among the message's tool calls.
    Tool(u32),
    /// A block the IR stream cannot carry (redacted thinking, server tools...).
    Skipped,
}

/// Anthropic stream events to IR events.
#[derive(Debug, Default)]
struct MessageStreamDecoder {
    started: bool,
    done: bool,
    blocks: Vec<(u32, BlockKind)>,
    tool_calls: u32,
    /// Usage merged from `message_start` and every `message_delta`.
    usage: MessageUsage,
}

impl MessageStreamDecoder {
    fn start(&mut self, id: &str, model: &str, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: id.to_owned(),
                model: model.to_owned(),
                created: 0,
            });
        }
    }

    fn kind(&self, index: u32) -> Option<BlockKind> {
        self.blocks
            .iter()
            .rev()
            .find(|(i, _)| *i == index)
            .map(|(_, k)| *k)
    }

    fn block_start(&mut self, index: u32, block: ContentBlock, out: &mut Vec<StreamEvent>) {
        let kind = match block {
            ContentBlock::Text(t) => {
                if !t.text.is_empty() {
                    out.push(StreamEvent::TextDelta {
                        choice: 0,
                        text: t.text,
                    });
                }
                BlockKind::Text
            }
            ContentBlock::Thinking(t) => {
                if !t.thinking.is_empty() {
                    out.push(StreamEvent::ThinkingDelta {
                        choice: 0,
                        text: t.thinking,
                    });
                }
                if !t.signature.is_empty() {
                    out.push(StreamEvent::ThinkingSignature {
                        choice: 0,
                        signature: t.signature,
                    });
                }
                BlockKind::Thinking
            }
            ContentBlock::ToolUse(t) => {
                let ordinal = self.tool_calls;
                self.tool_calls += 1;
                out.push(StreamEvent::ToolCallStart {
                    choice: 0,
                    index: ordinal,
                    id: t.id,
                    name: t.name,
                });
                // Anthropic starts with `{}` and streams the input; a proxy that sends the
                // whole input up front is passed on as one fragment.
                if t.input.as_object().is_some_and(|o| !o.is_empty()) {
                    out.push(StreamEvent::ToolCallDelta {
                        choice: 0,
                        index: ordinal,
                        arguments: t.input.to_string(),
                    });
                }
                BlockKind::Tool(ordinal)
            }
            _ => BlockKind::Skipped,
        };
        self.blocks.push((index, kind));
    }

    fn block_delta(&mut self, index: u32, delta: BlockDelta, out: &mut Vec<StreamEvent>) {
        let kind = self.kind(index);
        if kind == Some(BlockKind::Skipped) {
            return;
        }
        match delta {
            BlockDelta::TextDelta { text } if !text.is_empty() => {
                out.push(StreamEvent::TextDelta { choice: 0, text });
            }
            BlockDelta::ThinkingDelta { thinking } if !thinking.is_empty() => {
                out.push(StreamEvent::ThinkingDelta {
                    choice: 0,
                    text: thinking,
                });
            }
            BlockDelta::SignatureDelta { signature } if !signature.is_empty() => {
                out.push(StreamEvent::ThinkingSignature {
                    choice: 0,
                    signature,
                });
            }
            BlockDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                if let Some(BlockKind::Tool(ordinal)) = kind {
                    out.push(StreamEvent::ToolCallDelta {
                        choice: 0,
                        index: ordinal,
                        arguments: partial_json,
                    });
                }
            }
            _ => {}
        }
    }

    fn merge_usage(&mut self, u: MessageUsage) {
        let mine = &mut self.usage;
        if u.input_tokens.is_some() {
            mine.input_tokens = u.input_tokens;
        }
        if u.cache_creation_input_tokens.is_some() {
            mine.cache_creation_input_tokens = u.cache_creation_input_tokens;
        }
        if u.cache_read_input_tokens.is_some() {
            mine.cache_read_input_tokens = u.cache_read_input_tokens;
        }
        mine.output_tokens = u.output_tokens;
    }
}

impl StreamDecoder for MessageStreamDecoder {
    fn decode(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, RelayError> {
        if self.done {
            return Ok(true);
        }
        if event.data.iter().all(u8::is_ascii_whitespace) {
            return Ok(false);
        }
        let ev: wire::StreamEvent = serde_json::from_slice(&event.data).map_err(|e| {
            protocol(format!(
                "bad anthropic stream event `{}`: {e}",
                String::from_utf8_lossy(event.event_name())
            ))
        })?;
        match ev {
            wire::StreamEvent::MessageStart { message } => {
                self.start(&message.id, &message.model, out);
                self.merge_usage(message.usage);
                out.push(StreamEvent::Usage(wire::usage_to_ir(&self.usage)));
            }
            wire::StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                self.start("", "", out);
                self.block_start(index, content_block, out);
            }
            wire::StreamEvent::ContentBlockDelta { index, delta } => {
                self.start("", "", out);
                self.block_delta(index, delta, out);
            }
            wire::StreamEvent::MessageDelta { delta, usage } => {
                self.start("", "", out);
                if let Some(reason) = delta.stop_reason.as_deref() {
                    out.push(StreamEvent::Finish {
                        choice: 0,
                        reason: wire::stop_reason_to_ir(reason),
                    });
                }
                if let Some(usage) = usage {
                    self.merge_usage(usage);
                    out.push(StreamEvent::Usage(wire::usage_to_ir(&self.usage)));
                }
            }
            wire::StreamEvent::MessageStop => {
                self.done = true;
                return Ok(true);
            }
            wire::StreamEvent::Error { error } => {
                let status = wire::error_type_status(&error.kind);
                let message = if error.message.is_empty() {
                    "(no message)"
                } else {
                    &error.message
                };
                return Err(RelayError::upstream_status(
                    status,
                    format!("{message} [{}]", error.kind),
                ));
            }
            wire::StreamEvent::ContentBlockStop { .. }
            | wire::StreamEvent::Ping
            | wire::StreamEvent::Unknown => {}
        }
        Ok(false)
    }

    fn finish(&mut self) -> Result<(), RelayError> {
        if self.done {
            Ok(())
        } else {
            Err(RelayError::new(
                ErrorKind::StreamCut,
                Side::Upstream,
                "the anthropic stream ended before message_stop",
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------

/// The kind of the content block open in the client stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpenKind {
    Text,
    Thinking,
    /// A tool call, by its IR index.
    Tool(u32),
}

/// IR events to an Anthropic client stream, the way the official SDKs accumulate it.
///
/// - `message_start` comes first, written at the first event other than `Start` and
///   `Usage` (or at the end of the stream), so it carries the upstream's id (`msg_`
///   prefixed when it lacks it), the client's model, and the real input usage when the
///   upstream reported it by then (else the prompt estimate).
/// - Text, thinking and each tool call are content blocks, indexed from 0: a delta of
///   another kind, or another tool call, stops the open block and starts the next.
///   `input_json_delta` carries the IR's argument fragments as they are; a fragment for a
///   tool call whose block was already stopped (sources that interleave calls) is written
///   against that block's index, which the SDKs accumulate. Signatures are
///   `signature_delta`s of the open thinking block (one is started when none is open).
/// - `Finish` stops the open block and records the stop reason; `Usage` records usage.
///   `message_delta` (stop reason and cumulative usage, input included) and
///   `message_stop` are written by `finish()`, so usage reported after the finish (OpenAI
///   upstreams) is included. Without a `Finish` the reason is `end_turn` (`tool_use` when
///   the last block was a tool call); without a `Usage` it is the prompt estimate and
///   four characters a token of output.
/// - Only choice 0 is written.
#[derive(Debug)]
struct MessageStreamEncoder {
    model: String,
    estimate: u64,
    id: Option<String>,
    started: bool,
    ended: bool,
    open: Option<(OpenKind, u32)>,
    last_kind: Option<OpenKind>,
    next_index: u32,
    /// IR tool-call index to block index.
    tools: Vec<(u32, u32)>,
    stop_reason: Option<String>,
    usage: Option<Usage>,
    produced_chars: u64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Out<'a> {
    MessageStart {
        message: OutMessage<'a>,
    },
    ContentBlockStart {
        index: u32,
        content_block: OutBlock<'a>,
    },
    ContentBlockDelta {
        index: u32,
        delta: OutDelta<'a>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: OutMessageDelta<'a>,
        usage: MessageUsage,
    },
    MessageStop,
    Error {
        error: OutError<'a>,
    },
}

impl Out<'_> {
    fn name(&self) -> &'static str {
        match self {
            Out::MessageStart { .. } => "message_start",
            Out::ContentBlockStart { .. } => "content_block_start",
            Out::ContentBlockDelta { .. } => "content_block_delta",
            Out::ContentBlockStop { .. } => "content_block_stop",
            Out::MessageDelta { .. } => "message_delta",
            Out::MessageStop => "message_stop",
            Out::Error { .. } => "error",
        }
    }

    fn write(&self, out: &mut BytesMut) {
        // Serializing these borrowed structs (string keys only) cannot fail.
        if let Ok(data) = serde_json::to_vec(self) {
            encode_event(out, Some(self.name()), &data);
        }
    }
}

#[derive(Serialize)]
struct OutMessage<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: [(); 0],
    stop_reason: Option<()>,
    stop_sequence: Option<()>,
    usage: MessageUsage,
}

#[derive(Serialize)]
struct EmptyObject {}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutBlock<'a> {
    Text {
        text: &'static str,
    },
    Thinking {
        thinking: &'static str,
        signature: &'static str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: EmptyObject,
    },
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum OutDelta<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

#[derive(Serialize)]
struct OutMessageDelta<'a> {
    stop_reason: &'a str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct OutError<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

impl MessageStreamEncoder {
    fn new(options: EncoderOptions) -> Self {
        MessageStreamEncoder {
            model: options.model,
            estimate: options.prompt_tokens_estimate,
            id: None,
            started: false,
            ended: false,
            open: None,
            last_kind: None,
            next_index: 0,
            tools: Vec::new(),
            stop_reason: None,
            usage: None,
            produced_chars: 0,
        }
    }

    fn ensure_started(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let id = self
            .id
            .get_or_insert_with(|| wire::message_id(&format!("relay_{:x}", fallback_id_seed())))
            .clone();
        let usage = match &self.usage {
            Some(u) => wire::usage_from_ir(u),
            None => MessageUsage {
                input_tokens: Some(self.estimate),
                ..MessageUsage::default()
            },
        };
        Out::MessageStart {
            message: OutMessage {
                id: &id,
                kind: wire::MESSAGE_TYPE,
                role: "assistant",
                model: &self.model,
                content: [],
                stop_reason: None,
                stop_sequence: None,
                usage,
            },
        }
        .write(out);
    }

    fn close(&mut self, out: &mut BytesMut) {
        if let Some((_, index)) = self.open.take() {
            Out::ContentBlockStop { index }.write(out);
        }
    }

    /// Make a block of `kind` the open one, starting it if needed; returns its index.
    fn open(&mut self, kind: OpenKind, id: &str, name: &str, out: &mut BytesMut) -> u32 {
        if let Some((open, index)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((kind, index));
        self.last_kind = Some(kind);
        let generated: String;
        let content_block = match kind {
            OpenKind::Text => OutBlock::Text { text: "" },
            OpenKind::Thinking => OutBlock::Thinking {
                thinking: "",
                signature: "",
            },
            OpenKind::Tool(ir_index) => {
                self.tools.push((ir_index, index));
                let id = if id.is_empty() {
                    // Clients send the id back with the result: never leave it empty.
                    let message = self.id.as_deref().unwrap_or_default();
                    let message = message.strip_prefix("msg_").unwrap_or(message);
                    generated = format!("toolu_{message}_{ir_index}");
                    &generated
                } else {
                    id
                };
                OutBlock::ToolUse {
                    id,
                    name,
                    input: EmptyObject {},
                }
            }
        };
        Out::ContentBlockStart {
            index,
            content_block,
        }
        .write(out);
        index
    }

    fn delta(&self, index: u32, delta: OutDelta<'_>, out: &mut BytesMut) {
        Out::ContentBlockDelta { index, delta }.write(out);
    }

    fn final_usage(&self) -> MessageUsage {
        match &self.usage {
            Some(u) => wire::usage_from_ir(u),
            None => MessageUsage {
                input_tokens: Some(self.estimate),
                output_tokens: self.produced_chars.div_ceil(4),
                cache_read_input_tokens: Some(0),
                ..MessageUsage::default()
            },
        }
    }
}

/// A per-process varying number for the id of a stream whose upstream gave none.
fn fallback_id_seed() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl StreamEncoder for MessageStreamEncoder {
    fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        match event {
            StreamEvent::Start { id, model, .. } => {
                if self.id.is_none() && !id.is_empty() {
                    self.id = Some(wire::message_id(id));
                }
                if self.model.is_empty() {
                    self.model.clone_from(model);
                }
            }
            StreamEvent::Usage(usage) => self.usage = Some(*usage),
            StreamEvent::TextDelta { choice: 0, text } if !text.is_empty() => {
                self.ensure_started(out);
                let index = self.open(OpenKind::Text, "", "", out);
                self.delta(index, OutDelta::Text { text }, out);
                self.produced_chars += text.chars().count() as u64;
            }
            StreamEvent::ThinkingDelta { choice: 0, text } if !text.is_empty() => {
                self.ensure_started(out);
                let index = self.open(OpenKind::Thinking, "", "", out);
                self.delta(index, OutDelta::Thinking { thinking: text }, out);
                self.produced_chars += text.chars().count() as u64;
            }
            StreamEvent::ThinkingSignature {
                choice: 0,
                signature,
            } if !signature.is_empty() => {
                self.ensure_started(out);
                let index = self.open(OpenKind::Thinking, "", "", out);
                self.delta(index, OutDelta::Signature { signature }, out);
            }
            StreamEvent::ToolCallStart {
                choice: 0,
                index,
                id,
                name,
            } => {
                self.ensure_started(out);
                if !self.tools.iter().any(|(i, _)| i == index) {
                    self.open(OpenKind::Tool(*index), id, name, out);
                }
            }
            StreamEvent::ToolCallDelta {
                choice: 0,
                index,
                arguments,
            } if !arguments.is_empty() => {
                self.ensure_started(out);
                let block = match self.tools.iter().find(|(i, _)| i == index) {
                    Some((_, block)) => *block,
                    // Arguments without a start: give the call a block of its own.
                    None => self.open(OpenKind::Tool(*index), "", "", out),
                };
                self.delta(
                    block,
                    OutDelta::InputJson {
                        partial_json: arguments,
                    },
                    out,
                );
                self.produced_chars += arguments.chars().count() as u64;
            }
            StreamEvent::Finish { choice: 0, reason } => {
                self.ensure_started(out);
                self.close(out);
                self.stop_reason = Some(wire::stop_reason_from_ir(reason).to_owned());
            }
            _ => {}
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        self.ensure_started(out);
        self.close(out);
        self.ended = true;
        let stop_reason = match (&self.stop_reason, self.last_kind) {
            (Some(reason), _) => reason.as_str(),
            (None, Some(OpenKind::Tool(_))) => "tool_use",
            (None, _) => "end_turn",
        };
        Out::MessageDelta {
            delta: OutMessageDelta {
                stop_reason,
                stop_sequence: None,
            },
            usage: self.final_usage(),
        }
        .write(out);
        Out::MessageStop.write(out);
    }

    fn error(&mut self, err: &RelayError, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        self.ended = true;
        Out::Error {
            error: OutError {
                kind: wire::error_type(err),
                message: err.message(),
            },
        }
        .write(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::ir::FinishReason;
    use relay_core::sse::SseParser;
    use serde_json::{Value, json};

    use StreamEvent as E;

    const SIGNATURE: &str = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds";

    /// A stream as the Messages API sends it: thinking, text, a tool call whose input comes
    /// in fragments, pings, cumulative usage.
    fn transcript() -> String {
        let events = [
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                    "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 1024, "output_tokens": 3, "service_tier": "standard"}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": "The user wants the weather"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": " in Paris."}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "signature_delta", "signature": SIGNATURE}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1,
                    "content_block": {"type": "text", "text": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "text_delta", "text": "I'll check "}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "text_delta", "text": "the weather."}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 2,
                    "content_block": {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                        "name": "get_weather", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                    "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                    "delta": {"type": "input_json_delta", "partial_json": "{\"location\":"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                    "delta": {"type": "input_json_delta", "partial_json": " \"Paris, Fr"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                    "delta": {"type": "input_json_delta", "partial_json": "ance\", \"unit\": \"c"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                    "delta": {"type": "input_json_delta", "partial_json": "elsius\"}"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 2}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                    "usage": {"output_tokens": 89}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        let mut out = String::new();
        for (name, data) in events {
            out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
        }
        out
    }

    fn parse_sse(bytes: &[u8]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        parser.push(bytes);
        let mut events = Vec::new();
        while let Some(ev) = parser.next_event().unwrap() {
            events.push(ev);
        }
        assert!(
            parser.finish().unwrap().is_none(),
            "a partial event is left"
        );
        events
    }

    /// Decode a whole upstream stream; the flag says whether `message_stop` was seen.
    fn decode_all(sse: &str) -> (Vec<E>, bool) {
        let mut dec = AnthropicCodec.stream_decoder();
        let mut out = Vec::new();
        let mut done = false;
        for ev in parse_sse(sse.as_bytes()) {
            assert!(!done, "an event after message_stop");
            done = dec.decode(&ev, &mut out).unwrap();
        }
        (out, done)
    }

    fn options() -> EncoderOptions {
        EncoderOptions {
            include_usage: false,
            model: "claude-sonnet-4".into(),
            prompt_tokens_estimate: 400,
        }
    }

    fn encode_all(events: &[E], options: EncoderOptions) -> Vec<u8> {
        let mut enc = AnthropicCodec.stream_encoder(options);
        let mut out = BytesMut::new();
        for ev in events {
            enc.encode(ev, &mut out);
        }
        enc.finish(&mut out);
        // Finishing twice writes nothing more.
        let len = out.len();
        enc.finish(&mut out);
        assert_eq!(out.len(), len);
        out.to_vec()
    }

    /// What an SDK's `messages.stream()` accumulates, after checking the event order.
    #[derive(Debug, Default)]
    struct Accumulated {
        message: Value,
        blocks: Vec<Value>,
        json_bufs: Vec<String>,
        stop_reason: Value,
        usage: Value,
    }

    fn accumulate(bytes: &[u8]) -> Accumulated {
        let events = parse_sse(bytes);
        let mut acc = Accumulated::default();
        let mut open: Option<usize> = None;
        let last = events.len() - 1;
        for (i, ev) in events.iter().enumerate() {
            let name = std::str::from_utf8(ev.event.as_deref().expect("an event: line")).unwrap();
            let data: Value = serde_json::from_slice(&ev.data).unwrap();
            assert_eq!(data["type"], json!(name), "event line and data.type differ");
            match name {
                "message_start" => {
                    assert_eq!(i, 0, "message_start must come first");
                    let m = &data["message"];
                    for key in [
                        "id",
                        "type",
                        "role",
                        "model",
                        "content",
                        "stop_reason",
                        "stop_sequence",
                        "usage",
                    ] {
                        assert!(m.get(key).is_some(), "message_start lacks {key}");
                    }
                    assert_eq!(m["content"], json!([]));
                    assert!(m["usage"]["input_tokens"].is_u64());
                    assert!(m["usage"]["output_tokens"].is_u64());
                    acc.message = m.clone();
                }
                "content_block_start" => {
                    assert!(open.is_none(), "a block starts while another is open");
                    let index = data["index"].as_u64().unwrap() as usize;
                    assert_eq!(
                        index,
                        acc.blocks.len(),
                        "block indexes must count up from 0"
                    );
                    acc.blocks.push(data["content_block"].clone());
                    acc.json_bufs.push(String::new());
                    open = Some(index);
                }
                "content_block_delta" => {
                    let index = data["index"].as_u64().unwrap() as usize;
                    assert_eq!(open, Some(index), "a delta outside its open block");
                    let d = &data["delta"];
                    let block = &mut acc.blocks[index];
                    match d["type"].as_str().unwrap() {
                        "text_delta" => {
                            assert_eq!(block["type"], json!("text"));
                            let text = block["text"].as_str().unwrap().to_owned();
                            block["text"] = json!(text + d["text"].as_str().unwrap());
                        }
                        "thinking_delta" => {
                            assert_eq!(block["type"], json!("thinking"));
                            let text = block["thinking"].as_str().unwrap().to_owned();
                            block["thinking"] = json!(text + d["thinking"].as_str().unwrap());
                        }
                        "signature_delta" => {
                            assert_eq!(block["type"], json!("thinking"));
                            block["signature"] = d["signature"].clone();
                        }
                        "input_json_delta" => {
                            assert_eq!(block["type"], json!("tool_use"));
                            acc.json_bufs[index].push_str(d["partial_json"].as_str().unwrap());
                        }
                        other => panic!("unknown delta {other}"),
                    }
                }
                "content_block_stop" => {
                    let index = data["index"].as_u64().unwrap() as usize;
                    assert_eq!(open, Some(index), "stop of a block that is not open");
                    if acc.blocks[index]["type"] == json!("tool_use")
                        && !acc.json_bufs[index].is_empty()
                    {
                        acc.blocks[index]["input"] =
                            serde_json::from_str(&acc.json_bufs[index]).unwrap();
                    }
                    open = None;
                }
                "message_delta" => {
                    assert_eq!(i, last - 1, "message_delta must be second to last");
                    assert!(open.is_none(), "message_delta while a block is open");
                    acc.stop_reason = data["delta"]["stop_reason"].clone();
                    assert_eq!(data["delta"]["stop_sequence"], Value::Null);
                    acc.usage = data["usage"].clone();
                }
                "message_stop" => assert_eq!(i, last, "message_stop must be last"),
                other => panic!("unexpected event {other}"),
            }
        }
        assert!(!acc.message.is_null(), "no message_start");
        assert!(!acc.stop_reason.is_null(), "no message_delta");
        acc
    }

    #[test]
    fn anthropic_stream_decodes_to_ir_and_re_encodes_validly() {
        let (events, done) = decode_all(&transcript());
        assert!(done);
        let usage = |output| Usage {
            input_tokens: 472 + 1024,
            output_tokens: output,
            cached_input_tokens: 1024,
            reasoning_tokens: 0,
        };
        assert_eq!(
            events,
            vec![
                E::Start {
                    id: "msg_01XFDUDYJgAACzvnptvVoYEL".into(),
                    model: "claude-sonnet-4-20250514".into(),
                    created: 0
                },
                E::Usage(usage(3)),
                E::ThinkingDelta {
                    choice: 0,
                    text: "The user wants the weather".into()
                },
                E::ThinkingDelta {
                    choice: 0,
                    text: " in Paris.".into()
                },
                E::ThinkingSignature {
                    choice: 0,
                    signature: SIGNATURE.into()
                },
                E::TextDelta {
                    choice: 0,
                    text: "I'll check ".into()
                },
                E::TextDelta {
                    choice: 0,
                    text: "the weather.".into()
                },
                E::ToolCallStart {
                    choice: 0,
                    index: 0,
                    id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                    name: "get_weather".into()
                },
                E::ToolCallDelta {
                    choice: 0,
                    index: 0,
                    arguments: "{\"location\":".into()
                },
                E::ToolCallDelta {
                    choice: 0,
                    index: 0,
                    arguments: " \"Paris, Fr".into()
                },
                E::ToolCallDelta {
                    choice: 0,
                    index: 0,
                    arguments: "ance\", \"unit\": \"c".into()
                },
                E::ToolCallDelta {
                    choice: 0,
                    index: 0,
                    arguments: "elsius\"}".into()
                },
                E::Finish {
                    choice: 0,
                    reason: FinishReason::ToolCalls
                },
                E::Usage(usage(89)),
            ]
        );

        let bytes = encode_all(&events, options());
        let acc = accumulate(&bytes);
        assert_eq!(acc.message["id"], json!("msg_01XFDUDYJgAACzvnptvVoYEL"));
        assert_eq!(acc.message["model"], json!("claude-sonnet-4"));
        // The real usage arrived before the first content, so message_start has it.
        assert_eq!(
            acc.message["usage"],
            json!({"input_tokens": 472, "output_tokens": 3, "cache_read_input_tokens": 1024})
        );
        assert_eq!(
            acc.blocks,
            vec![
                json!({"type": "thinking", "thinking": "The user wants the weather in Paris.", "signature": SIGNATURE}),
                json!({"type": "text", "text": "I'll check the weather."}),
                json!({"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather",
                    "input": {"location": "Paris, France", "unit": "celsius"}}),
            ]
        );
        // The fragments are written exactly as received.
        assert_eq!(
            acc.json_bufs[2],
            "{\"location\": \"Paris, France\", \"unit\": \"celsius\"}"
        );
        assert_eq!(acc.stop_reason, json!("tool_use"));
        assert_eq!(
            acc.usage,
            json!({"input_tokens": 472, "output_tokens": 89, "cache_read_input_tokens": 1024})
        );

        // Decoding what we encoded gives the same IR events back (ids aside).
        let (again, done) = decode_all(std::str::from_utf8(&bytes).unwrap());
        assert!(done);
        assert_eq!(again[2..], events[2..]);
    }

    #[test]
    fn openai_ordered_events_end_with_message_delta_then_stop() {
        let events = vec![
            E::Start {
                id: "chatcmpl-9".into(),
                model: "gpt-4o-mini".into(),
                created: 1741569952,
            },
            E::TextDelta {
                choice: 0,
                text: "Hel".into(),
            },
            E::TextDelta {
                choice: 0,
                text: "lo".into(),
            },
            E::TextDelta {
                choice: 0,
                text: "!".into(),
            },
            E::Finish {
                choice: 0,
                reason: FinishReason::Stop,
            },
            E::Usage(Usage {
                input_tokens: 20,
                output_tokens: 3,
                cached_input_tokens: 0,
                reasoning_tokens: 0,
            }),
        ];
        let bytes = encode_all(&events, options());
        let text = std::str::from_utf8(&bytes).unwrap();
        let expected = [
            r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_chatcmpl-9","type":"message","role":"assistant","model":"claude-sonnet-4","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":400,"output_tokens":0}}}"#,
            r#"event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
            r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}"#,
            r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}"#,
            r#"event: content_block_stop
data: {"type":"content_block_stop","index":0}"#,
            r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":20,"output_tokens":3,"cache_read_input_tokens":0}}"#,
            r#"event: message_stop
data: {"type":"message_stop"}"#,
        ]
        .map(|e| format!("{e}\n\n"))
        .concat();
        assert_eq!(text, expected);
        let acc = accumulate(&bytes);
        assert_eq!(acc.blocks, vec![json!({"type": "text", "text": "Hello!"})]);
    }

    #[test]
    fn encoder_switches_blocks_and_defaults_the_stop_reason() {
        // OpenAI-style interleaving: reasoning, text, two tool calls, no Finish, no Usage.
        let events = vec![
            E::Start {
                id: "msg_x".into(),
                model: "deepseek-reasoner".into(),
                created: 0,
            },
            E::ThinkingDelta {
                choice: 0,
                text: "Hmm.".into(),
            },
            E::TextDelta {
                choice: 0,
                text: "Two calls.".into(),
            },
            E::ToolCallStart {
                choice: 0,
                index: 0,
                id: "call_a".into(),
                name: "f".into(),
            },
            E::ToolCallDelta {
                choice: 0,
                index: 0,
                arguments: "{\"x\":1}".into(),
            },
            E::ToolCallStart {
                choice: 0,
                index: 0,
                id: "call_a".into(),
                name: "f".into(),
            },
            E::ToolCallStart {
                choice: 0,
                index: 1,
                id: "call_b".into(),
                name: "g".into(),
            },
            E::ToolCallDelta {
                choice: 0,
                index: 1,
                arguments: "{}".into(),
            },
            E::TextDelta {
                choice: 1,
                text: "another choice, ignored".into(),
            },
            // Arguments without a start get a block, and an id, of their own.
            E::ToolCallDelta {
                choice: 0,
                index: 5,
                arguments: "{\"y\":2}".into(),
            },
        ];
        let bytes = encode_all(&events, options());
        let acc = accumulate(&bytes);
        assert_eq!(acc.message["id"], json!("msg_x"));
        assert_eq!(
            acc.blocks,
            vec![
                json!({"type": "thinking", "thinking": "Hmm.", "signature": ""}),
                json!({"type": "text", "text": "Two calls."}),
                json!({"type": "tool_use", "id": "call_a", "name": "f", "input": {"x": 1}}),
                json!({"type": "tool_use", "id": "call_b", "name": "g", "input": {}}),
                json!({"type": "tool_use", "id": "toolu_x_5", "name": "", "input": {"y": 2}}),
            ]
        );
        assert_eq!(acc.stop_reason, json!("tool_use"));
        // No usage from the upstream: the estimate, and 4 characters a token of output.
        assert_eq!(
            acc.usage,
            json!({"input_tokens": 400, "output_tokens": 8, "cache_read_input_tokens": 0})
        );

        // Without a model in the options, the upstream's is reported.
        let acc = accumulate(&encode_all(
            &events[..2],
            EncoderOptions {
                model: String::new(),
                ..options()
            },
        ));
        assert_eq!(acc.message["model"], json!("deepseek-reasoner"));
        assert_eq!(acc.stop_reason, json!("end_turn"));

        // An empty stream is still a valid message.
        let acc = accumulate(&encode_all(&[], options()));
        assert!(acc.message["id"].as_str().unwrap().starts_with("msg_"));
        assert!(acc.blocks.is_empty());
        assert_eq!(acc.stop_reason, json!("end_turn"));
    }

    #[test]
    fn error_mid_stream() {
        let mut enc = AnthropicCodec.stream_encoder(options());
        let mut out = BytesMut::new();
        enc.encode(
            &E::TextDelta {
                choice: 0,
                text: "Partial".into(),
            },
            &mut out,
        );
        let err = RelayError::new(
            ErrorKind::IdleTimeout,
            Side::Upstream,
            "the upstream went silent",
        );
        enc.error(&err, &mut out);
        enc.finish(&mut out);
        enc.encode(
            &E::TextDelta {
                choice: 0,
                text: "late".into(),
            },
            &mut out,
        );
        let events = parse_sse(&out);
        let names: Vec<&[u8]> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
        assert_eq!(
            names,
            [
                &b"message_start"[..],
                b"content_block_start",
                b"content_block_delta",
                b"error"
            ]
        );
        let data: Value = serde_json::from_slice(&events[3].data).unwrap();
        assert_eq!(
            data,
            json!({"type": "error", "error": {"type": "api_error", "message": "the upstream went silent"}})
        );

        // Upstream error events become errors with Anthropic's status.
        let mut dec = AnthropicCodec.stream_decoder();
        let mut events = Vec::new();
        let sse = parse_sse(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"details\":null,\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        let err = dec.decode(&sse[0], &mut events).unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.upstream_code(), Some(529));
        assert_eq!(err.message(), "Overloaded [overloaded_error]");

        let mut dec = AnthropicCodec.stream_decoder();
        let sse = parse_sse(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"bad\"}}\n\n",
        );
        let err = dec.decode(&sse[0], &mut events).unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(err.status_code(), http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn stream_cut_before_message_stop() {
        let sse = transcript();
        let cut = &sse[..sse.find("event: message_delta").unwrap()];
        let mut dec = AnthropicCodec.stream_decoder();
        let mut out = Vec::new();
        for ev in parse_sse(cut.as_bytes()) {
            assert!(!dec.decode(&ev, &mut out).unwrap());
        }
        let err = dec.finish().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::StreamCut);
        assert!(err.is_retryable());

        let mut dec = AnthropicCodec.stream_decoder();
        for ev in parse_sse(sse.as_bytes()) {
            dec.decode(&ev, &mut out).unwrap();
        }
        assert!(dec.finish().is_ok());

        // Garbage is a protocol error.
        let mut dec = AnthropicCodec.stream_decoder();
        let bad = SseEvent {
            event: Some(Bytes::from_static(b"content_block_delta")),
            data: Bytes::from_static(b"{not json"),
            ..SseEvent::default()
        };
        assert_eq!(
            dec.decode(&bad, &mut out).unwrap_err().kind(),
            ErrorKind::UpstreamProtocol
        );
    }

    #[test]
    fn codec_round_trips_bodies() {
        let codec = AnthropicCodec;
        assert_eq!(codec.id(), DialectId::ANTHROPIC_MESSAGES);
        let body: JsonObject = serde_json::from_str(
            r#"{"model":"claude-3-7-sonnet-latest","max_tokens":64,"messages":[{"role":"user","content":"Hi"}],"metadata":{"user_id":"u1"}}"#,
        )
        .unwrap();
        let ir = codec.decode_request(&body).unwrap();
        let bytes = codec.encode_request(&ir).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"model": "claude-3-7-sonnet-latest", "max_tokens": 64,
                "messages": [{"role": "user", "content": "Hi"}], "metadata": {"user_id": "u1"}})
        );

        let answer = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-7-sonnet-20250219","content":[{"type":"text","text":"Hello","citations":null}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":8,"output_tokens":2}}"#;
        let resp = codec.decode_response(answer).unwrap();
        assert_eq!(resp.choices[0].message.text(), "Hello");
        let v: Value = serde_json::from_slice(&codec.encode_response(&resp).unwrap()).unwrap();
        assert_eq!(v["id"], json!("msg_1"));
        assert_eq!(v["content"], json!([{"type": "text", "text": "Hello"}]));
        assert_eq!(v["stop_reason"], json!("end_turn"));
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 8, "output_tokens": 2, "cache_read_input_tokens": 0})
        );

        let err = codec
            .decode_response(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            )
            .unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.upstream_code(), Some(529));
        assert_eq!(
            codec.decode_response(b"<html>").unwrap_err().kind(),
            ErrorKind::UpstreamProtocol
        );
        assert_eq!(
            codec.error_message(
                br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#
            ),
            "slow [rate_limit_error]"
        );
        let v: Value =
            serde_json::from_slice(&codec.error_body(&RelayError::model_not_found("x"))).unwrap();
        assert_eq!(v["error"]["type"], json!("not_found_error"));
    }
}
