//! Anthropic Messages on the wire: typed request, response and stream-event structs, their
//! conversion to and from the dialect-neutral [IR](relay_core::ir), and the error shape.
//!
//! Every struct keeps the fields it does not name in a flattened `extra` map, and optional
//! fields are skipped when absent.
//!
//! # IR `extra` keys this codec writes
//!
//! Only `ChatRequest::extra` and `ChatResponse::extra` (top level): callers translating to
//! another dialect drop them (`ProviderAdapter` clears a request's `extra` when the
//! client's and the upstream's dialects differ), so nothing Anthropic-specific reaches
//! another provider. Message-level `extra` is neither written nor read: the Messages API
//! has no message fields besides `role` and `content`.
//!
//! - The request's top-level fields without an IR slot, under their wire names
//!   (`metadata`, `service_tier`, `container`, `mcp_servers`...), and `top_k`.
//!   [`request_from_ir`] writes every `extra` key back except the typed field names.
//! - [`CACHE_CONTROL_KEY`] (`anthropic_cache_control`): the prompt-cache breakpoints, an array of
//!   `{"message": i, "part": j, "cache_control": {..}}` (IR message `i`, content part `j`:
//!   system, message and tool-result blocks) and `{"tool": k, "cache_control": {..}}`
//!   (tool definition `k`). [`request_from_ir`] puts each back on the block it came from.
//!   (`cache_control` inside a tool result's own content is not kept.)
//! - `ChatResponse::extra["stop_sequence"]`: the stop sequence that ended a response
//!   (with IR finish reason `Stop`); [`response_from_ir`] then answers
//!   `"stop_reason":"stop_sequence"`.

use bytes::Bytes;
use relay_core::ir::{self, Extra};
use relay_core::{ErrorKind, JsonObject, RelayError, Side, Usage};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// The `max_tokens` written upstream when the IR request has none (the Messages API
/// requires it). 8192 fits every current Claude model's output limit.
pub const DEFAULT_MAX_TOKENS: u64 = 8192;

/// The `type` of a response message.
pub const MESSAGE_TYPE: &str = "message";

/// The `ChatRequest::extra` key holding the prompt-cache breakpoints of the request's
/// blocks and tools (see the module docs).
pub const CACHE_CONTROL_KEY: &str = "anthropic_cache_control";

/// The stop reasons the Messages API documents.
const STOP_REASONS: &[&str] = &[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
];

/// Request fields with a typed slot in [`MessagesRequest`].
const REQUEST_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "thinking",
];

const STOP_SEQUENCE: &str = "stop_sequence";
const TOP_K: &str = "top_k";

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

/// A `POST /v1/messages` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessagesRequest {
    /// The model.
    pub model: String,
    /// The conversation (user and assistant turns).
    pub messages: Vec<InputMessage>,
    /// System instructions: a string or an array of text blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<MessageContent>,
    /// The most tokens to generate (required).
    pub max_tokens: u64,
    /// Sampling temperature (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k sampling (kept in the IR's `extra`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    /// Stop sequences.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub stop_sequences: Vec<String>,
    /// Whether to stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Tools the model may call.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tools: Vec<Tool>,
    /// How the model must use the tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Extended thinking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<ThinkingConfig>,
    /// Every other field (`metadata`, `service_tier`, `container`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    /// The user (tool results included).
    User,
    /// The model.
    Assistant,
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputMessage {
    /// The author.
    pub role: MessageRole,
    /// A string or an array of blocks.
    pub content: MessageContent,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Message, system or tool-result content: a string or an array of blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Typed blocks.
    Blocks(Vec<ContentBlock>),
}

/// A content block, by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    /// `{"type":"text","text":..}`.
    Text(TextBlock),
    /// `{"type":"image","source":..}`.
    Image(ImageBlock),
    /// `{"type":"tool_use","id":..,"name":..,"input":{..}}`.
    ToolUse(ToolUseBlock),
    /// `{"type":"tool_result","tool_use_id":..,"content":..}`.
    ToolResult(ToolResultBlock),
    /// `{"type":"thinking","thinking":..,"signature":..}`.
    Thinking(ThinkingBlock),
    /// `{"type":"redacted_thinking","data":..}`.
    RedactedThinking(RedactedThinkingBlock),
    /// Any other block (`document`, `server_tool_use`...), or a malformed one: kept as is,
    /// rejected by [`request_to_ir`], skipped by [`response_to_ir`].
    #[serde(untagged)]
    Other(Extra),
}

/// A text block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextBlock {
    /// The text.
    pub text: String,
    /// A prompt-cache breakpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
    /// Other fields (`citations`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// An image block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageBlock {
    /// Where the image is.
    pub source: ImageSource,
    /// A prompt-cache breakpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An image source, by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    /// Inline bytes.
    Base64 {
        /// `image/png`, `image/jpeg`, `image/gif` or `image/webp`.
        media_type: String,
        /// The base64 data.
        data: String,
    },
    /// A URL Anthropic fetches.
    Url {
        /// The URL.
        url: String,
    },
    /// Any other source (`file`...): rejected by [`request_to_ir`].
    #[serde(untagged)]
    Other(Extra),
}

/// A tool call made by the assistant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolUseBlock {
    /// The call id (`toolu_...`).
    pub id: String,
    /// The tool name.
    pub name: String,
    /// The arguments, a JSON object.
    #[serde(default = "empty_object")]
    pub input: Value,
    /// A prompt-cache breakpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The result of a tool call (in a user message).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolResultBlock {
    /// The id of the call it answers.
    pub tool_use_id: String,
    /// A string or an array of text and image blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// Whether the tool failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    /// A prompt-cache breakpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Extended-thinking text with its signature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThinkingBlock {
    /// The reasoning.
    pub thinking: String,
    /// Anthropic's signature over it (always written, empty when unknown).
    #[serde(default, deserialize_with = "null_default")]
    pub signature: String,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Thinking the safety systems redacted: opaque data to send back unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RedactedThinkingBlock {
    /// The encrypted reasoning.
    pub data: String,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A tool definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Absent or `custom` for client tools; server tools (`web_search_20250305`...)
    /// name their version here and are rejected by [`request_to_ir`].
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The tool name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of its input (required for client tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// A prompt-cache breakpoint (not carried by the IR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `tool_choice`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolChoice {
    /// `auto`, `any`, `tool` or `none`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The tool, for `tool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// At most one tool call per turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_parallel_tool_use: Option<bool>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `thinking`: `{"type":"enabled","budget_tokens":n}` or `{"type":"disabled"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThinkingConfig {
    /// `enabled` or `disabled`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The thinking budget, with `enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Parse a client's top-level fields into a [`MessagesRequest`], field by field, so that
/// a bad value is a 400 naming it: `model`, `messages` and `max_tokens` are required,
/// roles must be `user` or `assistant`, every block must be a known, well-formed type.
/// `null` reads as absent for optional fields.
pub fn parse_request(body: &JsonObject) -> Result<MessagesRequest, RelayError> {
    let model: String = field(body, "model", "a string")?.ok_or_else(|| missing("model"))?;
    if model.trim().is_empty() {
        return Err(RelayError::invalid_param(
            "model",
            "model: String should have at least 1 character",
        ));
    }
    let raw_messages: Vec<&RawValue> =
        field(body, "messages", "an array of messages")?.ok_or_else(|| missing("messages"))?;
    let messages = raw_messages
        .into_iter()
        .enumerate()
        .map(|(i, raw)| parse_message(i, raw))
        .collect::<Result<Vec<_>, _>>()?;
    let max_tokens: u64 = field(body, "max_tokens", "a non-negative integer")?
        .ok_or_else(|| missing("max_tokens"))?;

    let system = match field::<&RawValue>(body, "system", "a string or an array of text blocks")? {
        None => None,
        Some(raw) => Some(parse_content("system", raw)?),
    };
    let tools = match field::<Vec<&RawValue>>(body, "tools", "an array of tools")? {
        None => Vec::new(),
        Some(raws) => raws
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                serde_json::from_str::<Tool>(raw.get()).map_err(|e| {
                    RelayError::invalid_param(&format!("tools[{i}]"), format!("tools[{i}]: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };

    let mut extra = Extra::new();
    for (key, raw) in body {
        if REQUEST_FIELDS.contains(&key.as_str()) {
            continue;
        }
        let value: Value = serde_json::from_str(raw.get())
            .map_err(|e| RelayError::invalid_param(key, format!("{key}: {e}")))?;
        extra.insert(key.clone(), value);
    }

    Ok(MessagesRequest {
        model,
        messages,
        system,
        max_tokens,
        temperature: field(body, "temperature", "a number")?,
        top_p: field(body, "top_p", "a number")?,
        top_k: field(body, "top_k", "a non-negative integer")?,
        stop_sequences: field(body, "stop_sequences", "an array of strings")?.unwrap_or_default(),
        stream: field(body, "stream", "a boolean")?,
        tools,
        tool_choice: field(body, "tool_choice", "a tool choice object")?,
        thinking: field(body, "thinking", "a thinking configuration object")?,
        extra,
    })
}

fn missing(name: &str) -> RelayError {
    RelayError::invalid_param(name, format!("{name}: Field required"))
}

/// A top-level field, `None` when absent or `null`; a 400 naming it when it has the wrong
/// shape.
fn field<'a, T: Deserialize<'a>>(
    body: &'a JsonObject,
    name: &str,
    expected: &str,
) -> Result<Option<T>, RelayError> {
    match body.get(name) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get()).map(Some).map_err(|e| {
            RelayError::invalid_param(name, format!("{name}: expected {expected} ({e})"))
        }),
    }
}

fn parse_message(i: usize, raw: &RawValue) -> Result<InputMessage, RelayError> {
    let path = format!("messages[{i}]");
    let fields: indexmap::IndexMap<String, &RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| RelayError::invalid_param(&path, format!("{path}: expected an object")))?;
    let mut role = None;
    let mut content = None;
    let mut extra = Extra::new();
    for (key, value) in fields {
        match key.as_str() {
            "role" => {
                role = Some(
                    serde_json::from_str::<MessageRole>(value.get()).map_err(|_| {
                        RelayError::invalid_param(
                            &format!("{path}.role"),
                            format!("{path}.role: Input should be 'user' or 'assistant'"),
                        )
                    })?,
                );
            }
            "content" => content = Some(parse_content(&format!("{path}.content"), value)?),
            _ => {
                let value = serde_json::from_str(value.get()).map_err(|e| {
                    RelayError::invalid_param(&format!("{path}.{key}"), e.to_string())
                })?;
                extra.insert(key, value);
            }
        }
    }
    Ok(InputMessage {
        role: role.ok_or_else(|| missing(&format!("{path}.role")))?,
        content: content.ok_or_else(|| missing(&format!("{path}.content")))?,
        extra,
    })
}

/// A string or an array of blocks, each block checked on its own so that an error names it.
fn parse_content(path: &str, raw: &RawValue) -> Result<MessageContent, RelayError> {
    if let Ok(text) = serde_json::from_str::<String>(raw.get()) {
        return Ok(MessageContent::Text(text));
    }
    let blocks: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| {
        RelayError::invalid_param(
            path,
            format!("{path}: expected a string or an array of content blocks"),
        )
    })?;
    let mut out = Vec::with_capacity(blocks.len());
    for (j, raw) in blocks.into_iter().enumerate() {
        let block: ContentBlock = serde_json::from_str(raw.get()).map_err(|e| {
            RelayError::invalid_param(&format!("{path}[{j}]"), format!("{path}[{j}]: {e}"))
        })?;
        if let ContentBlock::Other(map) = &block {
            return Err(other_block_error(&format!("{path}[{j}]"), map));
        }
        out.push(block);
    }
    Ok(MessageContent::Blocks(out))
}

fn other_block_error(path: &str, map: &Extra) -> RelayError {
    let message = match map.get("type").and_then(Value::as_str) {
        Some(
            kind @ ("text" | "image" | "tool_use" | "tool_result" | "thinking"
            | "redacted_thinking"),
        ) => format!("{path}: malformed `{kind}` block"),
        Some(kind) => format!("{path}.type: unsupported content block type `{kind}`"),
        None => format!("{path}.type: Field required"),
    };
    RelayError::invalid_param(&format!("{path}.type"), message)
}

/// Convert a request to the IR: `system` becomes a leading system message; a user
/// message's `tool_result` blocks become tool messages (one per block) in place, its
/// other blocks user messages around them; `tool_use.input` becomes compact JSON text;
/// `thinking` becomes `reasoning.budget_tokens` (`disabled` becomes no reasoning);
/// `tool_choice.disable_parallel_tool_use` becomes `parallel_tool_calls: false`. Anything
/// the IR cannot carry (server tools, `document` blocks, file image sources, thinking in
/// user messages...) is a 400 naming the field.
pub fn request_to_ir(req: MessagesRequest) -> Result<ir::ChatRequest, RelayError> {
    let MessagesRequest {
        model,
        messages: wire_messages,
        system,
        max_tokens,
        temperature,
        top_p,
        top_k,
        stop_sequences,
        stream,
        tools,
        tool_choice,
        thinking,
        mut extra,
    } = req;

    let mut collector = Collector::default();
    if let Some(system) = system {
        system_to_ir(system, &mut collector)?;
    }
    for (i, m) in wire_messages.into_iter().enumerate() {
        message_to_ir(i, m, &mut collector)?;
    }
    let Collector {
        messages,
        mut marks,
    } = collector;

    let mut ir_tools = Vec::with_capacity(tools.len());
    for (i, mut tool) in tools.into_iter().enumerate() {
        if let Some(cache_control) = tool.cache_control.take() {
            marks.push(serde_json::json!({"tool": i, "cache_control": cache_control}));
        }
        ir_tools.push(tool_to_ir(i, tool)?);
    }
    if !marks.is_empty() {
        extra.insert(CACHE_CONTROL_KEY.into(), Value::Array(marks));
    }
    let (tool_choice, parallel_tool_calls) = match tool_choice {
        None => (None, None),
        Some(c) => tool_choice_to_ir(c)?,
    };
    let reasoning = match thinking {
        None => None,
        Some(t) => thinking_to_ir(t)?,
    };
    if let Some(k) = top_k {
        extra.insert(TOP_K.into(), k.into());
    }
    let stream = stream.unwrap_or(false);

    Ok(ir::ChatRequest {
        model,
        messages,
        tools: ir_tools,
        tool_choice,
        max_tokens: Some(max_tokens),
        temperature,
        top_p,
        stop: stop_sequences,
        stream,
        // Anthropic streams always report usage.
        include_usage: stream,
        response_format: None,
        reasoning,
        parallel_tool_calls,
        extra,
    })
}

/// IR message content under construction, with the `cache_control` of each part.
#[derive(Default)]
struct PartsBuilder {
    parts: Vec<ir::ContentPart>,
    marks: Vec<Option<Value>>,
}

impl PartsBuilder {
    fn push(&mut self, part: ir::ContentPart, cache_control: Option<Value>) {
        self.parts.push(part);
        self.marks.push(cache_control);
    }

    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

/// IR messages under construction, and the `cache_control` marks of their parts and of
/// the tools, for `ChatRequest::extra[`[`CACHE_CONTROL_KEY`]`]`.
#[derive(Default)]
struct Collector {
    messages: Vec<ir::Message>,
    marks: Vec<Value>,
}

impl Collector {
    fn push(&mut self, role: ir::Role, parts: PartsBuilder) {
        let message = self.messages.len();
        for (part, mark) in parts.marks.into_iter().enumerate() {
            if let Some(cache_control) = mark {
                self.marks.push(serde_json::json!({
                    "message": message, "part": part, "cache_control": cache_control,
                }));
            }
        }
        self.messages.push(ir::Message::new(role, parts.parts));
    }
}

/// The `cache_control` marks recorded by [`request_to_ir`].
#[derive(Default)]
struct CacheMarks {
    parts: Vec<(u64, u64, Value)>,
    tools: Vec<(u64, Value)>,
}

impl CacheMarks {
    fn from_extra(extra: &Extra) -> Self {
        let mut marks = CacheMarks::default();
        let entries = extra.get(CACHE_CONTROL_KEY).and_then(Value::as_array);
        for entry in entries.into_iter().flatten() {
            let Some(cache_control) = entry.get("cache_control").filter(|v| !v.is_null()) else {
                continue;
            };
            let index = |key: &str| entry.get(key).and_then(Value::as_u64);
            match (index("message"), index("part"), index("tool")) {
                (Some(m), Some(p), _) => marks.parts.push((m, p, cache_control.clone())),
                (_, _, Some(t)) => marks.tools.push((t, cache_control.clone())),
                _ => {}
            }
        }
        marks
    }

    fn part(&self, message: usize, part: usize) -> Option<Value> {
        self.parts
            .iter()
            .find(|(m, p, _)| *m == message as u64 && *p == part as u64)
            .map(|(_, _, v)| v.clone())
    }

    fn tool(&self, tool: usize) -> Option<Value> {
        self.tools
            .iter()
            .find(|(t, _)| *t == tool as u64)
            .map(|(_, v)| v.clone())
    }
}

fn system_to_ir(system: MessageContent, out: &mut Collector) -> Result<(), RelayError> {
    let mut b = PartsBuilder::default();
    match system {
        MessageContent::Text(text) => b.push(ir::ContentPart::Text { text }, None),
        MessageContent::Blocks(blocks) => {
            for (j, block) in blocks.into_iter().enumerate() {
                match block {
                    ContentBlock::Text(t) => {
                        b.push(ir::ContentPart::Text { text: t.text }, t.cache_control)
                    }
                    other => {
                        return Err(RelayError::invalid_param(
                            &format!("system[{j}].type"),
                            format!(
                                "system[{j}].type: only text blocks are allowed in system, not `{}`",
                                block_type(&other)
                            ),
                        ));
                    }
                }
            }
        }
    }
    out.push(ir::Role::System, b);
    Ok(())
}

fn message_to_ir(i: usize, m: InputMessage, out: &mut Collector) -> Result<(), RelayError> {
    let path = format!("messages[{i}].content");
    let blocks = match m.content {
        MessageContent::Text(text) => {
            let role = match m.role {
                MessageRole::User => ir::Role::User,
                MessageRole::Assistant => ir::Role::Assistant,
            };
            let mut b = PartsBuilder::default();
            b.push(ir::ContentPart::Text { text }, None);
            out.push(role, b);
            return Ok(());
        }
        MessageContent::Blocks(blocks) => blocks,
    };
    let misplaced = |j: usize, block: &ContentBlock, role: &str| {
        RelayError::invalid_param(
            &format!("{path}[{j}].type"),
            format!(
                "{path}[{j}].type: `{}` blocks are not allowed in {role} messages",
                block_type(block)
            ),
        )
    };

    let mut cur = PartsBuilder::default();
    match m.role {
        MessageRole::User => {
            let produced = out.messages.len();
            for (j, block) in blocks.into_iter().enumerate() {
                match block {
                    ContentBlock::Text(t) => {
                        cur.push(ir::ContentPart::Text { text: t.text }, t.cache_control)
                    }
                    ContentBlock::Image(img) => cur.push(
                        image_to_ir(&format!("{path}[{j}]"), img.source)?,
                        img.cache_control,
                    ),
                    ContentBlock::ToolResult(r) => {
                        if !cur.is_empty() {
                            out.push(ir::Role::User, std::mem::take(&mut cur));
                        }
                        let content = match r.content {
                            None => Vec::new(),
                            Some(c) => tool_result_to_ir(&format!("{path}[{j}].content"), c)?,
                        };
                        let mut single = PartsBuilder::default();
                        single.push(
                            ir::ContentPart::ToolResult {
                                call_id: r.tool_use_id,
                                content,
                                is_error: r.is_error.unwrap_or(false),
                            },
                            r.cache_control,
                        );
                        out.push(ir::Role::Tool, single);
                    }
                    other => return Err(misplaced(j, &other, "user")),
                }
            }
            if !cur.is_empty() || out.messages.len() == produced {
                out.push(ir::Role::User, cur);
            }
        }
        MessageRole::Assistant => {
            for (j, block) in blocks.into_iter().enumerate() {
                match block {
                    ContentBlock::Text(t) => {
                        cur.push(ir::ContentPart::Text { text: t.text }, t.cache_control)
                    }
                    ContentBlock::ToolUse(t) => {
                        if !t.input.is_object() {
                            return Err(RelayError::invalid_param(
                                &format!("{path}[{j}].input"),
                                format!("{path}[{j}].input: Input should be an object"),
                            ));
                        }
                        cur.push(
                            ir::ContentPart::ToolCall {
                                id: t.id,
                                name: t.name,
                                arguments: t.input.to_string(),
                            },
                            t.cache_control,
                        );
                    }
                    ContentBlock::Thinking(t) => cur.push(
                        ir::ContentPart::Thinking {
                            text: t.thinking,
                            signature: (!t.signature.is_empty()).then_some(t.signature),
                            redacted: false,
                        },
                        None,
                    ),
                    ContentBlock::RedactedThinking(t) => cur.push(
                        ir::ContentPart::Thinking {
                            text: String::new(),
                            signature: Some(t.data),
                            redacted: true,
                        },
                        None,
                    ),
                    other => return Err(misplaced(j, &other, "assistant")),
                }
            }
            out.push(ir::Role::Assistant, cur);
        }
    }
    Ok(())
}

fn tool_result_to_ir(
    path: &str,
    content: MessageContent,
) -> Result<Vec<ir::ContentPart>, RelayError> {
    match content {
        MessageContent::Text(text) => Ok(vec![ir::ContentPart::Text { text }]),
        MessageContent::Blocks(blocks) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (k, block) in blocks.into_iter().enumerate() {
                match block {
                    ContentBlock::Text(t) => out.push(ir::ContentPart::Text { text: t.text }),
                    ContentBlock::Image(img) => {
                        out.push(image_to_ir(&format!("{path}[{k}]"), img.source)?)
                    }
                    other => {
                        return Err(RelayError::invalid_param(
                            &format!("{path}[{k}].type"),
                            format!(
                                "{path}[{k}].type: `{}` blocks are not supported in tool results",
                                block_type(&other)
                            ),
                        ));
                    }
                }
            }
            Ok(out)
        }
    }
}

fn image_to_ir(path: &str, source: ImageSource) -> Result<ir::ContentPart, RelayError> {
    let source = match source {
        ImageSource::Base64 { media_type, data } => ir::ImageSource::Base64 { media_type, data },
        ImageSource::Url { url } => ir::ImageSource::Url { url },
        ImageSource::Other(map) => {
            let kind = map.get("type").and_then(Value::as_str).unwrap_or("(none)");
            return Err(RelayError::invalid_param(
                &format!("{path}.source"),
                format!("{path}.source: unsupported image source type `{kind}`"),
            ));
        }
    };
    Ok(ir::ContentPart::Image {
        source,
        detail: None,
    })
}

fn tool_to_ir(i: usize, tool: Tool) -> Result<ir::ToolDef, RelayError> {
    if let Some(kind) = tool.kind.as_deref().filter(|k| *k != "custom") {
        return Err(RelayError::invalid_param(
            &format!("tools[{i}].type"),
            format!(
                "tools[{i}].type: server tool `{kind}` cannot be relayed; only client tools are supported"
            ),
        ));
    }
    let parameters = tool
        .input_schema
        .ok_or_else(|| missing(&format!("tools[{i}].input_schema")))?;
    Ok(ir::ToolDef {
        name: tool.name,
        description: tool.description,
        parameters,
        strict: None,
    })
}

fn tool_choice_to_ir(
    choice: ToolChoice,
) -> Result<(Option<ir::ToolChoice>, Option<bool>), RelayError> {
    let parallel = choice.disable_parallel_tool_use.map(|d| !d);
    let choice = match choice.kind.as_str() {
        "auto" => ir::ToolChoice::Auto,
        "any" => ir::ToolChoice::Required,
        "none" => ir::ToolChoice::None,
        "tool" => ir::ToolChoice::Tool {
            name: choice.name.ok_or_else(|| missing("tool_choice.name"))?,
        },
        other => {
            return Err(RelayError::invalid_param(
                "tool_choice.type",
                format!(
                    "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none', not `{other}`"
                ),
            ));
        }
    };
    Ok((Some(choice), parallel))
}

fn thinking_to_ir(t: ThinkingConfig) -> Result<Option<ir::Reasoning>, RelayError> {
    match t.kind.as_str() {
        "enabled" => {
            let budget = t
                .budget_tokens
                .ok_or_else(|| missing("thinking.budget_tokens"))?;
            Ok(Some(ir::Reasoning {
                effort: None,
                budget_tokens: Some(budget),
            }))
        }
        "disabled" => Ok(None),
        other => Err(RelayError::invalid_param(
            "thinking.type",
            format!("thinking.type: Input should be 'enabled' or 'disabled', not `{other}`"),
        )),
    }
}

fn block_type(block: &ContentBlock) -> &str {
    match block {
        ContentBlock::Text(_) => "text",
        ContentBlock::Image(_) => "image",
        ContentBlock::ToolUse(_) => "tool_use",
        ContentBlock::ToolResult(_) => "tool_result",
        ContentBlock::Thinking(_) => "thinking",
        ContentBlock::RedactedThinking(_) => "redacted_thinking",
        ContentBlock::Other(map) => map.get("type").and_then(Value::as_str).unwrap_or("(none)"),
    }
}

/// Convert an IR request to an Anthropic request.
///
/// - System messages (wherever they are) become `system`: a string when there is one text
///   part without `cache_control`, else text blocks.
/// - Tool messages become `tool_result` blocks in a user message: consecutive tool results
///   share one, and a user message right after them joins it too.
/// - Tool-call arguments are parsed into the `input` object (empty text is `{}`); text that
///   is not a JSON object is a 400.
/// - Thinking without a signature (another dialect's reasoning) is dropped, since Anthropic
///   refuses unsigned thinking; redacted thinking becomes `redacted_thinking`. Empty text
///   parts are dropped, and so are assistant messages left empty.
/// - `max_tokens` is [`DEFAULT_MAX_TOKENS`] when the IR has none (raised above a thinking
///   budget that would not fit). A reasoning `budget_tokens` becomes `thinking`; an effort
///   alone (OpenAI `reasoning_effort`) becomes a budget: `low` 1024, `medium` 4096, `high`
///   16384 tokens, kept under `max_tokens` (no thinking when it cannot be 1024 or more).
/// - `tool_choice` `Required` is `any`; `parallel_tool_calls: false` is
///   `disable_parallel_tool_use: true`; `tool_choice` is left out when there are no tools.
/// - `response_format` JSON modes are a 400; image `detail`, message names and `extra`,
///   tool `strict` and `include_usage` are dropped.
/// - `extra` goes back as top-level fields (`top_k` typed), except the names of typed
///   fields; the breakpoints in it go back on their blocks and tools (see the module
///   docs). A caller translating from another dialect must clear `extra` first.
pub fn request_from_ir(req: &ir::ChatRequest) -> Result<MessagesRequest, RelayError> {
    match req.response_format {
        None | Some(ir::ResponseFormat::Text) => {}
        Some(ir::ResponseFormat::JsonObject | ir::ResponseFormat::JsonSchema { .. }) => {
            return Err(RelayError::invalid_param(
                "response_format",
                "response_format (JSON mode or a JSON schema) cannot be expressed for an anthropic-messages upstream",
            ));
        }
    }

    let marks = CacheMarks::from_extra(&req.extra);
    let mut system = Vec::new();
    let mut messages: Vec<InputMessage> = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        match m.role {
            ir::Role::System => {
                for (j, part) in m.content.iter().enumerate() {
                    match part {
                        ir::ContentPart::Text { text } => system.push(TextBlock {
                            text: text.clone(),
                            cache_control: marks.part(i, j),
                            extra: Extra::new(),
                        }),
                        other => return Err(cannot_carry(&path, j, other, "a system message")),
                    }
                }
            }
            ir::Role::User | ir::Role::Tool => {
                let blocks = user_blocks(&path, m, |j| marks.part(i, j))?;
                let joins = match messages.last() {
                    Some(last) if last.role == MessageRole::User => {
                        m.role == ir::Role::Tool || ends_with_tool_result(&last.content)
                    }
                    _ => false,
                };
                match messages.last_mut() {
                    Some(last) if joins => append_blocks(&mut last.content, blocks),
                    _ => messages.push(InputMessage {
                        role: MessageRole::User,
                        content: MessageContent::Blocks(blocks),
                        extra: Extra::new(),
                    }),
                }
            }
            ir::Role::Assistant => {
                let blocks = assistant_blocks(&path, m, |j| marks.part(i, j))?;
                if !blocks.is_empty() {
                    messages.push(InputMessage {
                        role: MessageRole::Assistant,
                        content: MessageContent::Blocks(blocks),
                        extra: Extra::new(),
                    });
                }
            }
        }
    }
    for m in &mut messages {
        simplify(&mut m.content);
    }
    let system = if system.is_empty() {
        None
    } else {
        let mut content =
            MessageContent::Blocks(system.into_iter().map(ContentBlock::Text).collect());
        simplify(&mut content);
        Some(content)
    };

    let tools: Vec<Tool> = req
        .tools
        .iter()
        .enumerate()
        .map(|(k, t)| Tool {
            kind: None,
            name: t.name.clone(),
            description: t.description.clone(),
            input_schema: Some(if t.parameters.is_null() {
                serde_json::json!({"type": "object", "properties": {}})
            } else {
                t.parameters.clone()
            }),
            cache_control: marks.tool(k),
            extra: Extra::new(),
        })
        .collect();
    let tool_choice = if tools.is_empty() {
        None
    } else {
        let disable_parallel = (req.parallel_tool_calls == Some(false)).then_some(true);
        let (kind, name) = match &req.tool_choice {
            None | Some(ir::ToolChoice::Auto) => ("auto", None),
            Some(ir::ToolChoice::Required) => ("any", None),
            Some(ir::ToolChoice::None) => ("none", None),
            Some(ir::ToolChoice::Tool { name }) => ("tool", Some(name.clone())),
        };
        match (kind, disable_parallel) {
            // `none` takes no options; an unset choice stays unset unless it must carry
            // the parallel flag.
            ("none", _) => Some(tool_choice(kind, None, None)),
            ("auto", None) if req.tool_choice.is_none() => None,
            _ => Some(tool_choice(kind, name, disable_parallel)),
        }
    };

    let (max_tokens, thinking) = thinking_from_ir(req);

    let mut extra = req.extra.clone();
    for key in REQUEST_FIELDS.iter().chain([&CACHE_CONTROL_KEY]) {
        extra.remove(*key);
    }

    Ok(MessagesRequest {
        model: req.model.clone(),
        messages,
        system,
        max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.extra.get(TOP_K).and_then(Value::as_u64),
        stop_sequences: req.stop.clone(),
        stream: req.stream.then_some(true),
        tools,
        tool_choice,
        thinking,
        extra,
    })
}

fn tool_choice(kind: &str, name: Option<String>, disable_parallel: Option<bool>) -> ToolChoice {
    ToolChoice {
        kind: kind.to_owned(),
        name,
        disable_parallel_tool_use: disable_parallel,
        extra: Extra::new(),
    }
}

/// `max_tokens` and `thinking` for an IR request.
fn thinking_from_ir(req: &ir::ChatRequest) -> (u64, Option<ThinkingConfig>) {
    let explicit = reasoning_budget(req);
    let max_tokens = match (req.max_tokens, explicit) {
        (Some(max), _) => max,
        (None, Some((budget, _))) if budget >= DEFAULT_MAX_TOKENS => budget + DEFAULT_MAX_TOKENS,
        (None, _) => DEFAULT_MAX_TOKENS,
    };
    let budget = match explicit {
        None => None,
        // The client's own budget goes as is (the upstream judges it).
        Some((budget, true)) => Some(budget),
        // A budget derived from an effort level must fit under max_tokens.
        Some((budget, false)) => {
            let budget = budget.min(max_tokens.saturating_sub(1));
            (budget >= 1024).then_some(budget)
        }
    };
    let thinking = budget.map(|b| ThinkingConfig {
        kind: "enabled".into(),
        budget_tokens: Some(b),
        extra: Extra::new(),
    });
    (max_tokens, thinking)
}

/// The thinking budget of an IR request and whether the client gave it as a number (else
/// it comes from an effort level).
fn reasoning_budget(req: &ir::ChatRequest) -> Option<(u64, bool)> {
    let r = req.reasoning.as_ref()?;
    if let Some(budget) = r.budget_tokens {
        return Some((budget, true));
    }
    let budget = match r.effort.as_deref()? {
        "low" => 1024,
        "medium" => 4096,
        "high" => 16384,
        _ => return None,
    };
    Some((budget, false))
}

fn cannot_carry(path: &str, j: usize, part: &ir::ContentPart, place: &str) -> RelayError {
    RelayError::invalid_param(
        &format!("{path}.content[{j}]"),
        format!(
            "{path}.content[{j}]: Anthropic Messages cannot carry {} in {place}",
            part_name(part)
        ),
    )
}

/// The blocks of a user or tool message.
fn user_blocks(
    path: &str,
    m: &ir::Message,
    mark: impl Fn(usize) -> Option<Value>,
) -> Result<Vec<ContentBlock>, RelayError> {
    let place = if m.role == ir::Role::Tool {
        "a tool message"
    } else {
        "a user message"
    };
    let mut blocks = Vec::with_capacity(m.content.len());
    for (j, part) in m.content.iter().enumerate() {
        let cache_control = mark(j);
        match part {
            ir::ContentPart::Text { text } if m.role == ir::Role::User => {
                if !text.is_empty() {
                    blocks.push(ContentBlock::Text(TextBlock {
                        text: text.clone(),
                        cache_control,
                        extra: Extra::new(),
                    }));
                }
            }
            ir::ContentPart::Image { source, .. } if m.role == ir::Role::User => {
                blocks.push(ContentBlock::Image(ImageBlock {
                    source: image_from_ir(source),
                    cache_control,
                    extra: Extra::new(),
                }));
            }
            ir::ContentPart::ToolResult {
                call_id,
                content,
                is_error,
            } => {
                let content = tool_result_from_ir(&format!("{path}.content[{j}]"), content)?;
                blocks.push(ContentBlock::ToolResult(ToolResultBlock {
                    tool_use_id: call_id.clone(),
                    content,
                    is_error: is_error.then_some(true),
                    cache_control,
                    extra: Extra::new(),
                }));
            }
            other => return Err(cannot_carry(path, j, other, place)),
        }
    }
    Ok(blocks)
}

fn tool_result_from_ir(
    path: &str,
    content: &[ir::ContentPart],
) -> Result<Option<MessageContent>, RelayError> {
    if let [ir::ContentPart::Text { text }] = content {
        return Ok(Some(MessageContent::Text(text.clone())));
    }
    if content.is_empty() {
        return Ok(None);
    }
    let mut blocks = Vec::with_capacity(content.len());
    for (k, part) in content.iter().enumerate() {
        match part {
            ir::ContentPart::Text { text } => {
                if !text.is_empty() {
                    blocks.push(ContentBlock::Text(TextBlock {
                        text: text.clone(),
                        cache_control: None,
                        extra: Extra::new(),
                    }));
                }
            }
            ir::ContentPart::Image { source, .. } => blocks.push(ContentBlock::Image(ImageBlock {
                source: image_from_ir(source),
                cache_control: None,
                extra: Extra::new(),
            })),
            other => {
                return Err(RelayError::invalid_param(
                    &format!("{path}[{k}]"),
                    format!(
                        "{path}[{k}]: Anthropic tool results carry text and images, not {}",
                        part_name(other)
                    ),
                ));
            }
        }
    }
    Ok(Some(MessageContent::Blocks(blocks)))
}

fn assistant_blocks(
    path: &str,
    m: &ir::Message,
    mark: impl Fn(usize) -> Option<Value>,
) -> Result<Vec<ContentBlock>, RelayError> {
    let mut blocks = Vec::with_capacity(m.content.len());
    for (j, part) in m.content.iter().enumerate() {
        let cache_control = mark(j);
        match part {
            ir::ContentPart::Text { text } => {
                if !text.is_empty() {
                    blocks.push(ContentBlock::Text(TextBlock {
                        text: text.clone(),
                        cache_control,
                        extra: Extra::new(),
                    }));
                }
            }
            ir::ContentPart::Thinking {
                text,
                signature,
                redacted,
            } => match (signature.as_deref().filter(|s| !s.is_empty()), redacted) {
                (Some(data), true) => {
                    blocks.push(ContentBlock::RedactedThinking(RedactedThinkingBlock {
                        data: data.to_owned(),
                        extra: Extra::new(),
                    }))
                }
                (Some(signature), false) => blocks.push(ContentBlock::Thinking(ThinkingBlock {
                    thinking: text.clone(),
                    signature: signature.to_owned(),
                    extra: Extra::new(),
                })),
                (None, _) => {}
            },
            ir::ContentPart::ToolCall {
                id,
                name,
                arguments,
            } => {
                let input = parse_arguments(arguments).ok_or_else(|| {
                    RelayError::invalid_param(
                        &format!("{path}.content[{j}].arguments"),
                        format!(
                            "{path}.content[{j}].arguments: the arguments of tool call `{id}` are not a JSON object"
                        ),
                    )
                })?;
                blocks.push(ContentBlock::ToolUse(ToolUseBlock {
                    id: id.clone(),
                    name: name.clone(),
                    input,
                    cache_control,
                    extra: Extra::new(),
                }));
            }
            other => return Err(cannot_carry(path, j, other, "an assistant message")),
        }
    }
    Ok(blocks)
}

/// Tool-call arguments as an `input` object: empty text is `{}`; anything but a JSON
/// object is `None`.
pub fn parse_arguments(arguments: &str) -> Option<Value> {
    if arguments.trim().is_empty() {
        return Some(empty_object());
    }
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
}

fn image_from_ir(source: &ir::ImageSource) -> ImageSource {
    match source {
        ir::ImageSource::Url { url } => ImageSource::Url { url: url.clone() },
        ir::ImageSource::Base64 { media_type, data } => ImageSource::Base64 {
            media_type: media_type.clone(),
            data: data.clone(),
        },
    }
}

fn ends_with_tool_result(content: &MessageContent) -> bool {
    matches!(content, MessageContent::Blocks(b) if matches!(b.last(), Some(ContentBlock::ToolResult(_))))
}

fn append_blocks(content: &mut MessageContent, blocks: Vec<ContentBlock>) {
    match content {
        MessageContent::Blocks(existing) => existing.extend(blocks),
        MessageContent::Text(text) => {
            let mut all = Vec::with_capacity(blocks.len() + 1);
            if !text.is_empty() {
                all.push(ContentBlock::Text(TextBlock {
                    text: std::mem::take(text),
                    cache_control: None,
                    extra: Extra::new(),
                }));
            }
            all.extend(blocks);
            *content = MessageContent::Blocks(all);
        }
    }
}

/// One plain text block becomes a string; no blocks become an empty string.
fn simplify(content: &mut MessageContent) {
    if let MessageContent::Blocks(blocks) = content {
        match blocks.as_mut_slice() {
            [] => *content = MessageContent::Text(String::new()),
            [ContentBlock::Text(t)] if t.cache_control.is_none() && t.extra.is_empty() => {
                *content = MessageContent::Text(std::mem::take(&mut t.text));
            }
            _ => {}
        }
    }
}

fn part_name(part: &ir::ContentPart) -> &'static str {
    match part {
        ir::ContentPart::Text { .. } => "text",
        ir::ContentPart::Image { .. } => "an image",
        ir::ContentPart::ToolCall { .. } => "a tool call",
        ir::ContentPart::ToolResult { .. } => "a tool result",
        ir::ContentPart::Thinking { .. } => "thinking",
    }
}

// ---------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------

/// A non-streamed answer (also the `message` of a stream's `message_start`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessagesResponse {
    /// The message id (`msg_...`).
    #[serde(default)]
    pub id: String,
    /// `message`.
    #[serde(rename = "type", default = "message_type")]
    pub kind: String,
    /// `assistant`.
    #[serde(default = "assistant_role")]
    pub role: String,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// The answer's blocks.
    #[serde(default, deserialize_with = "null_default")]
    pub content: Vec<ContentBlock>,
    /// Why generation stopped (always written; `null` in `message_start`).
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// The stop sequence that ended it (always written).
    #[serde(default)]
    pub stop_sequence: Option<String>,
    /// Token counts.
    #[serde(default)]
    pub usage: MessageUsage,
    /// Other fields (`container`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Token counts as Anthropic reports them: `input_tokens` excludes cache reads and writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageUsage {
    /// Uncached input tokens (absent from some `message_delta` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Output tokens (cumulative in `message_delta`).
    #[serde(default, deserialize_with = "null_default")]
    pub output_tokens: u64,
    /// Input tokens written to the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    /// Input tokens read from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
    /// Other fields (`service_tier`, `server_tool_use`, `cache_creation`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Anthropic usage to the relay's [`Usage`]: IR input includes cache reads and writes,
/// cache reads are the IR's cached input.
pub fn usage_to_ir(u: &MessageUsage) -> Usage {
    let read = u.cache_read_input_tokens.unwrap_or(0);
    let created = u.cache_creation_input_tokens.unwrap_or(0);
    Usage {
        input_tokens: u.input_tokens.unwrap_or(0) + read + created,
        output_tokens: u.output_tokens,
        cached_input_tokens: read,
        reasoning_tokens: 0,
    }
}

/// The relay's [`Usage`] as Anthropic reports it: `input_tokens` is the IR input minus
/// cached input (cache writes, unknown to the IR, stay in it), `cache_read_input_tokens`
/// the cached input; `cache_creation_input_tokens` is not written.
pub fn usage_from_ir(u: &Usage) -> MessageUsage {
    MessageUsage {
        input_tokens: Some(u.input_tokens.saturating_sub(u.cached_input_tokens)),
        output_tokens: u.output_tokens,
        cache_creation_input_tokens: None,
        cache_read_input_tokens: Some(u.cached_input_tokens),
        extra: Extra::new(),
    }
}

/// An Anthropic `stop_reason` as an IR finish reason.
pub fn stop_reason_to_ir(reason: &str) -> ir::FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => ir::FinishReason::Stop,
        "max_tokens" => ir::FinishReason::Length,
        "tool_use" => ir::FinishReason::ToolCalls,
        "refusal" => ir::FinishReason::ContentFilter,
        other => ir::FinishReason::Other(other.to_owned()),
    }
}

/// An IR finish reason as an Anthropic `stop_reason`. Other reasons go verbatim when they
/// are Anthropic's own (`pause_turn`...), else as `end_turn`.
pub fn stop_reason_from_ir(reason: &ir::FinishReason) -> &str {
    match reason {
        ir::FinishReason::Stop => "end_turn",
        ir::FinishReason::Length => "max_tokens",
        ir::FinishReason::ToolCalls => "tool_use",
        ir::FinishReason::ContentFilter => "refusal",
        ir::FinishReason::Other(s) if STOP_REASONS.contains(&s.as_str()) => s,
        ir::FinishReason::Other(_) => "end_turn",
    }
}

/// `msg_` + `id`, unless `id` already starts with it.
pub fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else {
        format!("msg_{id}")
    }
}

/// Convert a response to the IR (one choice). Thinking, text and tool calls keep their
/// order; `input` becomes compact JSON text; blocks the IR cannot carry (server tool
/// calls and results) are skipped; `stop_sequence` goes to the response's `extra`.
pub fn response_to_ir(resp: MessagesResponse) -> ir::ChatResponse {
    let mut content = Vec::with_capacity(resp.content.len());
    for block in resp.content {
        match block {
            ContentBlock::Text(t) => content.push(ir::ContentPart::Text { text: t.text }),
            ContentBlock::Thinking(t) => content.push(ir::ContentPart::Thinking {
                text: t.thinking,
                signature: (!t.signature.is_empty()).then_some(t.signature),
                redacted: false,
            }),
            ContentBlock::RedactedThinking(t) => content.push(ir::ContentPart::Thinking {
                text: String::new(),
                signature: Some(t.data),
                redacted: true,
            }),
            ContentBlock::ToolUse(t) => content.push(ir::ContentPart::ToolCall {
                id: t.id,
                name: t.name,
                arguments: t.input.to_string(),
            }),
            ContentBlock::Image(_) | ContentBlock::ToolResult(_) | ContentBlock::Other(_) => {}
        }
    }
    let mut extra = resp.extra;
    if let Some(seq) = resp.stop_sequence {
        extra.insert(STOP_SEQUENCE.into(), Value::String(seq));
    }
    ir::ChatResponse {
        id: resp.id,
        model: resp.model,
        created: 0,
        choices: vec![ir::Choice {
            index: 0,
            message: ir::Message::new(ir::Role::Assistant, content),
            finish_reason: resp.stop_reason.as_deref().map(stop_reason_to_ir),
        }],
        usage: Some(usage_to_ir(&resp.usage)),
        extra,
    }
}

/// Convert an IR response (its first choice) to an Anthropic message. The id gets a `msg_`
/// prefix when it lacks one; a missing finish reason is `end_turn` (`tool_use` when the
/// answer calls tools); missing usage is zeros. Unsigned thinking is written with an empty
/// signature; empty text is dropped; tool-call arguments that are not a JSON object, and
/// images or tool results in an answer, are an upstream-protocol error.
pub fn response_from_ir(resp: &ir::ChatResponse) -> Result<MessagesResponse, RelayError> {
    let protocol =
        |message: String| RelayError::new(ErrorKind::UpstreamProtocol, Side::Upstream, message);
    let choice = resp.choices.first();
    let mut content = Vec::new();
    for part in choice.map_or(&[][..], |c| &c.message.content[..]) {
        match part {
            ir::ContentPart::Text { text } => {
                if !text.is_empty() {
                    content.push(ContentBlock::Text(TextBlock {
                        text: text.clone(),
                        cache_control: None,
                        extra: Extra::new(),
                    }));
                }
            }
            ir::ContentPart::Thinking {
                text,
                signature,
                redacted: false,
            } => content.push(ContentBlock::Thinking(ThinkingBlock {
                thinking: text.clone(),
                signature: signature.clone().unwrap_or_default(),
                extra: Extra::new(),
            })),
            ir::ContentPart::Thinking {
                signature,
                redacted: true,
                ..
            } => content.push(ContentBlock::RedactedThinking(RedactedThinkingBlock {
                data: signature.clone().unwrap_or_default(),
                extra: Extra::new(),
            })),
            ir::ContentPart::ToolCall {
                id,
                name,
                arguments,
            } => {
                let input = parse_arguments(arguments).ok_or_else(|| {
                    protocol(format!(
                        "the arguments of tool call `{id}` are not a JSON object: {}",
                        truncate(arguments, 200)
                    ))
                })?;
                content.push(ContentBlock::ToolUse(ToolUseBlock {
                    id: id.clone(),
                    name: name.clone(),
                    input,
                    cache_control: None,
                    extra: Extra::new(),
                }));
            }
            other => {
                return Err(protocol(format!(
                    "the answer contains {}, which an Anthropic message cannot carry",
                    part_name(other)
                )));
            }
        }
    }

    let mut extra = resp.extra.clone();
    let stop_sequence = extra
        .remove(STOP_SEQUENCE)
        .and_then(|v| v.as_str().map(str::to_owned));
    for key in [
        "id",
        "type",
        "role",
        "model",
        "content",
        "stop_reason",
        "usage",
    ] {
        extra.remove(key);
    }
    let calls_tools = content
        .iter()
        .any(|b| matches!(b, ContentBlock::ToolUse(_)));
    let stop_reason = match choice.and_then(|c| c.finish_reason.as_ref()) {
        Some(ir::FinishReason::Stop) if stop_sequence.is_some() => "stop_sequence",
        Some(reason) => stop_reason_from_ir(reason),
        None if calls_tools => "tool_use",
        None => "end_turn",
    };

    Ok(MessagesResponse {
        id: message_id(&resp.id),
        kind: message_type(),
        role: assistant_role(),
        model: resp.model.clone(),
        content,
        stop_reason: Some(stop_reason.to_owned()),
        stop_sequence,
        usage: usage_from_ir(&resp.usage.unwrap_or_default()),
        extra,
    })
}

// ---------------------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------------------

/// One server-sent event's `data`, by `type` (the `event:` name says the same).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The message began (`content` empty, `stop_reason` null, input usage).
    MessageStart {
        /// The message so far.
        message: MessagesResponse,
    },
    /// A content block began.
    ContentBlockStart {
        /// The block's position in the message.
        index: u32,
        /// The block, empty (`text: ""`, `input: {}`...).
        content_block: ContentBlock,
    },
    /// A piece of a content block.
    ContentBlockDelta {
        /// The block's position.
        index: u32,
        /// The piece.
        delta: BlockDelta,
    },
    /// A content block ended.
    ContentBlockStop {
        /// The block's position.
        index: u32,
    },
    /// Top-level changes: the stop reason and cumulative usage.
    MessageDelta {
        /// The stop reason and sequence.
        delta: MessageDeltaBody,
        /// Cumulative usage (`output_tokens`, sometimes input and cache counts).
        #[serde(default)]
        usage: Option<MessageUsage>,
    },
    /// The message ended (the terminal event).
    MessageStop,
    /// A keep-alive.
    Ping,
    /// An error after the stream began.
    Error {
        /// What went wrong.
        error: ErrorDetail,
    },
    /// Any other event (ignored).
    #[serde(other)]
    Unknown,
}

/// The `delta` of a `content_block_delta`, by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    /// Text.
    TextDelta {
        /// The text.
        text: String,
    },
    /// A fragment of a tool call's input JSON.
    InputJsonDelta {
        /// The fragment.
        partial_json: String,
    },
    /// Thinking text.
    ThinkingDelta {
        /// The text.
        thinking: String,
    },
    /// The thinking block's signature.
    SignatureDelta {
        /// The signature.
        signature: String,
    },
    /// Any other delta (`citations_delta`...; ignored).
    #[serde(other)]
    Other,
}

/// The `delta` of a `message_delta`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageDeltaBody {
    /// Why generation stopped.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// The stop sequence that ended it.
    #[serde(default)]
    pub stop_sequence: Option<String>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// `{"type":"error","error":{"type":..,"message":..}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// `error`.
    #[serde(rename = "type", default = "error_type_name")]
    pub kind: String,
    /// The error.
    pub error: ErrorDetail,
}

/// The `error` object of an error body or event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// `invalid_request_error`, `overloaded_error`...
    #[serde(rename = "type", default)]
    pub kind: String,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The Anthropic error `type` for an error: by kind (bad request, authentication,
/// permission, not found, too large, rate limit; timeouts are `api_error`), status 529 is
/// `overloaded_error`, other 4xx `invalid_request_error`, the rest `api_error`.
pub fn error_type(err: &RelayError) -> &'static str {
    let status = err.status_code().as_u16();
    if status == 529 {
        return "overloaded_error";
    }
    match err.kind() {
        ErrorKind::BadRequest => "invalid_request_error",
        ErrorKind::Unauthorized => "authentication_error",
        ErrorKind::Forbidden | ErrorKind::Plugin => "permission_error",
        ErrorKind::ModelNotFound | ErrorKind::NotFound => "not_found_error",
        ErrorKind::PayloadTooLarge => "request_too_large",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::FirstByteTimeout
        | ErrorKind::FirstTokenTimeout
        | ErrorKind::TotalTimeout
        | ErrorKind::IdleTimeout => "api_error",
        _ => match status {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        },
    }
}

/// The HTTP status Anthropic uses for an error `type` (500 for unknown types).
pub fn error_type_status(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// The error as Anthropic's JSON body.
pub fn error_body(err: &RelayError) -> Bytes {
    let body = serde_json::json!({
        "type": "error",
        "error": {"type": error_type(err), "message": err.message()},
    });
    Bytes::from(body.to_string())
}

/// The message and type of an upstream error body (`"message [type]"`), or a readable
/// slice of the raw body.
pub fn parse_error_body(body: &[u8]) -> String {
    if let Ok(resp) = serde_json::from_slice::<ErrorResponse>(body) {
        let message = if resp.error.message.is_empty() {
            "(no message)"
        } else {
            &resp.error.message
        };
        return if resp.error.kind.is_empty() {
            message.to_owned()
        } else {
            format!("{message} [{}]", resp.error.kind)
        };
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text.to_owned()
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

fn message_type() -> String {
    MESSAGE_TYPE.to_owned()
}

fn assistant_role() -> String {
    "assistant".to_owned()
}

fn error_type_name() -> String {
    "error".to_owned()
}

/// `null` reads as the default.
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::ir::{ContentPart as P, FinishReason, ImageSource as Src, Role};
    use serde_json::json;

    fn object(v: &Value) -> JsonObject {
        serde_json::from_str(&v.to_string()).unwrap()
    }

    fn decode(v: &Value) -> Result<ir::ChatRequest, RelayError> {
        request_to_ir(parse_request(&object(v))?)
    }

    /// Wire JSON -> IR -> wire JSON.
    fn round_trip(v: &Value) -> (ir::ChatRequest, Value) {
        let ir = decode(v).unwrap();
        let back = request_from_ir(&ir).unwrap();
        (ir, serde_json::to_value(&back).unwrap())
    }

    fn msg(role: Role, content: Vec<P>) -> ir::Message {
        ir::Message::new(role, content)
    }

    #[test]
    fn system_string_round_trip() {
        let v = json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 1024,
            "system": "You are a terse assistant.",
            "messages": [{"role": "user", "content": "Hello, Claude"}],
            "temperature": 0.5,
            "stream": true
        });
        let (ir, back) = round_trip(&v);
        assert_eq!(ir.model, "claude-sonnet-4-20250514");
        assert_eq!(ir.max_tokens, Some(1024));
        assert_eq!(ir.temperature, Some(0.5));
        assert!(ir.stream && ir.include_usage);
        assert_eq!(
            ir.messages,
            vec![
                msg(Role::System, vec![P::text("You are a terse assistant.")]),
                msg(Role::User, vec![P::text("Hello, Claude")]),
            ]
        );
        assert!(ir.extra.is_empty());
        assert_eq!(back, v);
    }

    #[test]
    fn multi_turn_with_images_round_trip() {
        let v = json!({
            "model": "claude-3-5-haiku-20241022",
            "max_tokens": 300,
            "messages": [
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "text", "text": "What is this?"}
                ]},
                {"role": "assistant", "content": "A one-pixel PNG."},
                {"role": "user", "content": [
                    {"type": "text", "text": "And this one?"},
                    {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/cat.jpg"}}
                ]}
            ]
        });
        let (ir, back) = round_trip(&v);
        assert_eq!(ir.messages.len(), 3);
        assert_eq!(
            ir.messages[0].content[0],
            P::Image {
                source: Src::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBORw0KGgo=".into()
                },
                detail: None
            }
        );
        assert_eq!(ir.messages[1].role, Role::Assistant);
        assert_eq!(ir.messages[1].text(), "A one-pixel PNG.");
        assert_eq!(
            ir.messages[2].content[1],
            P::Image {
                source: Src::Url {
                    url: "https://upload.wikimedia.org/cat.jpg".into()
                },
                detail: None
            }
        );
        assert_eq!(back, v);
    }

    #[test]
    fn parallel_tool_calls_and_results_round_trip() {
        let v = json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 2048,
            "tools": [{
                "name": "get_weather",
                "description": "Current weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
            }],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": false},
            "messages": [
                {"role": "user", "content": "Weather in Paris and Tokyo?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking both."},
                    {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"city": "Tokyo", "days": 1}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18°C, cloudy"},
                    {"type": "tool_result", "tool_use_id": "toolu_01B", "is_error": true,
                     "content": [{"type": "text", "text": "upstream timeout"}, {"type": "text", "text": "retry later"}]},
                    {"type": "text", "text": "Summarise, please."}
                ]}
            ]
        });
        let (ir, back) = round_trip(&v);
        assert_eq!(ir.tool_choice, Some(ir::ToolChoice::Auto));
        assert_eq!(ir.parallel_tool_calls, Some(true));
        assert_eq!(ir.tools[0].name, "get_weather");
        assert_eq!(ir.tools[0].parameters["required"], json!(["city"]));
        let roles: Vec<Role> = ir.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::Tool,
                Role::User
            ]
        );
        assert_eq!(
            ir.messages[1].content[1..],
            [
                P::ToolCall {
                    id: "toolu_01A".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into()
                },
                P::ToolCall {
                    id: "toolu_01B".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Tokyo","days":1}"#.into()
                }
            ]
        );
        assert_eq!(
            ir.messages[2].content,
            vec![P::ToolResult {
                call_id: "toolu_01A".into(),
                content: vec![P::text("18°C, cloudy")],
                is_error: false
            }]
        );
        assert_eq!(
            ir.messages[3].content,
            vec![P::ToolResult {
                call_id: "toolu_01B".into(),
                content: vec![P::text("upstream timeout"), P::text("retry later")],
                is_error: true
            }]
        );
        assert_eq!(ir.messages[4].text(), "Summarise, please.");
        // `disable_parallel_tool_use: false` is the default and is not written back.
        let mut expected = v.clone();
        expected["tool_choice"] = json!({"type": "auto"});
        assert_eq!(back, expected);
    }

    #[test]
    fn thinking_blocks_round_trip() {
        let v = json!({
            "model": "claude-opus-4-1-20250805",
            "max_tokens": 16000,
            "thinking": {"type": "enabled", "budget_tokens": 10000},
            "messages": [
                {"role": "user", "content": "What is 27 * 453?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "27 * 453 = 12231.", "signature": "EuYBCkQYAiJAgCs1le6/Pol5Z4/JMomVOouGrWdhYNsH3ukzUECbB6iWrSQtsQuRHJID6lWV"},
                    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"},
                    {"type": "text", "text": "12,231"}
                ]},
                {"role": "user", "content": "Thanks"}
            ]
        });
        let (ir, back) = round_trip(&v);
        assert_eq!(
            ir.reasoning,
            Some(ir::Reasoning {
                effort: None,
                budget_tokens: Some(10000)
            })
        );
        assert_eq!(
            ir.messages[1].content,
            vec![
                P::Thinking {
                    text: "27 * 453 = 12231.".into(),
                    signature: Some(
                        "EuYBCkQYAiJAgCs1le6/Pol5Z4/JMomVOouGrWdhYNsH3ukzUECbB6iWrSQtsQuRHJID6lWV"
                            .into()
                    ),
                    redacted: false
                },
                P::Thinking {
                    text: String::new(),
                    signature: Some(
                        "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP".into()
                    ),
                    redacted: true
                },
                P::text("12,231"),
            ]
        );
        assert_eq!(back, v);

        // `disabled` is no reasoning, and writes nothing back.
        let mut off = v.clone();
        off["thinking"] = json!({"type": "disabled"});
        let (ir, back) = round_trip(&off);
        assert_eq!(ir.reasoning, None);
        assert!(back.get("thinking").is_none());
    }

    #[test]
    fn unknown_fields_and_cache_control_are_kept() {
        let v = json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 512,
            "system": [
                {"type": "text", "text": "You are a code reviewer."},
                {"type": "text", "text": "<the whole style guide>", "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Review this diff.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
                ]}
            ],
            "metadata": {"user_id": "u-1234"},
            "service_tier": "standard_only",
            "container": "container_011CPR5CNjB747bTd36fQLFk",
            "top_k": 40,
            "top_p": 0.9,
            "stop_sequences": ["\n\nHuman:"],
            "tool_choice": {"type": "tool", "name": "review"},
            "tools": [
                {"name": "lint", "input_schema": {"type": "object"}},
                {"name": "review", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}
            ],
            "mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "example"}]
        });
        let (ir, back) = round_trip(&v);
        assert_eq!(ir.extra["metadata"], json!({"user_id": "u-1234"}));
        assert_eq!(ir.extra["service_tier"], json!("standard_only"));
        assert_eq!(
            ir.extra["container"],
            json!("container_011CPR5CNjB747bTd36fQLFk")
        );
        assert_eq!(ir.extra["top_k"], json!(40));
        assert_eq!(ir.stop, vec!["\n\nHuman:".to_owned()]);
        assert_eq!(
            ir.tool_choice,
            Some(ir::ToolChoice::Tool {
                name: "review".into()
            })
        );
        assert_eq!(ir.extra["mcp_servers"][0]["name"], json!("example"));
        assert_eq!(
            ir.extra[CACHE_CONTROL_KEY],
            json!([
                {"message": 0, "part": 1, "cache_control": {"type": "ephemeral"}},
                {"message": 1, "part": 0, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                {"tool": 1, "cache_control": {"type": "ephemeral"}}
            ])
        );
        assert!(ir.messages.iter().all(|m| m.extra.is_empty()));
        assert_eq!(back, v);

        // Breakpoints on tool results, in a message split around them, find their blocks.
        let split = json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 512,
            "messages": [
                {"role": "user", "content": "Run it."},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "run", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Before."},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "After.", "cache_control": {"type": "ephemeral"}}
                ]}
            ]
        });
        let (ir, back) = round_trip(&split);
        let roles: Vec<Role> = ir.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Assistant,
                Role::User,
                Role::Tool,
                Role::User
            ]
        );
        assert_eq!(
            ir.extra[CACHE_CONTROL_KEY],
            json!([
                {"message": 3, "part": 0, "cache_control": {"type": "ephemeral"}},
                {"message": 4, "part": 0, "cache_control": {"type": "ephemeral"}}
            ])
        );
        assert_eq!(back, split);
    }

    #[test]
    fn openai_shaped_conversation_to_anthropic() {
        let req = ir::ChatRequest {
            model: "claude-sonnet-4-20250514".into(),
            messages: vec![
                msg(Role::System, vec![P::text("Be brief.")]),
                msg(Role::User, vec![P::text("Weather in Paris and Tokyo?")]),
                msg(
                    Role::Assistant,
                    vec![
                        P::Thinking {
                            text: "DeepSeek-style reasoning, unsigned.".into(),
                            signature: None,
                            redacted: false,
                        },
                        P::text(""),
                        P::ToolCall {
                            id: "call_abc".into(),
                            name: "get_weather".into(),
                            arguments: r#"{"city": "Paris"}"#.into(),
                        },
                        P::ToolCall {
                            id: "call_def".into(),
                            name: "get_weather".into(),
                            arguments: String::new(),
                        },
                    ],
                ),
                msg(
                    Role::Tool,
                    vec![P::ToolResult {
                        call_id: "call_abc".into(),
                        content: vec![P::text("18C")],
                        is_error: false,
                    }],
                ),
                msg(
                    Role::Tool,
                    vec![P::ToolResult {
                        call_id: "call_def".into(),
                        content: vec![P::text("25C")],
                        is_error: false,
                    }],
                ),
                msg(Role::User, vec![P::text("Which is warmer?")]),
            ],
            tools: vec![ir::ToolDef {
                name: "get_weather".into(),
                description: Some("Weather by city".into()),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                strict: Some(true),
            }],
            tool_choice: Some(ir::ToolChoice::Required),
            parallel_tool_calls: Some(false),
            stream: true,
            include_usage: true,
            stop: vec!["END".into()],
            ..ir::ChatRequest::default()
        };
        // The OpenAI client's own fields (`seed`, `user`...) were cleared by the adapter,
        // as for every cross-dialect request.

        let out = serde_json::to_value(request_from_ir(&req).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({
                "model": "claude-sonnet-4-20250514",
                "system": "Be brief.",
                "max_tokens": DEFAULT_MAX_TOKENS,
                "stop_sequences": ["END"],
                "stream": true,
                "messages": [
                    {"role": "user", "content": "Weather in Paris and Tokyo?"},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "call_def", "name": "get_weather", "input": {}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_abc", "content": "18C"},
                        {"type": "tool_result", "tool_use_id": "call_def", "content": "25C"},
                        {"type": "text", "text": "Which is warmer?"}
                    ]}
                ],
                "tools": [{"name": "get_weather", "description": "Weather by city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
            })
        );

        // Several system messages become blocks; a reasoning effort becomes a budget.
        let mut two = req.clone();
        two.messages
            .insert(1, msg(Role::System, vec![P::text("Use metric units.")]));
        two.reasoning = Some(ir::Reasoning {
            effort: Some("high".into()),
            budget_tokens: None,
        });
        let out = serde_json::to_value(request_from_ir(&two).unwrap()).unwrap();
        assert_eq!(
            out["system"],
            json!([{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric units."}])
        );
        // No max_tokens: the default is raised above the budget.
        assert_eq!(out["max_tokens"], json!(16384 + DEFAULT_MAX_TOKENS));
        assert_eq!(
            out["thinking"],
            json!({"type": "enabled", "budget_tokens": 16384})
        );
        // The client's max_tokens stays; the derived budget fits under it, or is dropped.
        two.max_tokens = Some(2000);
        let out = serde_json::to_value(request_from_ir(&two).unwrap()).unwrap();
        assert_eq!(out["max_tokens"], json!(2000));
        assert_eq!(
            out["thinking"],
            json!({"type": "enabled", "budget_tokens": 1999})
        );
        two.max_tokens = Some(1000);
        let out = serde_json::to_value(request_from_ir(&two).unwrap()).unwrap();
        assert!(out.get("thinking").is_none());

        // JSON modes cannot be expressed.
        let mut json_mode = req.clone();
        json_mode.response_format = Some(ir::ResponseFormat::JsonObject);
        let err = request_from_ir(&json_mode).unwrap_err();
        assert_eq!(err.status_code(), http::StatusCode::BAD_REQUEST);
        assert_eq!(err.param(), Some("response_format"));
        assert!(err.message().contains("anthropic-messages upstream"));
        json_mode.response_format = Some(ir::ResponseFormat::JsonSchema {
            name: "answer".into(),
            schema: json!({"type": "object"}),
            strict: Some(true),
        });
        assert_eq!(
            request_from_ir(&json_mode).unwrap_err().param(),
            Some("response_format")
        );

        // Arguments that are not a JSON object are the client's error.
        let mut bad = req.clone();
        bad.messages[2].content[2] = P::ToolCall {
            id: "call_x".into(),
            name: "get_weather".into(),
            arguments: "{\"city\": ".into(),
        };
        let err = request_from_ir(&bad).unwrap_err();
        assert_eq!(err.status_code(), http::StatusCode::BAD_REQUEST);
        assert_eq!(err.param(), Some("messages[2].content[2].arguments"));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let ok = json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
        assert!(decode(&ok).is_ok());
        let param = |v: Value| {
            let err = decode(&v).unwrap_err();
            assert_eq!(err.status_code(), http::StatusCode::BAD_REQUEST, "{err}");
            err.param().unwrap().to_owned()
        };
        let without = |key: &str| {
            let mut v = ok.clone();
            v.as_object_mut().unwrap().remove(key);
            v
        };
        assert_eq!(param(without("model")), "model");
        assert_eq!(param(without("messages")), "messages");
        assert_eq!(param(without("max_tokens")), "max_tokens");
        let with = |key: &str, value: Value| {
            let mut v = ok.clone();
            v[key] = value;
            v
        };
        assert_eq!(
            param(with(
                "messages",
                json!([{"role": "system", "content": "x"}])
            )),
            "messages[0].role"
        );
        assert_eq!(
            param(with(
                "messages",
                json!([{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "document", "source": {}}]}])
            )),
            "messages[1].content[0].type"
        );
        assert_eq!(
            param(with(
                "messages",
                json!([{"role": "user", "content": [{"type": "text"}]}])
            )),
            "messages[0].content[0].type"
        );
        assert_eq!(
            param(with(
                "messages",
                json!([{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}])
            )),
            "messages[0].content[0].type"
        );
        assert_eq!(
            param(with(
                "tools",
                json!([{"type": "web_search_20250305", "name": "web_search"}])
            )),
            "tools[0].type"
        );
        assert_eq!(param(with("max_tokens", json!("lots"))), "max_tokens");
        assert_eq!(
            param(with("tool_choice", json!({"type": "sometimes"}))),
            "tool_choice.type"
        );
        assert_eq!(
            param(with(
                "messages",
                json!([{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}])
            )),
            "messages[0].content[0].source"
        );
        assert_eq!(
            param(with(
                "system",
                json!([{"type": "image", "source": {"type": "url", "url": "u"}}])
            )),
            "system[0].type"
        );
    }

    #[test]
    fn response_round_trip_and_from_another_dialect() {
        let v = json!({
            "id": "msg_01Aq9w938a90dw8q",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-20250514",
            "content": [
                {"type": "thinking", "thinking": "Need the tool.", "signature": "EqQBCgIYAhIM"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris", "unit": "c"}}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 50, "output_tokens": 60,
                "cache_creation_input_tokens": 200, "cache_read_input_tokens": 1000}
        });
        let ir = response_to_ir(serde_json::from_value(v.clone()).unwrap());
        assert_eq!(ir.id, "msg_01Aq9w938a90dw8q");
        assert_eq!(ir.choices[0].finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(
            ir.choices[0].message.content[2],
            P::ToolCall {
                id: "toolu_01".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris","unit":"c"}"#.into()
            }
        );
        assert_eq!(
            ir.usage,
            Some(Usage {
                input_tokens: 1250,
                output_tokens: 60,
                cached_input_tokens: 1000,
                reasoning_tokens: 0
            })
        );
        let back = serde_json::to_value(response_from_ir(&ir).unwrap()).unwrap();
        let mut expected = v.clone();
        // Cache writes are folded into input_tokens (the IR has no slot for them).
        expected["usage"] =
            json!({"input_tokens": 250, "output_tokens": 60, "cache_read_input_tokens": 1000});
        assert_eq!(back, expected);

        // A stop sequence survives the round trip.
        let mut seq = v.clone();
        seq["stop_reason"] = json!("stop_sequence");
        seq["stop_sequence"] = json!("END");
        let ir = response_to_ir(serde_json::from_value(seq).unwrap());
        assert_eq!(ir.choices[0].finish_reason, Some(FinishReason::Stop));
        let back = serde_json::to_value(response_from_ir(&ir).unwrap()).unwrap();
        assert_eq!(back["stop_reason"], json!("stop_sequence"));
        assert_eq!(back["stop_sequence"], json!("END"));

        // An OpenAI answer.
        let openai = ir::ChatResponse {
            id: "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT".into(),
            model: "gpt-4o-2024-08-06".into(),
            created: 1741569952,
            choices: vec![ir::Choice {
                index: 0,
                message: msg(Role::Assistant, vec![P::text("Hello!")]),
                finish_reason: Some(FinishReason::Length),
            }],
            usage: Some(Usage {
                input_tokens: 19,
                output_tokens: 10,
                cached_input_tokens: 3,
                reasoning_tokens: 0,
            }),
            extra: Extra::new(),
        };
        let back = serde_json::to_value(response_from_ir(&openai).unwrap()).unwrap();
        assert_eq!(
            back,
            json!({
                "id": "msg_chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
                "type": "message",
                "role": "assistant",
                "model": "gpt-4o-2024-08-06",
                "content": [{"type": "text", "text": "Hello!"}],
                "stop_reason": "max_tokens",
                "stop_sequence": null,
                "usage": {"input_tokens": 16, "output_tokens": 10, "cache_read_input_tokens": 3}
            })
        );
    }

    #[test]
    fn stop_reasons_map_both_ways() {
        for (wire, ir) in [
            ("end_turn", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("tool_use", FinishReason::ToolCalls),
            ("refusal", FinishReason::ContentFilter),
            ("pause_turn", FinishReason::Other("pause_turn".into())),
        ] {
            assert_eq!(stop_reason_to_ir(wire), ir);
            assert_eq!(stop_reason_from_ir(&ir), wire);
        }
        assert_eq!(stop_reason_to_ir("stop_sequence"), FinishReason::Stop);
        assert_eq!(
            stop_reason_from_ir(&FinishReason::Other("SAFETY".into())),
            "end_turn"
        );
    }

    #[test]
    fn error_bodies_by_status() {
        let ty = |err: RelayError| {
            let v: Value = serde_json::from_slice(&error_body(&err)).unwrap();
            assert_eq!(v["type"], json!("error"));
            assert_eq!(v["error"]["message"], json!(err.message()));
            v["error"]["type"].as_str().unwrap().to_owned()
        };
        assert_eq!(ty(RelayError::bad_request("x")), "invalid_request_error");
        assert_eq!(
            ty(RelayError::upstream_status(413, "too big upstream")),
            "invalid_request_error"
        );
        assert_eq!(
            ty(RelayError::new(
                ErrorKind::Unauthorized,
                Side::Client,
                "no key"
            )),
            "authentication_error"
        );
        assert_eq!(
            ty(RelayError::new(ErrorKind::Forbidden, Side::Client, "no")),
            "permission_error"
        );
        assert_eq!(ty(RelayError::model_not_found("nope")), "not_found_error");
        assert_eq!(
            ty(RelayError::new(
                ErrorKind::PayloadTooLarge,
                Side::Client,
                "big"
            )),
            "request_too_large"
        );
        assert_eq!(
            ty(RelayError::upstream_status(429, "slow down")),
            "rate_limit_error"
        );
        assert_eq!(ty(RelayError::upstream_status(503, "down")), "api_error");
        assert_eq!(ty(RelayError::internal("bug")), "api_error");
        assert_eq!(
            ty(RelayError::new(
                ErrorKind::TotalTimeout,
                Side::Upstream,
                "late"
            )),
            "api_error"
        );
        assert_eq!(
            ty(RelayError::upstream_status(529, "Overloaded")
                .with_status(http::StatusCode::from_u16(529).unwrap())),
            "overloaded_error"
        );
    }

    #[test]
    fn reads_upstream_error_bodies() {
        assert_eq!(
            parse_error_body(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "Overloaded [overloaded_error]"
        );
        assert_eq!(
            parse_error_body(
                br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"},"request_id":"req_1"}"#
            ),
            "max_tokens: Field required [invalid_request_error]"
        );
        assert_eq!(
            parse_error_body(b"<html>502 Bad Gateway</html>\n"),
            "<html>502 Bad Gateway</html>"
        );
        assert_eq!(parse_error_body(b"  "), "(empty body)");
        assert_eq!(error_type_status("overloaded_error"), 529);
        assert_eq!(error_type_status("something_new"), 500);
    }
}
