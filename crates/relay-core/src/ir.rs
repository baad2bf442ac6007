//! The typed intermediate representation (IR) of chat requests, responses and stream
//! events.
//!
//! Every dialect codec converts its wire format to and from these types, so a client of
//! one dialect can be served by an upstream of another. The IR holds what OpenAI Chat
//! Completions, Anthropic Messages and Gemini `generateContent` have in common (messages
//! of typed content parts, tools, sampling knobs, reasoning, usage) and keeps the rest in
//! `extra` maps.
//!
//! # `extra`
//!
//! An `extra` map holds the *source dialect's* fields that the IR has no slot for, under
//! their wire names (`seed`, `user`, `metadata`...). A codec writing the same dialect puts
//! them back; a codec writing another dialect should not copy them blindly, since the
//! other side may reject fields it does not know. A codec may also record how the source
//! spelled something the IR normalises (for example `Message::extra["role"] =
//! "developer"` for an OpenAI developer message that became [`Role::System`]); such keys
//! are documented by the codec that writes them.
//!
//! All types are plain data and (de)serialize with serde, so the IR can be logged, stored
//! and handed to plugins as JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::usage::Usage;

/// A JSON object of fields the IR has no slot for.
pub type Extra = Map<String, Value>;

/// A chat request in the dialect-neutral form.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatRequest {
    /// The model (or preset) the request names.
    pub model: String,
    /// The conversation, system instructions included (as [`Role::System`] messages).
    pub messages: Vec<Message>,
    /// The tools the model may call.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDef>,
    /// How the model must use the tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// The most tokens to generate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling probability mass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Stop sequences.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether a stream should end with a usage report.
    pub include_usage: bool,
    /// The required shape of the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Reasoning (thinking) settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Reasoning>,
    /// Whether the model may call several tools in one turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// The source dialect's top-level fields the IR has no slot for.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub extra: Extra,
}

impl ChatRequest {
    /// Characters of all text, thinking, tool-call arguments and tool results in the
    /// conversation: the input to a rough prompt-token estimate.
    pub fn prompt_chars(&self) -> usize {
        self.messages
            .iter()
            .map(|m| m.content.iter().map(ContentPart::chars).sum::<usize>())
            .sum()
    }
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions (OpenAI `system` and `developer`, Anthropic `system`, Gemini
    /// `systemInstruction`).
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// Tool results.
    Tool,
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The author.
    pub role: Role,
    /// The content, in order.
    #[serde(default)]
    pub content: Vec<ContentPart>,
    /// An optional participant name (OpenAI `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The source dialect's message fields the IR has no slot for.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Extra,
}

impl Message {
    /// A message with no name and no extra fields.
    pub fn new(role: Role, content: Vec<ContentPart>) -> Self {
        Message {
            role,
            content,
            name: None,
            extra: Extra::new(),
        }
    }

    /// The message's text parts, concatenated (thinking, tool calls and tool results
    /// are not included).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for part in &self.content {
            if let ContentPart::Text { text } = part {
                out.push_str(text);
            }
        }
        out
    }
}

/// One piece of message content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// An image.
    Image {
        /// Where the image is.
        source: ImageSource,
        /// OpenAI's `detail` hint (`low`, `high`, `auto`), when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A tool call made by the assistant.
    ToolCall {
        /// The call id that the matching [`ContentPart::ToolResult`] names.
        id: String,
        /// The tool (function) name.
        name: String,
        /// The arguments as JSON text, exactly as the model produced them (it may not
        /// even be valid JSON).
        arguments: String,
    },
    /// The result of a tool call.
    ToolResult {
        /// The id of the call this answers.
        call_id: String,
        /// The result (text, sometimes images).
        #[serde(default)]
        content: Vec<ContentPart>,
        /// Whether the tool failed (Anthropic `is_error`).
        #[serde(default)]
        is_error: bool,
    },
    /// Model reasoning (Anthropic thinking, OpenAI-compatible `reasoning_content`,
    /// Gemini thought parts).
    Thinking {
        /// The reasoning text (empty when redacted).
        text: String,
        /// The provider's signature over the reasoning, to send back unchanged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
        /// Whether the provider redacted it (Anthropic `redacted_thinking`; the opaque
        /// data is then in `signature`).
        #[serde(default)]
        redacted: bool,
    },
}

impl ContentPart {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        ContentPart::Text { text: text.into() }
    }

    /// Characters of text, arguments and nested results, for estimates.
    fn chars(&self) -> usize {
        match self {
            ContentPart::Text { text } | ContentPart::Thinking { text, .. } => text.chars().count(),
            ContentPart::Image { .. } => 0,
            ContentPart::ToolCall { arguments, .. } => arguments.chars().count(),
            ContentPart::ToolResult { content, .. } => content.iter().map(ContentPart::chars).sum(),
        }
    }
}

/// Where an image's bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    /// A URL the provider fetches.
    Url {
        /// The URL.
        url: String,
    },
    /// Inline bytes.
    Base64 {
        /// The MIME type (`image/png`...).
        media_type: String,
        /// The base64 data, without any `data:` prefix.
        data: String,
    },
}

/// A tool (function) the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    /// The function name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of its arguments; `Null` when the source gave none.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub parameters: Value,
    /// Whether the arguments must follow the schema exactly (OpenAI `strict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// How the model must use the tools.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call (Anthropic `any`, Gemini `ANY`).
    Required,
    /// This tool must be called.
    Tool {
        /// The tool's name.
        name: String,
    },
}

/// The required shape of the answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON following a schema.
    JsonSchema {
        /// The schema's name.
        name: String,
        /// The JSON Schema.
        schema: Value,
        /// Whether the schema must be followed exactly.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

/// Reasoning (thinking) settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reasoning {
    /// An effort level (`minimal`, `low`, `medium`, `high`...), OpenAI style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effort: Option<String>,
    /// A thinking token budget, Anthropic and Gemini style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
}

/// A complete (non-streamed) chat response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatResponse {
    /// The provider's response id.
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// The answers (usually one).
    pub choices: Vec<Choice>,
    /// Token counts, when reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The source dialect's top-level fields the IR has no slot for.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub extra: Extra,
}

/// One answer of a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Its position.
    pub index: u32,
    /// The assistant message.
    pub message: Message,
    /// Why generation stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
}

/// Why generation stopped. Serialized as its OpenAI string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum FinishReason {
    /// A natural end or a stop sequence (Anthropic `end_turn`, `stop_sequence`).
    Stop,
    /// The token limit (Anthropic `max_tokens`, Gemini `MAX_TOKENS`).
    Length,
    /// The model called tools (Anthropic `tool_use`).
    ToolCalls,
    /// A safety filter (Gemini `SAFETY`, Anthropic `refusal`).
    ContentFilter,
    /// Anything else, verbatim.
    Other(String),
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_openai(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(s) => s,
        }
    }

    /// Parse an OpenAI `finish_reason` string; unknown ones become [`FinishReason::Other`].
    pub fn from_openai(s: &str) -> Self {
        match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_owned()),
        }
    }
}

impl From<String> for FinishReason {
    fn from(s: String) -> Self {
        match FinishReason::from_openai(&s) {
            FinishReason::Other(_) => FinishReason::Other(s),
            known => known,
        }
    }
}

impl From<FinishReason> for String {
    fn from(r: FinishReason) -> Self {
        match r {
            FinishReason::Other(s) => s,
            known => known.as_openai().to_owned(),
        }
    }
}

/// One event of a streamed response, dialect-neutral.
///
/// A stream is `Start`, then deltas, then a `Finish` per choice, with `Usage` usually at
/// the end. `choice` is the answer's index (0 unless several were asked for). Tool calls
/// are identified by `(choice, index)`; `index` is the source's and need not be
/// contiguous: encoders renumber when their dialect requires it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The response began. Decoders may emit it more than once; consumers keep the first.
    Start {
        /// The provider's response id.
        id: String,
        /// The model that answers.
        model: String,
        /// Creation time, Unix seconds.
        created: u64,
    },
    /// A piece of answer text.
    TextDelta {
        /// The answer's index.
        choice: u32,
        /// The text.
        text: String,
    },
    /// A piece of reasoning text.
    ThinkingDelta {
        /// The answer's index.
        choice: u32,
        /// The text.
        text: String,
    },
    /// The signature over the reasoning so far (Anthropic `signature_delta`).
    ThinkingSignature {
        /// The answer's index.
        choice: u32,
        /// The signature.
        signature: String,
    },
    /// A tool call began.
    ToolCallStart {
        /// The answer's index.
        choice: u32,
        /// The call's index within the answer, as the source numbered it.
        index: u32,
        /// The call id.
        id: String,
        /// The tool name.
        name: String,
    },
    /// A fragment of a tool call's JSON arguments.
    ToolCallDelta {
        /// The answer's index.
        choice: u32,
        /// The call's index, as in its [`StreamEvent::ToolCallStart`].
        index: u32,
        /// The fragment (concatenate fragments to get the arguments).
        arguments: String,
    },
    /// An answer ended.
    Finish {
        /// The answer's index.
        choice: u32,
        /// Why.
        reason: FinishReason,
    },
    /// Token counts for the whole response. When several arrive, the last one is the
    /// complete count: decoders merge partial reports before emitting.
    Usage(Usage),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conversation() -> ChatRequest {
        ChatRequest {
            model: "gpt-4o".into(),
            messages: vec![
                Message::new(Role::System, vec![ContentPart::text("Be brief.")]),
                Message::new(
                    Role::User,
                    vec![
                        ContentPart::text("What is in "),
                        ContentPart::Image {
                            source: ImageSource::Url {
                                url: "https://example.com/a.png".into(),
                            },
                            detail: Some("low".into()),
                        },
                        ContentPart::text("this picture?"),
                    ],
                ),
                Message::new(
                    Role::Assistant,
                    vec![
                        ContentPart::Thinking {
                            text: "Look it up.".into(),
                            signature: None,
                            redacted: false,
                        },
                        ContentPart::ToolCall {
                            id: "call_1".into(),
                            name: "lookup".into(),
                            arguments: r#"{"q":"é"}"#.into(),
                        },
                    ],
                ),
                Message::new(
                    Role::Tool,
                    vec![ContentPart::ToolResult {
                        call_id: "call_1".into(),
                        content: vec![ContentPart::text("a cat")],
                        is_error: false,
                    }],
                ),
            ],
            ..ChatRequest::default()
        }
    }

    #[test]
    fn message_text_concatenates_text_parts_only() {
        let req = conversation();
        assert_eq!(req.messages[0].text(), "Be brief.");
        assert_eq!(req.messages[1].text(), "What is in this picture?");
        assert_eq!(req.messages[2].text(), "");
        assert_eq!(req.messages[3].text(), "");
    }

    #[test]
    fn prompt_chars_counts_text_thinking_arguments_and_results() {
        let req = conversation();
        // "Be brief." 9 + "What is in " 11 + "this picture?" 13 + "Look it up." 11
        // + `{"q":"é"}` 9 characters (10 bytes) + "a cat" 5.
        assert_eq!(req.prompt_chars(), 9 + 11 + 13 + 11 + 9 + 5);
        assert_eq!(ChatRequest::default().prompt_chars(), 0);
    }

    #[test]
    fn finish_reason_is_a_plain_string() {
        assert_eq!(
            serde_json::to_value(FinishReason::ToolCalls).unwrap(),
            json!("tool_calls")
        );
        assert_eq!(
            serde_json::to_value(FinishReason::Other("pause_turn".into())).unwrap(),
            json!("pause_turn")
        );
        let r: FinishReason = serde_json::from_value(json!("length")).unwrap();
        assert_eq!(r, FinishReason::Length);
        let r: FinishReason = serde_json::from_value(json!("end_turn")).unwrap();
        assert_eq!(r, FinishReason::Other("end_turn".into()));
        assert_eq!(r.as_openai(), "end_turn");
        assert_eq!(
            FinishReason::from_openai("content_filter"),
            FinishReason::ContentFilter
        );
    }

    #[test]
    fn ir_round_trips_through_json() {
        let mut req = conversation();
        req.tools.push(ToolDef {
            name: "lookup".into(),
            description: None,
            parameters: json!({"type": "object"}),
            strict: Some(true),
        });
        req.tool_choice = Some(ToolChoice::Tool {
            name: "lookup".into(),
        });
        req.response_format = Some(ResponseFormat::JsonSchema {
            name: "answer".into(),
            schema: json!({"type": "object"}),
            strict: None,
        });
        req.extra.insert("seed".into(), json!(7));
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v["messages"][1]["content"][1]["source"],
            json!({"type": "url", "url": "https://example.com/a.png"})
        );
        assert_eq!(v["messages"][3]["content"][0]["type"], json!("tool_result"));
        assert_eq!(v["tool_choice"], json!({"type": "tool", "name": "lookup"}));
        assert_eq!(v["extra"], json!({"seed": 7}));
        assert!(v.get("max_tokens").is_none());
        let back: ChatRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, req);

        let ev = StreamEvent::Usage(Usage {
            input_tokens: 3,
            output_tokens: 4,
            ..Usage::default()
        });
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["type"], json!("usage"));
        assert_eq!(v["output_tokens"], json!(4));
        assert_eq!(serde_json::from_value::<StreamEvent>(v).unwrap(), ev);
    }
}
