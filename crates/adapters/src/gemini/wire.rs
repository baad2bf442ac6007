//! Google Gemini `generateContent` on the wire (API v1beta, camelCase JSON): typed
//! request, response and error structs, and their conversion to and from the
//! dialect-neutral [IR](relay_core::ir).
//!
//! Every struct keeps the fields it does not name in a flattened `extra` map and skips
//! absent optional fields. Requests are read in either spelling Google's JSON parser
//! accepts (`systemInstruction` or `system_instruction`, `inlineData` or `inline_data`...)
//! and always written in camelCase.
//!
//! # Mapping notes
//!
//! - `systemInstruction` is the IR's first [`ir::Role::System`] message; on the way out,
//!   every system message (wherever it stands) is lifted into `systemInstruction`.
//! - A `user` content whose parts are all `functionResponse`s is an IR [`ir::Role::Tool`]
//!   message; consecutive IR tool messages become one `user` content, since Gemini wants a
//!   turn's function responses together. Role `function` (older API versions) reads as
//!   `user`; a missing role reads as `user`.
//! - `functionCall` ids are often absent: decoding gives such calls the ids `call_<n>`
//!   (`n` counts the calls of the request or response from 0), and a `functionResponse`
//!   without an id answers the first unanswered call of the same name in the latest model
//!   turn that made calls. Encoding never writes an id of that synthetic form (nor an
//!   empty one), so a Gemini conversation passes through unchanged; other ids (`call_abc`,
//!   `toolu_...`) are written on both the call and its response. A `functionResponse`
//!   answering no call, or an IR tool result whose call is not in the request, is a 400:
//!   Gemini needs the function's name.
//! - A `functionResponse.response` becomes the tool result's text (its JSON). Going out,
//!   a tool result whose text is a JSON object is that object, any other text is wrapped
//!   as `{"result": text}` (`{"error": text}` when the IR marks it an error).
//! - `inlineData` is [`ir::ImageSource::Base64`], `fileData` is [`ir::ImageSource::Url`]
//!   (only `image/*` MIME types; other media is a 400). Going out, a URL image (http(s),
//!   `gs://` or a Files API URI alike) becomes `fileData` whose `mimeType` is guessed from
//!   the URL's extension (`png`, `jpg`/`jpeg`, `webp`, `gif`, `heic`, `heif`, `bmp`),
//!   else `image/jpeg`; a `data:` URL becomes `inlineData`. A decoded `fileData`'s own
//!   `mimeType` is not kept, so it comes back as that guess. OpenAI's `detail` is dropped.
//! - A part with `thought: true` is [`ir::ContentPart::Thinking`] (its `thoughtSignature`
//!   the signature). A `thoughtSignature` on any other part becomes a thinking part with
//!   empty text and that signature just before it; going out, such a part's signature is
//!   put back on the part that follows it (or on a part of its own at the end). Redacted
//!   thinking (Anthropic) is dropped.
//! - Parameters and response schemas that only use the OpenAPI subset Gemini's
//!   `parameters` / `responseSchema` accept go out under those names; anything richer
//!   (`additionalProperties`, `$ref`, `const`, type arrays...) under `parametersJsonSchema`
//!   / `responseJsonSchema`. An IR JSON schema's `name` and `strict`, and a tool's
//!   `strict`, have no Gemini equivalent and are dropped.
//! - `thinkingConfig.thinkingBudget` (when not negative) is the IR's
//!   `reasoning.budget_tokens`. An OpenAI-style effort without a budget goes out as a
//!   budget: `none` 0, `minimal` and `low` 1024, `medium` 8192, `high` 24576.
//! - The IR's `parallel_tool_calls` and `include_usage` have no Gemini equivalent (Gemini
//!   always reports usage) and are ignored, as is a message's `name`.
//!
//! # IR `extra` keys this codec writes and reads
//!
//! Besides the unknown top-level wire fields themselves (`safetySettings`,
//! `cachedContent`, `labels`...; snake_case names are stored in camelCase):
//! - `candidateCount`, `seed`, `presencePenalty`, `frequencyPenalty` and `topK` are stored
//!   under their OpenAI / Anthropic names `n`, `seed`, `presence_penalty`,
//!   `frequency_penalty` and `top_k`, so they cross dialects; on the way out those keys
//!   (whoever wrote them) go back into `generationConfig`.
//! - `extra["generationConfig"]` and `extra["toolConfig"]` hold, as partial objects, the
//!   fields of those objects the IR has no slot for (`responseModalities`,
//!   `thinkingConfig.includeThoughts`, `thinkingConfig.thinkingLevel`, a negative
//!   `thinkingBudget`, an unknown `responseMimeType`, `allowedFunctionNames` the IR's
//!   tool choice cannot say, mode `VALIDATED`...). On the way out they are merged under
//!   the typed fields (the IR's values win), except that mode `VALIDATED` comes back when
//!   the IR's tool choice is still `Auto`.
//! - `extra["tools"]` holds the non-function tools (`googleSearch`, `urlContext`...), put
//!   back after the function declarations. `codeExecution` and `computerUse` are refused,
//!   since the IR cannot carry their answer parts.
//! - Going out, other dialects' top-level fields are handled by name: those that do not
//!   change the answer (`user`, `metadata`, `store`, `service_tier`...) are dropped;
//!   any other snake_case field, or `logprobs`, `modalities`, `audio`, `prediction`,
//!   `functions`, is a 400 unless it is empty, `null` or `false`. Every other key is
//!   copied as a Gemini field.
//! - On responses, a candidate's fields the IR has no slot for (`safetyRatings`,
//!   `citationMetadata`, `avgLogprobs`...) are kept in the choice message's `extra`;
//!   `promptFeedback`, `createTime` and the like in the response's. Going out, only keys
//!   that look like Gemini's (camelCase) are written back.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use relay_core::ir::{self, Extra};
use relay_core::{ErrorKind, RelayError, Side, Usage};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

/// The role of model turns.
pub const MODEL_ROLE: &str = "model";
/// The role of user turns, function responses included.
pub const USER_ROLE: &str = "user";

const GENERATION_CONFIG: &str = "generationConfig";
const TOOL_CONFIG: &str = "toolConfig";
const TOOLS: &str = "tools";
const VALIDATED: &str = "VALIDATED";

/// Other dialects' `extra` keys that map onto `generationConfig` fields.
const MAPPED_EXTRA: &[(&str, &str)] = &[
    ("n", "candidateCount"),
    ("seed", "seed"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
    ("top_k", "topK"),
];
/// Other dialects' fields that do not change the answer: dropped on the way out.
const DROPPED_EXTRA: &[&str] = &[
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "max_completion_tokens",
    "max_tokens",
    "stream_options",
    "verbosity",
    "parallel_tool_calls",
    "reasoning_effort",
    "anthropic_version",
];
/// One-word field names of other dialects (snake_case names are foreign anyway).
const FOREIGN_WORDS: &[&str] = &[
    "logprobs",
    "modalities",
    "audio",
    "prediction",
    "functions",
    "container",
    "annotations",
    "refusal",
    "role",
    "name",
    "content",
    "object",
    "created",
    "model",
    "usage",
    "id",
    "type",
    "thinking",
    "system",
];
/// Tools whose answers come as parts the IR cannot carry.
const REFUSED_TOOLS: &[&str] = &[
    "codeExecution",
    "code_execution",
    "computerUse",
    "computer_use",
];
/// Keywords of the OpenAPI subset Gemini's `parameters` and `responseSchema` accept.
const OPENAPI_SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

/// A `generateContent` / `streamGenerateContent` body (the model and the stream flag are
/// in the URL, not here).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentRequest {
    /// The conversation.
    #[serde(default, deserialize_with = "null_default")]
    pub contents: Vec<Content>,
    /// Instructions (text parts).
    #[serde(
        default,
        alias = "system_instruction",
        skip_serializing_if = "Option::is_none"
    )]
    pub system_instruction: Option<Content>,
    /// Tools: function declarations and built-in tools.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tools: Vec<Tool>,
    /// How the model must use the tools.
    #[serde(
        default,
        alias = "tool_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub tool_config: Option<ToolConfig>,
    /// Sampling, limits, output format and thinking.
    #[serde(
        default,
        alias = "generation_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub generation_config: Option<GenerationConfig>,
    /// Every other field (`safetySettings`, `cachedContent`, `labels`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// One turn: a role and its parts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Content {
    /// `user` or `model` (absent in `systemInstruction`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The parts, in order.
    #[serde(default, deserialize_with = "null_default")]
    pub parts: Vec<Part>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One part of a turn: exactly one of `text`, `inlineData`, `fileData`, `functionCall`,
/// `functionResponse`, with `thought` and `thoughtSignature` beside it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    /// Text (a thought summary when `thought` is true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Whether the part is a thought summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    /// The opaque signature of the model's thinking, to send back unchanged. In the IR
    /// it is text; on the wire, bytes in base64 (see [`thought_signature`]).
    #[serde(
        default,
        alias = "thought_signature",
        with = "thought_signature",
        skip_serializing_if = "Option::is_none"
    )]
    pub thought_signature: Option<String>,
    /// Inline bytes.
    #[serde(
        default,
        alias = "inline_data",
        skip_serializing_if = "Option::is_none"
    )]
    pub inline_data: Option<Blob>,
    /// A file by URI.
    #[serde(default, alias = "file_data", skip_serializing_if = "Option::is_none")]
    pub file_data: Option<FileData>,
    /// A function call (model turns).
    #[serde(
        default,
        alias = "function_call",
        skip_serializing_if = "Option::is_none"
    )]
    pub function_call: Option<FunctionCall>,
    /// A function result (user turns).
    #[serde(
        default,
        alias = "function_response",
        skip_serializing_if = "Option::is_none"
    )]
    pub function_response: Option<FunctionResponse>,
    /// Other fields (`executableCode`, `videoMetadata`...; refused by the conversions).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `inlineData`: base64 bytes and their MIME type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    /// The MIME type.
    #[serde(default, alias = "mime_type")]
    pub mime_type: String,
    /// The base64 data.
    #[serde(default)]
    pub data: String,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `fileData`: a file by URI.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileData {
    /// The MIME type.
    #[serde(default, alias = "mime_type", skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// The URI.
    #[serde(default, alias = "file_uri")]
    pub file_uri: String,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A function call: name and arguments as a JSON object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The call id (often absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The function name.
    #[serde(default)]
    pub name: String,
    /// The arguments (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A function result: name and response object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionResponse {
    /// The id of the call it answers (often absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The function name.
    #[serde(default)]
    pub name: String,
    /// The result (an object).
    #[serde(default)]
    pub response: Value,
    /// Other fields (`willContinue`, `scheduling`, `parts`...; refused by the conversions).
    #[serde(flatten)]
    pub extra: Extra,
}

/// One tool entry: function declarations, or a built-in tool in `extra`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    /// Functions the model may call.
    #[serde(
        default,
        alias = "function_declarations",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub function_declarations: Vec<FunctionDeclaration>,
    /// Other tools (`googleSearch`, `urlContext`, `codeExecution`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A function the model may call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeclaration {
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its arguments as an OpenAPI-subset schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Its arguments as a JSON Schema.
    #[serde(
        default,
        alias = "parameters_json_schema",
        skip_serializing_if = "Option::is_none"
    )]
    pub parameters_json_schema: Option<Value>,
    /// Other fields (`response`, `behavior`...; refused by the conversions).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `toolConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig {
    /// Function-calling mode.
    #[serde(
        default,
        alias = "function_calling_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub function_calling_config: Option<FunctionCallingConfig>,
    /// Other fields (`retrievalConfig`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `toolConfig.functionCallingConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCallingConfig {
    /// `AUTO`, `ANY`, `NONE` or `VALIDATED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The functions the model may call (with `ANY` or `VALIDATED`).
    #[serde(
        default,
        alias = "allowed_function_names",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allowed_function_names: Vec<String>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `generationConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig {
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, alias = "top_p", skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k sampling.
    #[serde(default, alias = "top_k", skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    /// The most tokens to generate.
    #[serde(
        default,
        alias = "max_output_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_output_tokens: Option<u64>,
    /// Stop sequences.
    #[serde(
        default,
        alias = "stop_sequences",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub stop_sequences: Vec<String>,
    /// How many answers.
    #[serde(
        default,
        alias = "candidate_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub candidate_count: Option<u64>,
    /// `text/plain`, `application/json`, `text/x.enum`.
    #[serde(
        default,
        alias = "response_mime_type",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_mime_type: Option<String>,
    /// The answer's schema, OpenAPI subset.
    #[serde(
        default,
        alias = "response_schema",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_schema: Option<Value>,
    /// The answer's schema, JSON Schema.
    #[serde(
        default,
        alias = "response_json_schema",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_json_schema: Option<Value>,
    /// Thinking settings.
    #[serde(
        default,
        alias = "thinking_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub thinking_config: Option<ThinkingConfig>,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Presence penalty.
    #[serde(
        default,
        alias = "presence_penalty",
        skip_serializing_if = "Option::is_none"
    )]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty.
    #[serde(
        default,
        alias = "frequency_penalty",
        skip_serializing_if = "Option::is_none"
    )]
    pub frequency_penalty: Option<f64>,
    /// Other fields (`responseModalities`, `mediaResolution`, `responseLogprobs`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `generationConfig.thinkingConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThinkingConfig {
    /// Thinking tokens allowed (0 off, -1 dynamic).
    #[serde(
        default,
        alias = "thinking_budget",
        skip_serializing_if = "Option::is_none"
    )]
    pub thinking_budget: Option<i64>,
    /// Whether to return thought summaries.
    #[serde(
        default,
        alias = "include_thoughts",
        skip_serializing_if = "Option::is_none"
    )]
    pub include_thoughts: Option<bool>,
    /// A thinking level (Gemini 3: `low`, `high`...).
    #[serde(
        default,
        alias = "thinking_level",
        skip_serializing_if = "Option::is_none"
    )]
    pub thinking_level: Option<String>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Convert a request to the IR; `model` and `stream` come from the URL. What the IR
/// cannot carry (non-image media, code-execution parts and tools, function-declaration
/// fields other than name, description and parameters, a function response that answers
/// no call) is a 400 naming the field.
pub fn request_to_ir(
    req: GenerateContentRequest,
    model: String,
    stream: bool,
) -> Result<ir::ChatRequest, RelayError> {
    let GenerateContentRequest {
        contents,
        system_instruction,
        tools,
        tool_config,
        generation_config,
        extra: wire_extra,
    } = req;
    let mut extra = Extra::new();
    for (key, value) in wire_extra {
        extra.insert(camel_case(&key), value);
    }
    if contents.is_empty() {
        return Err(RelayError::invalid_param(
            "contents",
            "contents must hold at least one turn",
        ));
    }

    let mut messages = Vec::with_capacity(contents.len() + 1);
    if let Some(system) = system_instruction {
        let mut content = Vec::with_capacity(system.parts.len());
        for (j, part) in system.parts.into_iter().enumerate() {
            match part {
                Part {
                    text: Some(text),
                    thought: None | Some(false),
                    thought_signature: None,
                    inline_data: None,
                    file_data: None,
                    function_call: None,
                    function_response: None,
                    extra,
                } if extra.is_empty() => content.push(ir::ContentPart::Text { text }),
                _ => {
                    return Err(RelayError::invalid_param(
                        &format!("systemInstruction.parts[{j}]"),
                        "systemInstruction may only hold text parts",
                    ));
                }
            }
        }
        messages.push(ir::Message {
            role: ir::Role::System,
            content,
            name: None,
            extra: system.extra,
        });
    }

    let mut calls = CallTracker::default();
    for (i, turn) in contents.into_iter().enumerate() {
        let path = format!("contents[{i}]");
        let from_model = match turn.role.as_deref() {
            Some(MODEL_ROLE) => true,
            None | Some(USER_ROLE) | Some("function") => false,
            Some(other) => {
                return Err(RelayError::invalid_param(
                    &format!("{path}.role"),
                    format!("unknown role `{other}`: expected `user` or `model`"),
                ));
            }
        };
        let mut content = Vec::with_capacity(turn.parts.len());
        for (j, part) in turn.parts.into_iter().enumerate() {
            part_to_ir(
                PartPath::Request(i, j),
                part,
                &mut calls,
                from_model,
                &mut content,
            )
            .map_err(Problem::client)?;
        }
        let role = if from_model {
            calls.end_model_turn();
            ir::Role::Assistant
        } else if !content.is_empty()
            && content
                .iter()
                .all(|p| matches!(p, ir::ContentPart::ToolResult { .. }))
        {
            ir::Role::Tool
        } else {
            ir::Role::User
        };
        messages.push(ir::Message {
            role,
            content,
            name: None,
            extra: turn.extra,
        });
    }

    let mut ir_tools = Vec::new();
    let mut other_tools = Vec::new();
    for (i, tool) in tools.into_iter().enumerate() {
        for (j, decl) in tool.function_declarations.into_iter().enumerate() {
            let path = format!("tools[{i}].functionDeclarations[{j}]");
            if let Some(key) = decl.extra.keys().next() {
                return Err(RelayError::invalid_param(
                    &format!("{path}.{key}"),
                    format!("the relay cannot carry a function declaration's `{key}`"),
                ));
            }
            let parameters = match (decl.parameters, decl.parameters_json_schema) {
                (Some(_), Some(_)) => {
                    return Err(RelayError::invalid_param(
                        &format!("{path}.parametersJsonSchema"),
                        "give either parameters or parametersJsonSchema, not both",
                    ));
                }
                (Some(p), None) | (None, Some(p)) => p,
                (None, None) => Value::Null,
            };
            ir_tools.push(ir::ToolDef {
                name: decl.name,
                description: decl.description,
                parameters,
                strict: None,
            });
        }
        if let Some(key) = tool
            .extra
            .keys()
            .find(|k| REFUSED_TOOLS.contains(&k.as_str()))
        {
            return Err(RelayError::invalid_param(
                &format!("tools[{i}].{key}"),
                format!("the relay cannot carry the `{key}` tool's answers"),
            ));
        }
        if !tool.extra.is_empty() {
            other_tools.push(Value::Object(tool.extra));
        }
    }
    if !other_tools.is_empty() {
        extra.insert(TOOLS.into(), Value::Array(other_tools));
    }

    let tool_choice = match tool_config {
        Some(config) => tool_config_to_ir(config, &mut extra)?,
        None => None,
    };

    let mut out = ir::ChatRequest {
        model,
        messages,
        tools: ir_tools,
        tool_choice,
        stream,
        include_usage: stream,
        extra,
        ..ir::ChatRequest::default()
    };
    if let Some(config) = generation_config {
        generation_config_to_ir(config, &mut out)?;
    }
    Ok(out)
}

fn tool_config_to_ir(
    config: ToolConfig,
    extra: &mut Extra,
) -> Result<Option<ir::ToolChoice>, RelayError> {
    let mut partial = config.extra;
    let Some(fcc) = config.function_calling_config else {
        if !partial.is_empty() {
            extra.insert(TOOL_CONFIG.into(), Value::Object(partial));
        }
        return Ok(None);
    };
    let mut fcc_partial = fcc.extra;
    let mut names = fcc.allowed_function_names;
    let mode = fcc.mode.map(|m| m.to_ascii_uppercase());
    let choice = match mode.as_deref() {
        None | Some("MODE_UNSPECIFIED") => None,
        Some("AUTO") => Some(ir::ToolChoice::Auto),
        Some("NONE") => Some(ir::ToolChoice::None),
        Some("ANY") if names.len() == 1 => Some(ir::ToolChoice::Tool {
            name: names.remove(0),
        }),
        Some("ANY") => Some(ir::ToolChoice::Required),
        Some(VALIDATED) => {
            fcc_partial.insert("mode".into(), Value::String(VALIDATED.into()));
            Some(ir::ToolChoice::Auto)
        }
        Some(other) => {
            return Err(RelayError::invalid_param(
                "toolConfig.functionCallingConfig.mode",
                format!("unknown function calling mode `{other}`"),
            ));
        }
    };
    if !names.is_empty() {
        fcc_partial.insert(
            "allowedFunctionNames".into(),
            Value::Array(names.into_iter().map(Value::String).collect()),
        );
    }
    if !fcc_partial.is_empty() {
        partial.insert("functionCallingConfig".into(), Value::Object(fcc_partial));
    }
    if !partial.is_empty() {
        extra.insert(TOOL_CONFIG.into(), Value::Object(partial));
    }
    Ok(choice)
}

fn generation_config_to_ir(
    config: GenerationConfig,
    out: &mut ir::ChatRequest,
) -> Result<(), RelayError> {
    let GenerationConfig {
        temperature,
        top_p,
        top_k,
        max_output_tokens,
        stop_sequences,
        candidate_count,
        response_mime_type,
        response_schema,
        response_json_schema,
        thinking_config,
        seed,
        presence_penalty,
        frequency_penalty,
        extra: mut partial,
    } = config;
    out.temperature = temperature;
    out.top_p = top_p;
    out.max_tokens = max_output_tokens;
    out.stop = stop_sequences;
    let mapped: [(&str, Option<Value>); 5] = [
        ("top_k", top_k.map(Value::from)),
        ("n", candidate_count.map(Value::from)),
        ("seed", seed.map(Value::from)),
        ("presence_penalty", presence_penalty.map(Value::from)),
        ("frequency_penalty", frequency_penalty.map(Value::from)),
    ];
    for (key, value) in mapped {
        if let Some(value) = value {
            out.extra.insert(key.into(), value);
        }
    }

    let schema = match (response_schema, response_json_schema) {
        (Some(_), Some(_)) => {
            return Err(RelayError::invalid_param(
                "generationConfig.responseJsonSchema",
                "give either responseSchema or responseJsonSchema, not both",
            ));
        }
        (Some(s), None) => Some(("responseSchema", s)),
        (None, Some(s)) => Some(("responseJsonSchema", s)),
        (None, None) => None,
    };
    out.response_format = match (response_mime_type.as_deref(), schema) {
        (None, None) => None,
        (Some("text/plain"), None) => Some(ir::ResponseFormat::Text),
        (Some("application/json"), None) => Some(ir::ResponseFormat::JsonObject),
        (Some("application/json"), Some((_, schema))) => Some(ir::ResponseFormat::JsonSchema {
            name: "response".into(),
            schema,
            strict: None,
        }),
        (mime, schema) => {
            if let Some(mime) = mime {
                partial.insert("responseMimeType".into(), Value::String(mime.to_owned()));
            }
            if let Some((key, schema)) = schema {
                partial.insert(key.into(), schema);
            }
            None
        }
    };

    if let Some(thinking) = thinking_config {
        let mut thinking_partial = thinking.extra;
        match thinking.thinking_budget {
            Some(budget) if budget >= 0 => {
                out.reasoning = Some(ir::Reasoning {
                    effort: None,
                    budget_tokens: Some(budget.unsigned_abs()),
                });
            }
            Some(budget) => {
                thinking_partial.insert("thinkingBudget".into(), budget.into());
            }
            None => {}
        }
        if let Some(include) = thinking.include_thoughts {
            thinking_partial.insert("includeThoughts".into(), include.into());
        }
        if let Some(level) = thinking.thinking_level {
            thinking_partial.insert("thinkingLevel".into(), level.into());
        }
        if !thinking_partial.is_empty() {
            partial.insert("thinkingConfig".into(), Value::Object(thinking_partial));
        }
    }
    if !partial.is_empty() {
        out.extra
            .insert(GENERATION_CONFIG.into(), Value::Object(partial));
    }
    Ok(())
}

/// Convert an IR request to a Gemini request (the model goes in the URL). What Gemini
/// cannot express is a 400 naming the field: thinking, tool calls or tool results in the
/// wrong role, images in system messages or tool results, a tool result whose call is not
/// in the request, a tool call whose arguments are not a JSON object, a tool choice
/// naming an unknown tool, an unknown reasoning effort, other dialects' fields with no
/// Gemini equivalent.
pub fn request_from_ir(req: &ir::ChatRequest) -> Result<GenerateContentRequest, RelayError> {
    let mut system_parts = Vec::new();
    let mut contents: Vec<Content> = Vec::with_capacity(req.messages.len());
    let mut previous_was_tool = false;
    for (i, m) in req.messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        if m.role == ir::Role::System {
            for (j, part) in m.content.iter().enumerate() {
                match part {
                    ir::ContentPart::Text { text } => system_parts.push(Part {
                        text: Some(text.clone()),
                        ..Part::default()
                    }),
                    other => return Err(unsupported(&path, j, other, m.role)),
                }
            }
            continue;
        }
        let parts = parts_from_ir(&path, m, &req.messages[..i])?;
        let is_tool = m.role == ir::Role::Tool;
        if is_tool
            && previous_was_tool
            && let Some(last) = contents.last_mut()
        {
            last.parts.extend(parts);
            continue;
        }
        previous_was_tool = is_tool;
        let role = if m.role == ir::Role::Assistant {
            MODEL_ROLE
        } else {
            USER_ROLE
        };
        contents.push(Content {
            role: Some(role.into()),
            parts,
            extra: gemini_shaped(&m.extra),
        });
    }
    let system_instruction = (!system_parts.is_empty()).then(|| Content {
        role: None,
        parts: system_parts,
        extra: Extra::new(),
    });

    let mut extra = Extra::new();
    let mut generation_partial = Extra::new();
    let mut tool_partial = Extra::new();
    let mut other_tools = Vec::new();
    let mut mapped = Extra::new();
    for (key, value) in &req.extra {
        let key = key.as_str();
        if let Some((_, gemini)) = MAPPED_EXTRA.iter().find(|(k, _)| *k == key) {
            if !value.is_null() {
                mapped.insert((*gemini).into(), value.clone());
            }
        } else if key == GENERATION_CONFIG {
            if let Value::Object(map) = value {
                generation_partial.clone_from(map);
            }
        } else if key == TOOL_CONFIG {
            if let Value::Object(map) = value {
                tool_partial.clone_from(map);
            }
        } else if key == TOOLS {
            if let Value::Array(list) = value {
                other_tools.clone_from(list);
            }
        } else if DROPPED_EXTRA.contains(&key) {
            // Does not change the answer; Gemini has no slot for it.
        } else if is_foreign(key) {
            if !is_inert(key, value) {
                return Err(RelayError::invalid_param(
                    key,
                    format!("Gemini has no equivalent of `{key}`"),
                ));
            }
        } else {
            extra.insert(key.to_owned(), value.clone());
        }
    }

    let mut tools = Vec::new();
    if !req.tools.is_empty() {
        tools.push(Tool {
            function_declarations: req
                .tools
                .iter()
                .map(|t| {
                    let params = (!t.parameters.is_null()).then(|| t.parameters.clone());
                    let json_schema = params.as_ref().is_some_and(|p| !fits_openapi_subset(p));
                    FunctionDeclaration {
                        name: t.name.clone(),
                        description: t.description.clone(),
                        parameters: if json_schema { None } else { params.clone() },
                        parameters_json_schema: if json_schema { params } else { None },
                        extra: Extra::new(),
                    }
                })
                .collect(),
            extra: Extra::new(),
        });
    }
    for (i, tool) in other_tools.into_iter().enumerate() {
        match tool {
            Value::Object(map) => tools.push(Tool {
                function_declarations: Vec::new(),
                extra: map,
            }),
            _ => {
                return Err(RelayError::invalid_param(
                    &format!("tools[{i}]"),
                    "a Gemini tool must be an object",
                ));
            }
        }
    }

    let tool_config = tool_config_from_ir(req, tool_partial)?;
    let generation_config = generation_config_from_ir(req, mapped, generation_partial)?;

    Ok(GenerateContentRequest {
        contents,
        system_instruction,
        tools,
        tool_config,
        generation_config,
        extra,
    })
}

/// The Gemini parts of one IR message (not a system message).
fn parts_from_ir(
    path: &str,
    m: &ir::Message,
    earlier: &[ir::Message],
) -> Result<Vec<Part>, RelayError> {
    let mut parts = Vec::with_capacity(m.content.len());
    let mut signature: Option<String> = None;
    for (j, part) in m.content.iter().enumerate() {
        let mut wire = match (m.role, part) {
            (_, ir::ContentPart::Text { text }) if m.role != ir::Role::Tool => Part {
                text: Some(text.clone()),
                ..Part::default()
            },
            (ir::Role::Tool, ir::ContentPart::Text { text }) => {
                // An OpenAI legacy function message: the name is the message's.
                let Some(name) = m.name.clone() else {
                    return Err(RelayError::invalid_param(
                        &format!("{path}.content[{j}]"),
                        "a tool message's text needs the function's name",
                    ));
                };
                Part {
                    function_response: Some(FunctionResponse {
                        id: None,
                        name,
                        response: response_object(text, false),
                        extra: Extra::new(),
                    }),
                    ..Part::default()
                }
            }
            (ir::Role::User | ir::Role::Assistant, ir::ContentPart::Image { source, .. }) => {
                image_part(source)
            }
            (
                ir::Role::Assistant,
                ir::ContentPart::Thinking {
                    text,
                    signature: sig,
                    redacted,
                },
            ) => {
                if *redacted {
                    continue;
                }
                if text.is_empty() {
                    if let Some(sig) = sig
                        && let Some(pending) = signature.replace(sig.clone())
                    {
                        parts.push(signature_part(pending));
                    }
                    continue;
                }
                if let Some(pending) = signature.take() {
                    parts.push(signature_part(pending));
                }
                parts.push(Part {
                    text: Some(text.clone()),
                    thought: Some(true),
                    thought_signature: sig.clone(),
                    ..Part::default()
                });
                continue;
            }
            (
                ir::Role::Assistant,
                ir::ContentPart::ToolCall {
                    id,
                    name,
                    arguments,
                },
            ) => {
                let args = args_object(arguments).ok_or_else(|| {
                    RelayError::invalid_param(
                        &format!("{path}.content[{j}].arguments"),
                        format!("the arguments of the call to `{name}` are not a JSON object"),
                    )
                })?;
                Part {
                    function_call: Some(FunctionCall {
                        id: wire_call_id(id),
                        name: name.clone(),
                        args: Some(args),
                        extra: Extra::new(),
                    }),
                    ..Part::default()
                }
            }
            (
                ir::Role::User | ir::Role::Tool,
                ir::ContentPart::ToolResult {
                    call_id,
                    content,
                    is_error,
                },
            ) => {
                let name = call_name(earlier, call_id).ok_or_else(|| {
                    RelayError::invalid_param(
                        &format!("{path}.content[{j}].call_id"),
                        format!(
                            "the tool result for `{call_id}` answers no earlier tool call, and Gemini needs the function's name"
                        ),
                    )
                })?;
                let mut text = String::new();
                for (k, inner) in content.iter().enumerate() {
                    match inner {
                        ir::ContentPart::Text { text: t } => text.push_str(t),
                        other => {
                            return Err(RelayError::invalid_param(
                                &format!("{path}.content[{j}].content[{k}]"),
                                format!(
                                    "Gemini function responses carry only text, not {}",
                                    part_name(other)
                                ),
                            ));
                        }
                    }
                }
                Part {
                    function_response: Some(FunctionResponse {
                        id: wire_call_id(call_id),
                        name: name.to_owned(),
                        response: response_object(&text, *is_error),
                        extra: Extra::new(),
                    }),
                    ..Part::default()
                }
            }
            (role, other) => return Err(unsupported(path, j, other, role)),
        };
        wire.thought_signature = signature.take();
        parts.push(wire);
    }
    if let Some(pending) = signature {
        parts.push(signature_part(pending));
    }
    Ok(parts)
}

fn signature_part(signature: String) -> Part {
    Part {
        thought_signature: Some(signature),
        ..Part::default()
    }
}

fn unsupported(path: &str, j: usize, part: &ir::ContentPart, role: ir::Role) -> RelayError {
    RelayError::invalid_param(
        &format!("{path}.content[{j}]"),
        format!(
            "Gemini cannot carry {} in a {} message",
            part_name(part),
            role_name(role)
        ),
    )
}

/// The name of the latest earlier tool call with this id.
fn call_name<'a>(earlier: &'a [ir::Message], call_id: &str) -> Option<&'a str> {
    earlier.iter().rev().find_map(|m| {
        m.content.iter().rev().find_map(|p| match p {
            ir::ContentPart::ToolCall { id, name, .. } if id == call_id => Some(name.as_str()),
            _ => None,
        })
    })
}

/// A tool result's text as a `functionResponse.response` object.
fn response_object(text: &str, is_error: bool) -> Value {
    if is_error {
        return json!({ "error": text });
    }
    match serde_json::from_str::<Value>(text) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({ "result": text }),
    }
}

/// Tool-call arguments (JSON text) as an object: empty text is `{}`; anything but an
/// object is `None`.
pub(crate) fn args_object(arguments: &str) -> Option<Value> {
    if arguments.trim().is_empty() {
        return Some(Value::Object(Extra::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(object @ Value::Object(_)) => Some(object),
        _ => None,
    }
}

/// The id to write for a call: none for an empty id or one this codec made up.
pub(crate) fn wire_call_id(id: &str) -> Option<String> {
    let synthetic = id
        .strip_prefix("call_")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (!id.is_empty() && !synthetic).then(|| id.to_owned())
}

fn image_part(source: &ir::ImageSource) -> Part {
    match source {
        ir::ImageSource::Base64 { media_type, data } => Part {
            inline_data: Some(Blob {
                mime_type: media_type.clone(),
                data: data.clone(),
                extra: Extra::new(),
            }),
            ..Part::default()
        },
        ir::ImageSource::Url { url } => {
            if let Some((meta, data)) = url
                .strip_prefix("data:")
                .and_then(|rest| rest.split_once(','))
                && let Some(media_type) = meta.strip_suffix(";base64")
            {
                return Part {
                    inline_data: Some(Blob {
                        mime_type: media_type.to_owned(),
                        data: data.to_owned(),
                        extra: Extra::new(),
                    }),
                    ..Part::default()
                };
            }
            Part {
                file_data: Some(FileData {
                    mime_type: Some(guess_image_mime(url).to_owned()),
                    file_uri: url.clone(),
                    extra: Extra::new(),
                }),
                ..Part::default()
            }
        }
    }
}

/// An image MIME type from a URL's extension; `image/jpeg` when there is none to go by.
pub fn guess_image_mime(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.rsplit('/').next().unwrap_or(path);
    let ext = last
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "bmp" => "image/bmp",
        _ => "image/jpeg",
    }
}

fn tool_config_from_ir(
    req: &ir::ChatRequest,
    partial: Extra,
) -> Result<Option<ToolConfig>, RelayError> {
    let recorded_mode = partial
        .get("functionCallingConfig")
        .and_then(|f| f.get("mode"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let fcc = match &req.tool_choice {
        None => None,
        Some(ir::ToolChoice::Auto) => Some(FunctionCallingConfig {
            mode: Some(if recorded_mode.as_deref() == Some(VALIDATED) {
                VALIDATED.into()
            } else {
                "AUTO".into()
            }),
            ..FunctionCallingConfig::default()
        }),
        Some(ir::ToolChoice::None) => Some(FunctionCallingConfig {
            mode: Some("NONE".into()),
            ..FunctionCallingConfig::default()
        }),
        Some(ir::ToolChoice::Required) => Some(FunctionCallingConfig {
            mode: Some("ANY".into()),
            ..FunctionCallingConfig::default()
        }),
        Some(ir::ToolChoice::Tool { name }) => {
            if !req.tools.iter().any(|t| &t.name == name) {
                return Err(RelayError::invalid_param(
                    "tool_choice",
                    format!("tool_choice names `{name}`, which is not among the tools"),
                ));
            }
            Some(FunctionCallingConfig {
                mode: Some("ANY".into()),
                allowed_function_names: vec![name.clone()],
                extra: Extra::new(),
            })
        }
    };
    let typed = ToolConfig {
        function_calling_config: fcc,
        extra: Extra::new(),
    };
    merged(typed, partial)
}

fn generation_config_from_ir(
    req: &ir::ChatRequest,
    mapped: Extra,
    partial: Extra,
) -> Result<Option<GenerationConfig>, RelayError> {
    let (response_mime_type, response_schema, response_json_schema) = match &req.response_format {
        None => (None, None, None),
        Some(ir::ResponseFormat::Text) => (Some("text/plain".to_owned()), None, None),
        Some(ir::ResponseFormat::JsonObject) => (Some("application/json".to_owned()), None, None),
        Some(ir::ResponseFormat::JsonSchema { schema, .. }) => {
            let mime = Some("application/json".to_owned());
            if schema.is_null() {
                (mime, None, None)
            } else if fits_openapi_subset(schema) {
                (mime, Some(schema.clone()), None)
            } else {
                (mime, None, Some(schema.clone()))
            }
        }
    };
    let thinking_budget = match &req.reasoning {
        None => None,
        Some(ir::Reasoning {
            budget_tokens: Some(budget),
            ..
        }) => Some(i64::try_from(*budget).unwrap_or(i64::MAX)),
        Some(ir::Reasoning {
            effort: Some(effort),
            ..
        }) => Some(match effort.as_str() {
            "none" => 0,
            "minimal" | "low" => 1024,
            "medium" => 8192,
            "high" => 24576,
            other => {
                return Err(RelayError::invalid_param(
                    "reasoning_effort",
                    format!("Gemini has no thinking budget for reasoning effort `{other}`"),
                ));
            }
        }),
        Some(_) => None,
    };
    let mut typed = GenerationConfig {
        temperature: req.temperature,
        top_p: req.top_p,
        max_output_tokens: req.max_tokens,
        stop_sequences: req.stop.clone(),
        response_mime_type,
        response_schema,
        response_json_schema,
        thinking_config: thinking_budget.map(|b| ThinkingConfig {
            thinking_budget: Some(b),
            ..ThinkingConfig::default()
        }),
        ..GenerationConfig::default()
    };
    typed.extra = mapped;
    // The mapped keys land in `extra` as camelCase names; reading them back through the
    // typed struct puts them in their fields (and refuses values of the wrong type).
    let typed: GenerationConfig =
        serde_json::from_value(serde_json::to_value(&typed).map_err(internal)?).map_err(|e| {
            RelayError::bad_request(format!(
                "a sampling field cannot be expressed as a Gemini generationConfig field: {e}"
            ))
        })?;
    merged(typed, partial)
}

/// `typed` with `partial`'s fields merged under it (`typed` wins); `None` when empty.
fn merged<T>(typed: T, partial: Extra) -> Result<Option<T>, RelayError>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let mut value = serde_json::to_value(&typed).map_err(internal)?;
    if let Value::Object(map) = &mut value {
        merge_under(map, partial);
        if map.is_empty() {
            return Ok(None);
        }
    }
    serde_json::from_value(value).map(Some).map_err(|e| {
        RelayError::invalid_param(
            "extra",
            format!("a recorded Gemini configuration field is malformed: {e}"),
        )
    })
}

/// Add `partial`'s keys to `base` where `base` has none; objects on both sides merge
/// recursively.
fn merge_under(base: &mut Extra, partial: Extra) {
    for (key, value) in partial {
        match (base.get_mut(&key), value) {
            (None, value) => {
                base.insert(key, value);
            }
            (Some(Value::Object(inner)), Value::Object(more)) => merge_under(inner, more),
            (Some(_), _) => {}
        }
    }
}

/// Whether a schema uses only the OpenAPI subset Gemini's `parameters` and
/// `responseSchema` accept.
pub fn fits_openapi_subset(schema: &Value) -> bool {
    let Value::Object(map) = schema else {
        return false;
    };
    map.iter().all(|(key, value)| match key.as_str() {
        "type" => value.is_string(),
        "properties" => value
            .as_object()
            .is_some_and(|p| p.values().all(fits_openapi_subset)),
        "items" => fits_openapi_subset(value),
        "anyOf" => value
            .as_array()
            .is_some_and(|a| a.iter().all(fits_openapi_subset)),
        other => OPENAPI_SCHEMA_KEYS.contains(&other),
    })
}

fn is_foreign(key: &str) -> bool {
    key.contains('_') || FOREIGN_WORDS.contains(&key)
}

/// A value that asks for nothing (`null`, `false`, empty; `modalities: ["text"]`).
fn is_inert(key: &str, value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => {
            a.is_empty() || (key == "modalities" && a.iter().all(|m| m.as_str() == Some("text")))
        }
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The keys of `extra` that look like Gemini's (camelCase, not another dialect's).
fn gemini_shaped(extra: &Extra) -> Extra {
    extra
        .iter()
        .filter(|(k, _)| !is_foreign(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `snake_case` to `camelCase` (other names unchanged).
fn camel_case(key: &str) -> String {
    if !key.contains('_') || key.starts_with('_') {
        return key.to_owned();
    }
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
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
// Parts to IR
// ---------------------------------------------------------------------------------------

/// A problem found while reading parts: where, and what. It becomes a 400 in a request
/// and an upstream-protocol error in a response.
#[derive(Debug)]
pub(crate) struct Problem {
    path: String,
    message: String,
}

impl Problem {
    /// A problem at `path`.
    pub(crate) fn new(path: String, message: impl Into<String>) -> Self {
        Problem {
            path,
            message: message.into(),
        }
    }

    /// The client's fault: a 400 naming the field.
    pub(crate) fn client(self) -> RelayError {
        RelayError::invalid_param(&self.path, self.message)
    }

    /// The upstream's answer cannot be carried.
    pub(crate) fn upstream(self) -> RelayError {
        RelayError::new(
            ErrorKind::UpstreamProtocol,
            Side::Upstream,
            format!("the Gemini answer's {}: {}", self.path, self.message),
        )
    }
}

/// Ids of function calls: given, or made up as `call_<n>`; and which call a
/// `functionResponse` answers.
#[derive(Debug, Default)]
pub(crate) struct CallTracker {
    next: u64,
    /// Calls of the latest model turn that made any: id, name, answered.
    turn: Vec<(String, String, bool)>,
    /// Calls of the model turn being read.
    current: Vec<(String, String, bool)>,
    /// Every call id seen.
    seen: Vec<String>,
}

impl CallTracker {
    /// The id of the next call: `given` when it is not empty, else `call_<n>`.
    pub(crate) fn call_id(&mut self, given: Option<&str>, name: &str) -> String {
        let id = match given.filter(|id| !id.is_empty()) {
            Some(id) => id.to_owned(),
            None => format!("call_{}", self.next),
        };
        self.next += 1;
        self.current.push((id.clone(), name.to_owned(), false));
        self.seen.push(id.clone());
        id
    }

    fn end_model_turn(&mut self) {
        if !self.current.is_empty() {
            self.turn = std::mem::take(&mut self.current);
        }
    }

    /// The id of the call a response answers: by id when given and known, else the first
    /// unanswered call of that name in the latest model turn with calls.
    fn resolve(&mut self, given: Option<&str>, name: &str) -> Option<String> {
        if let Some(id) = given.filter(|id| !id.is_empty()) {
            if let Some(call) = self.turn.iter_mut().find(|c| c.0 == id) {
                call.2 = true;
                return Some(call.0.clone());
            }
            if self.seen.iter().any(|s| s == id) {
                return Some(id.to_owned());
            }
        }
        let call = self.turn.iter_mut().find(|c| !c.2 && c.1 == name)?;
        call.2 = true;
        Some(call.0.clone())
    }
}

/// Where a part is, for error messages (written out only when one is needed).
#[derive(Clone, Copy, Debug)]
pub(crate) enum PartPath {
    /// `contents[i].parts[j]` of a request.
    Request(usize, usize),
    /// `candidates[i].content.parts[j]` of an answer.
    Answer(usize, usize),
}

impl fmt::Display for PartPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartPath::Request(i, j) => write!(f, "contents[{i}].parts[{j}]"),
            PartPath::Answer(i, j) => write!(f, "candidates[{i}].content.parts[{j}]"),
        }
    }
}

/// Append the IR parts of one wire part.
pub(crate) fn part_to_ir(
    path: PartPath,
    part: Part,
    calls: &mut CallTracker,
    from_model: bool,
    out: &mut Vec<ir::ContentPart>,
) -> Result<(), Problem> {
    let Part {
        text,
        thought,
        thought_signature,
        inline_data,
        file_data,
        function_call,
        function_response,
        extra,
    } = part;
    if let Some(key) = extra.keys().next() {
        return Err(Problem::new(
            format!("{path}.{key}"),
            format!("the relay cannot carry `{key}` parts"),
        ));
    }
    let kinds = usize::from(text.is_some())
        + usize::from(inline_data.is_some())
        + usize::from(file_data.is_some())
        + usize::from(function_call.is_some())
        + usize::from(function_response.is_some());
    if kinds > 1 {
        return Err(Problem::new(
            path.to_string(),
            "a part holds one of text, inlineData, fileData, functionCall or functionResponse",
        ));
    }
    if thought == Some(true) {
        if kinds == 1 && text.is_none() {
            return Err(Problem::new(
                format!("{path}.thought"),
                "only text parts can be thoughts",
            ));
        }
        out.push(ir::ContentPart::Thinking {
            text: text.unwrap_or_default(),
            signature: thought_signature,
            redacted: false,
        });
        return Ok(());
    }
    if kinds == 0 && thought_signature.is_none() {
        return Err(Problem::new(path.to_string(), "empty part"));
    }
    if let Some(signature) = thought_signature {
        out.push(ir::ContentPart::Thinking {
            text: String::new(),
            signature: Some(signature),
            redacted: false,
        });
    }
    if let Some(text) = text {
        out.push(ir::ContentPart::Text { text });
    } else if let Some(blob) = inline_data {
        check_image(path, "inlineData", &blob.mime_type, &blob.extra)?;
        out.push(ir::ContentPart::Image {
            source: ir::ImageSource::Base64 {
                media_type: blob.mime_type,
                data: blob.data,
            },
            detail: None,
        });
    } else if let Some(file) = file_data {
        let mime = file.mime_type.as_deref().unwrap_or("image/");
        check_image(path, "fileData", mime, &file.extra)?;
        out.push(ir::ContentPart::Image {
            source: ir::ImageSource::Url { url: file.file_uri },
            detail: None,
        });
    } else if let Some(call) = function_call {
        if !from_model {
            return Err(Problem::new(
                format!("{path}.functionCall"),
                "function calls belong in model turns",
            ));
        }
        if let Some(key) = call.extra.keys().next() {
            return Err(Problem::new(
                format!("{path}.functionCall.{key}"),
                format!("the relay cannot carry a function call's `{key}`"),
            ));
        }
        let arguments = match call.args {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(args @ Value::Object(_)) => args.to_string(),
            Some(_) => {
                return Err(Problem::new(
                    format!("{path}.functionCall.args"),
                    "function call arguments must be an object",
                ));
            }
        };
        let id = calls.call_id(call.id.as_deref(), &call.name);
        out.push(ir::ContentPart::ToolCall {
            id,
            name: call.name,
            arguments,
        });
    } else if let Some(response) = function_response {
        if from_model {
            return Err(Problem::new(
                format!("{path}.functionResponse"),
                "function responses belong in user turns",
            ));
        }
        if let Some(key) = response.extra.keys().next() {
            return Err(Problem::new(
                format!("{path}.functionResponse.{key}"),
                format!("the relay cannot carry a function response's `{key}`"),
            ));
        }
        let call_id = calls
            .resolve(response.id.as_deref(), &response.name)
            .ok_or_else(|| {
                Problem::new(
                    format!("{path}.functionResponse"),
                    format!(
                        "this response to `{}` answers no function call of the preceding model turn",
                        response.name
                    ),
                )
            })?;
        let text = match response.response {
            Value::Null => "{}".to_owned(),
            other => other.to_string(),
        };
        out.push(ir::ContentPart::ToolResult {
            call_id,
            content: vec![ir::ContentPart::Text { text }],
            is_error: false,
        });
    }
    Ok(())
}

fn check_image(path: PartPath, field: &str, mime: &str, extra: &Extra) -> Result<(), Problem> {
    if let Some(key) = extra.keys().next() {
        return Err(Problem::new(
            format!("{path}.{field}.{key}"),
            format!("the relay cannot carry `{key}`"),
        ));
    }
    if !mime.starts_with("image/") {
        return Err(Problem::new(
            format!("{path}.{field}.mimeType"),
            format!("the relay carries only images, not `{mime}`"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------

/// A `generateContent` answer, and each frame of a `streamGenerateContent` stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    /// The answers.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub candidates: Vec<Candidate>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_metadata: Option<UsageMetadata>,
    /// The model version that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// The response id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    /// Other fields (`promptFeedback`, `createTime`, a stream's `error`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// One answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The model turn (absent when blocked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// Why generation stopped (`STOP`, `MAX_TOKENS`, `SAFETY`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Its position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Other fields (`safetyRatings`, `citationMetadata`, `avgLogprobs`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `usageMetadata`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    /// Prompt tokens, cached ones included.
    #[serde(default)]
    pub prompt_token_count: u64,
    /// Answer tokens, thoughts excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates_token_count: Option<u64>,
    /// Everything.
    #[serde(default)]
    pub total_token_count: u64,
    /// Prompt tokens served from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_content_token_count: Option<u64>,
    /// Thinking tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thoughts_token_count: Option<u64>,
    /// Other fields (`promptTokensDetails`, `toolUsePromptTokenCount`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Gemini usage to the relay's [`Usage`]: thoughts count as output and as reasoning.
pub fn usage_to_ir(u: &UsageMetadata) -> Usage {
    let thoughts = u.thoughts_token_count.unwrap_or(0);
    Usage {
        input_tokens: u.prompt_token_count,
        output_tokens: u.candidates_token_count.unwrap_or(0) + thoughts,
        cached_input_tokens: u.cached_content_token_count.unwrap_or(0),
        reasoning_tokens: thoughts,
    }
}

/// The relay's [`Usage`] as Gemini reports it (zero cache and thought counts omitted).
pub fn usage_from_ir(u: &Usage) -> UsageMetadata {
    UsageMetadata {
        prompt_token_count: u.input_tokens,
        candidates_token_count: Some(u.output_tokens.saturating_sub(u.reasoning_tokens)),
        total_token_count: u.total_tokens(),
        cached_content_token_count: (u.cached_input_tokens > 0).then_some(u.cached_input_tokens),
        thoughts_token_count: (u.reasoning_tokens > 0).then_some(u.reasoning_tokens),
        extra: Extra::new(),
    }
}

/// A Gemini `finishReason` as the IR's: `STOP` is [`ir::FinishReason::ToolCalls`] when the
/// candidate called functions.
pub fn finish_reason_to_ir(reason: &str, called_functions: bool) -> ir::FinishReason {
    match reason {
        "STOP" if called_functions => ir::FinishReason::ToolCalls,
        "STOP" => ir::FinishReason::Stop,
        "MAX_TOKENS" => ir::FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT" => ir::FinishReason::ContentFilter,
        other => ir::FinishReason::Other(other.to_owned()),
    }
}

/// The IR's finish reason as Gemini's: tool calls are `STOP`; another dialect's reason
/// that is not Gemini-shaped (upper case) is `OTHER`.
pub fn finish_reason_from_ir(reason: &ir::FinishReason) -> &str {
    match reason {
        ir::FinishReason::Stop | ir::FinishReason::ToolCalls => "STOP",
        ir::FinishReason::Length => "MAX_TOKENS",
        ir::FinishReason::ContentFilter => "SAFETY",
        ir::FinishReason::Other(s) if s == "function_call" => "STOP",
        ir::FinishReason::Other(s)
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') =>
        {
            s
        }
        ir::FinishReason::Other(_) => "OTHER",
    }
}

/// A response id for an answer that came without one: `gemini-<n>`.
pub(crate) fn synthetic_response_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("gemini-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Convert a response to the IR. A prompt blocked before any candidate becomes one empty
/// choice finished by [`ir::FinishReason::ContentFilter`]; parts the IR cannot carry are
/// an upstream-protocol error.
pub fn response_to_ir(resp: GenerateContentResponse) -> Result<ir::ChatResponse, RelayError> {
    let GenerateContentResponse {
        candidates,
        usage_metadata,
        model_version,
        response_id,
        extra,
    } = resp;
    if let Some(err) = extra.get("error") {
        return Err(upstream_error(err));
    }
    let mut calls = CallTracker::default();
    let mut choices = Vec::with_capacity(candidates.len().max(1));
    for (pos, c) in candidates.into_iter().enumerate() {
        let index = c.index.unwrap_or(u32::try_from(pos).unwrap_or(u32::MAX));
        let mut message_extra = c.extra;
        let mut content = Vec::new();
        if let Some(turn) = c.content {
            for (j, part) in turn.parts.into_iter().enumerate() {
                part_to_ir(
                    PartPath::Answer(pos, j),
                    part,
                    &mut calls,
                    true,
                    &mut content,
                )
                .map_err(Problem::upstream)?;
            }
            for (k, v) in turn.extra {
                message_extra.entry(k).or_insert(v);
            }
        }
        let called = content
            .iter()
            .any(|p| matches!(p, ir::ContentPart::ToolCall { .. }));
        choices.push(ir::Choice {
            index,
            message: ir::Message {
                role: ir::Role::Assistant,
                content,
                name: None,
                extra: message_extra,
            },
            finish_reason: c
                .finish_reason
                .as_deref()
                .map(|r| finish_reason_to_ir(r, called)),
        });
    }
    if choices.is_empty() && prompt_blocked(&extra) {
        choices.push(ir::Choice {
            index: 0,
            message: ir::Message::new(ir::Role::Assistant, Vec::new()),
            finish_reason: Some(ir::FinishReason::ContentFilter),
        });
    }
    Ok(ir::ChatResponse {
        id: response_id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(synthetic_response_id),
        model: model_version.unwrap_or_default(),
        created: 0,
        choices,
        usage: usage_metadata.as_ref().map(usage_to_ir),
        extra,
    })
}

/// Whether `promptFeedback.blockReason` says the prompt was blocked.
pub(crate) fn prompt_blocked(extra: &Extra) -> bool {
    extra
        .get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .is_some_and(|r| !r.is_null())
}

/// Convert an IR response to a Gemini response. Content Gemini cannot carry in an answer
/// (tool results) is an upstream-protocol error; redacted thinking is dropped.
pub fn response_from_ir(resp: &ir::ChatResponse) -> Result<GenerateContentResponse, RelayError> {
    let mut candidates = Vec::with_capacity(resp.choices.len());
    for c in &resp.choices {
        let mut as_request = c.message.clone();
        as_request.role = ir::Role::Assistant;
        // An OpenAI refusal (kept in the message's extra) is the answer's text for Gemini.
        if let Some(refusal) = c.message.extra.get("refusal").and_then(Value::as_str)
            && !refusal.is_empty()
        {
            as_request.content.push(ir::ContentPart::text(refusal));
        }
        let parts = parts_from_ir("choices", &as_request, &[]).map_err(|e| {
            RelayError::new(
                ErrorKind::UpstreamProtocol,
                Side::Upstream,
                format!("the answer cannot be written for Gemini: {}", e.message()),
            )
        })?;
        candidates.push(Candidate {
            content: Some(Content {
                role: Some(MODEL_ROLE.into()),
                parts,
                extra: Extra::new(),
            }),
            finish_reason: c
                .finish_reason
                .as_ref()
                .map(|r| finish_reason_from_ir(r).to_owned()),
            index: Some(c.index),
            extra: gemini_shaped(&c.message.extra),
        });
    }
    Ok(GenerateContentResponse {
        candidates,
        usage_metadata: resp.usage.as_ref().map(usage_from_ir),
        model_version: (!resp.model.is_empty()).then(|| resp.model.clone()),
        response_id: (!resp.id.is_empty()).then(|| resp.id.clone()),
        extra: gemini_shaped(&resp.extra),
    })
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Google's error object: `{"code","message","status"}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The HTTP status.
    #[serde(default)]
    pub code: u16,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// The canonical status name (`INVALID_ARGUMENT`...).
    #[serde(default)]
    pub status: String,
    /// Other fields (`details`).
    #[serde(flatten)]
    pub extra: Extra,
}

/// The canonical Google status name for an HTTP status.
pub fn status_name(code: u16) -> &'static str {
    match code {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        408 | 504 => "DEADLINE_EXCEEDED",
        502 | 503 => "UNAVAILABLE",
        400..=499 => "INVALID_ARGUMENT",
        _ => "INTERNAL",
    }
}

/// `{"error":{"code","message","status"}}`, as Google sends it.
pub fn error_body(err: &RelayError) -> Bytes {
    let code = err.status_code().as_u16();
    let body = json!({
        "error": {
            "code": code,
            "message": err.message(),
            "status": status_name(code),
        }
    });
    Bytes::from(body.to_string())
}

#[derive(Deserialize)]
struct Envelope {
    error: Status,
}

/// The message and status of a Google error body (`{"error":{..}}`, or a one-element
/// array of it as `streamGenerateContent` without SSE sends), or a readable slice of the
/// raw body.
pub fn error_message(body: &[u8]) -> String {
    // A derived struct also reads from an array, so the array form is tried by shape.
    let parsed = if body.trim_ascii_start().starts_with(b"[") {
        serde_json::from_slice::<Vec<Envelope>>(body)
            .ok()
            .and_then(|v| v.into_iter().next())
    } else {
        serde_json::from_slice::<Envelope>(body).ok()
    };
    if let Some(Envelope { error }) = parsed {
        let message = if error.message.is_empty() {
            "(no message)"
        } else {
            error.message.as_str()
        };
        return if error.status.is_empty() {
            message.to_owned()
        } else {
            format!("{message} [{}]", error.status)
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

/// An `error` object inside a 200 answer or a stream frame, as a relay error.
pub(crate) fn upstream_error(err: &Value) -> RelayError {
    let status = Status::deserialize(err).unwrap_or_default();
    let code = if (400..=599).contains(&status.code) {
        status.code
    } else {
        502
    };
    let message = if status.message.is_empty() {
        "(no message)".to_owned()
    } else {
        status.message
    };
    let message = if status.status.is_empty() {
        message
    } else {
        format!("{message} [{}]", status.status)
    };
    RelayError::upstream_status(code, format!("the upstream reported an error: {message}"))
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

pub(crate) fn internal(e: serde_json::Error) -> RelayError {
    RelayError::internal(format!("Gemini JSON could not be built: {e}"))
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
    use relay_core::ir::{ContentPart as P, FinishReason, ImageSource, Role};

    fn parse(v: &Value) -> GenerateContentRequest {
        serde_json::from_value(v.clone()).unwrap()
    }

    fn to_ir(v: &Value) -> Result<ir::ChatRequest, RelayError> {
        request_to_ir(parse(v), "gemini-2.5-flash".into(), false)
    }

    fn encode(req: &ir::ChatRequest) -> Value {
        serde_json::to_value(request_from_ir(req).unwrap()).unwrap()
    }

    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

    fn full_request() -> Value {
        json!({
            "systemInstruction": {"parts": [{"text": "You are a weather bot."}, {"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [
                    {"text": "What is in this picture?"},
                    {"inlineData": {"mimeType": "image/png", "data": PNG}}
                ]},
                {"role": "model", "parts": [{"text": "A tiny white square."}]},
                {"role": "user", "parts": [{"text": "Weather in Paris and Tokyo?"}]},
                {"role": "model", "parts": [
                    {"text": "Checking the forecast.", "thought": true},
                    {"functionCall": {"name": "get_weather", "args": {"location": "Paris", "unit": "celsius"}},
                     "thoughtSignature": "CiQBVKhc7vB+sig=="},
                    {"functionCall": {"name": "get_weather", "args": {"location": "Tokyo", "unit": "celsius"}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temperature": 18, "sky": "cloudy"}}},
                    {"functionResponse": {"name": "get_weather", "response": {"temperature": 24, "sky": "clear"}}}
                ]}
            ],
            "tools": [
                {"functionDeclarations": [{
                    "name": "get_weather",
                    "description": "Current weather for a city.",
                    "parameters": {
                        "type": "OBJECT",
                        "properties": {
                            "location": {"type": "STRING"},
                            "unit": {"type": "STRING", "enum": ["celsius", "fahrenheit"]}
                        },
                        "required": ["location"]
                    }
                }]},
                {"googleSearch": {}}
            ],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
            "generationConfig": {
                "temperature": 0.4,
                "topP": 0.95,
                "topK": 40,
                "maxOutputTokens": 2048,
                "stopSequences": ["END"],
                "candidateCount": 1,
                "seed": 7,
                "responseMimeType": "application/json",
                "responseSchema": {
                    "type": "OBJECT",
                    "properties": {"summary": {"type": "STRING"}},
                    "required": ["summary"]
                },
                "responseModalities": ["TEXT"],
                "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true}
            },
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}],
            "cachedContent": "cachedContents/abc123",
            "labels": {"team": "weather"}
        })
    }

    #[test]
    fn gemini_request_round_trips_through_the_ir() {
        let v = full_request();
        let ir = to_ir(&v).unwrap();
        assert_eq!(ir.model, "gemini-2.5-flash");
        assert_eq!(ir.messages.len(), 6);
        assert_eq!(ir.messages[0].role, Role::System);
        assert_eq!(
            ir.messages[0].content,
            vec![P::text("You are a weather bot."), P::text("Be brief.")]
        );
        assert_eq!(ir.messages[1].role, Role::User);
        assert_eq!(
            ir.messages[1].content[1],
            P::Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: PNG.into()
                },
                detail: None
            }
        );
        assert_eq!(ir.messages[2].role, Role::Assistant);
        assert_eq!(ir.messages[2].text(), "A tiny white square.");
        assert_eq!(
            ir.messages[4].content,
            vec![
                P::Thinking {
                    text: "Checking the forecast.".into(),
                    signature: None,
                    redacted: false
                },
                P::Thinking {
                    text: String::new(),
                    signature: Some("CiQBVKhc7vB+sig==".into()),
                    redacted: false
                },
                P::ToolCall {
                    id: "call_0".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"location":"Paris","unit":"celsius"}"#.into()
                },
                P::ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"location":"Tokyo","unit":"celsius"}"#.into()
                },
            ]
        );
        assert_eq!(ir.messages[5].role, Role::Tool);
        assert_eq!(
            ir.messages[5].content,
            vec![
                P::ToolResult {
                    call_id: "call_0".into(),
                    content: vec![P::text(r#"{"sky":"cloudy","temperature":18}"#)],
                    is_error: false
                },
                P::ToolResult {
                    call_id: "call_1".into(),
                    content: vec![P::text(r#"{"sky":"clear","temperature":24}"#)],
                    is_error: false
                },
            ]
        );
        assert_eq!(ir.tools.len(), 1);
        assert_eq!(ir.tools[0].name, "get_weather");
        assert_eq!(ir.tools[0].parameters["required"], json!(["location"]));
        assert_eq!(ir.tool_choice, Some(ir::ToolChoice::Auto));
        assert_eq!(ir.temperature, Some(0.4));
        assert_eq!(ir.top_p, Some(0.95));
        assert_eq!(ir.max_tokens, Some(2048));
        assert_eq!(ir.stop, vec!["END".to_owned()]);
        assert_eq!(
            ir.reasoning,
            Some(ir::Reasoning {
                effort: None,
                budget_tokens: Some(1024)
            })
        );
        assert_eq!(
            ir.response_format,
            Some(ir::ResponseFormat::JsonSchema {
                name: "response".into(),
                schema: v["generationConfig"]["responseSchema"].clone(),
                strict: None
            })
        );
        assert_eq!(ir.extra["top_k"], json!(40));
        assert_eq!(ir.extra["n"], json!(1));
        assert_eq!(ir.extra["seed"], json!(7));
        assert_eq!(
            ir.extra["generationConfig"],
            json!({"responseModalities": ["TEXT"], "thinkingConfig": {"includeThoughts": true}})
        );
        assert_eq!(ir.extra["tools"], json!([{"googleSearch": {}}]));
        assert_eq!(ir.extra["safetySettings"], v["safetySettings"]);
        assert_eq!(ir.extra["cachedContent"], json!("cachedContents/abc123"));
        assert_eq!(ir.extra["labels"], json!({"team": "weather"}));
        assert!(!ir.stream);

        assert_eq!(encode(&ir), v);
    }

    #[test]
    fn snake_case_fields_read_like_camel_case() {
        let v = json!({
            "system_instruction": {"parts": [{"text": "Be brief."}]},
            "contents": [{"parts": [
                {"text": "Describe it."},
                {"inline_data": {"mime_type": "image/jpeg", "data": "/9j/4AAQ"}},
                {"file_data": {"mime_type": "image/png", "file_uri": "https://generativelanguage.googleapis.com/v1beta/files/abc"}}
            ]}],
            "generation_config": {"max_output_tokens": 100, "thinking_config": {"thinking_budget": 0}},
            "safety_settings": []
        });
        let ir = to_ir(&v).unwrap();
        assert_eq!(ir.messages[0].role, Role::System);
        assert_eq!(ir.messages[1].role, Role::User);
        assert_eq!(
            ir.messages[1].content[2],
            P::Image {
                source: ImageSource::Url {
                    url: "https://generativelanguage.googleapis.com/v1beta/files/abc".into()
                },
                detail: None
            }
        );
        assert_eq!(ir.max_tokens, Some(100));
        assert_eq!(ir.reasoning.as_ref().unwrap().budget_tokens, Some(0));
        assert_eq!(ir.extra["safetySettings"], json!([]));
        let back = encode(&ir);
        assert_eq!(
            back["systemInstruction"],
            json!({"parts": [{"text": "Be brief."}]})
        );
        assert_eq!(back["contents"][0]["role"], json!("user"));
        assert_eq!(
            back["contents"][0]["parts"][1],
            json!({"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}})
        );
        // The Files API URI has no extension: its MIME type is the default guess.
        assert_eq!(
            back["contents"][0]["parts"][2],
            json!({"fileData": {"mimeType": "image/jpeg",
                "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc"}})
        );
        assert_eq!(
            back["generationConfig"],
            json!({"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": 0}})
        );
        assert_eq!(back["safetySettings"], json!([]));
    }

    #[test]
    fn openai_shaped_ir_becomes_a_gemini_request() {
        let mut extra = Extra::new();
        extra.insert("user".into(), json!("user-1234"));
        extra.insert("seed".into(), json!(42));
        extra.insert("n".into(), json!(2));
        extra.insert("max_completion_tokens".into(), json!(500));
        extra.insert("logprobs".into(), json!(false));
        let mut developer = Message::new(Role::System, vec![P::text("Answer in French.")]);
        developer.extra.insert("role".into(), json!("developer"));
        let req = ir::ChatRequest {
            model: "gemini-2.5-pro".into(),
            messages: vec![
                Message::new(Role::System, vec![P::text("You are helpful.")]),
                Message::new(
                    Role::User,
                    vec![
                        P::text("Where is this, and what's the weather there and in Tokyo?"),
                        P::Image {
                            source: ImageSource::Url {
                                url: "https://upload.wikimedia.org/wikipedia/commons/a/a8/Tour_Eiffel.PNG?download=1".into(),
                            },
                            detail: Some("high".into()),
                        },
                    ],
                ),
                developer,
                Message::new(
                    Role::Assistant,
                    vec![
                        P::ToolCall {
                            id: "call_abc".into(),
                            name: "get_weather".into(),
                            arguments: r#"{"location": "Paris"}"#.into(),
                        },
                        P::ToolCall {
                            id: "call_def".into(),
                            name: "get_time".into(),
                            arguments: String::new(),
                        },
                    ],
                ),
                Message::new(
                    Role::Tool,
                    vec![P::ToolResult {
                        call_id: "call_abc".into(),
                        content: vec![P::text(r#"{"temperature": 21}"#)],
                        is_error: false,
                    }],
                ),
                Message::new(
                    Role::Tool,
                    vec![P::ToolResult {
                        call_id: "call_def".into(),
                        content: vec![P::text("14:05")],
                        is_error: false,
                    }],
                ),
            ],
            tools: vec![
                ir::ToolDef {
                    name: "get_weather".into(),
                    description: Some("Weather for a city".into()),
                    parameters: json!({"type": "object", "properties": {"location": {"type": "string"}},
                        "required": ["location"], "additionalProperties": false}),
                    strict: Some(true),
                },
                ir::ToolDef {
                    name: "get_time".into(),
                    description: None,
                    parameters: json!({"type": "object", "properties": {}}),
                    strict: None,
                },
            ],
            tool_choice: Some(ir::ToolChoice::Tool {
                name: "get_weather".into(),
            }),
            max_tokens: Some(500),
            reasoning: Some(ir::Reasoning {
                effort: Some("medium".into()),
                budget_tokens: None,
            }),
            response_format: Some(ir::ResponseFormat::JsonObject),
            parallel_tool_calls: Some(true),
            stream: true,
            include_usage: true,
            extra,
            ..ir::ChatRequest::default()
        };
        let v = encode(&req);
        assert_eq!(
            v,
            json!({
                "systemInstruction": {"parts": [{"text": "You are helpful."}, {"text": "Answer in French."}]},
                "contents": [
                    {"role": "user", "parts": [
                        {"text": "Where is this, and what's the weather there and in Tokyo?"},
                        {"fileData": {"mimeType": "image/png",
                            "fileUri": "https://upload.wikimedia.org/wikipedia/commons/a/a8/Tour_Eiffel.PNG?download=1"}}
                    ]},
                    {"role": "model", "parts": [
                        {"functionCall": {"id": "call_abc", "name": "get_weather", "args": {"location": "Paris"}}},
                        {"functionCall": {"id": "call_def", "name": "get_time", "args": {}}}
                    ]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"id": "call_abc", "name": "get_weather", "response": {"temperature": 21}}},
                        {"functionResponse": {"id": "call_def", "name": "get_time", "response": {"result": "14:05"}}}
                    ]}
                ],
                "tools": [{"functionDeclarations": [
                    {"name": "get_weather", "description": "Weather for a city",
                     "parametersJsonSchema": {"type": "object", "properties": {"location": {"type": "string"}},
                        "required": ["location"], "additionalProperties": false}},
                    {"name": "get_time", "parameters": {"type": "object", "properties": {}}}
                ]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
                "generationConfig": {
                    "maxOutputTokens": 500,
                    "candidateCount": 2,
                    "seed": 42,
                    "responseMimeType": "application/json",
                    "thinkingConfig": {"thinkingBudget": 8192}
                }
            })
        );
    }

    #[test]
    fn what_gemini_cannot_carry_is_a_400_naming_the_field() {
        let user = |parts: Value| json!({"contents": [{"role": "user", "parts": parts}]});
        for (v, param) in [
            (
                user(json!([{"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}}])),
                "contents[0].parts[0].inlineData.mimeType",
            ),
            (
                user(json!([{"executableCode": {"language": "PYTHON", "code": "1+1"}}])),
                "contents[0].parts[0].executableCode",
            ),
            (
                user(json!([{"functionResponse": {"name": "f", "response": {}}}])),
                "contents[0].parts[0].functionResponse",
            ),
            (
                user(json!([{"functionCall": {"name": "f", "args": {}}}])),
                "contents[0].parts[0].functionCall",
            ),
            (user(json!([{}])), "contents[0].parts[0]"),
            (
                json!({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}),
                "contents[0].role",
            ),
            (json!({"contents": []}), "contents"),
            (
                json!({"contents": [{"parts": [{"text": "x"}]}], "tools": [{"codeExecution": {}}]}),
                "tools[0].codeExecution",
            ),
            (
                json!({"contents": [{"parts": [{"text": "x"}]}],
                    "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}}),
                "toolConfig.functionCallingConfig.mode",
            ),
        ] {
            let err = to_ir(&v).unwrap_err();
            assert_eq!(err.status_code().as_u16(), 400, "{v}");
            assert_eq!(err.param(), Some(param), "{v}: {}", err.message());
        }

        let base = || ir::ChatRequest {
            model: "m".into(),
            messages: vec![Message::new(Role::User, vec![P::text("hi")])],
            ..ir::ChatRequest::default()
        };
        let mut req = base();
        req.tool_choice = Some(ir::ToolChoice::Tool {
            name: "missing".into(),
        });
        assert_eq!(
            request_from_ir(&req).unwrap_err().param(),
            Some("tool_choice")
        );

        let mut req = base();
        req.extra
            .insert("logit_bias".into(), json!({"50256": -100}));
        let err = request_from_ir(&req).unwrap_err();
        assert_eq!(err.param(), Some("logit_bias"));
        assert_eq!(err.message(), "Gemini has no equivalent of `logit_bias`");

        let mut req = base();
        req.messages.push(Message::new(
            Role::Tool,
            vec![P::ToolResult {
                call_id: "call_zzz".into(),
                content: vec![P::text("x")],
                is_error: false,
            }],
        ));
        assert_eq!(
            request_from_ir(&req).unwrap_err().param(),
            Some("messages[1].content[0].call_id")
        );

        let mut req = base();
        req.messages.push(Message::new(
            Role::Assistant,
            vec![P::ToolCall {
                id: "call_1x".into(),
                name: "f".into(),
                arguments: "{\"a\":".into(),
            }],
        ));
        let err = request_from_ir(&req).unwrap_err();
        assert_eq!(err.status_code().as_u16(), 400);
        assert_eq!(err.param(), Some("messages[1].content[0].arguments"));

        let mut req = base();
        req.messages[0].content.push(P::ToolCall {
            id: "c".into(),
            name: "f".into(),
            arguments: "{}".into(),
        });
        assert_eq!(
            request_from_ir(&req).unwrap_err().param(),
            Some("messages[0].content[1]")
        );

        let mut req = base();
        req.reasoning = Some(ir::Reasoning {
            effort: Some("extreme".into()),
            budget_tokens: None,
        });
        assert_eq!(
            request_from_ir(&req).unwrap_err().param(),
            Some("reasoning_effort")
        );
    }

    #[test]
    fn tool_config_modes_map_both_ways() {
        let with = |fcc: Value| {
            json!({"contents": [{"parts": [{"text": "x"}]}],
                "tools": [{"functionDeclarations": [{"name": "a"}, {"name": "b"}]}],
                "toolConfig": {"functionCallingConfig": fcc}})
        };
        for (fcc, choice) in [
            (json!({"mode": "AUTO"}), ir::ToolChoice::Auto),
            (json!({"mode": "NONE"}), ir::ToolChoice::None),
            (json!({"mode": "ANY"}), ir::ToolChoice::Required),
            (
                json!({"mode": "ANY", "allowedFunctionNames": ["b"]}),
                ir::ToolChoice::Tool { name: "b".into() },
            ),
            (
                json!({"mode": "ANY", "allowedFunctionNames": ["a", "b"]}),
                ir::ToolChoice::Required,
            ),
            (json!({"mode": "VALIDATED"}), ir::ToolChoice::Auto),
        ] {
            let v = with(fcc.clone());
            let ir = to_ir(&v).unwrap();
            assert_eq!(ir.tool_choice, Some(choice), "{fcc}");
            assert_eq!(encode(&ir)["toolConfig"]["functionCallingConfig"], fcc);
        }
    }

    #[test]
    fn schemas_go_out_under_the_field_that_accepts_them() {
        let openapi = json!({"type": "object", "properties": {"a": {"type": "array",
            "items": {"type": "string"}}}, "propertyOrdering": ["a"]});
        let json_schema =
            json!({"type": "object", "properties": {"a": {"type": ["string", "null"]}}});
        assert!(fits_openapi_subset(&openapi));
        assert!(!fits_openapi_subset(&json_schema));
        assert!(!fits_openapi_subset(&json!({"$ref": "#/$defs/x"})));

        let v = json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": json_schema}});
        let ir = to_ir(&v).unwrap();
        assert!(matches!(
            ir.response_format,
            Some(ir::ResponseFormat::JsonSchema { .. })
        ));
        assert_eq!(encode(&ir), v);

        // An unknown MIME type with a schema stays in the partial generationConfig.
        let v = json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
            "generationConfig": {"responseMimeType": "text/x.enum",
                "responseSchema": {"type": "STRING", "enum": ["a", "b"]}}});
        let ir = to_ir(&v).unwrap();
        assert_eq!(ir.response_format, None);
        assert_eq!(encode(&ir), v);
    }

    #[test]
    fn thought_signatures_come_back_on_the_part_that_carried_them() {
        let v = json!({"contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [
                {"text": "Hello", "thoughtSignature": "sig-a"},
                {"thoughtSignature": "sig-b"}
            ]},
            {"role": "user", "parts": [{"text": "bye"}]}
        ]});
        let ir = to_ir(&v).unwrap();
        assert_eq!(
            ir.messages[1].content,
            vec![
                P::Thinking {
                    text: String::new(),
                    signature: Some("sig-a".into()),
                    redacted: false
                },
                P::text("Hello"),
                P::Thinking {
                    text: String::new(),
                    signature: Some("sig-b".into()),
                    redacted: false
                },
            ]
        );
        assert_eq!(encode(&ir), v);
    }

    #[test]
    fn responses_round_trip() {
        let v = json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "Let me check.", "thought": true},
                    {"text": "Checking both cities."},
                    {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": "c2ln"},
                    {"functionCall": {"name": "get_weather", "args": {"location": "Tokyo"}}}
                ]},
                "finishReason": "STOP",
                "index": 0,
                "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}]
            }],
            "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 30, "totalTokenCount": 200,
                "cachedContentTokenCount": 64, "thoughtsTokenCount": 50},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "mJ3xaPbiNcaYz7IPqqTJ2QM"
        });
        let resp: GenerateContentResponse = serde_json::from_value(v.clone()).unwrap();
        let ir = response_to_ir(resp).unwrap();
        assert_eq!(ir.id, "mJ3xaPbiNcaYz7IPqqTJ2QM");
        assert_eq!(ir.model, "gemini-2.5-flash");
        let choice = &ir.choices[0];
        assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(choice.message.text(), "Checking both cities.");
        assert_eq!(
            choice.message.content[3],
            P::ToolCall {
                id: "call_0".into(),
                name: "get_weather".into(),
                arguments: r#"{"location":"Paris"}"#.into()
            }
        );
        assert_eq!(
            ir.usage,
            Some(Usage {
                input_tokens: 120,
                output_tokens: 80,
                cached_input_tokens: 64,
                reasoning_tokens: 50
            })
        );
        assert_eq!(
            choice.message.extra["safetyRatings"],
            v["candidates"][0]["safetyRatings"]
        );
        let back = serde_json::to_value(response_from_ir(&ir).unwrap()).unwrap();
        let mut expected = v.clone();
        // The total is recomputed from input and output.
        expected["usageMetadata"]["totalTokenCount"] = json!(200);
        assert_eq!(back, expected);
    }

    #[test]
    fn finish_reasons_and_blocked_prompts() {
        assert_eq!(finish_reason_to_ir("STOP", false), FinishReason::Stop);
        assert_eq!(
            finish_reason_to_ir("MAX_TOKENS", false),
            FinishReason::Length
        );
        for r in [
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
        ] {
            assert_eq!(finish_reason_to_ir(r, false), FinishReason::ContentFilter);
        }
        assert_eq!(
            finish_reason_to_ir("MALFORMED_FUNCTION_CALL", true),
            FinishReason::Other("MALFORMED_FUNCTION_CALL".into())
        );
        assert_eq!(finish_reason_from_ir(&FinishReason::ToolCalls), "STOP");
        assert_eq!(finish_reason_from_ir(&FinishReason::Length), "MAX_TOKENS");
        assert_eq!(
            finish_reason_from_ir(&FinishReason::ContentFilter),
            "SAFETY"
        );
        assert_eq!(
            finish_reason_from_ir(&FinishReason::Other("LANGUAGE".into())),
            "LANGUAGE"
        );
        assert_eq!(
            finish_reason_from_ir(&FinishReason::Other("pause_turn".into())),
            "OTHER"
        );

        let blocked: GenerateContentResponse = serde_json::from_value(json!({
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}
        }))
        .unwrap();
        let ir = response_to_ir(blocked).unwrap();
        assert_eq!(ir.choices.len(), 1);
        assert_eq!(
            ir.choices[0].finish_reason,
            Some(FinishReason::ContentFilter)
        );
        assert!(ir.id.starts_with("gemini-"));
        assert_eq!(ir.extra["promptFeedback"], json!({"blockReason": "SAFETY"}));
    }

    #[test]
    fn usage_maps_both_ways() {
        let u = Usage {
            input_tokens: 100,
            output_tokens: 70,
            cached_input_tokens: 0,
            reasoning_tokens: 20,
        };
        let wire = usage_from_ir(&u);
        assert_eq!(
            serde_json::to_value(&wire).unwrap(),
            json!({"promptTokenCount": 100, "candidatesTokenCount": 50, "totalTokenCount": 170,
                "thoughtsTokenCount": 20})
        );
        assert_eq!(usage_to_ir(&wire), u);
    }

    #[test]
    fn error_bodies_by_status() {
        use http::StatusCode;
        for (err, code, status) in [
            (RelayError::bad_request("bad"), 400, "INVALID_ARGUMENT"),
            (
                RelayError::new(ErrorKind::Unauthorized, Side::Client, "no key"),
                401,
                "UNAUTHENTICATED",
            ),
            (
                RelayError::new(ErrorKind::Forbidden, Side::Client, "no"),
                403,
                "PERMISSION_DENIED",
            ),
            (RelayError::model_not_found("gemini-9"), 404, "NOT_FOUND"),
            (
                RelayError::upstream_status(429, "slow down"),
                429,
                "RESOURCE_EXHAUSTED",
            ),
            (RelayError::internal("oops"), 500, "INTERNAL"),
            (
                RelayError::upstream_status(503, "overloaded"),
                502,
                "UNAVAILABLE",
            ),
            (
                RelayError::new(ErrorKind::NoChannel, Side::Internal, "none"),
                503,
                "UNAVAILABLE",
            ),
            (
                RelayError::new(ErrorKind::TotalTimeout, Side::Upstream, "late"),
                504,
                "DEADLINE_EXCEEDED",
            ),
            (
                RelayError::bad_request("big").with_status(StatusCode::PAYLOAD_TOO_LARGE),
                413,
                "INVALID_ARGUMENT",
            ),
        ] {
            let v: Value = serde_json::from_slice(&error_body(&err)).unwrap();
            assert_eq!(
                v,
                json!({"error": {"code": code, "message": err.message(), "status": status}})
            );
        }
    }

    #[test]
    fn error_messages_are_read() {
        assert_eq!(
            error_message(
                br#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}"#
            ),
            "API key not valid. [INVALID_ARGUMENT]"
        );
        assert_eq!(
            error_message(
                br#"[{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}]"#
            ),
            "The model is overloaded. [UNAVAILABLE]"
        );
        assert_eq!(error_message(b"<html>502</html>"), "<html>502</html>");
        assert_eq!(error_message(b"  "), "(empty body)");
    }

    #[test]
    fn refusals_errors_and_legacy_function_results() {
        let mut message = Message::new(Role::Assistant, Vec::new());
        message
            .extra
            .insert("refusal".into(), json!("I can't help with that."));
        message.extra.insert("logprobs".into(), json!(null));
        let resp = ir::ChatResponse {
            id: "chatcmpl-1".into(),
            model: "gpt-4o".into(),
            choices: vec![ir::Choice {
                index: 0,
                message,
                finish_reason: Some(FinishReason::Stop),
            }],
            ..ir::ChatResponse::default()
        };
        assert_eq!(
            serde_json::to_value(response_from_ir(&resp).unwrap()).unwrap(),
            json!({"candidates": [{"content": {"role": "model",
                "parts": [{"text": "I can't help with that."}]}, "finishReason": "STOP", "index": 0}],
                "modelVersion": "gpt-4o", "responseId": "chatcmpl-1"})
        );

        let mut legacy = Message::new(Role::Tool, vec![P::text("sunny")]);
        legacy.name = Some("get_weather".into());
        let req = ir::ChatRequest {
            messages: vec![
                Message::new(
                    Role::Assistant,
                    vec![P::ToolCall {
                        id: "toolu_01A".into(),
                        name: "search".into(),
                        arguments: "{}".into(),
                    }],
                ),
                Message::new(
                    Role::User,
                    vec![
                        P::ToolResult {
                            call_id: "toolu_01A".into(),
                            content: vec![P::text("rate limited")],
                            is_error: true,
                        },
                        P::text("Try again?"),
                    ],
                ),
                legacy,
            ],
            ..ir::ChatRequest::default()
        };
        assert_eq!(
            encode(&req)["contents"],
            json!([
                {"role": "model", "parts": [{"functionCall": {"id": "toolu_01A", "name": "search", "args": {}}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"id": "toolu_01A", "name": "search", "response": {"error": "rate limited"}}},
                    {"text": "Try again?"}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}
                ]}
            ])
        );
    }

    use relay_core::ir::Message;
}

/// Gemini's `thoughtSignature` is bytes (base64 in JSON); the IR holds signatures as
/// text. Real signatures of every dialect are standard base64 already and pass as they
/// are. On the way in, the url-safe alphabet without padding (what the google-genai SDK
/// echoes back) is normalised to standard padded base64, so a signature issued by
/// another dialect returns to it exactly as issued. A signature with characters outside
/// both base64 alphabets is wrapped (a marker and its bytes, in base64) so Gemini
/// clients can decode it, and unwrapped when it comes back.
pub mod thought_signature {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    const MARK: &[u8] = b"relay-sig:";

    fn base64_alphabet(s: &str) -> bool {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'='))
    }

    /// The wire form of an IR signature.
    pub fn to_wire(signature: &str) -> String {
        if base64_alphabet(signature) {
            signature.to_owned()
        } else {
            STANDARD.encode([MARK, signature.as_bytes()].concat())
        }
    }

    /// The IR form of a wire signature.
    pub fn from_wire(wire: &str) -> String {
        let mut standard: String = wire
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        while standard.len() % 4 != 0 {
            standard.push('=');
        }
        match STANDARD.decode(&standard) {
            Ok(bytes) => match bytes.strip_prefix(MARK).map(std::str::from_utf8) {
                Some(Ok(inner)) => inner.to_owned(),
                _ => standard,
            },
            Err(_) => wire.to_owned(),
        }
    }

    /// Serialize an IR signature in wire form.
    pub fn serialize<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_str(&to_wire(v)),
            None => s.serialize_none(),
        }
    }

    /// Serialize a borrowed IR signature in wire form.
    pub fn serialize_str<S: Serializer>(value: &Option<&str>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_str(&to_wire(v)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize a wire signature into IR form.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(|w| from_wire(&w)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn signatures_survive_the_sdk_echo() {
            // An Anthropic-style signature (standard base64) through a Gemini client that
            // echoes it url-safe and unpadded.
            let sig = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgx+/A==";
            assert_eq!(to_wire(sig), sig);
            let echoed = sig
                .replace('+', "-")
                .replace('/', "_")
                .trim_end_matches('=')
                .to_owned();
            assert_eq!(from_wire(&echoed), sig);
            // Not base64 at all: wrapped, decodable, and unwrapped on the way back.
            let odd = "sig:abc!";
            let wire = to_wire(odd);
            assert!(STANDARD.decode(&wire).is_ok());
            assert_eq!(from_wire(&wire), odd);
            // Unparseable but base64-looking text is left alone both ways.
            assert_eq!(to_wire("sig-a"), "sig-a");
            assert_eq!(from_wire("sig-a"), "sig-a");
        }
    }
}
