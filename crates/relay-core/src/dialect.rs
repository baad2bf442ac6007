//! Dialects (wire formats), the inbound request as the engine sees it, and the trait a
//! client-facing codec implements.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::value::RawValue;

use crate::error::RelayError;
use crate::ir::ChatRequest;

/// A wire format, by name. Codecs and adapters are registered against these.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DialectId(pub &'static str);

impl DialectId {
    /// OpenAI Chat Completions (`/v1/chat/completions`, `/v1/embeddings`).
    pub const OPENAI_CHAT: DialectId = DialectId("openai-chat");
    /// Anthropic Messages (`/v1/messages`).
    pub const ANTHROPIC_MESSAGES: DialectId = DialectId("anthropic-messages");
    /// Google Gemini (`generateContent`, `streamGenerateContent`).
    pub const GEMINI: DialectId = DialectId("gemini");

    /// The name.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for DialectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Display for DialectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The API operation a request performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// A chat completion (plain or streamed).
    Chat,
    /// Embeddings (never streamed).
    Embeddings,
}

impl Operation {
    /// A stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Embeddings => "embeddings",
        }
    }
}

/// A JSON object whose values are kept as raw, unparsed JSON text, in their original order.
///
/// The pass-through fast path edits a few top-level fields (`model`, `stream_options`)
/// and writes every other value back byte for byte, unknown fields included. Keys hash
/// with foldhash (randomly seeded per map, so crafted keys cannot force collisions);
/// SipHash was a few per cent of a request's instructions. Build one with
/// `JsonObject::default()`.
pub type JsonObject = IndexMap<String, Box<RawValue>, foldhash::fast::RandomState>;

/// Parse a JSON object into a [`JsonObject`]: what `serde_json::from_slice` does for the
/// type, but with room for a request's usual members allocated once (serde's map visitor
/// starts empty and grows the entries and the index two or three times).
pub fn parse_json_object(bytes: &[u8]) -> Result<JsonObject, serde_json::Error> {
    struct Body(JsonObject);
    struct BodyVisitor;

    impl<'de> serde::de::Visitor<'de> for BodyVisitor {
        type Value = Body;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
            let mut object = JsonObject::with_capacity_and_hasher(
                map.size_hint().unwrap_or(0).max(12),
                Default::default(),
            );
            while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                object.insert(key, value);
            }
            Ok(Body(object))
        }
    }

    impl<'de> serde::Deserialize<'de> for Body {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(BodyVisitor)
        }
    }

    serde_json::from_slice::<Body>(bytes).map(|b| b.0)
}

/// A decoded client request, ready for the engine.
#[derive(Debug, Clone)]
pub struct InboundRequest {
    /// The client's dialect.
    pub dialect: DialectId,
    /// What it asks for.
    pub op: Operation,
    /// The model or preset it names.
    pub model: String,
    /// Whether it asked for a stream.
    pub stream: bool,
    /// Whether it asked for usage in the stream (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The top-level body fields.
    pub body: JsonObject,
    /// Characters of prompt text, for estimating usage when the upstream reports none.
    pub prompt_chars: usize,
    /// The request in the IR, when the client codec decoded it already (dialects other
    /// than OpenAI's, which has a pass-through fast path and decodes only on demand).
    pub ir: Option<Arc<ChatRequest>>,
}

/// Request facts carried by the route rather than the body (Gemini puts the model and
/// the stream flag in the URL).
#[derive(Clone, Debug, Default)]
pub struct RouteParams {
    /// The model named in the path.
    pub model: Option<String>,
    /// Whether the path asks for a stream.
    pub stream: Option<bool>,
}

impl InboundRequest {
    /// A rough token estimate of the prompt (four characters a token).
    pub fn estimated_prompt_tokens(&self) -> u64 {
        (self.prompt_chars as u64).div_ceil(4).max(1)
    }
}

/// The client-facing half of a dialect codec: parse requests, render errors.
pub trait ClientDialect: Send + Sync + 'static {
    /// Which dialect.
    fn id(&self) -> DialectId;
    /// Parse and validate a request body. Bad input is a 400 naming the problem.
    fn parse_request(
        &self,
        op: Operation,
        body: &[u8],
        route: &RouteParams,
    ) -> Result<InboundRequest, RelayError>;
    /// The JSON error body in this dialect's shape.
    fn error_body(&self, err: &RelayError) -> Bytes;
}

#[allow(dead_code)]
fn _client_dialect_is_object_safe(_: &dyn ClientDialect) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_objects_as_serde_does_for_the_type() {
        let body = br#"{"b":[1, 2],"a":{"x":"y"},"b":null,"c":"\u00e9"}"#;
        let ours = parse_json_object(body).unwrap();
        let theirs: JsonObject = serde_json::from_slice(body).unwrap();
        let pairs = |o: &JsonObject| -> Vec<(String, String)> {
            o.iter()
                .map(|(k, v)| (k.clone(), v.get().to_owned()))
                .collect()
        };
        assert_eq!(pairs(&ours), pairs(&theirs));
        assert_eq!(ours.get("b").unwrap().get(), "null");
        for bad in [&b"[1]"[..], b"{", b"\"s\"", b"{\"a\":1}x", b""] {
            assert!(parse_json_object(bad).is_err(), "{bad:?}");
        }
    }
}
