//! The `anthropic-messages` dialect (`POST /v1/messages`): typed wire structs and their
//! conversion to and from the [IR](relay_core::ir) ([`wire`]), and [`AnthropicCodec`], the
//! [`DialectCodec`](relay_core::codec::DialectCodec) for both sides of the relay: Anthropic
//! clients (decode requests, encode answers, streams and errors) and Anthropic upstreams
//! (encode requests, decode answers, streams and error bodies).
//!
//! What does not map one to one, in short (details on each function):
//! - the top-level `system` is the IR's leading [`Role::System`](relay_core::ir::Role)
//!   message; system messages anywhere in an IR conversation are lifted into it;
//! - `tool_result` blocks are IR [`Role::Tool`](relay_core::ir::Role) messages, one per
//!   block; on the way out, tool results (and a user message right after them) merge into
//!   one `user` message;
//! - `tool_use.input` is an object on the wire and JSON text in the IR (compact, keys in
//!   `serde_json`'s order);
//! - `max_tokens` is required upstream: [`wire::DEFAULT_MAX_TOKENS`] when the IR has none;
//! - `cache_control` on system, message and tool-result blocks and on tools survives in
//!   `ChatRequest::extra[`[`wire::CACHE_CONTROL_KEY`]`]`, like the other top-level fields
//!   without an IR slot (`metadata`, `top_k`...), which go back out as they came;
//! - streams: `message_delta` and `message_stop` are written at the end of the stream, so
//!   usage that an OpenAI upstream reports after its finish chunk is still included.

mod codec;
pub mod wire;

pub use codec::AnthropicCodec;
