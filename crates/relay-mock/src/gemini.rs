//! The Gemini dialect: `POST /v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent` (SSE with `?alt=sse`, else a streamed JSON
//! array) and `:countTokens`, also under `/v1/`.
//!
//! The API key (`x-goog-api-key` header or `?key=`) is not checked; it is
//! only recorded. Both the camelCase and the snake_case spellings of the
//! request fields are accepted, as by the real API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderValue, Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::Shared;
use crate::behavior::Plan;
use crate::body::MockBody;
use crate::handler::{
    EVENT_STREAM, JSON, json_response, stream_response, tokens_for_chars, tool_call_for,
};
use crate::render::{Answer, ContentFrames, Frames, push_str, push_u64, word};

/// How a `generateContent` answer is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `:generateContent`: one JSON object.
    Json,
    /// `:streamGenerateContent?alt=sse`: `data: <chunk>\r\n\r\n` frames.
    Sse,
    /// `:streamGenerateContent` without `alt=sse`: a JSON array of chunks,
    /// streamed element by element.
    Array,
}

/// `(model, method)` of a `/v1beta/models/{model}:{method}` (or `/v1/...`) path.
pub(crate) fn route(path: &str) -> Option<(&str, &str)> {
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    let (model, method) = rest.rsplit_once(':')?;
    (!model.is_empty() && !model.contains('/')).then_some((model, method))
}

/// Whether a query string asks for SSE (`alt=sse`).
pub(crate) fn wants_sse(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair == "alt=sse" || pair == "%24alt=sse" || pair == "$alt=sse")
}

/// The `google.rpc.Code` name Google APIs send for an HTTP status.
fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        412 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "INVALID_ARGUMENT",
    }
}

/// A Google API error body: `{"error":{"code":..,"message":..,"status":..}}`,
/// with `details` when given (raw JSON array elements).
fn error_with_details(code: u16, message: &str, details: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + message.len());
    out.extend_from_slice(b"{\"error\":{\"code\":");
    push_u64(&mut out, u64::from(code));
    out.extend_from_slice(b",\"message\":");
    push_str(&mut out, message);
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(status_name(code).as_bytes());
    out.push(b'"');
    if let Some(details) = details {
        out.extend_from_slice(b",\"details\":[");
        out.extend_from_slice(details);
        out.push(b']');
    }
    out.extend_from_slice(b"}}");
    out
}

/// A Google API error body for HTTP status `code`.
pub(crate) fn error_body(code: u16, message: &str) -> Vec<u8> {
    error_with_details(code, message, None)
}

/// The error body of an injected fault. A `Retry-After` in seconds is
/// mirrored as a `google.rpc.RetryInfo` detail, like Gemini's 429s carry.
pub(crate) fn fault_body(status: StatusCode, retry_after: Option<&HeaderValue>) -> Vec<u8> {
    let message = format!(
        "relay-mock injected fault: HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let seconds = retry_after
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let details = seconds.map(|s| {
        let mut d = Vec::with_capacity(96);
        d.extend_from_slice(
            b"{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\",\"retryDelay\":\"",
        );
        push_u64(&mut d, s);
        d.extend_from_slice(b"s\"}");
        d
    });
    error_with_details(status.as_u16(), &message, details.as_deref())
}

fn invalid_argument(message: &str) -> Response<MockBody> {
    json_response(StatusCode::BAD_REQUEST, error_body(400, message))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest {
    #[serde(default)]
    contents: Option<Vec<Value>>,
    #[serde(default, alias = "system_instruction")]
    system_instruction: Option<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    /// `countTokens` may wrap a whole request instead of sending `contents`.
    #[serde(default, alias = "generate_content_request")]
    generate_content_request: Option<Box<GenerateRequest>>,
}

/// `v[camel]`, or `v[snake]` (the REST API accepts both spellings).
fn field<'v>(v: &'v Value, camel: &str, snake: &str) -> Option<&'v Value> {
    v.get(camel).or_else(|| v.get(snake))
}

/// The `parts` of a `Content` object.
fn parts(content: &Value) -> &[Value] {
    content
        .get("parts")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Characters of text in a `Content` object's parts.
fn text_chars(content: &Value) -> usize {
    parts(content)
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .map(|s| s.chars().count())
        .sum()
}

/// A parsed request with non-empty `contents`, or the message of the 400 it
/// deserves.
fn parse(body: &[u8]) -> Result<(GenerateRequest, Vec<Value>), String> {
    let mut req: GenerateRequest = serde_json::from_slice(body).map_err(|e| {
        format!("Invalid JSON payload received. Unable to parse the request body: {e}")
    })?;
    match req.contents.take() {
        Some(contents) if !contents.is_empty() => Ok((req, contents)),
        _ => Err("* GenerateContentRequest.contents: contents is not specified".to_owned()),
    }
}

/// Prompt tokens: the text of `systemInstruction` and of every content.
fn prompt_tokens(req: &GenerateRequest, contents: &[Value]) -> u64 {
    let system = req.system_instruction.as_ref().map_or(0, text_chars);
    let chars: usize = contents.iter().map(text_chars).sum();
    tokens_for_chars(system + chars)
}

/// `POST .../models/{model}:countTokens`.
pub(crate) fn count_tokens(body: &[u8]) -> Response<MockBody> {
    let wrapped = serde_json::from_slice::<GenerateRequest>(body)
        .ok()
        .and_then(|r| r.generate_content_request);
    let parsed = match wrapped {
        Some(inner) if inner.contents.is_some() => {
            let inner = *inner;
            let contents = inner.contents.clone().unwrap_or_default();
            Ok((inner, contents))
        }
        _ => parse(body),
    };
    let (req, contents) = match parsed {
        Ok(r) => r,
        Err(message) => return invalid_argument(&message),
    };
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(b"{\"totalTokens\":");
    push_u64(&mut out, prompt_tokens(&req, &contents));
    out.push(b'}');
    json_response(StatusCode::OK, out)
}

/// `POST .../models/{model}:generateContent` and `:streamGenerateContent`.
pub(crate) fn generate(
    shared: &Arc<Shared>,
    cut: Arc<AtomicBool>,
    plan: &Plan<'_>,
    model: &str,
    body: &[u8],
    mode: Mode,
) -> Response<MockBody> {
    let (req, contents) = match parse(body) {
        Ok(r) => r,
        Err(message) => return invalid_argument(&message),
    };
    let last_has_response = contents.last().is_some_and(|c| {
        parts(c)
            .iter()
            .any(|p| field(p, "functionResponse", "function_response").is_some())
    });
    let declarations: Vec<&Value> = req
        .tools
        .iter()
        .flatten()
        .filter_map(|t| field(t, "functionDeclarations", "function_declarations"))
        .filter_map(Value::as_array)
        .flatten()
        .collect();
    let answer = if !declarations.is_empty() && plan.tool_calls > 0 && !last_has_response {
        Answer::Tools(
            (0..plan.tool_calls as usize)
                .map(|k| {
                    let decl = declarations[k % declarations.len()];
                    let params = decl
                        .get("parameters")
                        .or_else(|| field(decl, "parametersJsonSchema", "parameters_json_schema"));
                    tool_call_for(decl, params)
                })
                .collect(),
        )
    } else {
        Answer::Text {
            tokens: plan.tokens,
        }
    };
    let reply = Reply {
        id: shared.next_id.fetch_add(1, Ordering::Relaxed),
        model: plan.model.unwrap_or(model),
        prompt_tokens: prompt_tokens(&req, &contents),
        answer,
        send_usage: plan.send_usage,
    };
    match mode {
        Mode::Json => json_response(StatusCode::OK, reply.response()),
        Mode::Sse => stream_response(shared, cut, plan, reply.stream(mode), &EVENT_STREAM),
        Mode::Array => stream_response(shared, cut, plan, reply.stream(mode), &JSON),
    }
}

/// Everything one `generateContent` answer is rendered from.
#[derive(Debug)]
struct Reply<'a> {
    id: u64,
    model: &'a str,
    prompt_tokens: u64,
    answer: Answer,
    send_usage: bool,
}

/// What one chunk carries besides its parts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// An intermediate stream chunk: usage with `promptTokenCount` only.
    Partial,
    /// The last (or only) chunk: `finishReason` and the full usage.
    Final,
}

impl Reply<'_> {
    /// One `GenerateContentResponse` whose parts `parts` writes.
    fn push_chunk(&self, out: &mut Vec<u8>, tail: Tail, parts: impl FnOnce(&mut Vec<u8>)) {
        out.extend_from_slice(b"{\"candidates\":[{\"content\":{\"parts\":[");
        parts(out);
        out.extend_from_slice(b"],\"role\":\"model\"},");
        if tail == Tail::Final {
            out.extend_from_slice(b"\"finishReason\":\"STOP\",");
        }
        out.extend_from_slice(b"\"index\":0}],");
        if self.send_usage {
            out.extend_from_slice(b"\"usageMetadata\":{\"promptTokenCount\":");
            push_u64(out, self.prompt_tokens);
            if tail == Tail::Final {
                let completion = self.answer.completion_tokens();
                out.extend_from_slice(b",\"candidatesTokenCount\":");
                push_u64(out, completion);
                out.extend_from_slice(b",\"totalTokenCount\":");
                push_u64(out, self.prompt_tokens + completion);
            }
            out.extend_from_slice(b"},");
        }
        out.extend_from_slice(b"\"modelVersion\":");
        push_str(out, self.model);
        out.extend_from_slice(b",\"responseId\":\"mock-");
        push_u64(out, self.id);
        out.extend_from_slice(b"\"}");
    }

    /// The `functionCall` parts of a tool answer.
    fn push_calls(&self, out: &mut Vec<u8>) {
        if let Answer::Tools(calls) = &self.answer {
            for (k, call) in calls.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"functionCall\":{\"name\":");
                push_str(out, &call.name);
                out.extend_from_slice(b",\"args\":");
                out.extend_from_slice(call.arguments.as_bytes());
                out.extend_from_slice(b"}}");
            }
        }
    }

    /// A non-streaming `GenerateContentResponse`.
    fn response(&self) -> Vec<u8> {
        let body_len = match &self.answer {
            Answer::Text { tokens } => *tokens as usize * 12,
            Answer::Tools(calls) => calls
                .iter()
                .map(|c| 48 + c.name.len() + c.arguments.len())
                .sum(),
        };
        let mut out = Vec::with_capacity(300 + self.model.len() + body_len);
        self.push_chunk(&mut out, Tail::Final, |out| match &self.answer {
            Answer::Text { tokens } => {
                out.extend_from_slice(b"{\"text\":\"");
                for i in 0..*tokens {
                    out.extend_from_slice(word(i).as_bytes());
                    if i + 1 < *tokens {
                        out.push(b' ');
                    }
                }
                out.extend_from_slice(b"\"}");
            }
            Answer::Tools(_) => self.push_calls(out),
        });
        out
    }

    /// A streamed answer: one chunk per token (the last one finishing), or
    /// all function calls whole in one finishing chunk.
    fn stream(&self, mode: Mode) -> Frames {
        let (count, payload) = match &self.answer {
            Answer::Text { tokens } => ((*tokens).max(1) as usize, *tokens as usize * 12),
            Answer::Tools(calls) => (
                1,
                calls
                    .iter()
                    .map(|c| 48 + c.name.len() + c.arguments.len())
                    .sum(),
            ),
        };
        let per_frame = 240 + self.model.len();
        let mut data = Vec::with_capacity(count * per_frame + payload + 8);
        let mut ends = Vec::with_capacity(count);
        let mut frame = |data: &mut Vec<u8>, tail: Tail, parts: &dyn Fn(&mut Vec<u8>)| {
            match mode {
                Mode::Sse => data.extend_from_slice(b"data: "),
                Mode::Array | Mode::Json if ends.is_empty() => data.push(b'['),
                Mode::Array | Mode::Json => data.extend_from_slice(b",\r\n"),
            }
            self.push_chunk(data, tail, parts);
            match mode {
                Mode::Sse => data.extend_from_slice(b"\r\n\r\n"),
                Mode::Array | Mode::Json if tail == Tail::Final => data.push(b']'),
                Mode::Array | Mode::Json => {}
            }
            ends.push(data.len());
        };
        match &self.answer {
            Answer::Text { tokens: 0 } => {
                frame(&mut data, Tail::Final, &|out| {
                    out.extend_from_slice(b"{\"text\":\"\"}");
                });
            }
            Answer::Text { tokens } => {
                for i in 0..*tokens {
                    let last = i + 1 == *tokens;
                    let tail = if last { Tail::Final } else { Tail::Partial };
                    frame(&mut data, tail, &|out| {
                        out.extend_from_slice(b"{\"text\":\"");
                        out.extend_from_slice(word(i).as_bytes());
                        if !last {
                            out.push(b' ');
                        }
                        out.extend_from_slice(b"\"}");
                    });
                }
            }
            Answer::Tools(_) => frame(&mut data, Tail::Final, &|out| self.push_calls(out)),
        }
        let finish = ends.len() - 1;
        Frames {
            data,
            ends,
            content: ContentFrames::Range(0..finish + 1),
            finish,
            first_token: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::ToolCall;

    fn reply(answer: Answer) -> Reply<'static> {
        Reply {
            id: 3,
            model: "gemini-\"x",
            prompt_tokens: 5,
            answer,
            send_usage: true,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("/v1beta/models/gemini-2.0-flash:generateContent"),
            Some(("gemini-2.0-flash", "generateContent"))
        );
        assert_eq!(
            route("/v1/models/g:streamGenerateContent"),
            Some(("g", "streamGenerateContent"))
        );
        assert_eq!(route("/v1beta/models/:generateContent"), None);
        assert_eq!(route("/v1beta/models/a/b:generateContent"), None);
        assert_eq!(route("/v1beta/models/gemini"), None);
        assert!(wants_sse("key=abc&alt=sse"));
        assert!(!wants_sse("alt=json"));
    }

    #[test]
    fn streams_are_valid_json() {
        let tools = Answer::Tools(vec![ToolCall {
            name: "f".into(),
            arguments: r#"{"a":"mock"}"#.into(),
        }]);
        for answer in [
            Answer::Text { tokens: 3 },
            Answer::Text { tokens: 0 },
            tools,
        ] {
            let r = reply(answer);
            let _: Value = serde_json::from_slice(&r.response()).unwrap();
            let array = r.stream(Mode::Array);
            let v: Value = serde_json::from_slice(&array.data).unwrap();
            let chunks = v.as_array().unwrap();
            assert_eq!(chunks.len(), array.ends.len());
            assert_eq!(
                chunks.last().unwrap()["candidates"][0]["finishReason"],
                "STOP"
            );
            let sse = r.stream(Mode::Sse);
            let mut start = 0;
            for &end in &sse.ends {
                let text = std::str::from_utf8(&sse.data[start..end]).unwrap();
                let json = text.strip_prefix("data: ").unwrap();
                let json = json.strip_suffix("\r\n\r\n").unwrap();
                let _: Value = serde_json::from_str(json).unwrap();
                start = end;
            }
            assert_eq!(sse.finish, sse.ends.len() - 1);
        }
    }

    #[test]
    fn fault_bodies() {
        let v: Value =
            serde_json::from_slice(&fault_body(StatusCode::TOO_MANY_REQUESTS, None)).unwrap();
        assert_eq!(v["error"]["code"], 429);
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        assert!(v["error"].get("details").is_none());
        let v: Value = serde_json::from_slice(&fault_body(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&HeaderValue::from_static("7")),
        ))
        .unwrap();
        assert_eq!(v["error"]["status"], "UNAVAILABLE");
        assert_eq!(v["error"]["details"][0]["retryDelay"], "7s");
        assert_eq!(status_name(500), "INTERNAL");
        assert_eq!(status_name(401), "UNAUTHENTICATED");
    }
}
