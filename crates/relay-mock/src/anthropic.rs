//! The Anthropic Messages dialect: `POST /v1/messages` (JSON and SSE) and
//! `POST /v1/messages/count_tokens`.
//!
//! Auth headers (`x-api-key`, `authorization`, `anthropic-version`) are not
//! checked; they are only recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::Shared;
use crate::behavior::Plan;
use crate::body::MockBody;
use crate::handler::{
    EVENT_STREAM, content_chars, json_response, stream_response, tokens_for_chars, tool_call_for,
};
use crate::render::{self, Answer, ContentFrames, Frames, push_str, push_u64, word};

/// The text of the thinking block sent when the request enables thinking.
const THINKING: &str = "Let me think.";
/// Output tokens the thinking block counts for (one per word).
const THINKING_TOKENS: u64 = 3;

/// Anthropic's error `type` for an HTTP status.
pub(crate) fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// An Anthropic error body: `{"type":"error","error":{"type":..,"message":..}}`.
pub(crate) fn error_body(kind: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + message.len());
    out.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":");
    push_str(&mut out, kind);
    out.extend_from_slice(b",\"message\":");
    push_str(&mut out, message);
    out.extend_from_slice(b"}}");
    out
}

/// The error body of an injected fault with status `status`.
pub(crate) fn fault_body(status: StatusCode) -> Vec<u8> {
    let reason = match status.as_u16() {
        529 => "Overloaded",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    let message = format!(
        "relay-mock injected fault: HTTP {} {reason}",
        status.as_u16()
    );
    error_body(error_type(status.as_u16()), &message)
}

fn invalid_request(message: &str) -> Response<MockBody> {
    json_response(
        StatusCode::BAD_REQUEST,
        error_body("invalid_request_error", message),
    )
}

#[derive(Deserialize)]
struct MessagesRequest {
    model: Option<String>,
    max_tokens: Option<Value>,
    messages: Option<Vec<Message>>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    thinking: Option<Value>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<Value>,
}

/// A parsed and validated request, or the message of the 400 it deserves.
fn parse(body: &[u8], needs_max_tokens: bool) -> Result<MessagesRequest, String> {
    let req: MessagesRequest = serde_json::from_slice(body)
        .map_err(|e| format!("There was an error parsing the body of your request: {e}"))?;
    if req.model.is_none() {
        return Err("model: Field required".to_owned());
    }
    match req.messages.as_deref() {
        None => return Err("messages: Field required".to_owned()),
        Some([]) => return Err("messages: at least one message is required".to_owned()),
        Some(_) => {}
    }
    if needs_max_tokens {
        match &req.max_tokens {
            None | Some(Value::Null) => return Err("max_tokens: Field required".to_owned()),
            Some(v) if v.as_u64().is_none_or(|n| n == 0) => {
                return Err(
                    "max_tokens: Input should be an integer greater than or equal to 1".to_owned(),
                );
            }
            Some(_) => {}
        }
    }
    Ok(req)
}

/// Prompt tokens: the text of `system` and of every message, 4 chars a token.
fn prompt_tokens(req: &MessagesRequest) -> u64 {
    let system = req.system.as_ref().map_or(0, content_chars);
    let messages: usize = req
        .messages
        .iter()
        .flatten()
        .filter_map(|m| m.content.as_ref())
        .map(content_chars)
        .sum();
    tokens_for_chars(system + messages)
}

/// Whether `content` (a message's) carries a `tool_result` block.
fn has_tool_result(content: Option<&Value>) -> bool {
    content.and_then(Value::as_array).is_some_and(|blocks| {
        blocks
            .iter()
            .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
    })
}

/// `POST /v1/messages/count_tokens`.
pub(crate) fn count_tokens(body: &[u8]) -> Response<MockBody> {
    let req = match parse(body, false) {
        Ok(r) => r,
        Err(message) => return invalid_request(&message),
    };
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(b"{\"input_tokens\":");
    push_u64(&mut out, prompt_tokens(&req));
    out.push(b'}');
    json_response(StatusCode::OK, out)
}

/// `POST /v1/messages`.
pub(crate) fn messages(
    shared: &Arc<Shared>,
    cut: Arc<AtomicBool>,
    plan: &Plan<'_>,
    body: &[u8],
) -> Response<MockBody> {
    let req = match parse(body, true) {
        Ok(r) => r,
        Err(message) => return invalid_request(&message),
    };
    let last_has_result = req
        .messages
        .as_deref()
        .and_then(<[Message]>::last)
        .is_some_and(|m| has_tool_result(m.content.as_ref()));
    let tools = req.tools.as_deref().unwrap_or_default();
    let answer = if !tools.is_empty() && plan.tool_calls > 0 && !last_has_result {
        Answer::Tools(
            (0..plan.tool_calls as usize)
                .map(|k| {
                    let tool = &tools[k % tools.len()];
                    tool_call_for(tool, tool.get("input_schema"))
                })
                .collect(),
        )
    } else {
        Answer::Text {
            tokens: plan.tokens,
        }
    };
    let thinking = req
        .thinking
        .as_ref()
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        == Some("enabled");
    let reply = Reply {
        id: shared.next_id.fetch_add(1, Ordering::Relaxed),
        model: plan
            .model
            .unwrap_or_else(|| req.model.as_deref().unwrap_or_default()),
        prompt_tokens: prompt_tokens(&req),
        thinking,
        answer,
        send_usage: plan.send_usage,
    };
    if req.stream == Some(true) {
        stream_response(shared, cut, plan, reply.stream(), &EVENT_STREAM)
    } else {
        json_response(StatusCode::OK, reply.message())
    }
}

/// Everything one Messages answer is rendered from.
#[derive(Debug)]
struct Reply<'a> {
    id: u64,
    model: &'a str,
    prompt_tokens: u64,
    thinking: bool,
    answer: Answer,
    send_usage: bool,
}

impl Reply<'_> {
    fn output_tokens(&self) -> u64 {
        self.answer.completion_tokens() + if self.thinking { THINKING_TOKENS } else { 0 }
    }

    fn stop_reason(&self) -> &'static [u8] {
        match self.answer {
            Answer::Text { .. } => b"end_turn",
            Answer::Tools(_) => b"tool_use",
        }
    }

    fn push_id(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"msg_mock_");
        push_u64(out, self.id);
        out.push(b'"');
    }

    /// Real signatures are standard base64; so is this one (16 alphabet characters).
    fn push_signature(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("\"EqQBmock{:08}\"", self.id % 100_000_000).as_bytes());
    }

    /// `"usage":{...}` with the full set of counters.
    fn push_usage(out: &mut Vec<u8>, input: u64, output: u64) {
        out.extend_from_slice(b"\"usage\":{\"input_tokens\":");
        push_u64(out, input);
        out.extend_from_slice(b",\"output_tokens\":");
        push_u64(out, output);
        out.extend_from_slice(b",\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0}");
    }

    /// The message object up to and including `"content":[`.
    fn push_message_head(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        self.push_id(out);
        out.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        push_str(out, self.model);
        out.extend_from_slice(b",\"content\":[");
    }

    /// A non-streaming `message` object.
    fn message(&self) -> Vec<u8> {
        let body_len = match &self.answer {
            Answer::Text { tokens } => *tokens as usize * 12,
            Answer::Tools(calls) => calls
                .iter()
                .map(|c| 80 + c.name.len() + c.arguments.len())
                .sum(),
        };
        let mut out = Vec::with_capacity(320 + self.model.len() + body_len);
        self.push_message_head(&mut out);
        if self.thinking {
            out.extend_from_slice(b"{\"type\":\"thinking\",\"thinking\":");
            push_str(&mut out, THINKING);
            out.extend_from_slice(b",\"signature\":");
            self.push_signature(&mut out);
            out.extend_from_slice(b"},");
        }
        match &self.answer {
            Answer::Text { tokens } => {
                out.extend_from_slice(b"{\"type\":\"text\",\"text\":\"");
                for i in 0..*tokens {
                    out.extend_from_slice(word(i).as_bytes());
                    if i + 1 < *tokens {
                        out.push(b' ');
                    }
                }
                out.extend_from_slice(b"\"}");
            }
            Answer::Tools(calls) => {
                for (k, call) in calls.iter().enumerate() {
                    if k > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
                    push_tool_id(&mut out, k);
                    out.extend_from_slice(b",\"name\":");
                    push_str(&mut out, &call.name);
                    out.extend_from_slice(b",\"input\":");
                    out.extend_from_slice(call.arguments.as_bytes());
                    out.push(b'}');
                }
            }
        }
        out.extend_from_slice(b"],\"stop_reason\":\"");
        out.extend_from_slice(self.stop_reason());
        out.extend_from_slice(b"\",\"stop_sequence\":null");
        if self.send_usage {
            out.push(b',');
            Self::push_usage(&mut out, self.prompt_tokens, self.output_tokens());
        }
        out.push(b'}');
        out
    }

    /// The whole SSE event sequence of a streamed message.
    fn stream(&self) -> Frames {
        let capacity = match &self.answer {
            Answer::Text { tokens } => 600 + *tokens as usize * 110,
            Answer::Tools(calls) => {
                600 + calls
                    .iter()
                    .map(|c| 560 + c.name.len() + 2 * c.arguments.len())
                    .sum::<usize>()
            }
        };
        let mut w = Writer {
            data: Vec::with_capacity(capacity + self.model.len()),
            ends: Vec::new(),
            content: Vec::new(),
        };

        w.event(b"message_start", |out| {
            out.extend_from_slice(b"{\"type\":\"message_start\",\"message\":");
            self.push_message_head(out);
            out.extend_from_slice(b"],\"stop_reason\":null,\"stop_sequence\":null,");
            // Anthropic's schema requires usage here: zeros without send_usage.
            if self.send_usage {
                Self::push_usage(out, self.prompt_tokens, 1);
            } else {
                Self::push_usage(out, 0, 0);
            }
            out.extend_from_slice(b"}}");
        });
        w.event(b"ping", |out| out.extend_from_slice(b"{\"type\":\"ping\"}"));

        let mut index = 0;
        if self.thinking {
            w.block_start(index, |out| {
                out.extend_from_slice(
                    b"{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}",
                );
            });
            w.delta(index, |out| {
                out.extend_from_slice(b"{\"type\":\"thinking_delta\",\"thinking\":");
                push_str(out, THINKING);
                out.push(b'}');
            });
            w.delta(index, |out| {
                out.extend_from_slice(b"{\"type\":\"signature_delta\",\"signature\":");
                self.push_signature(out);
                out.push(b'}');
            });
            w.block_stop(index);
            index += 1;
        }
        match &self.answer {
            Answer::Text { tokens } => {
                w.block_start(index, |out| {
                    out.extend_from_slice(b"{\"type\":\"text\",\"text\":\"\"}");
                });
                for i in 0..*tokens {
                    w.delta(index, |out| {
                        out.extend_from_slice(b"{\"type\":\"text_delta\",\"text\":\"");
                        out.extend_from_slice(word(i).as_bytes());
                        if i + 1 < *tokens {
                            out.push(b' ');
                        }
                        out.extend_from_slice(b"\"}");
                    });
                }
                w.block_stop(index);
            }
            Answer::Tools(calls) => {
                for (k, call) in calls.iter().enumerate() {
                    w.block_start(index, |out| {
                        out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
                        push_tool_id(out, k);
                        out.extend_from_slice(b",\"name\":");
                        push_str(out, &call.name);
                        out.extend_from_slice(b",\"input\":{}}");
                    });
                    for fragment in render::fragments(&call.arguments) {
                        w.delta(index, |out| {
                            out.extend_from_slice(
                                b"{\"type\":\"input_json_delta\",\"partial_json\":",
                            );
                            push_str(out, fragment);
                            out.push(b'}');
                        });
                    }
                    w.block_stop(index);
                    index += 1;
                }
            }
        }

        let finish = w.event(b"message_delta", |out| {
            out.extend_from_slice(b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"");
            out.extend_from_slice(self.stop_reason());
            out.extend_from_slice(b"\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":");
            push_u64(
                out,
                if self.send_usage {
                    self.output_tokens()
                } else {
                    0
                },
            );
            out.extend_from_slice(b"}}");
        });
        w.event(b"message_stop", |out| {
            out.extend_from_slice(b"{\"type\":\"message_stop\"}");
        });

        Frames {
            data: w.data,
            ends: w.ends,
            content: ContentFrames::List(w.content),
            finish,
            // stall_first_token sleeps right after `message_start`.
            first_token: 1,
        }
    }
}

fn push_tool_id(out: &mut Vec<u8>, k: usize) {
    out.extend_from_slice(b"\"toolu_mock_");
    push_u64(out, k as u64);
    out.push(b'"');
}

/// Appends `event:` + `data:` frames to one buffer.
struct Writer {
    data: Vec<u8>,
    ends: Vec<usize>,
    /// Indexes of the `content_block_delta` frames.
    content: Vec<usize>,
}

impl Writer {
    /// Appends one event; returns its frame index.
    fn event(&mut self, name: &[u8], json: impl FnOnce(&mut Vec<u8>)) -> usize {
        self.data.extend_from_slice(b"event: ");
        self.data.extend_from_slice(name);
        self.data.extend_from_slice(b"\ndata: ");
        json(&mut self.data);
        self.data.extend_from_slice(b"\n\n");
        self.ends.push(self.data.len());
        self.ends.len() - 1
    }

    fn block_start(&mut self, index: usize, block: impl FnOnce(&mut Vec<u8>)) {
        self.event(b"content_block_start", |out| {
            out.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
            push_u64(out, index as u64);
            out.extend_from_slice(b",\"content_block\":");
            block(out);
            out.push(b'}');
        });
    }

    fn delta(&mut self, index: usize, delta: impl FnOnce(&mut Vec<u8>)) {
        let i = self.event(b"content_block_delta", |out| {
            out.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
            push_u64(out, index as u64);
            out.extend_from_slice(b",\"delta\":");
            delta(out);
            out.push(b'}');
        });
        self.content.push(i);
    }

    fn block_stop(&mut self, index: usize) {
        self.event(b"content_block_stop", |out| {
            out.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":");
            push_u64(out, index as u64);
            out.push(b'}');
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::ToolCall;

    fn reply(thinking: bool, answer: Answer) -> Reply<'static> {
        Reply {
            id: 4,
            model: "claude-\"x",
            prompt_tokens: 9,
            thinking,
            answer,
            send_usage: true,
        }
    }

    fn events(frames: &Frames) -> Vec<(String, Value)> {
        let mut start = 0;
        frames
            .ends
            .iter()
            .map(|&end| {
                let text = std::str::from_utf8(&frames.data[start..end]).unwrap();
                start = end;
                let (event, data) = text.trim_end().split_once('\n').unwrap();
                let name = event.strip_prefix("event: ").unwrap().to_owned();
                let json = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                (name, json)
            })
            .collect()
    }

    #[test]
    fn every_event_is_valid_json_named_after_its_type() {
        let tools = Answer::Tools(vec![ToolCall {
            name: "f".into(),
            arguments: r#"{"a":"mock","b":1}"#.into(),
        }]);
        for r in [
            reply(false, Answer::Text { tokens: 3 }),
            reply(true, Answer::Text { tokens: 0 }),
            reply(true, tools),
        ] {
            let frames = r.stream();
            let events = events(&frames);
            for (name, json) in &events {
                assert_eq!(json["type"], name.as_str());
            }
            assert_eq!(events[frames.finish].0, "message_delta");
            let ContentFrames::List(content) = &frames.content else {
                panic!("list expected");
            };
            for &i in content {
                assert_eq!(events[i].0, "content_block_delta");
            }
            let _: Value = serde_json::from_slice(&r.message()).unwrap();
        }
    }

    #[test]
    fn cut_index_stops_before_the_next_delta_or_message_delta() {
        let frames = reply(false, Answer::Text { tokens: 3 }).stream();
        // 0 message_start, 1 ping, 2 block start, 3..6 deltas, 6 stop, 7 message_delta.
        assert_eq!(frames.cut_index(0), 3);
        assert_eq!(frames.cut_index(2), 5);
        assert_eq!(frames.cut_index(3), 7);
        assert_eq!(frames.cut_index(99), 7);
    }

    #[test]
    fn fault_types() {
        assert_eq!(error_type(429), "rate_limit_error");
        assert_eq!(error_type(529), "overloaded_error");
        assert_eq!(error_type(503), "api_error");
        assert_eq!(error_type(401), "authentication_error");
        assert_eq!(error_type(422), "invalid_request_error");
        let v: Value =
            serde_json::from_slice(&fault_body(StatusCode::from_u16(529).unwrap())).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Overloaded")
        );
    }
}
