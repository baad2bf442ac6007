//! Request handling: recording, faults, routing, the OpenAI endpoints and
//! the helpers the other dialects ([`crate::anthropic`], [`crate::gemini`])
//! share.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::Value;

use crate::behavior::{Plan, has_overrides};
use crate::body::{MockBody, Pacing, SharedFrames, SseBody};
use crate::render::{self, Answer, Meta, ToolCall};
use crate::{RecordedRequest, Shared, anthropic, bench, gemini};

/// Largest request body the mock reads.
const MAX_BODY: usize = 32 * 1024 * 1024;
/// Largest embedding dimension the mock renders.
const MAX_DIMENSIONS: u64 = 65_536;

const MODELS_JSON: &[u8] =
    br#"{"object":"list","data":[{"id":"mock-model","object":"model","created":0,"owned_by":"relay-mock"}]}"#;

pub(crate) static JSON: HeaderValue = HeaderValue::from_static("application/json");
pub(crate) static EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
static NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

/// The API family a request path belongs to; decides the error body shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// OpenAI: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models` and
    /// every unknown path.
    OpenAi,
    /// Anthropic Messages: `/v1/messages` and below.
    Anthropic,
    /// Gemini: `/v1beta/...`, and `/v1/models/{model}:{method}`.
    Gemini,
}

impl Dialect {
    pub(crate) fn of(path: &str) -> Dialect {
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Dialect::Anthropic
        } else if path.starts_with("/v1beta/")
            || (path.starts_with("/v1/models/") && path.contains(':'))
        {
            Dialect::Gemini
        } else {
            Dialect::OpenAi
        }
    }

    /// The body of an injected fault with status `status`.
    fn fault_body(self, status: StatusCode, retry_after: Option<&HeaderValue>) -> Vec<u8> {
        match self {
            Dialect::OpenAi => render::fault_body(status),
            Dialect::Anthropic => anthropic::fault_body(status),
            Dialect::Gemini => gemini::fault_body(status, retry_after),
        }
    }

    /// An error response with the dialect's usual error type for `status`.
    fn error(self, status: StatusCode, message: &str) -> Response<MockBody> {
        let body = match self {
            Dialect::OpenAi => render::error_body(message, "invalid_request_error", None),
            Dialect::Anthropic => {
                anthropic::error_body(anthropic::error_type(status.as_u16()), message)
            }
            Dialect::Gemini => gemini::error_body(status.as_u16(), message),
        };
        json_response(status, body)
    }
}

/// A complete JSON response.
pub(crate) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, JSON.clone());
    resp
}

fn invalid_request(message: &str) -> Response<MockBody> {
    json_response(
        StatusCode::BAD_REQUEST,
        render::error_body(message, "invalid_request_error", None),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    cut: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let dialect = Dialect::of(parts.uri.path());
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(dialect.error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("could not read the request body: {e}"),
            ));
        }
    };
    if parts.method == Method::GET && parts.uri.path() == "/__relay_mock/stats" {
        return Ok(bench::stats(&shared));
    }
    let state = shared.behavior();
    let plan = Plan::new(&state.behavior, &parts.headers);
    let jitter = bench::jitter(
        plan.jitter,
        shared.stats.requests.load(Ordering::Relaxed) ^ 0x5bd1_e995,
    );
    let delay = plan.stall + plan.latency + jitter;

    // The benchmark fast path: no recording, no JSON parsing.
    if let Some(pre) = state.prerendered.as_ref() {
        if parts.method == Method::POST
            && parts.uri.path() == "/v1/chat/completions"
            && !has_overrides(&parts.headers)
        {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            return Ok(pre.respond(&shared, cut, &plan, &body));
        }
    }

    shared.record(RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body: body.clone(),
    });

    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    if let Some(status) = plan.status {
        let n = state.served.fetch_add(1, Ordering::Relaxed);
        let fail_first = u64::from(state.behavior.fail_first);
        if fail_first == 0 || n < fail_first {
            let mut resp = json_response(
                status,
                dialect.fault_body(status, plan.retry_after.as_ref()),
            );
            if let Some(retry_after) = plan.retry_after.clone() {
                resp.headers_mut().insert(RETRY_AFTER, retry_after);
            }
            return Ok(resp);
        }
    }

    let path = parts.uri.path();
    let resp = match (&parts.method, path) {
        (&Method::POST, "/v1/chat/completions") => chat(&shared, cut, &plan, &body),
        (&Method::POST, "/v1/embeddings") => embeddings(&plan, &body),
        (&Method::GET, "/v1/models") => models(&plan),
        (&Method::POST, "/v1/messages") => anthropic::messages(&shared, cut, &plan, &body),
        (&Method::POST, "/v1/messages/count_tokens") => anthropic::count_tokens(&body),
        (&Method::POST, _) if dialect == Dialect::Gemini => {
            match (gemini::route(path), parts.uri.query()) {
                (Some((model, "generateContent")), _) => {
                    gemini::generate(&shared, cut, &plan, model, &body, gemini::Mode::Json)
                }
                (Some((model, "streamGenerateContent")), query) => {
                    let mode = if query.is_some_and(gemini::wants_sse) {
                        gemini::Mode::Sse
                    } else {
                        gemini::Mode::Array
                    };
                    gemini::generate(&shared, cut, &plan, model, &body, mode)
                }
                (Some((_, "countTokens")), _) => gemini::count_tokens(&body),
                _ => not_found(dialect, &parts.method, path),
            }
        }
        (method, path) => not_found(dialect, method, path),
    };
    Ok(resp)
}

fn not_found(dialect: Dialect, method: &Method, path: &str) -> Response<MockBody> {
    match dialect {
        Dialect::OpenAi => json_response(
            StatusCode::NOT_FOUND,
            render::error_body(
                &format!("Unknown request URL: {method} {path}. Please check the URL for typos."),
                "invalid_request_error",
                Some("unknown_url"),
            ),
        ),
        Dialect::Anthropic | Dialect::Gemini => dialect.error(
            StatusCode::NOT_FOUND,
            &format!("Not found: {method} {path}"),
        ),
    }
}

/// A paced streaming response of `frames`, counted in the stream stats.
pub(crate) fn stream_response(
    shared: &Arc<Shared>,
    cut: Arc<AtomicBool>,
    plan: &Plan<'_>,
    frames: impl Into<SharedFrames>,
    content_type: &HeaderValue,
) -> Response<MockBody> {
    let pacing = Pacing {
        chunk_interval: plan.chunk_interval,
        stall_first_token: plan.stall_first_token,
        cut_after: plan.cut_after,
    };
    let mut resp = Response::new(MockBody::Sse(SseBody::new(
        frames.into(),
        pacing,
        Arc::clone(shared),
        cut,
    )));
    resp.headers_mut()
        .insert(CONTENT_TYPE, content_type.clone());
    resp.headers_mut().insert(CACHE_CONTROL, NO_CACHE.clone());
    resp
}

fn models(plan: &Plan<'_>) -> Response<MockBody> {
    match plan.model {
        Some(model) if model != "mock-model" => {
            let mut out = MODELS_JSON[..MODELS_JSON.len() - 2].to_vec();
            out.extend_from_slice(b",{\"id\":");
            render::push_str(&mut out, model);
            out.extend_from_slice(
                b",\"object\":\"model\",\"created\":0,\"owned_by\":\"relay-mock\"}]}",
            );
            json_response(StatusCode::OK, out)
        }
        _ => json_response(StatusCode::OK, Bytes::from_static(MODELS_JSON)),
    }
}

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Option<Vec<Message>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Characters of text in a message `content` (a string or an array of parts
/// or blocks with a `text` field).
pub(crate) fn content_chars(content: &Value) -> usize {
    match content {
        Value::String(s) => s.chars().count(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(|s| s.chars().count())
            .sum(),
        _ => 0,
    }
}

/// `ceil(chars / 4)`, at least 1.
pub(crate) fn tokens_for_chars(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

/// A placeholder value satisfying a JSON-schema property.
fn placeholder(schema: Option<&Value>) -> String {
    let Some(schema) = schema else {
        return "\"mock\"".to_owned();
    };
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.to_string();
    }
    // Gemini's OpenAPI-style schemas spell types in upper case ("STRING").
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| !t.eq_ignore_ascii_case("null"))
            .unwrap_or("string"),
        _ => "string",
    };
    let is = |name: &str| ty.eq_ignore_ascii_case(name);
    if is("number") || is("integer") {
        "1"
    } else if is("boolean") {
        "true"
    } else if is("array") {
        "[]"
    } else if is("object") {
        "{}"
    } else {
        "\"mock\""
    }
    .to_owned()
}

/// The tool call the mock makes for `tool` (an OpenAI `tools[]` entry).
fn tool_call(tool: &Value) -> ToolCall {
    let function = tool.get("function").unwrap_or(tool);
    tool_call_for(function, function.get("parameters"))
}

/// The tool call the mock makes for a tool declared as `decl` (its `name`
/// is read, `"mock_tool"` when missing) with JSON-schema `params`: an
/// object holding a placeholder for every `required` property.
pub(crate) fn tool_call_for(decl: &Value, params: Option<&Value>) -> ToolCall {
    let name = decl
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("mock_tool")
        .to_owned();
    let properties = params.and_then(|p| p.get("properties"));
    let mut arguments = Vec::with_capacity(64);
    arguments.push(b'{');
    let required = params
        .and_then(|p| p.get("required"))
        .and_then(Value::as_array);
    let mut first = true;
    for key in required.into_iter().flatten().filter_map(Value::as_str) {
        if !first {
            arguments.push(b',');
        }
        first = false;
        render::push_str(&mut arguments, key);
        arguments.push(b':');
        arguments.extend_from_slice(placeholder(properties.and_then(|p| p.get(key))).as_bytes());
    }
    arguments.push(b'}');
    ToolCall {
        name,
        arguments: String::from_utf8_lossy(&arguments).into_owned(),
    }
}

fn chat(
    shared: &Arc<Shared>,
    cut: Arc<AtomicBool>,
    plan: &Plan<'_>,
    body: &[u8],
) -> Response<MockBody> {
    let req: ChatRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return invalid_request(&format!(
                "We could not parse the JSON body of your request. ({e})"
            ));
        }
    };
    let Some(model) = req.model.as_deref() else {
        return invalid_request("you must provide a model parameter");
    };
    let messages = match req.messages.as_deref() {
        None => return invalid_request("Missing required parameter: 'messages'."),
        Some([]) => {
            return invalid_request(
                "Invalid 'messages': empty array. Expected at least 1 message.",
            );
        }
        Some(m) => m,
    };
    let chars: usize = messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(content_chars)
        .sum();
    let last_is_tool = messages
        .last()
        .and_then(|m| m.role.as_deref())
        .is_some_and(|r| r == "tool");
    let tools = req.tools.as_deref().unwrap_or_default();
    let answer = if !tools.is_empty() && plan.tool_calls > 0 && !last_is_tool {
        Answer::Tools(
            (0..plan.tool_calls as usize)
                .map(|k| tool_call(&tools[k % tools.len()]))
                .collect(),
        )
    } else {
        Answer::Text {
            tokens: plan.tokens,
        }
    };
    let meta = Meta {
        id: shared.next_id.fetch_add(1, Ordering::Relaxed),
        created: unix_now(),
        model: plan.model.unwrap_or(model),
        prompt_tokens: tokens_for_chars(chars),
    };

    if req.stream == Some(true) {
        let include_usage = plan.send_usage
            && req
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false);
        let frames = render::stream(&meta, &answer, include_usage);
        stream_response(shared, cut, plan, frames, &EVENT_STREAM)
    } else {
        let mut out = render::completion(&meta, &answer, plan.send_usage);
        if let Some(target) = plan.body_bytes {
            render::pad_completion(&mut out, target);
        }
        json_response(StatusCode::OK, out)
    }
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: Option<String>,
    input: Option<Value>,
    #[serde(default)]
    dimensions: Option<Value>,
    #[serde(default)]
    encoding_format: Option<String>,
}

/// One embedding input: text, or a pre-tokenized array.
enum Input<'a> {
    Text(&'a str),
    Tokens(&'a [Value]),
}

fn is_token_array(items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(Value::is_number)
}

fn embedding_inputs(input: &Value) -> Option<Vec<Input<'_>>> {
    match input {
        Value::String(s) => Some(vec![Input::Text(s)]),
        Value::Array(items) if is_token_array(items) => Some(vec![Input::Tokens(items)]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Some(Input::Text(s)),
                Value::Array(t) if is_token_array(t) => Some(Input::Tokens(t)),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// FNV-1a, the seed of an input's vector.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A deterministic unit vector of `dims` values derived from `seed`.
fn embedding_vector(seed: u64, dims: usize, out: &mut Vec<f32>) {
    out.clear();
    let mut norm = 0.0f64;
    for j in 0..dims {
        let bits = splitmix64(seed ^ (j as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // 24 random bits mapped to [-1, 1).
        let x = ((bits >> 40) as f64 / (1u64 << 23) as f64) - 1.0;
        norm += x * x;
        out.push(x as f32);
    }
    if norm > 0.0 {
        let scale = (1.0 / norm.sqrt()) as f32;
        out.iter_mut().for_each(|x| *x *= scale);
    }
}

fn embeddings(plan: &Plan<'_>, body: &[u8]) -> Response<MockBody> {
    let req: EmbeddingsRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return invalid_request(&format!(
                "We could not parse the JSON body of your request. ({e})"
            ));
        }
    };
    let Some(model) = req.model.as_deref() else {
        return invalid_request("you must provide a model parameter");
    };
    let Some(inputs) = req.input.as_ref().and_then(embedding_inputs) else {
        return invalid_request(
            "'input' must be a non-empty string, array of strings, or array of token arrays.",
        );
    };
    let dims = match &req.dimensions {
        None | Some(Value::Null) => 8,
        Some(v) => match v.as_u64() {
            Some(d) if (1..=MAX_DIMENSIONS).contains(&d) => d as usize,
            _ => {
                return invalid_request(&format!(
                    "Invalid 'dimensions': expected an integer between 1 and {MAX_DIMENSIONS}."
                ));
            }
        },
    };
    let base64 = req.encoding_format.as_deref() == Some("base64");
    let model = plan.model.unwrap_or(model);

    let per_value = if base64 { 6 } else { 12 };
    let mut out = Vec::with_capacity(128 + model.len() + inputs.len() * (64 + dims * per_value));
    let mut vector = Vec::with_capacity(dims);
    let mut raw = Vec::new();
    let mut prompt_tokens = 0u64;
    out.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
    for (i, input) in inputs.iter().enumerate() {
        let seed = match input {
            Input::Text(s) => {
                prompt_tokens += tokens_for_chars(s.chars().count());
                fnv1a(0xcbf2_9ce4_8422_2325, s.as_bytes())
            }
            Input::Tokens(tokens) => {
                prompt_tokens += tokens.len() as u64;
                tokens.iter().fold(0x8422_2325_cbf2_9ce4, |h, t| {
                    fnv1a(h, t.to_string().as_bytes()) ^ 0x2c
                })
            }
        };
        embedding_vector(seed, dims, &mut vector);
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"object\":\"embedding\",\"index\":");
        render::push_u64(&mut out, i as u64);
        out.extend_from_slice(b",\"embedding\":");
        if base64 {
            raw.clear();
            raw.extend(vector.iter().flat_map(|x| x.to_le_bytes()));
            out.push(b'"');
            render::push_base64(&mut out, &raw);
            out.push(b'"');
        } else {
            out.push(b'[');
            for (j, x) in vector.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                render::push_f32(&mut out, *x);
            }
            out.push(b']');
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"model\":");
    render::push_str(&mut out, model);
    out.extend_from_slice(b",\"usage\":{\"prompt_tokens\":");
    render::push_u64(&mut out, prompt_tokens);
    out.extend_from_slice(b",\"total_tokens\":");
    render::push_u64(&mut out, prompt_tokens);
    out.extend_from_slice(b"}}");
    json_response(StatusCode::OK, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_arguments_follow_the_schema() {
        let tool = serde_json::json!({
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "days": {"type": "integer"},
                        "metric": {"type": "boolean"},
                        "unit": {"type": "string", "enum": ["c", "f"]},
                        "extra": {"type": "string"}
                    },
                    "required": ["city", "days", "metric", "unit"]
                }
            }
        });
        let call = tool_call(&tool);
        assert_eq!(call.name, "get_weather");
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(
            args,
            serde_json::json!({"city": "mock", "days": 1, "metric": true, "unit": "c"})
        );
        let none = tool_call(&serde_json::json!({"type": "function", "function": {"name": "x"}}));
        assert_eq!(none.arguments, "{}");
    }

    #[test]
    fn prompt_tokens_count_text_parts() {
        let v = serde_json::json!([{"type": "text", "text": "abcdefgh"}, {"type": "image_url"}]);
        assert_eq!(content_chars(&v), 8);
        assert_eq!(tokens_for_chars(0), 1);
        assert_eq!(tokens_for_chars(5), 2);
    }

    #[test]
    fn embeddings_are_unit_vectors() {
        let mut v = Vec::new();
        embedding_vector(42, 16, &mut v);
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
