//! Server-sent events: an incremental parser and an encoder, both over `bytes`.
//!
//! The parser follows the WHATWG event-stream rules (LF, CR and CRLF line ends,
//! comments, multi-line `data`, a field without a colon) and is incremental: events may be
//! split at any byte across reads and the result is the same. Single-line `data` fields,
//! the common case for LLM streams, are returned as zero-copy slices of the input.

mod encode;
mod parser;

pub use encode::{encode_comment, encode_event};
pub use parser::{DEFAULT_MAX_EVENT_BYTES, SseError, SseEvent, SseParser};
