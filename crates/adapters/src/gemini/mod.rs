//! The `gemini` dialect: Google Gemini `generateContent` and
//! `streamGenerateContent?alt=sse` (API v1beta), on both sides of the relay.
//!
//! - [`GeminiCodec`] implements [`relay_core::codec::DialectCodec`]: client requests and
//!   upstream answers to the IR and back, stream decoding (Gemini frames to IR events;
//!   Gemini has no terminal event, so a stream is complete once a `finishReason` came) and
//!   stream encoding (IR events to `data:` frames, tool calls written whole), and Google's
//!   error shape.
//! - [`wire`]: the typed wire structs and their conversions, with the mapping rules and
//!   the IR `extra` keys this dialect reads and writes.
//!
//! The model and the stream flag are in the URL
//! (`/v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`); the
//! gateway hands them to the codec as top-level `"model"` and `"stream"` body fields, and
//! the adapter puts them back in the URL.

mod codec;
pub mod wire;

pub use codec::GeminiCodec;
