//! OpenAI Chat Completions on the wire: typed request, response and stream-chunk structs,
//! their conversion to and from the dialect-neutral [IR](relay_core::ir), and
//! [`ChunkEncoder`], which renders IR stream events as OpenAI chunks.
//!
//! Every struct keeps the fields it does not name in a flattened `extra` map, and optional
//! fields are skipped when absent, so decoding and re-encoding a body changes nothing but
//! the key order (and, where OpenAI itself always writes them, a few `null`s such as a
//! response message's `content` and `refusal` and a choice's `logprobs`).
//!
//! # IR `extra` keys this codec writes
//!
//! Besides the unknown wire fields themselves:
//! - `ChatRequest::extra["max_completion_tokens"]` records that the client used
//!   `max_completion_tokens` (the IR's `max_tokens` holds its value); with it,
//!   `extra["max_tokens"]` keeps a `max_tokens` sent alongside. On the way out the IR's
//!   `max_tokens` is written under the name the client used.
//! - `Message::extra["role"]` is `"developer"` for a developer message (IR role System) or
//!   `"function"` for a legacy function-result message (IR role Tool, text content, the
//!   function name in `Message::name`).
//! - `Message::extra["refusal"]` holds an assistant refusal (a string), and, on responses,
//!   `Message::extra["logprobs"]` holds the choice's `logprobs`.
//! - `ChatResponse::extra["system_fingerprint"]`.

use relay_core::ir::{self, Extra};
use relay_core::{ErrorKind, RelayError, Side, Usage};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The `object` of a response.
pub const CHAT_COMPLETION_OBJECT: &str = "chat.completion";
/// The `object` of a stream chunk.
pub const CHUNK_OBJECT: &str = "chat.completion.chunk";

/// Top-level request fields with a typed slot (never copied from `extra`).
const REQUEST_FIELDS: &[&str] = &[
    "model",
    "messages",
    "tools",
    "tool_choice",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "response_format",
    "reasoning_effort",
    "parallel_tool_calls",
];
/// Message fields with a typed slot in some message variant.
const MESSAGE_FIELDS: &[&str] = &[
    "role",
    "content",
    "name",
    "tool_calls",
    "tool_call_id",
    "reasoning_content",
];
/// Response message fields with a typed slot.
const RESPONSE_MESSAGE_FIELDS: &[&str] = &[
    "role",
    "content",
    "refusal",
    "tool_calls",
    "reasoning_content",
    "logprobs",
];
/// Top-level response fields with a typed slot.
const RESPONSE_FIELDS: &[&str] = &[
    "id",
    "object",
    "created",
    "model",
    "choices",
    "usage",
    "system_fingerprint",
];

const MAX_COMPLETION_TOKENS: &str = "max_completion_tokens";

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

/// A `POST /v1/chat/completions` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    /// The model.
    pub model: String,
    /// The conversation.
    pub messages: Vec<RequestMessage>,
    /// Tools the model may call (`null` reads as none; none is not written).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tools: Vec<Tool>,
    /// `"auto"`, `"none"`, `"required"` or a named function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// The legacy token limit (still the one most compatible servers read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// The current token limit (required by reasoning models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Whether to stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Stream options (`include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// The answer's format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Reasoning effort (`minimal`, `low`, `medium`, `high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// Whether several tool calls may come in one turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Every other field (`seed`, `user`, `metadata`, `logit_bias`, legacy `functions`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A request message, by `role`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum RequestMessage {
    /// Instructions.
    System(SystemMessage),
    /// Instructions, as newer OpenAI models name them.
    Developer(SystemMessage),
    /// The user.
    User(UserMessage),
    /// An earlier model turn.
    Assistant(AssistantMessage),
    /// A tool result.
    Tool(ToolMessage),
    /// A legacy function result.
    Function(FunctionMessage),
}

/// A `system` or `developer` message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SystemMessage {
    /// Text, or an array of text parts.
    pub content: MessageContent,
    /// A participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A `user` message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserMessage {
    /// Text, or an array of text and image parts.
    pub content: MessageContent,
    /// A participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An `assistant` message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    /// The text (absent or `null` when the turn only called tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// A participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls made in this turn.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tool_calls: Vec<ToolCall>,
    /// Reasoning text (DeepSeek, Qwen and other OpenAI-compatible servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Other fields (`refusal`, `audio`, legacy `function_call`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A `tool` message: the result of one tool call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolMessage {
    /// The id of the call it answers.
    pub tool_call_id: String,
    /// Text, or an array of text parts.
    pub content: MessageContent,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A legacy `function` message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionMessage {
    /// The function's name.
    pub name: String,
    /// Its result.
    #[serde(default)]
    pub content: Option<String>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Message content: a string or an array of parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<ContentPart>),
}

/// One part of an array content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// `{"type":"text","text":..}`.
    Text {
        /// The text.
        text: String,
    },
    /// `{"type":"image_url","image_url":{"url":..,"detail":..}}`.
    ImageUrl {
        /// The image.
        image_url: ImageUrl,
    },
    /// `{"type":"refusal","refusal":..}` (assistant messages only).
    Refusal {
        /// The refusal text.
        refusal: String,
    },
    /// Any other part (`input_audio`, `file`...): kept as is, rejected by
    /// [`request_to_ir`].
    #[serde(untagged)]
    Other(Extra),
}

/// An image reference: an `https:` URL or a `data:<mime>;base64,<data>` URL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageUrl {
    /// The URL.
    pub url: String,
    /// `low`, `high` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A tool call in an assistant message or a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call id.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// The function and its arguments.
    pub function: FunctionCall,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A function call: a name and JSON arguments as text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function name.
    pub name: String,
    /// The arguments, JSON text (an object sent by a non-conforming server is turned into
    /// its JSON text).
    #[serde(default, deserialize_with = "json_text")]
    pub arguments: String,
}

/// A tool definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Always `function` for chat completions function tools.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// The function.
    pub function: FunctionDefinition,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A function the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionDefinition {
    /// Its name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Structured-outputs strictness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `tool_choice`: a mode string or a named function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `"auto"`, `"none"` or `"required"`.
    Mode(String),
    /// `{"type":"function","function":{"name":..}}`.
    Function(NamedToolChoice),
    /// Anything else (rejected by [`request_to_ir`]).
    Other(Value),
}

/// A `tool_choice` naming one function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedToolChoice {
    /// Always `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// The function.
    pub function: FunctionName,
}

/// A function, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionName {
    /// The name.
    pub name: String,
}

/// `response_format`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// `{"type":"text"}`.
    Text,
    /// `{"type":"json_object"}`.
    JsonObject,
    /// `{"type":"json_schema","json_schema":{..}}`.
    JsonSchema {
        /// The schema.
        json_schema: JsonSchemaFormat,
    },
    /// Any other format (rejected by [`request_to_ir`]).
    #[serde(untagged)]
    Other(Extra),
}

/// The `json_schema` of a structured-outputs `response_format`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    /// The schema's name.
    pub name: String,
    /// What the format is for (not carried by the IR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// Whether it must be followed exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `stop`: one string or several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Whether to end the stream with a usage chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Other fields (not carried by the IR).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Convert a request to the IR. Unsupported content (audio and file parts, non-function
/// tools, unknown `tool_choice` or `response_format` shapes, images in system or tool
/// messages) is a 400 naming the field.
pub fn request_to_ir(req: ChatCompletionRequest) -> Result<ir::ChatRequest, RelayError> {
    let ChatCompletionRequest {
        model,
        messages,
        tools,
        tool_choice,
        max_tokens,
        max_completion_tokens,
        temperature,
        top_p,
        stop,
        stream,
        stream_options,
        response_format,
        reasoning_effort,
        parallel_tool_calls,
        mut extra,
    } = req;

    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message_to_ir(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let tools = tools
        .into_iter()
        .enumerate()
        .map(|(i, t)| tool_to_ir(i, t))
        .collect::<Result<Vec<_>, _>>()?;
    let tool_choice = tool_choice.map(tool_choice_to_ir).transpose()?;
    let response_format = response_format.map(response_format_to_ir).transpose()?;

    let max_tokens = match max_completion_tokens {
        Some(limit) => {
            extra.insert(MAX_COMPLETION_TOKENS.into(), limit.into());
            if let Some(legacy) = max_tokens {
                extra.insert("max_tokens".into(), legacy.into());
            }
            Some(limit)
        }
        None => max_tokens,
    };
    let stop = match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };

    Ok(ir::ChatRequest {
        model,
        messages,
        tools,
        tool_choice,
        max_tokens,
        temperature,
        top_p,
        stop,
        stream: stream.unwrap_or(false),
        include_usage: stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        response_format,
        reasoning: reasoning_effort.map(|effort| ir::Reasoning {
            effort: Some(effort),
            budget_tokens: None,
        }),
        parallel_tool_calls,
        extra,
    })
}

fn message_to_ir(i: usize, msg: RequestMessage) -> Result<ir::Message, RelayError> {
    let path = format!("messages[{i}]");
    match msg {
        RequestMessage::System(m) => system_to_ir(&path, m, None),
        RequestMessage::Developer(m) => system_to_ir(&path, m, Some("developer")),
        RequestMessage::User(m) => {
            let content = parts_to_ir(&format!("{path}.content"), m.content, None)?;
            Ok(ir::Message {
                role: ir::Role::User,
                content,
                name: m.name,
                extra: m.extra,
            })
        }
        RequestMessage::Assistant(m) => {
            let mut extra = m.extra;
            let mut content = Vec::new();
            if let Some(reasoning) = m.reasoning_content.filter(|r| !r.is_empty()) {
                content.push(ir::ContentPart::Thinking {
                    text: reasoning,
                    signature: None,
                    redacted: false,
                });
            }
            if let Some(c) = m.content {
                let mut refusal = String::new();
                content.extend(parts_to_ir(
                    &format!("{path}.content"),
                    c,
                    Some(&mut refusal),
                )?);
                if content
                    .iter()
                    .any(|p| matches!(p, ir::ContentPart::Image { .. }))
                {
                    return Err(RelayError::invalid_param(
                        &format!("{path}.content"),
                        "assistant messages cannot contain images",
                    ));
                }
                if !refusal.is_empty() && !extra.contains_key("refusal") {
                    extra.insert("refusal".into(), Value::String(refusal));
                }
            }
            for (j, call) in m.tool_calls.into_iter().enumerate() {
                if call.kind != "function" {
                    return Err(RelayError::invalid_param(
                        &format!("{path}.tool_calls[{j}].type"),
                        format!("unsupported tool call type `{}`", call.kind),
                    ));
                }
                content.push(ir::ContentPart::ToolCall {
                    id: call.id,
                    name: call.function.name,
                    arguments: call.function.arguments,
                });
            }
            Ok(ir::Message {
                role: ir::Role::Assistant,
                content,
                name: m.name,
                extra,
            })
        }
        RequestMessage::Tool(m) => {
            let result = text_parts_to_ir(&format!("{path}.content"), m.content)?;
            Ok(ir::Message {
                role: ir::Role::Tool,
                content: vec![ir::ContentPart::ToolResult {
                    call_id: m.tool_call_id,
                    content: result,
                    is_error: false,
                }],
                name: None,
                extra: m.extra,
            })
        }
        RequestMessage::Function(m) => {
            let mut extra = m.extra;
            extra.insert("role".into(), Value::String("function".into()));
            Ok(ir::Message {
                role: ir::Role::Tool,
                content: vec![ir::ContentPart::text(m.content.unwrap_or_default())],
                name: Some(m.name),
                extra,
            })
        }
    }
}

fn system_to_ir(
    path: &str,
    m: SystemMessage,
    original_role: Option<&str>,
) -> Result<ir::Message, RelayError> {
    let content = text_parts_to_ir(&format!("{path}.content"), m.content)?;
    let mut extra = m.extra;
    if let Some(role) = original_role {
        extra.insert("role".into(), Value::String(role.into()));
    }
    Ok(ir::Message {
        role: ir::Role::System,
        content,
        name: m.name,
        extra,
    })
}

/// Content parts, text only (system and tool messages).
fn text_parts_to_ir(
    path: &str,
    content: MessageContent,
) -> Result<Vec<ir::ContentPart>, RelayError> {
    let parts = parts_to_ir(path, content, None)?;
    if let Some(j) = parts
        .iter()
        .position(|p| !matches!(p, ir::ContentPart::Text { .. }))
    {
        return Err(RelayError::invalid_param(
            &format!("{path}[{j}]"),
            "only text parts are allowed in this message",
        ));
    }
    Ok(parts)
}

/// Content to IR parts. Refusal parts go to `refusal` when given, else are an error.
fn parts_to_ir(
    path: &str,
    content: MessageContent,
    mut refusal: Option<&mut String>,
) -> Result<Vec<ir::ContentPart>, RelayError> {
    let parts = match content {
        MessageContent::Text(text) => return Ok(vec![ir::ContentPart::Text { text }]),
        MessageContent::Parts(parts) => parts,
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        match part {
            ContentPart::Text { text } => out.push(ir::ContentPart::Text { text }),
            ContentPart::ImageUrl { image_url } => out.push(ir::ContentPart::Image {
                source: image_source(image_url.url),
                detail: image_url.detail,
            }),
            ContentPart::Refusal { refusal: text } => match refusal.as_deref_mut() {
                Some(sink) => sink.push_str(&text),
                None => {
                    return Err(RelayError::invalid_param(
                        &format!("{path}[{j}].type"),
                        "refusal parts are only allowed in assistant messages",
                    ));
                }
            },
            ContentPart::Other(map) => {
                let message = match map.get("type").and_then(Value::as_str) {
                    Some(kind @ ("text" | "image_url" | "refusal")) => {
                        format!("malformed `{kind}` content part")
                    }
                    Some(kind) => format!("unsupported content part type `{kind}`"),
                    None => "content part without a `type`".to_owned(),
                };
                return Err(RelayError::invalid_param(
                    &format!("{path}[{j}].type"),
                    message,
                ));
            }
        }
    }
    Ok(out)
}

/// `data:<mime>;base64,<data>` becomes inline bytes; anything else stays a URL.
fn image_source(url: String) -> ir::ImageSource {
    if let Some((meta, data)) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
        && let Some(media_type) = meta.strip_suffix(";base64")
    {
        return ir::ImageSource::Base64 {
            media_type: media_type.to_owned(),
            data: data.to_owned(),
        };
    }
    ir::ImageSource::Url { url }
}

fn image_url(source: &ir::ImageSource) -> String {
    match source {
        ir::ImageSource::Url { url } => url.clone(),
        ir::ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
    }
}

fn tool_to_ir(i: usize, tool: Tool) -> Result<ir::ToolDef, RelayError> {
    if tool.kind != "function" {
        return Err(RelayError::invalid_param(
            &format!("tools[{i}].type"),
            format!("unsupported tool type `{}`", tool.kind),
        ));
    }
    let f = tool.function;
    Ok(ir::ToolDef {
        name: f.name,
        description: f.description,
        parameters: f.parameters.unwrap_or(Value::Null),
        strict: f.strict,
    })
}

fn tool_choice_to_ir(choice: ToolChoice) -> Result<ir::ToolChoice, RelayError> {
    match choice {
        ToolChoice::Mode(mode) => match mode.as_str() {
            "auto" => Ok(ir::ToolChoice::Auto),
            "none" => Ok(ir::ToolChoice::None),
            "required" => Ok(ir::ToolChoice::Required),
            other => Err(RelayError::invalid_param(
                "tool_choice",
                format!("unsupported tool_choice `{other}`"),
            )),
        },
        ToolChoice::Function(named) if named.kind == "function" => Ok(ir::ToolChoice::Tool {
            name: named.function.name,
        }),
        ToolChoice::Function(_) | ToolChoice::Other(_) => Err(RelayError::invalid_param(
            "tool_choice",
            "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}",
        )),
    }
}

fn response_format_to_ir(format: ResponseFormat) -> Result<ir::ResponseFormat, RelayError> {
    match format {
        ResponseFormat::Text => Ok(ir::ResponseFormat::Text),
        ResponseFormat::JsonObject => Ok(ir::ResponseFormat::JsonObject),
        ResponseFormat::JsonSchema { json_schema } => Ok(ir::ResponseFormat::JsonSchema {
            name: json_schema.name,
            schema: json_schema.schema.unwrap_or(Value::Null),
            strict: json_schema.strict,
        }),
        ResponseFormat::Other(map) => {
            let message = match map.get("type").and_then(Value::as_str) {
                Some("json_schema") => {
                    "response_format.json_schema is missing or malformed".to_owned()
                }
                Some(kind) => format!("unsupported response_format type `{kind}`"),
                None => "response_format needs a `type`".to_owned(),
            };
            Err(RelayError::invalid_param("response_format", message))
        }
    }
}

/// Convert an IR request to an OpenAI request. The IR's `extra` becomes the wire `extra`
/// (minus keys that name typed fields). What OpenAI cannot express (images outside user
/// messages, tool calls outside assistant messages, images in tool results) is a 400
/// naming the message; redacted thinking, thinking signatures, a tool result's `is_error`
/// and a reasoning `budget_tokens` without an effort are dropped.
pub fn request_from_ir(req: &ir::ChatRequest) -> Result<ChatCompletionRequest, RelayError> {
    let mut extra = req.extra.clone();
    let (max_tokens, max_completion_tokens) = if extra.remove(MAX_COMPLETION_TOKENS).is_some() {
        (
            extra.get("max_tokens").and_then(Value::as_u64),
            req.max_tokens,
        )
    } else {
        (req.max_tokens, None)
    };
    strip(&mut extra, REQUEST_FIELDS);

    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        message_from_ir(i, m, &mut messages)?;
    }

    let tools = req
        .tools
        .iter()
        .map(|t| Tool {
            kind: function_kind(),
            function: FunctionDefinition {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: (!t.parameters.is_null()).then(|| t.parameters.clone()),
                strict: t.strict,
                extra: Extra::new(),
            },
            extra: Extra::new(),
        })
        .collect();
    let tool_choice = req.tool_choice.as_ref().map(|c| match c {
        ir::ToolChoice::Auto => ToolChoice::Mode("auto".into()),
        ir::ToolChoice::None => ToolChoice::Mode("none".into()),
        ir::ToolChoice::Required => ToolChoice::Mode("required".into()),
        ir::ToolChoice::Tool { name } => ToolChoice::Function(NamedToolChoice {
            kind: function_kind(),
            function: FunctionName { name: name.clone() },
        }),
    });
    let stop = match req.stop.as_slice() {
        [] => None,
        [one] => Some(Stop::One(one.clone())),
        many => Some(Stop::Many(many.to_vec())),
    };
    let response_format = req.response_format.as_ref().map(|f| match f {
        ir::ResponseFormat::Text => ResponseFormat::Text,
        ir::ResponseFormat::JsonObject => ResponseFormat::JsonObject,
        ir::ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
        } => ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name: name.clone(),
                description: None,
                schema: (!schema.is_null()).then(|| schema.clone()),
                strict: *strict,
                extra: Extra::new(),
            },
        },
    });

    Ok(ChatCompletionRequest {
        model: req.model.clone(),
        messages,
        tools,
        tool_choice,
        max_tokens,
        max_completion_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop,
        stream: req.stream.then_some(true),
        stream_options: (req.stream && req.include_usage).then(|| StreamOptions {
            include_usage: Some(true),
            extra: Extra::new(),
        }),
        response_format,
        reasoning_effort: req.reasoning.as_ref().and_then(|r| r.effort.clone()),
        parallel_tool_calls: req.parallel_tool_calls,
        extra,
    })
}

/// Append the wire message(s) for one IR message: a user message carrying tool results
/// becomes the tool messages followed by a user message with the rest.
fn message_from_ir(
    i: usize,
    m: &ir::Message,
    out: &mut Vec<RequestMessage>,
) -> Result<(), RelayError> {
    let path = format!("messages[{i}]");
    let mut extra = m.extra.clone();
    let original_role = extra.remove("role");
    let original_role = original_role.as_ref().and_then(Value::as_str);
    strip(&mut extra, MESSAGE_FIELDS);
    let unsupported = |j: usize, what: &str| {
        RelayError::invalid_param(
            &format!("{path}.content[{j}]"),
            format!(
                "OpenAI Chat Completions cannot carry {what} in a {} message",
                role_name(m.role)
            ),
        )
    };

    match m.role {
        ir::Role::System => {
            let mut texts = Vec::with_capacity(m.content.len());
            for (j, part) in m.content.iter().enumerate() {
                match part {
                    ir::ContentPart::Text { text } => texts.push(text.as_str()),
                    other => return Err(unsupported(j, part_name(other))),
                }
            }
            let msg = SystemMessage {
                content: text_content(&texts),
                name: m.name.clone(),
                extra,
            };
            out.push(if original_role == Some("developer") {
                RequestMessage::Developer(msg)
            } else {
                RequestMessage::System(msg)
            });
        }
        ir::Role::User => {
            let mut parts = Vec::with_capacity(m.content.len());
            let mut results = 0usize;
            for (j, part) in m.content.iter().enumerate() {
                match part {
                    ir::ContentPart::Text { text } => {
                        parts.push(ContentPart::Text { text: text.clone() })
                    }
                    ir::ContentPart::Image { source, detail } => {
                        parts.push(ContentPart::ImageUrl {
                            image_url: ImageUrl {
                                url: image_url(source),
                                detail: detail.clone(),
                                extra: Extra::new(),
                            },
                        })
                    }
                    ir::ContentPart::ToolResult {
                        call_id, content, ..
                    } => {
                        results += 1;
                        out.push(tool_message(&path, j, call_id, content, Extra::new())?);
                    }
                    other => return Err(unsupported(j, part_name(other))),
                }
            }
            if !parts.is_empty() || results == 0 {
                let content = match parts.as_slice() {
                    [] => MessageContent::Text(String::new()),
                    [ContentPart::Text { text }] => MessageContent::Text(text.clone()),
                    _ => MessageContent::Parts(parts),
                };
                out.push(RequestMessage::User(UserMessage {
                    content,
                    name: m.name.clone(),
                    extra,
                }));
            }
        }
        ir::Role::Assistant => {
            let mut texts = Vec::new();
            let mut reasoning: Option<String> = None;
            let mut tool_calls = Vec::new();
            for (j, part) in m.content.iter().enumerate() {
                match part {
                    ir::ContentPart::Text { text } => texts.push(text.as_str()),
                    ir::ContentPart::Thinking {
                        text,
                        redacted: false,
                        ..
                    } => {
                        reasoning.get_or_insert_with(String::new).push_str(text);
                    }
                    ir::ContentPart::Thinking { redacted: true, .. } => {}
                    ir::ContentPart::ToolCall {
                        id,
                        name,
                        arguments,
                    } => tool_calls.push(ToolCall {
                        id: id.clone(),
                        kind: function_kind(),
                        function: FunctionCall {
                            name: name.clone(),
                            arguments: arguments.clone(),
                        },
                        extra: Extra::new(),
                    }),
                    other => return Err(unsupported(j, part_name(other))),
                }
            }
            let content =
                (!texts.is_empty() || tool_calls.is_empty()).then(|| text_content(&texts));
            out.push(RequestMessage::Assistant(AssistantMessage {
                content,
                name: m.name.clone(),
                tool_calls,
                reasoning_content: reasoning,
                extra,
            }));
        }
        ir::Role::Tool => {
            if original_role == Some("function") {
                let name = m.name.clone().ok_or_else(|| {
                    RelayError::invalid_param(
                        &format!("{path}.name"),
                        "a function message needs a name",
                    )
                })?;
                out.push(RequestMessage::Function(FunctionMessage {
                    name,
                    content: Some(m.text()),
                    extra,
                }));
                return Ok(());
            }
            for (j, part) in m.content.iter().enumerate() {
                match part {
                    ir::ContentPart::ToolResult {
                        call_id, content, ..
                    } => {
                        out.push(tool_message(&path, j, call_id, content, extra.clone())?);
                    }
                    other => return Err(unsupported(j, part_name(other))),
                }
            }
        }
    }
    Ok(())
}

fn tool_message(
    path: &str,
    j: usize,
    call_id: &str,
    content: &[ir::ContentPart],
    extra: Extra,
) -> Result<RequestMessage, RelayError> {
    let mut texts = Vec::with_capacity(content.len());
    for (k, part) in content.iter().enumerate() {
        match part {
            ir::ContentPart::Text { text } => texts.push(text.as_str()),
            other => {
                return Err(RelayError::invalid_param(
                    &format!("{path}.content[{j}].content[{k}]"),
                    format!(
                        "OpenAI Chat Completions tool results carry only text, not {}",
                        part_name(other)
                    ),
                ));
            }
        }
    }
    Ok(RequestMessage::Tool(ToolMessage {
        tool_call_id: call_id.to_owned(),
        content: text_content(&texts),
        extra,
    }))
}

/// One text as a string, several as an array of text parts.
fn text_content(texts: &[&str]) -> MessageContent {
    match texts {
        [] => MessageContent::Text(String::new()),
        [one] => MessageContent::Text((*one).to_owned()),
        many => MessageContent::Parts(
            many.iter()
                .map(|t| ContentPart::Text {
                    text: (*t).to_owned(),
                })
                .collect(),
        ),
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

fn role_name(role: ir::Role) -> &'static str {
    match role {
        ir::Role::System => "system",
        ir::Role::User => "user",
        ir::Role::Assistant => "assistant",
        ir::Role::Tool => "tool",
    }
}

// ---------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------

/// A non-streamed chat completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// The response id (`chatcmpl-...`).
    #[serde(default)]
    pub id: String,
    /// `chat.completion`.
    #[serde(default = "chat_completion_object")]
    pub object: String,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// The answers.
    #[serde(default, deserialize_with = "null_default")]
    pub choices: Vec<Choice>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
    /// The backend configuration fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// Other fields (`service_tier`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// One answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Its position.
    #[serde(default)]
    pub index: u32,
    /// The message.
    pub message: ResponseMessage,
    /// Token log probabilities (`null` unless asked for; always written, as OpenAI does).
    #[serde(default)]
    pub logprobs: Option<Value>,
    /// Why generation stopped (always written).
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Other fields (not carried by the IR).
    #[serde(flatten)]
    pub extra: Extra,
}

/// The assistant message of a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseMessage {
    /// `assistant`.
    #[serde(default = "assistant_role")]
    pub role: String,
    /// The text (`null` when the model only called tools; always written).
    #[serde(default)]
    pub content: Option<String>,
    /// A refusal message (always written, as OpenAI does).
    #[serde(default)]
    pub refusal: Option<String>,
    /// Tool calls.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tool_calls: Vec<ToolCall>,
    /// Reasoning text (DeepSeek, Qwen...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Other fields (`annotations`, `audio`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Token counts as OpenAI reports them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionUsage {
    /// Prompt tokens, cached ones included.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens, reasoning included.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Their sum.
    #[serde(default)]
    pub total_tokens: u64,
    /// Prompt breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Completion breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    /// Other fields (DeepSeek's `prompt_cache_hit_tokens`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `usage.prompt_tokens_details`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    /// Other fields (`audio_tokens`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `usage.completion_tokens_details`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    /// Reasoning tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// Other fields (`audio_tokens`, `accepted_prediction_tokens`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// OpenAI usage to the relay's [`Usage`]. Cached tokens come from
/// `prompt_tokens_details.cached_tokens`, or DeepSeek's `prompt_cache_hit_tokens`.
pub fn usage_to_ir(u: &CompletionUsage) -> Usage {
    let cached = u
        .prompt_tokens_details
        .as_ref()
        .and_then(|d| d.cached_tokens)
        .or_else(|| {
            u.extra
                .get("prompt_cache_hit_tokens")
                .and_then(Value::as_u64)
        });
    Usage {
        input_tokens: u.prompt_tokens,
        output_tokens: u.completion_tokens,
        cached_input_tokens: cached.unwrap_or(0),
        reasoning_tokens: u
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0),
    }
}

/// The relay's [`Usage`] as OpenAI reports it (both detail objects always present).
pub fn usage_from_ir(u: &Usage) -> CompletionUsage {
    CompletionUsage {
        prompt_tokens: u.input_tokens,
        completion_tokens: u.output_tokens,
        total_tokens: u.total_tokens(),
        prompt_tokens_details: Some(PromptTokensDetails {
            cached_tokens: Some(u.cached_input_tokens),
            extra: Extra::new(),
        }),
        completion_tokens_details: Some(CompletionTokensDetails {
            reasoning_tokens: Some(u.reasoning_tokens),
            extra: Extra::new(),
        }),
        extra: Extra::new(),
    }
}

/// Convert a response to the IR. Each message becomes thinking (`reasoning_content`),
/// then text, then tool calls; `refusal` and the choice's `logprobs` go to the message's
/// `extra`, `system_fingerprint` to the response's.
pub fn response_to_ir(resp: ChatCompletion) -> Result<ir::ChatResponse, RelayError> {
    let mut extra = resp.extra;
    if let Some(fp) = resp.system_fingerprint {
        extra.insert("system_fingerprint".into(), Value::String(fp));
    }
    let choices = resp
        .choices
        .into_iter()
        .map(|c| {
            let m = c.message;
            let mut content = Vec::new();
            if let Some(reasoning) = m.reasoning_content.filter(|r| !r.is_empty()) {
                content.push(ir::ContentPart::Thinking {
                    text: reasoning,
                    signature: None,
                    redacted: false,
                });
            }
            if let Some(text) = m
                .content
                .filter(|t| !t.is_empty() || m.tool_calls.is_empty())
            {
                content.push(ir::ContentPart::Text { text });
            }
            content.extend(
                m.tool_calls
                    .into_iter()
                    .map(|call| ir::ContentPart::ToolCall {
                        id: call.id,
                        name: call.function.name,
                        arguments: call.function.arguments,
                    }),
            );
            let mut message_extra = m.extra;
            if let Some(refusal) = m.refusal {
                message_extra.insert("refusal".into(), Value::String(refusal));
            }
            if let Some(logprobs) = c.logprobs.filter(|l| !l.is_null()) {
                message_extra.insert("logprobs".into(), logprobs);
            }
            ir::Choice {
                index: c.index,
                message: ir::Message {
                    role: ir::Role::Assistant,
                    content,
                    name: None,
                    extra: message_extra,
                },
                finish_reason: c
                    .finish_reason
                    .as_deref()
                    .map(ir::FinishReason::from_openai),
            }
        })
        .collect();
    Ok(ir::ChatResponse {
        id: resp.id,
        model: resp.model,
        created: resp.created,
        choices,
        usage: resp.usage.as_ref().map(usage_to_ir),
        extra,
    })
}

/// Convert an IR response to an OpenAI response. Content OpenAI cannot carry in an answer
/// (images, tool results) is an upstream-protocol error; redacted thinking is dropped.
pub fn response_from_ir(resp: &ir::ChatResponse) -> Result<ChatCompletion, RelayError> {
    let mut extra = resp.extra.clone();
    let system_fingerprint = extra
        .remove("system_fingerprint")
        .and_then(|v| v.as_str().map(str::to_owned));
    strip(&mut extra, RESPONSE_FIELDS);

    let mut choices = Vec::with_capacity(resp.choices.len());
    for c in &resp.choices {
        let m = &c.message;
        let mut text: Option<String> = None;
        let mut reasoning: Option<String> = None;
        let mut tool_calls = Vec::new();
        for part in &m.content {
            match part {
                ir::ContentPart::Text { text: t } => {
                    text.get_or_insert_with(String::new).push_str(t)
                }
                ir::ContentPart::Thinking {
                    text: t,
                    redacted: false,
                    ..
                } => reasoning.get_or_insert_with(String::new).push_str(t),
                ir::ContentPart::Thinking { redacted: true, .. } => {}
                ir::ContentPart::ToolCall {
                    id,
                    name,
                    arguments,
                } => tool_calls.push(ToolCall {
                    id: id.clone(),
                    kind: function_kind(),
                    function: FunctionCall {
                        name: name.clone(),
                        arguments: arguments.clone(),
                    },
                    extra: Extra::new(),
                }),
                other => {
                    return Err(RelayError::new(
                        ErrorKind::UpstreamProtocol,
                        Side::Upstream,
                        format!(
                            "the answer contains {}, which OpenAI Chat Completions cannot carry",
                            part_name(other)
                        ),
                    ));
                }
            }
        }
        if text.is_none() && tool_calls.is_empty() {
            text = Some(String::new());
        }
        let mut message_extra = m.extra.clone();
        let refusal = message_extra
            .remove("refusal")
            .and_then(|v| v.as_str().map(str::to_owned));
        let logprobs = message_extra.remove("logprobs");
        strip(&mut message_extra, RESPONSE_MESSAGE_FIELDS);
        choices.push(Choice {
            index: c.index,
            message: ResponseMessage {
                role: assistant_role(),
                content: text,
                refusal,
                tool_calls,
                reasoning_content: reasoning,
                extra: message_extra,
            },
            logprobs,
            finish_reason: c.finish_reason.as_ref().map(|r| r.as_openai().to_owned()),
            extra: Extra::new(),
        });
    }

    Ok(ChatCompletion {
        id: resp.id.clone(),
        object: chat_completion_object(),
        created: resp.created,
        model: resp.model.clone(),
        choices,
        usage: resp.usage.as_ref().map(usage_from_ir),
        system_fingerprint,
        extra,
    })
}

// ---------------------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------------------

/// One streamed chunk (`data:` payload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    /// The response id, the same in every chunk.
    #[serde(default)]
    pub id: String,
    /// `chat.completion.chunk`.
    #[serde(default)]
    pub object: String,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model.
    #[serde(default)]
    pub model: String,
    /// The backend configuration fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// Deltas (empty in the final usage chunk).
    #[serde(default, deserialize_with = "null_default")]
    pub choices: Vec<ChunkChoice>,
    /// Usage (only in the final chunk, when asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One choice's delta in a chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// The choice's index.
    #[serde(default)]
    pub index: u32,
    /// What was added.
    #[serde(default, deserialize_with = "null_default")]
    pub delta: ChunkDelta,
    /// Log probabilities (always written).
    #[serde(default)]
    pub logprobs: Option<Value>,
    /// Set in the choice's last chunk (always written).
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The content of a delta.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkDelta {
    /// `assistant`, in the first delta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// A piece of text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A piece of reasoning (DeepSeek, Qwen...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// A piece of a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Tool-call fragments.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tool_calls: Vec<ToolCallChunk>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A tool-call fragment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCallChunk {
    /// Which call of the choice (OpenAI always sends it; missing means its position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// The call id, in the call's first fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, in the first fragment.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name (first fragment) and argument text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCallChunk>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The function part of a tool-call fragment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCallChunk {
    /// The name, in the first fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A piece of the JSON arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// Decode one chunk into IR events, appending to `out`. Stateless:
/// - a chunk whose delta carries a `role` (the first one; some servers repeat it) yields
///   `Start` first;
/// - per choice, in order: `reasoning_content` yields `ThinkingDelta`, `content` and
///   `refusal` yield `TextDelta` (empty strings yield nothing), a tool-call fragment with
///   an id or a name yields `ToolCallStart`, non-empty argument text yields
///   `ToolCallDelta`, and `finish_reason` yields `Finish`;
/// - a `usage` object yields `Usage`, last.
///
/// [`ChunkDecoder`] wraps this with the state that guarantees exactly one `Start` and one
/// `ToolCallStart` per call.
pub fn chunk_to_events(chunk: &ChatCompletionChunk, out: &mut Vec<ir::StreamEvent>) {
    if chunk.choices.iter().any(|c| c.delta.role.is_some()) {
        out.push(start_event(chunk));
    }
    for c in &chunk.choices {
        let choice = c.index;
        let d = &c.delta;
        if let Some(text) = non_empty(&d.reasoning_content) {
            out.push(ir::StreamEvent::ThinkingDelta {
                choice,
                text: text.to_owned(),
            });
        }
        if let Some(text) = non_empty(&d.content) {
            out.push(ir::StreamEvent::TextDelta {
                choice,
                text: text.to_owned(),
            });
        }
        if let Some(text) = non_empty(&d.refusal) {
            out.push(ir::StreamEvent::TextDelta {
                choice,
                text: text.to_owned(),
            });
        }
        for (pos, tc) in d.tool_calls.iter().enumerate() {
            let index = tc.index.unwrap_or(pos as u32);
            let name = tc.function.as_ref().and_then(|f| non_empty(&f.name));
            let id = non_empty(&tc.id);
            if id.is_some() || name.is_some() {
                out.push(ir::StreamEvent::ToolCallStart {
                    choice,
                    index,
                    id: id.unwrap_or_default().to_owned(),
                    name: name.unwrap_or_default().to_owned(),
                });
            }
            if let Some(arguments) = tc.function.as_ref().and_then(|f| non_empty(&f.arguments)) {
                out.push(ir::StreamEvent::ToolCallDelta {
                    choice,
                    index,
                    arguments: arguments.to_owned(),
                });
            }
        }
        if let Some(reason) = &c.finish_reason {
            out.push(ir::StreamEvent::Finish {
                choice,
                reason: ir::FinishReason::from_openai(reason),
            });
        }
    }
    if let Some(usage) = &chunk.usage {
        out.push(ir::StreamEvent::Usage(usage_to_ir(usage)));
    }
}

/// [`chunk_to_events`] with memory: `Start` comes exactly once, before the first chunk's
/// events (even if that chunk has no `role`), and a tool call whose id or name is
/// repeated in later fragments starts only once.
#[derive(Clone, Debug, Default)]
pub struct ChunkDecoder {
    started: bool,
    tool_calls: Vec<(u32, u32)>,
}

impl ChunkDecoder {
    /// A decoder for one stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode one chunk, appending its events to `out`.
    pub fn decode(&mut self, chunk: &ChatCompletionChunk, out: &mut Vec<ir::StreamEvent>) {
        let mut events = Vec::new();
        chunk_to_events(chunk, &mut events);
        if !self.started {
            self.started = true;
            out.push(start_event(chunk));
        }
        for ev in events {
            match &ev {
                ir::StreamEvent::Start { .. } => continue,
                ir::StreamEvent::ToolCallStart { choice, index, .. } => {
                    if self.tool_calls.contains(&(*choice, *index)) {
                        continue;
                    }
                    self.tool_calls.push((*choice, *index));
                }
                _ => {}
            }
            out.push(ev);
        }
    }
}

fn start_event(chunk: &ChatCompletionChunk) -> ir::StreamEvent {
    ir::StreamEvent::Start {
        id: chunk.id.clone(),
        model: chunk.model.clone(),
        created: chunk.created,
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// Renders IR stream events as OpenAI chunk JSON, the way OpenAI streams them.
///
/// - Every chunk carries `id`, `object` (`chat.completion.chunk`), `created` and `model`
///   from the first [`ir::StreamEvent::Start`] (empty until one arrives; later `Start`s are
///   ignored), and each choice carries `"logprobs":null` and `finish_reason`.
/// - A choice's first delta carries `"role":"assistant"`.
/// - Text becomes `content`, thinking becomes `reasoning_content` (DeepSeek style);
///   signatures are dropped.
/// - A tool call's first delta is `{"index":n,"id":..,"type":"function","function":
///   {"name":..,"arguments":""}}`, later ones `{"index":n,"function":{"arguments":..}}`;
///   `n` counts the choice's calls from 0 in order of appearance, whatever the source's
///   indexes were. A repeated start of the same call is ignored.
/// - `Finish` becomes `"delta":{}` with the `finish_reason`.
/// - With `include_usage`, every chunk has `"usage":null` except the usage chunk
///   (`"choices":[]`). Usage is held until every choice seen has finished (a later report
///   replaces an earlier one), then written; call [`ChunkEncoder::finish`] at the end of
///   the stream to write usage still held. Without `include_usage`, usage is never
///   written.
///
/// The strings are `data:` payloads; the caller frames them and writes `data: [DONE]`.
#[derive(Clone, Debug)]
pub struct ChunkEncoder {
    include_usage: bool,
    started: bool,
    id: String,
    model: String,
    created: u64,
    choices: Vec<ChoiceState>,
    pending_usage: Option<Usage>,
}

#[derive(Clone, Debug)]
struct ChoiceState {
    choice: u32,
    role_sent: bool,
    finished: bool,
    /// Source tool-call indexes; the position is the index written.
    tool_calls: Vec<u32>,
}

#[derive(Serialize)]
struct EncChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<EncChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<CompletionUsage>>,
}

#[derive(Serialize)]
struct EncChoice<'a> {
    index: u32,
    delta: EncDelta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Default, Serialize)]
struct EncDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[EncToolCall<'a>; 1]>,
}

#[derive(Serialize)]
struct EncToolCall<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: EncFunction<'a>,
}

#[derive(Serialize)]
struct EncFunction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

impl ChunkEncoder {
    /// An encoder for one stream; `include_usage` is the client's
    /// `stream_options.include_usage`.
    pub fn new(include_usage: bool) -> Self {
        ChunkEncoder {
            include_usage,
            started: false,
            id: String::new(),
            model: String::new(),
            created: 0,
            choices: Vec::new(),
            pending_usage: None,
        }
    }

    /// The chunks (JSON text) for one event; often none or one.
    pub fn encode(&mut self, ev: &ir::StreamEvent) -> Vec<String> {
        let mut out = Vec::new();
        match ev {
            ir::StreamEvent::Start { id, model, created } => {
                if !self.started {
                    self.started = true;
                    self.id.clone_from(id);
                    self.model.clone_from(model);
                    self.created = *created;
                }
            }
            ir::StreamEvent::TextDelta { choice, text } if !text.is_empty() => {
                let role = self.take_role(*choice);
                let delta = EncDelta {
                    role,
                    content: Some(text),
                    ..EncDelta::default()
                };
                self.push_delta(&mut out, *choice, delta, None);
            }
            ir::StreamEvent::ThinkingDelta { choice, text } if !text.is_empty() => {
                let role = self.take_role(*choice);
                let delta = EncDelta {
                    role,
                    reasoning_content: Some(text),
                    ..EncDelta::default()
                };
                self.push_delta(&mut out, *choice, delta, None);
            }
            ir::StreamEvent::TextDelta { .. }
            | ir::StreamEvent::ThinkingDelta { .. }
            | ir::StreamEvent::ThinkingSignature { .. } => {}
            ir::StreamEvent::ToolCallStart {
                choice,
                index,
                id,
                name,
            } => {
                let state = self.state(*choice);
                if state.tool_calls.contains(index) {
                    return out;
                }
                state.tool_calls.push(*index);
                let wire_index = (state.tool_calls.len() - 1) as u32;
                let role = self.take_role(*choice);
                let call = EncToolCall {
                    index: wire_index,
                    id: Some(id),
                    kind: Some("function"),
                    function: EncFunction {
                        name: Some(name),
                        arguments: "",
                    },
                };
                let delta = EncDelta {
                    role,
                    tool_calls: Some([call]),
                    ..EncDelta::default()
                };
                self.push_delta(&mut out, *choice, delta, None);
            }
            ir::StreamEvent::ToolCallDelta {
                choice,
                index,
                arguments,
            } => {
                if arguments.is_empty() {
                    return out;
                }
                let state = self.state(*choice);
                let wire_index = match state.tool_calls.iter().position(|i| i == index) {
                    Some(p) => p,
                    None => {
                        // Arguments without a start: give the call its own index anyway.
                        state.tool_calls.push(*index);
                        state.tool_calls.len() - 1
                    }
                } as u32;
                let role = self.take_role(*choice);
                let call = EncToolCall {
                    index: wire_index,
                    id: None,
                    kind: None,
                    function: EncFunction {
                        name: None,
                        arguments,
                    },
                };
                let delta = EncDelta {
                    role,
                    tool_calls: Some([call]),
                    ..EncDelta::default()
                };
                self.push_delta(&mut out, *choice, delta, None);
            }
            ir::StreamEvent::Finish { choice, reason } => {
                let state = self.state(*choice);
                if state.finished {
                    return out;
                }
                state.finished = true;
                if let Some(role) = self.take_role(*choice) {
                    let delta = EncDelta {
                        role: Some(role),
                        content: Some(""),
                        ..EncDelta::default()
                    };
                    self.push_delta(&mut out, *choice, delta, None);
                }
                self.push_delta(
                    &mut out,
                    *choice,
                    EncDelta::default(),
                    Some(reason.as_openai()),
                );
            }
            ir::StreamEvent::Usage(usage) => {
                if self.include_usage {
                    self.pending_usage = Some(*usage);
                    if !self.choices.is_empty() && self.choices.iter().all(|c| c.finished) {
                        self.flush_usage(&mut out);
                    }
                }
            }
        }
        out
    }

    /// The end of the stream: the usage chunk, if usage is still held.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        self.flush_usage(&mut out);
        out
    }

    fn state(&mut self, choice: u32) -> &mut ChoiceState {
        let pos = match self.choices.iter().position(|c| c.choice == choice) {
            Some(pos) => pos,
            None => {
                self.choices.push(ChoiceState {
                    choice,
                    role_sent: false,
                    finished: false,
                    tool_calls: Vec::new(),
                });
                self.choices.len() - 1
            }
        };
        &mut self.choices[pos]
    }

    /// `Some("assistant")` the first time a choice writes a delta.
    fn take_role(&mut self, choice: u32) -> Option<&'static str> {
        let state = self.state(choice);
        (!std::mem::replace(&mut state.role_sent, true)).then_some("assistant")
    }

    fn push_delta(
        &self,
        out: &mut Vec<String>,
        choice: u32,
        delta: EncDelta<'_>,
        finish_reason: Option<&str>,
    ) {
        let chunk = EncChunk {
            id: &self.id,
            object: CHUNK_OBJECT,
            created: self.created,
            model: &self.model,
            choices: vec![EncChoice {
                index: choice,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: self.include_usage.then_some(None),
        };
        render(out, &chunk);
    }

    fn flush_usage(&mut self, out: &mut Vec<String>) {
        if let Some(usage) = self.pending_usage.take() {
            let chunk = EncChunk {
                id: &self.id,
                object: CHUNK_OBJECT,
                created: self.created,
                model: &self.model,
                choices: Vec::new(),
                usage: Some(Some(usage_from_ir(&usage))),
            };
            render(out, &chunk);
        }
    }
}

fn render(out: &mut Vec<String>, chunk: &EncChunk<'_>) {
    // Serializing these structs (string keys, no maps with other keys) cannot fail.
    if let Ok(json) = serde_json::to_string(chunk) {
        out.push(json);
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn function_kind() -> String {
    "function".to_owned()
}

fn assistant_role() -> String {
    "assistant".to_owned()
}

fn chat_completion_object() -> String {
    CHAT_COMPLETION_OBJECT.to_owned()
}

fn strip(extra: &mut Extra, keys: &[&str]) {
    for key in keys {
        extra.remove(*key);
    }
}

/// `null` reads as the default (some clients send `"tools": null`).
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A string as is; any other JSON value as its JSON text (`null` as empty).
fn json_text<'de, D>(deserializer: D) -> Result<String, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match Value::deserialize(deserializer)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::ir::{ContentPart as P, FinishReason, ImageSource, Role, StreamEvent as E};
    use serde_json::json;

    fn parse_request(v: &Value) -> ChatCompletionRequest {
        serde_json::from_value(v.clone()).unwrap()
    }

    /// Wire JSON -> IR -> wire JSON.
    fn round_trip(v: &Value) -> (ir::ChatRequest, Value) {
        let ir = request_to_ir(parse_request(v)).unwrap();
        let back = request_from_ir(&ir).unwrap();
        (ir, serde_json::to_value(&back).unwrap())
    }

    #[test]
    fn plain_text_request() {
        let v = json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello!"}
            ],
            "temperature": 0.7,
            "top_p": 1.0,
            "max_tokens": 256,
            "stop": ["\n\nUser:", "END"],
            "stream": true,
            "stream_options": {"include_usage": true}
        });
        let (ir, back) = round_trip(&v);
        assert_eq!(ir.model, "gpt-4o-mini");
        assert_eq!(ir.messages.len(), 2);
        assert_eq!(ir.messages[0].role, Role::System);
        assert_eq!(
            ir.messages[0].content,
            vec![P::text("You are a helpful assistant.")]
        );
        assert!(ir.messages[0].extra.is_empty());
        assert_eq!(ir.messages[1].role, Role::User);
        assert_eq!(ir.messages[1].text(), "Hello!");
        assert_eq!(ir.temperature, Some(0.7));
        assert_eq!(ir.top_p, Some(1.0));
        assert_eq!(ir.max_tokens, Some(256));
        assert_eq!(ir.stop, vec!["\n\nUser:".to_owned(), "END".to_owned()]);
        assert!(ir.stream);
        assert!(ir.include_usage);
        assert!(ir.extra.is_empty());
        assert_eq!(ir.prompt_chars(), 28 + 6);
        assert_eq!(back, v);
    }

    #[test]
    fn multimodal_request_with_url_and_data_url_images() {
        let v = json!({
            "model": "gpt-4o",
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these images?"},
                    {"type": "image_url", "image_url": {
                        "url": "https://upload.wikimedia.org/wikipedia/commons/d/dd/Gfp-wisconsin-madison-the-nature-boardwalk.jpg",
                        "detail": "high"
                    }},
                    {"type": "image_url", "image_url": {
                        "url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
                    }}
                ]
            }],
            "max_tokens": 300
        });
        let (ir, back) = round_trip(&v);
        let content = &ir.messages[0].content;
        assert_eq!(content.len(), 3);
        assert_eq!(content[0], P::text("What is in these images?"));
        assert_eq!(
            content[1],
            P::Image {
                source: ImageSource::Url {
                    url: "https://upload.wikimedia.org/wikipedia/commons/d/dd/Gfp-wisconsin-madison-the-nature-boardwalk.jpg".into()
                },
                detail: Some("high".into()),
            }
        );
        assert_eq!(
            content[2],
            P::Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==".into(),
                },
                detail: None,
            }
        );
        assert_eq!(ir.messages[0].text(), "What is in these images?");
        assert_eq!(back, v);
    }

    #[test]
    fn unsupported_parts_and_shapes_are_400s_naming_the_field() {
        let v = json!({
            "model": "gpt-4o-audio-preview",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "user", "content": [
                    {"type": "text", "text": "Transcribe this."},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
                ]}
            ]
        });
        let err = request_to_ir(parse_request(&v)).unwrap_err();
        assert_eq!(err.status_code().as_u16(), 400);
        assert_eq!(err.kind(), ErrorKind::BadRequest);
        assert_eq!(err.param(), Some("messages[1].content[1].type"));
        assert!(err.message().contains("input_audio"), "{}", err.message());

        let v = json!({"model": "m", "messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
        ]});
        let err = request_to_ir(parse_request(&v)).unwrap_err();
        assert_eq!(err.param(), Some("messages[0].content[0]"));

        let v = json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "txt": "typo"}]}
        ]});
        let err = request_to_ir(parse_request(&v)).unwrap_err();
        assert_eq!(err.param(), Some("messages[0].content[0].type"));
        assert_eq!(err.message(), "malformed `text` content part");

        let v = json!({"model": "m", "messages": [], "tool_choice": "sometimes"});
        let err = request_to_ir(parse_request(&v)).unwrap_err();
        assert_eq!(err.param(), Some("tool_choice"));

        let v = json!({"model": "m", "messages": [],
            "tools": [{"type": "custom", "custom": {"name": "grammar"}, "function": {"name": "x"}}]});
        let err = request_to_ir(parse_request(&v)).unwrap_err();
        assert_eq!(err.param(), Some("tools[0].type"));

        let v = json!({"model": "m", "messages": [], "response_format": {"type": "grammar"}});
        let err = request_to_ir(parse_request(&v)).unwrap_err();
        assert_eq!(err.param(), Some("response_format"));
        assert!(err.message().contains("grammar"));
    }

    #[test]
    fn parallel_tool_calls_and_their_results() {
        let v = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": "What's the weather in Paris and Tokyo?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_9bGxLs3ZKZ0GMdY5YoP9bRMa", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris, France\"}"}},
                    {"id": "call_Ym2bq1Q8t2aW1DQ3cJHkLs0e", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"location\": \"Tokyo, Japan\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_9bGxLs3ZKZ0GMdY5YoP9bRMa",
                 "content": "{\"temperature\": 18, \"unit\": \"celsius\"}"},
                {"role": "tool", "tool_call_id": "call_Ym2bq1Q8t2aW1DQ3cJHkLs0e",
                 "content": "{\"temperature\": 24, \"unit\": \"celsius\"}"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather",
                "description": "Get the current weather in a given location",
                "parameters": {
                    "type": "object",
                    "properties": {"location": {"type": "string", "description": "City and country, e.g. Paris, France"}},
                    "required": ["location"],
                    "additionalProperties": false
                },
                "strict": true
            }}],
            "tool_choice": "auto",
            "parallel_tool_calls": true
        });
        let (ir, back) = round_trip(&v);
        assert_eq!(ir.tools.len(), 1);
        assert_eq!(ir.tools[0].name, "get_weather");
        assert_eq!(
            ir.tools[0].description.as_deref(),
            Some("Get the current weather in a given location")
        );
        assert_eq!(ir.tools[0].parameters["required"], json!(["location"]));
        assert_eq!(ir.tools[0].strict, Some(true));
        assert_eq!(ir.tool_choice, Some(ir::ToolChoice::Auto));
        assert_eq!(ir.parallel_tool_calls, Some(true));

        let assistant = &ir.messages[1];
        assert_eq!(assistant.role, Role::Assistant);
        assert_eq!(
            assistant.content,
            vec![
                P::ToolCall {
                    id: "call_9bGxLs3ZKZ0GMdY5YoP9bRMa".into(),
                    name: "get_weather".into(),
                    arguments: "{\"location\": \"Paris, France\"}".into(),
                },
                P::ToolCall {
                    id: "call_Ym2bq1Q8t2aW1DQ3cJHkLs0e".into(),
                    name: "get_weather".into(),
                    arguments: "{\"location\": \"Tokyo, Japan\"}".into(),
                },
            ]
        );
        for (m, id, temp) in [
            (&ir.messages[2], "call_9bGxLs3ZKZ0GMdY5YoP9bRMa", 18),
            (&ir.messages[3], "call_Ym2bq1Q8t2aW1DQ3cJHkLs0e", 24),
        ] {
            assert_eq!(m.role, Role::Tool);
            assert_eq!(
                m.content,
                vec![P::ToolResult {
                    call_id: id.into(),
                    content: vec![P::text(format!(
                        "{{\"temperature\": {temp}, \"unit\": \"celsius\"}}"
                    ))],
                    is_error: false,
                }]
            );
        }
        // 38 + two arguments (29, 28) + two results (38 each).
        assert_eq!(ir.prompt_chars(), 38 + 29 + 28 + 38 + 38);

        // The only change: a null `content` next to tool calls is omitted.
        let mut expected = v.clone();
        expected["messages"][1]
            .as_object_mut()
            .unwrap()
            .remove("content");
        assert_eq!(back, expected);

        let named = json!({"model": "gpt-4o", "messages": [],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
        let (ir, back) = round_trip(&named);
        assert_eq!(
            ir.tool_choice,
            Some(ir::ToolChoice::Tool {
                name: "get_weather".into()
            })
        );
        assert_eq!(back, named);
    }

    #[test]
    fn deepseek_reasoning_content() {
        let v = json!({
            "model": "deepseek-reasoner",
            "messages": [
                {"role": "user", "content": "9.11 and 9.8, which is greater?"},
                {"role": "assistant",
                 "reasoning_content": "Compare the decimals: 0.11 is less than 0.80, so 9.8 is greater.",
                 "content": "9.8 is greater than 9.11."},
                {"role": "user", "content": "How many Rs are there in the word 'strawberry'?"}
            ],
            "stream": true
        });
        let (ir, back) = round_trip(&v);
        assert_eq!(
            ir.messages[1].content,
            vec![
                P::Thinking {
                    text: "Compare the decimals: 0.11 is less than 0.80, so 9.8 is greater.".into(),
                    signature: None,
                    redacted: false,
                },
                P::text("9.8 is greater than 9.11."),
            ]
        );
        assert_eq!(ir.messages[1].text(), "9.8 is greater than 9.11.");
        assert!(ir.stream);
        assert!(!ir.include_usage);
        assert_eq!(back, v);
    }

    #[test]
    fn unknown_fields_survive_the_ir() {
        let v = json!({
            "model": "o3-mini",
            "messages": [
                {"role": "developer", "content": "Answer in JSON."},
                {"role": "user", "content": "List two colors.", "name": "alice"}
            ],
            "max_completion_tokens": 2048,
            "reasoning_effort": "high",
            "stop": "\n\n",
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "colors",
                "schema": {
                    "type": "object",
                    "properties": {"colors": {"type": "array", "items": {"type": "string"}}},
                    "required": ["colors"],
                    "additionalProperties": false
                },
                "strict": true
            }},
            "seed": 42,
            "logit_bias": {"50256": -100},
            "user": "user-1234",
            "metadata": {"session": "abc", "tier": "gold"},
            "store": false,
            "n": 1
        });
        let (ir, back) = round_trip(&v);
        assert_eq!(ir.messages[0].role, Role::System);
        assert_eq!(ir.messages[0].extra.get("role"), Some(&json!("developer")));
        assert_eq!(ir.messages[1].name.as_deref(), Some("alice"));
        assert_eq!(ir.max_tokens, Some(2048));
        assert_eq!(ir.stop, vec!["\n\n".to_owned()]);
        assert_eq!(
            ir.reasoning,
            Some(ir::Reasoning {
                effort: Some("high".into()),
                budget_tokens: None
            })
        );
        match &ir.response_format {
            Some(ir::ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            }) => {
                assert_eq!(name, "colors");
                assert_eq!(schema["required"], json!(["colors"]));
                assert_eq!(*strict, Some(true));
            }
            other => panic!("unexpected response_format {other:?}"),
        }
        assert_eq!(ir.extra["seed"], json!(42));
        assert_eq!(ir.extra["logit_bias"], json!({"50256": -100}));
        assert_eq!(ir.extra["user"], json!("user-1234"));
        assert_eq!(
            ir.extra["metadata"],
            json!({"session": "abc", "tier": "gold"})
        );
        assert_eq!(ir.extra["store"], json!(false));
        assert_eq!(ir.extra["n"], json!(1));
        assert_eq!(back, v);
        assert!(back.get("max_tokens").is_none());

        // An edited IR limit goes out under the name the client used.
        let mut edited = ir.clone();
        edited.max_tokens = Some(100);
        let out = serde_json::to_value(request_from_ir(&edited).unwrap()).unwrap();
        assert_eq!(out["max_completion_tokens"], json!(100));
        assert!(out.get("max_tokens").is_none());
    }

    #[test]
    fn legacy_functions_pass_through() {
        let v = json!({
            "model": "gpt-3.5-turbo",
            "messages": [
                {"role": "user", "content": "Weather in Boston?"},
                {"role": "assistant", "content": null,
                 "function_call": {"name": "get_current_weather", "arguments": "{\"location\":\"Boston, MA\"}"}},
                {"role": "function", "name": "get_current_weather", "content": "{\"temperature\":22}"}
            ],
            "functions": [{"name": "get_current_weather", "parameters": {"type": "object", "properties": {}}}],
            "function_call": "auto"
        });
        let (ir, back) = round_trip(&v);
        assert!(ir.extra.contains_key("functions"));
        assert_eq!(ir.extra["function_call"], json!("auto"));
        assert_eq!(
            ir.messages[1].extra["function_call"]["name"],
            json!("get_current_weather")
        );
        assert_eq!(ir.messages[2].role, Role::Tool);
        assert_eq!(ir.messages[2].name.as_deref(), Some("get_current_weather"));
        assert_eq!(ir.messages[2].text(), "{\"temperature\":22}");
        // An assistant message with neither text nor tool calls gets `""`, not null.
        let mut expected = v.clone();
        expected["messages"][1]["content"] = json!("");
        assert_eq!(back, expected);
    }

    #[test]
    fn ir_from_another_dialect_is_split_into_openai_messages() {
        let ir = ir::ChatRequest {
            model: "gpt-4.1".into(),
            messages: vec![
                ir::Message::new(
                    Role::System,
                    vec![P::text("Be terse."), P::text("Use metric units.")],
                ),
                ir::Message::new(Role::User, vec![P::text("Weather in Oslo?")]),
                ir::Message::new(
                    Role::Assistant,
                    vec![
                        P::Thinking {
                            text: "Need the tool.".into(),
                            signature: Some("sig".into()),
                            redacted: false,
                        },
                        P::Thinking {
                            text: String::new(),
                            signature: Some("opaque".into()),
                            redacted: true,
                        },
                        P::text("Checking."),
                        P::ToolCall {
                            id: "toolu_01".into(),
                            name: "weather".into(),
                            arguments: "{\"city\":\"Oslo\"}".into(),
                        },
                        P::ToolCall {
                            id: "toolu_02".into(),
                            name: "time".into(),
                            arguments: "{}".into(),
                        },
                    ],
                ),
                ir::Message::new(
                    Role::User,
                    vec![
                        P::ToolResult {
                            call_id: "toolu_01".into(),
                            content: vec![P::text("4°C")],
                            is_error: false,
                        },
                        P::ToolResult {
                            call_id: "toolu_02".into(),
                            content: vec![P::text("timeout")],
                            is_error: true,
                        },
                        P::text("Thanks, summarise."),
                    ],
                ),
            ],
            max_tokens: Some(1024),
            stream: true,
            include_usage: true,
            reasoning: Some(ir::Reasoning {
                effort: None,
                budget_tokens: Some(2048),
            }),
            tool_choice: Some(ir::ToolChoice::Required),
            tools: vec![ir::ToolDef {
                name: "time".into(),
                description: None,
                parameters: Value::Null,
                strict: None,
            }],
            ..ir::ChatRequest::default()
        };
        let out = serde_json::to_value(request_from_ir(&ir).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({
                "model": "gpt-4.1",
                "messages": [
                    {"role": "system", "content": [
                        {"type": "text", "text": "Be terse."},
                        {"type": "text", "text": "Use metric units."}
                    ]},
                    {"role": "user", "content": "Weather in Oslo?"},
                    {"role": "assistant", "content": "Checking.", "reasoning_content": "Need the tool.",
                     "tool_calls": [
                        {"id": "toolu_01", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                        {"id": "toolu_02", "type": "function", "function": {"name": "time", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_01", "content": "4°C"},
                    {"role": "tool", "tool_call_id": "toolu_02", "content": "timeout"},
                    {"role": "user", "content": "Thanks, summarise."}
                ],
                "tools": [{"type": "function", "function": {"name": "time"}}],
                "tool_choice": "required",
                "max_tokens": 1024,
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );

        // Images where OpenAI has no place for them are 400s naming the part.
        let image = P::Image {
            source: ImageSource::Url {
                url: "https://x/y.png".into(),
            },
            detail: None,
        };
        let bad = ir::ChatRequest {
            model: "m".into(),
            messages: vec![ir::Message::new(Role::Assistant, vec![image.clone()])],
            ..ir::ChatRequest::default()
        };
        let err = request_from_ir(&bad).unwrap_err();
        assert_eq!(err.param(), Some("messages[0].content[0]"));
        assert_eq!(err.status_code().as_u16(), 400);
        let bad = ir::ChatRequest {
            model: "m".into(),
            messages: vec![
                ir::Message::new(Role::User, vec![P::text("x")]),
                ir::Message::new(
                    Role::Tool,
                    vec![P::ToolResult {
                        call_id: "c".into(),
                        content: vec![image],
                        is_error: false,
                    }],
                ),
            ],
            ..ir::ChatRequest::default()
        };
        let err = request_from_ir(&bad).unwrap_err();
        assert_eq!(err.param(), Some("messages[1].content[0].content[0]"));
    }

    #[test]
    fn response_round_trip_with_cached_tokens() {
        let v = json!({
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion",
            "created": 1741570283,
            "model": "gpt-4o-2024-08-06",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The image shows a wooden boardwalk extending through a lush green marshland.",
                    "refusal": null,
                    "annotations": []
                },
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": 1117,
                "completion_tokens": 46,
                "total_tokens": 1163,
                "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fc9f1d7035"
        });
        let wire: ChatCompletion = serde_json::from_value(v.clone()).unwrap();
        let ir = response_to_ir(wire).unwrap();
        assert_eq!(ir.id, "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG");
        assert_eq!(ir.model, "gpt-4o-2024-08-06");
        assert_eq!(ir.created, 1741570283);
        assert_eq!(
            ir.usage,
            Some(Usage {
                input_tokens: 1117,
                output_tokens: 46,
                cached_input_tokens: 1024,
                reasoning_tokens: 0
            })
        );
        assert_eq!(ir.choices.len(), 1);
        assert_eq!(ir.choices[0].finish_reason, Some(FinishReason::Stop));
        assert_eq!(
            ir.choices[0].message.text(),
            "The image shows a wooden boardwalk extending through a lush green marshland."
        );
        assert_eq!(ir.choices[0].message.extra["annotations"], json!([]));
        assert_eq!(ir.extra["service_tier"], json!("default"));
        assert_eq!(ir.extra["system_fingerprint"], json!("fp_fc9f1d7035"));

        let back = serde_json::to_value(response_from_ir(&ir).unwrap()).unwrap();
        // Usage details the IR does not carry (audio, predictions) are the only loss.
        let mut expected = v.clone();
        expected["usage"]["prompt_tokens_details"] = json!({"cached_tokens": 1024});
        expected["usage"]["completion_tokens_details"] = json!({"reasoning_tokens": 0});
        assert_eq!(back, expected);
    }

    #[test]
    fn tool_call_and_reasoning_responses_round_trip() {
        let v = json!({
            "id": "chatcmpl-AZl6BvZPxgzYBJ3ZhR6yPG9Z1kYy3",
            "object": "chat.completion",
            "created": 1733008043,
            "model": "gpt-4o-2024-08-06",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": null,
                    "refusal": null,
                    "tool_calls": [
                        {"id": "call_9bGxLs3ZKZ0GMdY5YoP9bRMa", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris, France\"}"}},
                        {"id": "call_Ym2bq1Q8t2aW1DQ3cJHkLs0e", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"location\":\"Tokyo, Japan\"}"}}
                    ]
                },
                "logprobs": null,
                "finish_reason": "tool_calls"
            }],
            "usage": {"prompt_tokens": 82, "completion_tokens": 51, "total_tokens": 133,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0}},
            "system_fingerprint": "fp_7f6be3efb0"
        });
        let ir = response_to_ir(serde_json::from_value(v.clone()).unwrap()).unwrap();
        assert_eq!(ir.choices[0].finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(ir.choices[0].message.content.len(), 2);
        assert_eq!(
            ir.choices[0].message.content[1],
            P::ToolCall {
                id: "call_Ym2bq1Q8t2aW1DQ3cJHkLs0e".into(),
                name: "get_weather".into(),
                arguments: "{\"location\":\"Tokyo, Japan\"}".into(),
            }
        );
        assert_eq!(
            serde_json::to_value(response_from_ir(&ir).unwrap()).unwrap(),
            v
        );

        let deepseek = json!({
            "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
            "object": "chat.completion",
            "created": 1737521376,
            "model": "deepseek-reasoner",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "9.8 is greater.",
                    "reasoning_content": "0.8 > 0.11, so 9.8 > 9.11."},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 23, "completion_tokens": 340, "total_tokens": 363,
                "completion_tokens_details": {"reasoning_tokens": 301},
                "prompt_cache_hit_tokens": 16, "prompt_cache_miss_tokens": 7},
            "system_fingerprint": "fp_1c5d8833bc"
        });
        let ir = response_to_ir(serde_json::from_value(deepseek).unwrap()).unwrap();
        assert_eq!(
            ir.choices[0].message.content,
            vec![
                P::Thinking {
                    text: "0.8 > 0.11, so 9.8 > 9.11.".into(),
                    signature: None,
                    redacted: false
                },
                P::text("9.8 is greater."),
            ]
        );
        assert_eq!(
            ir.usage,
            Some(Usage {
                input_tokens: 23,
                output_tokens: 340,
                cached_input_tokens: 16,
                reasoning_tokens: 301
            })
        );
        let back = serde_json::to_value(response_from_ir(&ir).unwrap()).unwrap();
        assert_eq!(
            back["choices"][0]["message"]["reasoning_content"],
            json!("0.8 > 0.11, so 9.8 > 9.11.")
        );
        assert_eq!(back["choices"][0]["message"]["refusal"], Value::Null);
        assert_eq!(back["usage"]["total_tokens"], json!(363));
        assert_eq!(
            back["usage"]["prompt_tokens_details"],
            json!({"cached_tokens": 16})
        );
    }

    const ID: &str = "chatcmpl-AZl6BvZPxgzYBJ3ZhR6yPG9Z1kYy3";
    const MODEL: &str = "gpt-4o-2024-08-06";
    const CREATED: u64 = 1733008043;

    /// One chunk as OpenAI sends it with `include_usage`.
    fn openai_chunk(delta: Value, finish_reason: Value) -> String {
        format!(
            r#"{{"id":"{ID}","object":"chat.completion.chunk","created":{CREATED},"model":"{MODEL}","system_fingerprint":"fp_7f6be3efb0","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish_reason}}}],"usage":null}}"#
        )
    }

    fn tool_call_transcript() -> Vec<String> {
        let args = |index: u32, a: &str| {
            openai_chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": a}}]}),
                Value::Null,
            )
        };
        vec![
            openai_chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                    "id": "call_9bGxLs3ZKZ0GMdY5YoP9bRMa", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}], "refusal": null}),
                Value::Null,
            ),
            args(0, "{\"lo"),
            args(0, "cation\": \"P"),
            args(0, "aris, France\"}"),
            openai_chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_Ym2bq1Q8t2aW1DQ3cJHkLs0e",
                    "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ),
            args(1, "{\"location\": "),
            args(1, "\"Tokyo, Japan\"}"),
            openai_chunk(json!({}), json!("tool_calls")),
            format!(
                r#"{{"id":"{ID}","object":"chat.completion.chunk","created":{CREATED},"model":"{MODEL}","system_fingerprint":"fp_7f6be3efb0","choices":[],"usage":{{"prompt_tokens":80,"completion_tokens":48,"total_tokens":128,"prompt_tokens_details":{{"cached_tokens":64,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}}}"#
            ),
        ]
    }

    fn decode_all(chunks: &[String]) -> Vec<E> {
        let mut events = Vec::new();
        for c in chunks {
            let chunk: ChatCompletionChunk = serde_json::from_str(c).unwrap();
            chunk_to_events(&chunk, &mut events);
        }
        events
    }

    fn arguments_of(events: &[E], wanted: u32) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                E::ToolCallDelta {
                    choice: 0,
                    index,
                    arguments,
                } if *index == wanted => Some(arguments.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn streamed_tool_calls_decode_and_re_encode() {
        let events = decode_all(&tool_call_transcript());
        let delta = |index: u32, a: &str| E::ToolCallDelta {
            choice: 0,
            index,
            arguments: a.into(),
        };
        assert_eq!(
            events,
            vec![
                E::Start {
                    id: ID.into(),
                    model: MODEL.into(),
                    created: CREATED
                },
                E::ToolCallStart {
                    choice: 0,
                    index: 0,
                    id: "call_9bGxLs3ZKZ0GMdY5YoP9bRMa".into(),
                    name: "get_weather".into(),
                },
                delta(0, "{\"lo"),
                delta(0, "cation\": \"P"),
                delta(0, "aris, France\"}"),
                E::ToolCallStart {
                    choice: 0,
                    index: 1,
                    id: "call_Ym2bq1Q8t2aW1DQ3cJHkLs0e".into(),
                    name: "get_weather".into(),
                },
                delta(1, "{\"location\": "),
                delta(1, "\"Tokyo, Japan\"}"),
                E::Finish {
                    choice: 0,
                    reason: FinishReason::ToolCalls
                },
                E::Usage(Usage {
                    input_tokens: 80,
                    output_tokens: 48,
                    cached_input_tokens: 64,
                    reasoning_tokens: 0
                }),
            ]
        );
        assert_eq!(
            arguments_of(&events, 0),
            "{\"location\": \"Paris, France\"}"
        );
        assert_eq!(arguments_of(&events, 1), "{\"location\": \"Tokyo, Japan\"}");
        let parsed: Value = serde_json::from_str(&arguments_of(&events, 1)).unwrap();
        assert_eq!(parsed, json!({"location": "Tokyo, Japan"}));

        let mut enc = ChunkEncoder::new(true);
        let encoded: Vec<String> = events.iter().flat_map(|e| enc.encode(e)).collect();
        assert!(enc.finish().is_empty(), "usage already written");
        assert_eq!(encoded.len(), 9, "{encoded:#?}");
        let values: Vec<Value> = encoded
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect();
        for v in &values {
            assert_eq!(v["id"], json!(ID));
            assert_eq!(v["object"], json!("chat.completion.chunk"));
            assert_eq!(v["created"], json!(CREATED));
            assert_eq!(v["model"], json!(MODEL));
        }
        let (usage_chunk, delta_chunks) = values.split_last().unwrap();
        for v in delta_chunks {
            assert_eq!(v["usage"], Value::Null);
            assert!(v.as_object().unwrap().contains_key("usage"));
            let choices = v["choices"].as_array().unwrap();
            assert_eq!(choices.len(), 1);
            assert_eq!(choices[0]["index"], json!(0));
            assert!(choices[0].as_object().unwrap().contains_key("logprobs"));
        }
        let d = |i: usize| &values[i]["choices"][0]["delta"];
        let fr = |i: usize| &values[i]["choices"][0]["finish_reason"];
        assert_eq!(
            *d(0),
            json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_9bGxLs3ZKZ0GMdY5YoP9bRMa",
                "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            *d(1),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"lo"}}]})
        );
        assert_eq!(
            *d(3),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "aris, France\"}"}}]})
        );
        assert_eq!(
            *d(4),
            json!({"tool_calls": [{"index": 1, "id": "call_Ym2bq1Q8t2aW1DQ3cJHkLs0e",
                "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            *d(6),
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "\"Tokyo, Japan\"}"}}]})
        );
        for i in 0..7 {
            assert_eq!(*fr(i), Value::Null);
        }
        assert_eq!(*d(7), json!({}));
        assert_eq!(*fr(7), json!("tool_calls"));
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(
            usage_chunk["usage"],
            json!({"prompt_tokens": 80, "completion_tokens": 48, "total_tokens": 128,
                "prompt_tokens_details": {"cached_tokens": 64},
                "completion_tokens_details": {"reasoning_tokens": 0}})
        );
        // Exactly OpenAI's key order and nulls.
        assert_eq!(
            encoded[7],
            format!(
                r#"{{"id":"{ID}","object":"chat.completion.chunk","created":{CREATED},"model":"{MODEL}","choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"tool_calls"}}],"usage":null}}"#
            )
        );

        // Decoding what we encoded gives the same events back.
        assert_eq!(decode_all(&encoded), events);
    }

    #[test]
    fn encoder_renumbers_tool_calls_and_omits_usage_unless_asked() {
        let events = vec![
            E::Start {
                id: "msg_01".into(),
                model: "claude-sonnet-4".into(),
                created: 1750000000,
            },
            E::ThinkingSignature {
                choice: 0,
                signature: "EqQB".into(),
            },
            E::TextDelta {
                choice: 0,
                text: "Let me check.".into(),
            },
            E::ToolCallStart {
                choice: 0,
                index: 1,
                id: "toolu_a".into(),
                name: "weather".into(),
            },
            E::ToolCallDelta {
                choice: 0,
                index: 1,
                arguments: "".into(),
            },
            E::ToolCallDelta {
                choice: 0,
                index: 1,
                arguments: "{\"city\":".into(),
            },
            E::ToolCallStart {
                choice: 0,
                index: 3,
                id: "toolu_b".into(),
                name: "time".into(),
            },
            E::ToolCallDelta {
                choice: 0,
                index: 1,
                arguments: "\"Oslo\"}".into(),
            },
            E::ToolCallStart {
                choice: 0,
                index: 1,
                id: "toolu_a".into(),
                name: "weather".into(),
            },
            E::ToolCallDelta {
                choice: 0,
                index: 3,
                arguments: "{}".into(),
            },
            E::Start {
                id: "other".into(),
                model: "other".into(),
                created: 1,
            },
            E::Usage(Usage {
                input_tokens: 10,
                output_tokens: 20,
                ..Usage::default()
            }),
            E::Finish {
                choice: 0,
                reason: FinishReason::ToolCalls,
            },
            E::Usage(Usage {
                input_tokens: 10,
                output_tokens: 25,
                ..Usage::default()
            }),
        ];
        let mut enc = ChunkEncoder::new(false);
        let mut encoded: Vec<String> = events.iter().flat_map(|e| enc.encode(e)).collect();
        encoded.extend(enc.finish());
        let encoded: Vec<Value> = encoded
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect();
        // Text, call a, its fragment, call b, a's last fragment, b's fragment, finish.
        assert_eq!(encoded.len(), 7, "{encoded:#?}");
        for v in &encoded {
            assert_eq!(v["id"], json!("msg_01"));
            assert_eq!(v["model"], json!("claude-sonnet-4"));
            assert_eq!(v["created"], json!(1750000000));
            assert!(!v.as_object().unwrap().contains_key("usage"));
        }
        let d = |i: usize| &encoded[i]["choices"][0]["delta"];
        assert_eq!(
            *d(0),
            json!({"role": "assistant", "content": "Let me check."})
        );
        assert_eq!(
            *d(1),
            json!({"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function",
                "function": {"name": "weather", "arguments": ""}}]})
        );
        assert_eq!(
            *d(2),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]})
        );
        assert_eq!(
            *d(3),
            json!({"tool_calls": [{"index": 1, "id": "toolu_b", "type": "function",
                "function": {"name": "time", "arguments": ""}}]})
        );
        assert_eq!(
            *d(4),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]})
        );
        assert_eq!(
            *d(5),
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]})
        );
        assert_eq!(*d(6), json!({}));
        assert_eq!(
            encoded[6]["choices"][0]["finish_reason"],
            json!("tool_calls")
        );
    }

    #[test]
    fn usage_reported_before_finish_is_held_until_the_end() {
        let mut enc = ChunkEncoder::new(true);
        let mut out = Vec::new();
        out.extend(enc.encode(&E::Start {
            id: "msg_1".into(),
            model: "m".into(),
            created: 7,
        }));
        out.extend(enc.encode(&E::Usage(Usage {
            input_tokens: 12,
            output_tokens: 1,
            ..Usage::default()
        })));
        assert!(out.is_empty());
        out.extend(enc.encode(&E::ThinkingDelta {
            choice: 0,
            text: "Hmm.".into(),
        }));
        out.extend(enc.encode(&E::TextDelta {
            choice: 0,
            text: "Hi".into(),
        }));
        out.extend(enc.encode(&E::Usage(Usage {
            input_tokens: 12,
            output_tokens: 9,
            ..Usage::default()
        })));
        assert_eq!(out.len(), 2);
        out.extend(enc.encode(&E::Finish {
            choice: 0,
            reason: FinishReason::Stop,
        }));
        assert_eq!(out.len(), 3);
        out.extend(enc.finish());
        assert_eq!(out.len(), 4);
        assert!(enc.finish().is_empty());
        let v: Vec<Value> = out
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect();
        assert_eq!(
            v[0]["choices"][0]["delta"],
            json!({"role": "assistant", "reasoning_content": "Hmm."})
        );
        assert_eq!(v[1]["choices"][0]["delta"], json!({"content": "Hi"}));
        assert_eq!(v[2]["choices"][0]["finish_reason"], json!("stop"));
        assert_eq!(v[3]["choices"], json!([]));
        assert_eq!(v[3]["usage"]["completion_tokens"], json!(9));
        assert_eq!(v[3]["usage"]["total_tokens"], json!(21));

        // A choice that finishes without any delta still announces the role first.
        let mut enc = ChunkEncoder::new(false);
        let out = enc.encode(&E::Finish {
            choice: 0,
            reason: FinishReason::Length,
        });
        assert_eq!(out.len(), 2);
        let first: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let second: Value = serde_json::from_str(&out[1]).unwrap();
        assert_eq!(second["choices"][0]["finish_reason"], json!("length"));
    }

    #[test]
    fn deepseek_reasoning_stream() {
        let chunk = |delta: Value, finish: Value, usage: Value| {
            json!({"id": "a1b2", "object": "chat.completion.chunk", "created": 1737521376,
                "model": "deepseek-reasoner", "system_fingerprint": "fp_1c5d8833bc",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                "usage": usage})
            .to_string()
        };
        let chunks = vec![
            chunk(
                json!({"role": "assistant", "content": null, "reasoning_content": ""}),
                Value::Null,
                Value::Null,
            ),
            chunk(
                json!({"content": null, "reasoning_content": "Compare"}),
                Value::Null,
                Value::Null,
            ),
            chunk(
                json!({"content": null, "reasoning_content": " decimals."}),
                Value::Null,
                Value::Null,
            ),
            chunk(
                json!({"content": "9.8", "reasoning_content": null}),
                Value::Null,
                Value::Null,
            ),
            chunk(
                json!({"content": " is greater.", "reasoning_content": null}),
                Value::Null,
                Value::Null,
            ),
            chunk(
                json!({"content": "", "reasoning_content": null}),
                json!("stop"),
                json!({"prompt_tokens": 23, "completion_tokens": 40, "total_tokens": 63,
                    "prompt_tokens_details": {"cached_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 30},
                    "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": 23}),
            ),
        ];
        let events = decode_all(&chunks);
        assert_eq!(
            events,
            vec![
                E::Start {
                    id: "a1b2".into(),
                    model: "deepseek-reasoner".into(),
                    created: 1737521376
                },
                E::ThinkingDelta {
                    choice: 0,
                    text: "Compare".into()
                },
                E::ThinkingDelta {
                    choice: 0,
                    text: " decimals.".into()
                },
                E::TextDelta {
                    choice: 0,
                    text: "9.8".into()
                },
                E::TextDelta {
                    choice: 0,
                    text: " is greater.".into()
                },
                E::Finish {
                    choice: 0,
                    reason: FinishReason::Stop
                },
                E::Usage(Usage {
                    input_tokens: 23,
                    output_tokens: 40,
                    cached_input_tokens: 0,
                    reasoning_tokens: 30
                }),
            ]
        );
        let mut enc = ChunkEncoder::new(true);
        let out: Vec<Value> = events
            .iter()
            .flat_map(|e| enc.encode(e))
            .map(|s| serde_json::from_str(&s).unwrap())
            .collect();
        assert_eq!(out.len(), 6);
        assert_eq!(
            out[0]["choices"][0]["delta"],
            json!({"role": "assistant", "reasoning_content": "Compare"})
        );
        assert_eq!(out[2]["choices"][0]["delta"], json!({"content": "9.8"}));
        assert_eq!(out[4]["choices"][0]["finish_reason"], json!("stop"));
        assert_eq!(
            out[5]["usage"]["completion_tokens_details"],
            json!({"reasoning_tokens": 30})
        );
    }

    #[test]
    fn chunk_decoder_starts_once_and_dedupes_tool_starts() {
        // Gemini's OpenAI endpoint repeats the role in every chunk and sends whole calls.
        let chunks = [
            json!({"id": "g1", "object": "chat.completion.chunk", "created": 1, "model": "gemini-2.5-flash",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Sure."}}]}),
            json!({"id": "g1", "object": "chat.completion.chunk", "created": 1, "model": "gemini-2.5-flash",
            "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                {"id": "fc_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}
            ]}}]}),
            json!({"id": "g1", "object": "chat.completion.chunk", "created": 1, "model": "gemini-2.5-flash",
                "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                    {"index": 0, "id": "fc_1", "function": {"arguments": ""}}
                ]}, "finish_reason": "tool_calls"}]}),
        ];
        let mut dec = ChunkDecoder::new();
        let mut events = Vec::new();
        for c in &chunks {
            dec.decode(&serde_json::from_value(c.clone()).unwrap(), &mut events);
        }
        assert_eq!(
            events,
            vec![
                E::Start {
                    id: "g1".into(),
                    model: "gemini-2.5-flash".into(),
                    created: 1
                },
                E::TextDelta {
                    choice: 0,
                    text: "Sure.".into()
                },
                E::ToolCallStart {
                    choice: 0,
                    index: 0,
                    id: "fc_1".into(),
                    name: "lookup".into()
                },
                E::ToolCallDelta {
                    choice: 0,
                    index: 0,
                    arguments: "{\"q\":\"x\"}".into()
                },
                E::Finish {
                    choice: 0,
                    reason: FinishReason::ToolCalls
                },
            ]
        );

        // A first chunk without a role still starts the stream.
        let mut dec = ChunkDecoder::new();
        let mut events = Vec::new();
        let chunk = json!({"id": "x", "object": "chat.completion.chunk", "created": 2, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]});
        dec.decode(&serde_json::from_value(chunk).unwrap(), &mut events);
        assert_eq!(
            events,
            vec![
                E::Start {
                    id: "x".into(),
                    model: "m".into(),
                    created: 2
                },
                E::TextDelta {
                    choice: 0,
                    text: "Hi".into()
                },
            ]
        );
    }
}
