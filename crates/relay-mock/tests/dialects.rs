//! End-to-end tests of the Anthropic Messages and Gemini dialects: a started
//! `MockServer` driven over real HTTP/1.1 with hyper-util's legacy client.

// Helpers outside `#[test]` functions panic on purpose too: a panic is a
// failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use relay_mock::{Behavior, MockServer, Stats};
use serde_json::{Value, json};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send_raw(
    server: &MockServer,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Response<Incoming> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{}", server.addr(), path))
        .header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    client()
        .request(builder.body(Full::new(body)).unwrap())
        .await
        .unwrap()
}

async fn send(
    server: &MockServer,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> Response<Incoming> {
    send_raw(
        server,
        path,
        headers,
        Bytes::from(serde_json::to_vec(&body).unwrap()),
    )
    .await
}

async fn post(server: &MockServer, path: &str, body: Value) -> Response<Incoming> {
    send(server, path, &[], body).await
}

async fn body_bytes(resp: Response<Incoming>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

async fn json_body(resp: Response<Incoming>) -> Value {
    serde_json::from_slice(&body_bytes(resp).await).unwrap()
}

async fn wait_for(server: &MockServer, what: impl Fn(&Stats) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if what(&server.stats()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    what(&server.stats())
}

/// One SSE frame: its `event:` name (if any), its `data:` payload, the raw
/// bytes and when it was completely received.
#[derive(Debug)]
struct Sse {
    event: Option<String>,
    data: String,
    raw: String,
    at: Instant,
}

/// Reads SSE frames (separated by `\n\n` or `\r\n\r\n`) until the body
/// ends; returns the frames, whether the body ended with an error and any
/// bytes left after the last complete frame.
async fn read_sse(mut body: Incoming) -> (Vec<Sse>, bool, Vec<u8>) {
    let mut buf = Vec::<u8>::new();
    let mut frames = Vec::new();
    let errored = loop {
        match body.frame().await {
            None => break false,
            Some(Err(_)) => break true,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                let now = Instant::now();
                loop {
                    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
                    let crlf = buf
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| (p, 4));
                    let Some((pos, len)) = [lf, crlf].into_iter().flatten().min() else {
                        break;
                    };
                    let raw = String::from_utf8(buf.drain(..pos + len).collect()).unwrap();
                    let mut event = None;
                    let mut data = None;
                    for line in raw.lines().filter(|l| !l.is_empty()) {
                        if let Some(e) = line.strip_prefix("event: ") {
                            event = Some(e.to_owned());
                        } else if let Some(d) = line.strip_prefix("data: ") {
                            assert!(data.is_none(), "one data line per frame: {raw:?}");
                            data = Some(d.to_owned());
                        } else {
                            panic!("unexpected SSE line {line:?} in {raw:?}");
                        }
                    }
                    frames.push(Sse {
                        event,
                        data: data.unwrap_or_else(|| panic!("no data line: {raw:?}")),
                        raw,
                        at: now,
                    });
                }
            }
        }
    };
    (frames, errored, buf)
}

// ---------------------------------------------------------------------------
// Anthropic Messages
// ---------------------------------------------------------------------------

fn messages_body(stream: bool) -> Value {
    json!({
        "model": "claude-test",
        "max_tokens": 1024,
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Say hello please"}]}
        ],
        "stream": stream,
    })
}

fn anthropic_tools_body(stream: bool) -> Value {
    json!({
        "model": "claude-tools",
        "max_tokens": 1024,
        "stream": stream,
        "messages": [{"role": "user", "content": "Weather in Paris, and the time?"}],
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather",
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "days": {"type": "integer"},
                        "metric": {"type": "boolean"},
                        "unit": {"type": "string", "enum": ["c", "f"]},
                        "note": {"type": "string"}
                    },
                    "required": ["city", "days", "metric", "unit"]
                }
            },
            {"name": "get_time", "description": "Now", "input_schema": {"type": "object", "properties": {}}}
        ]
    })
}

fn weather_input() -> Value {
    json!({"city": "mock", "days": 1, "metric": true, "unit": "c"})
}

/// A content block reassembled from a stream.
#[derive(Debug, Default)]
struct Block {
    start: Value,
    text: String,
    thinking: String,
    signature: String,
    partial_json: Vec<String>,
}

/// A checked Anthropic stream.
#[derive(Debug)]
struct AnthropicStream {
    message_start: Value,
    blocks: Vec<Block>,
    message_delta: Value,
}

/// Checks a complete Anthropic event sequence and reassembles its blocks:
/// `message_start` first, then per block `content_block_start` / deltas /
/// `content_block_stop` with contiguous indexes, then `message_delta` and
/// `message_stop` last; `ping` may appear between blocks. Every `event:`
/// name matches its data's `type`.
fn check_anthropic(frames: &[Sse]) -> AnthropicStream {
    let events: Vec<(String, Value)> = frames
        .iter()
        .map(|f| {
            let name = f
                .event
                .clone()
                .expect("every Anthropic frame names its event");
            let data: Value = serde_json::from_str(&f.data).unwrap();
            assert_eq!(data["type"], name.as_str(), "event name matches data.type");
            (name, data)
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "message_start", "{names:?}");
    assert_eq!(names[names.len() - 1], "message_stop", "{names:?}");
    assert_eq!(names[names.len() - 2], "message_delta", "{names:?}");

    let message_start = events[0].1["message"].clone();
    let mut blocks: Vec<Block> = Vec::new();
    let mut open: Option<usize> = None;
    for (name, data) in &events[1..events.len() - 2] {
        match name.as_str() {
            "ping" => assert!(open.is_none(), "ping inside a block"),
            "content_block_start" => {
                assert!(open.is_none(), "block started inside a block: {names:?}");
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(index, blocks.len(), "contiguous block indexes");
                blocks.push(Block {
                    start: data["content_block"].clone(),
                    ..Block::default()
                });
                open = Some(index);
            }
            "content_block_delta" => {
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(Some(index), open, "delta for the open block");
                let block = &mut blocks[index];
                let delta = &data["delta"];
                match delta["type"].as_str().unwrap() {
                    "text_delta" => block.text.push_str(delta["text"].as_str().unwrap()),
                    "thinking_delta" => {
                        block.thinking.push_str(delta["thinking"].as_str().unwrap());
                    }
                    "signature_delta" => {
                        block
                            .signature
                            .push_str(delta["signature"].as_str().unwrap());
                    }
                    "input_json_delta" => block
                        .partial_json
                        .push(delta["partial_json"].as_str().unwrap().to_owned()),
                    other => panic!("unexpected delta type {other}"),
                }
            }
            "content_block_stop" => {
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(Some(index), open, "stop for the open block");
                open = None;
            }
            other => panic!("unexpected event {other} in {names:?}"),
        }
    }
    assert!(open.is_none(), "every block stopped");
    AnthropicStream {
        message_start,
        blocks,
        message_delta: events[events.len() - 2].1.clone(),
    }
}

#[tokio::test]
async fn anthropic_json_has_messages_shape() {
    let server = MockServer::start(Behavior {
        tokens: 5,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = send(
        &server,
        "/v1/messages",
        &[
            ("x-api-key", "sk-ant-test"),
            ("anthropic-version", "2023-06-01"),
        ],
        messages_body(false),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let raw = body_bytes(resp).await;
    let v: Value = serde_json::from_slice(&raw).unwrap();
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("msg_mock_"), "{id}");
    // "You are terse." (14) + "Say hello please" (16) = 30 chars -> 8 tokens.
    assert_eq!(
        v,
        json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [{"type": "text", "text": "Hello from the relay mock"}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": 8,
                "output_tokens": 5,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0
            }
        })
    );
    let raw = std::str::from_utf8(&raw).unwrap();
    assert!(raw.starts_with("{\"id\":\"msg_mock_"), "{raw}");

    // Auth headers are not checked but recorded.
    let recorded = server.requests();
    assert_eq!(recorded[0].path, "/v1/messages");
    assert_eq!(recorded[0].headers["x-api-key"], "sk-ant-test");
    assert_eq!(recorded[0].headers["anthropic-version"], "2023-06-01");

    // count_tokens agrees with input_tokens.
    let mut count = messages_body(false);
    count.as_object_mut().unwrap().remove("max_tokens");
    count.as_object_mut().unwrap().remove("stream");
    let resp = post(&server, "/v1/messages/count_tokens", count).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_body(resp).await, json!({"input_tokens": 8}));

    // Model override, x-mock-tokens and send_usage = false.
    server.set_behavior(Behavior {
        model: Some("claude-override".into()),
        send_usage: false,
        ..Behavior::default()
    });
    let resp = send(
        &server,
        "/v1/messages",
        &[("x-mock-tokens", "3")],
        messages_body(false),
    )
    .await;
    let v = json_body(resp).await;
    assert_eq!(v["model"], "claude-override");
    assert_eq!(v["content"][0]["text"], "Hello from the");
    assert!(v.get("usage").is_none());

    let stats = server.stats();
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.streams_started, 0);
}

#[tokio::test]
async fn anthropic_thinking_and_tool_use_json() {
    let server = MockServer::start(Behavior {
        tokens: 2,
        tool_calls: 3,
        ..Behavior::default()
    })
    .await
    .unwrap();

    let mut body = messages_body(false);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
    let v = json_body(post(&server, "/v1/messages", body).await).await;
    let n = v["id"].as_str().unwrap().strip_prefix("msg_mock_").unwrap();
    assert_eq!(
        v["content"],
        json!([
            {"type": "thinking", "thinking": "Let me think.", "signature": format!("EqQBmock{n:0>8}")},
            {"type": "text", "text": "Hello from"}
        ])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    // Thinking counts as output: 2 words + 3 thinking tokens.
    assert_eq!(v["usage"]["output_tokens"], 5);

    let v = json_body(post(&server, "/v1/messages", anthropic_tools_body(false)).await).await;
    assert_eq!(v["stop_reason"], "tool_use");
    let content = v["content"].as_array().unwrap();
    assert_eq!(content.len(), 3, "text-free: tool_use blocks only");
    let names: Vec<&str> = content
        .iter()
        .map(|b| {
            assert_eq!(b["type"], "tool_use");
            b["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, ["get_weather", "get_time", "get_weather"]);
    for (k, block) in content.iter().enumerate() {
        assert_eq!(block["id"], format!("toolu_mock_{k}"));
    }
    assert_eq!(content[0]["input"], weather_input());
    assert_eq!(content[1]["input"], json!({}));

    // After a tool_result the mock answers with text.
    let mut follow_up = anthropic_tools_body(false);
    follow_up["messages"] = json!([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [content[0].clone()]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_mock_0", "content": "sunny"}
        ]}
    ]);
    let v = json_body(post(&server, "/v1/messages", follow_up).await).await;
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["content"][0]["type"], "text");

    // x-mock-tool-calls: 0 forces text.
    let resp = send(
        &server,
        "/v1/messages",
        &[("x-mock-tool-calls", "0")],
        anthropic_tools_body(false),
    )
    .await;
    assert_eq!(json_body(resp).await["stop_reason"], "end_turn");
}

#[tokio::test]
async fn anthropic_text_stream_has_the_event_sequence() {
    let server = MockServer::start(Behavior {
        tokens: 4,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(&server, "/v1/messages", messages_body(true)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(resp.headers().get("content-length").is_none());
    let (frames, errored, rest) = read_sse(resp.into_body()).await;
    assert!(!errored);
    assert!(rest.is_empty());
    assert!(frames.iter().all(|f| f.data != "[DONE]"));
    assert!(frames[0].raw.starts_with("event: message_start\ndata: {"));

    let s = check_anthropic(&frames);
    let id = s.message_start["id"].as_str().unwrap();
    assert!(id.starts_with("msg_mock_"));
    assert_eq!(s.message_start["type"], "message");
    assert_eq!(s.message_start["role"], "assistant");
    assert_eq!(s.message_start["model"], "claude-test");
    assert_eq!(s.message_start["content"], json!([]));
    assert_eq!(s.message_start["stop_reason"], Value::Null);
    assert_eq!(s.message_start["usage"]["input_tokens"], 8);
    assert_eq!(s.message_start["usage"]["output_tokens"], 1);

    assert_eq!(s.blocks.len(), 1);
    assert_eq!(s.blocks[0].start, json!({"type": "text", "text": ""}));
    assert_eq!(s.blocks[0].text, "Hello from the relay");
    let text_deltas = frames
        .iter()
        .filter(|f| f.data.contains("\"text_delta\""))
        .count();
    assert_eq!(text_deltas, 4, "one text_delta per token");

    assert_eq!(
        s.message_delta,
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": 4}})
    );
    assert_eq!(frames.last().unwrap().data, r#"{"type":"message_stop"}"#);

    assert!(wait_for(&server, |s| s.streams_completed == 1).await);
    let stats = server.stats();
    assert_eq!(stats.streams_started, 1);
    assert_eq!(stats.streams_cancelled, 0);

    // send_usage = false: zeros where the schema needs a usage object.
    server.set_behavior(Behavior {
        tokens: 2,
        send_usage: false,
        ..Behavior::default()
    });
    let resp = post(&server, "/v1/messages", messages_body(true)).await;
    let (frames, _, _) = read_sse(resp.into_body()).await;
    let s = check_anthropic(&frames);
    assert_eq!(s.message_start["usage"]["input_tokens"], 0);
    assert_eq!(s.message_start["usage"]["output_tokens"], 0);
    assert_eq!(s.message_delta["usage"], json!({"output_tokens": 0}));
}

#[tokio::test]
async fn anthropic_thinking_stream() {
    let server = MockServer::start(Behavior {
        tokens: 3,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let mut body = messages_body(true);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
    let resp = post(&server, "/v1/messages", body).await;
    let (frames, errored, _) = read_sse(resp.into_body()).await;
    assert!(!errored);
    let s = check_anthropic(&frames);
    let n = s.message_start["id"]
        .as_str()
        .unwrap()
        .strip_prefix("msg_mock_")
        .unwrap()
        .to_owned();
    assert_eq!(s.blocks.len(), 2);
    assert_eq!(s.blocks[0].start["type"], "thinking");
    assert_eq!(s.blocks[0].thinking, "Let me think.");
    assert_eq!(s.blocks[0].signature, format!("EqQBmock{n:0>8}"));
    assert!(s.blocks[0].text.is_empty());
    assert_eq!(s.blocks[1].start["type"], "text");
    assert_eq!(s.blocks[1].text, "Hello from the");
    assert_eq!(s.message_delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(s.message_delta["usage"]["output_tokens"], 6);

    // thinking_delta comes before signature_delta.
    let kinds: Vec<&str> = frames
        .iter()
        .filter(|f| f.event.as_deref() == Some("content_block_delta"))
        .map(|f| {
            if f.data.contains("thinking_delta") {
                "thinking"
            } else if f.data.contains("signature_delta") {
                "signature"
            } else {
                "text"
            }
        })
        .collect();
    assert_eq!(kinds, ["thinking", "signature", "text", "text", "text"]);
}

#[tokio::test]
async fn anthropic_tool_use_stream() {
    let server = MockServer::start(Behavior {
        tool_calls: 2,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(&server, "/v1/messages", anthropic_tools_body(true)).await;
    let (frames, errored, _) = read_sse(resp.into_body()).await;
    assert!(!errored);
    let s = check_anthropic(&frames);
    assert_eq!(s.blocks.len(), 2);
    let expected = [("get_weather", weather_input()), ("get_time", json!({}))];
    for (k, (block, (name, input))) in s.blocks.iter().zip(expected).enumerate() {
        assert_eq!(
            block.start,
            json!({"type": "tool_use", "id": format!("toolu_mock_{k}"), "name": name, "input": {}})
        );
        assert!(block.text.is_empty());
        let reassembled: Value = serde_json::from_str(&block.partial_json.concat()).unwrap();
        assert_eq!(reassembled, input);
    }
    assert_eq!(
        s.blocks[0].partial_json.len(),
        3,
        "input arrives in about 3 fragments"
    );
    assert_eq!(s.message_delta["delta"]["stop_reason"], "tool_use");
    assert!(s.message_delta["usage"]["output_tokens"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn anthropic_errors_and_faults_use_its_error_shape() {
    let server = MockServer::start(Behavior::default()).await.unwrap();
    let check = |v: &Value, kind: &str| {
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    };

    let cases = [
        (
            json!({"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
        (json!({"model": "m", "max_tokens": 10}), "messages"),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            "max_tokens",
        ),
    ];
    for (body, field) in cases {
        let resp = post(&server, "/v1/messages", body).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let v = json_body(resp).await;
        check(&v, "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains(field));
    }
    let resp = send_raw(
        &server,
        "/v1/messages",
        &[],
        Bytes::from_static(b"{not json"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    check(&json_body(resp).await, "invalid_request_error");

    let resp = post(&server, "/v1/messages/nothing", messages_body(false)).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    check(&json_body(resp).await, "not_found_error");

    // Faults: the server-wide status with Retry-After ...
    server.set_behavior(Behavior {
        status: Some(429),
        retry_after: Some("7".into()),
        ..Behavior::default()
    });
    let resp = post(&server, "/v1/messages", messages_body(true)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v = json_body(resp).await;
    check(&v, "rate_limit_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("429"));
    // ... count_tokens too ...
    let resp = post(&server, "/v1/messages/count_tokens", messages_body(false)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    check(&json_body(resp).await, "rate_limit_error");

    // ... and per-request overrides.
    server.set_behavior(Behavior::default());
    for (status, kind) in [
        ("529", "overloaded_error"),
        ("500", "api_error"),
        ("503", "api_error"),
        ("401", "authentication_error"),
        ("403", "permission_error"),
        ("404", "not_found_error"),
        ("413", "request_too_large"),
    ] {
        let resp = send(
            &server,
            "/v1/messages",
            &[("x-mock-status", status), ("x-mock-retry-after", "3")],
            messages_body(false),
        )
        .await;
        assert_eq!(resp.status().as_str(), status);
        assert_eq!(resp.headers()["retry-after"], "3");
        check(&json_body(resp).await, kind);
    }

    // fail_first counts Anthropic requests like any other.
    server.set_behavior(Behavior {
        status: Some(529),
        fail_first: 1,
        ..Behavior::default()
    });
    let first = post(&server, "/v1/messages", messages_body(false)).await;
    assert_eq!(first.status().as_u16(), 529);
    let second = post(&server, "/v1/messages", messages_body(false)).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(json_body(second).await["type"], "message");
}

#[tokio::test]
async fn anthropic_cut_after_and_cancel() {
    let server = MockServer::start(Behavior {
        tokens: 10,
        cut_after: Some(3),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(&server, "/v1/messages", messages_body(true)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (frames, errored, _) = read_sse(resp.into_body()).await;
    assert!(errored, "the client must see an incomplete body");
    let names: Vec<&str> = frames.iter().filter_map(|f| f.event.as_deref()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta"
        ]
    );

    // Header override; a cut after every delta still never sends message_delta.
    server.set_behavior(Behavior {
        tokens: 2,
        ..Behavior::default()
    });
    let resp = send(
        &server,
        "/v1/messages",
        &[("x-mock-cut-after", "5")],
        messages_body(true),
    )
    .await;
    let (frames, errored, _) = read_sse(resp.into_body()).await;
    assert!(errored);
    let names: Vec<&str> = frames.iter().filter_map(|f| f.event.as_deref()).collect();
    assert_eq!(names.last(), Some(&"content_block_stop"));
    assert!(!names.contains(&"message_delta"));

    let stats = server.stats();
    assert_eq!(stats.streams_started, 2);
    assert_eq!(stats.streams_completed, 0);
    assert_eq!(stats.streams_cancelled, 0, "a cut is not a client cancel");

    // A client that goes away mid-stream is counted as a cancel.
    server.set_behavior(Behavior {
        tokens: 500,
        chunk_interval: Duration::from_millis(10),
        ..Behavior::default()
    });
    let resp = post(&server, "/v1/messages", messages_body(true)).await;
    let mut body = resp.into_body();
    let mut received = Vec::new();
    while received.windows(10).filter(|w| w == b"text_delta").count() < 3 {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    drop(body);
    assert!(
        wait_for(&server, |s| s.streams_cancelled == 1).await,
        "stats: {:?}",
        server.stats()
    );
    assert_eq!(server.stats().streams_completed, 0);

    // The server keeps serving.
    let resp = post(&server, "/v1/messages", messages_body(false)).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn anthropic_stream_pacing_and_first_token_stall() {
    let server = MockServer::start(Behavior {
        tokens: 3,
        stall_first_token: Some(Duration::from_millis(200)),
        chunk_interval: Duration::from_millis(30),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let resp = post(&server, "/v1/messages", messages_body(true)).await;
    let (frames, errored, _) = read_sse(resp.into_body()).await;
    assert!(!errored);
    check_anthropic(&frames);
    // message_start right away, then the stall.
    assert_eq!(frames[0].event.as_deref(), Some("message_start"));
    assert!(frames[0].at.duration_since(started) < Duration::from_millis(150));
    assert!(frames[1].at.duration_since(frames[0].at) >= Duration::from_millis(180));
    let deltas: Vec<&Sse> = frames
        .iter()
        .filter(|f| f.event.as_deref() == Some("content_block_delta"))
        .collect();
    for pair in deltas.windows(2) {
        assert!(pair[1].at.duration_since(pair[0].at) >= Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Gemini
// ---------------------------------------------------------------------------

fn gemini_body() -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Say hello please"}]}
        ],
        "generationConfig": {"temperature": 0.2}
    })
}

fn gemini_tools_body() -> Value {
    json!({
        "contents": [{"role": "user", "parts": [{"text": "Weather in Paris, and the time?"}]}],
        "tools": [{"functionDeclarations": [
            {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {
                    "type": "OBJECT",
                    "properties": {
                        "city": {"type": "STRING"},
                        "days": {"type": "INTEGER"},
                        "metric": {"type": "BOOLEAN"},
                        "unit": {"type": "STRING", "enum": ["c", "f"]},
                        "note": {"type": "STRING"}
                    },
                    "required": ["city", "days", "metric", "unit"]
                }
            },
            {"name": "get_time", "description": "Now"}
        ]}]
    })
}

const FLASH: &str = "/v1beta/models/gemini-2.0-flash";

#[tokio::test]
async fn gemini_json_has_generate_content_shape() {
    let server = MockServer::start(Behavior {
        tokens: 5,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = send(
        &server,
        &format!("{FLASH}:generateContent"),
        &[("x-goog-api-key", "goog-test")],
        gemini_body(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let raw = body_bytes(resp).await;
    let v: Value = serde_json::from_slice(&raw).unwrap();
    let id = v["responseId"].as_str().unwrap();
    assert!(id.starts_with("mock-"), "{id}");
    // "You are terse." (14) + "Say hello please" (16) = 30 chars -> 8 tokens.
    assert_eq!(
        v,
        json!({
            "candidates": [{
                "content": {"parts": [{"text": "Hello from the relay mock"}], "role": "model"},
                "finishReason": "STOP",
                "index": 0
            }],
            "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 5, "totalTokenCount": 13},
            "modelVersion": "gemini-2.0-flash",
            "responseId": id
        })
    );
    assert!(
        std::str::from_utf8(&raw)
            .unwrap()
            .starts_with("{\"candidates\":")
    );

    // The key is not checked but recorded, header or query.
    let resp = send(
        &server,
        "/v1/models/gemini-1.5-pro:generateContent?key=query-key",
        &[],
        gemini_body(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_body(resp).await["modelVersion"], "gemini-1.5-pro");
    let recorded = server.requests();
    assert_eq!(recorded[0].headers["x-goog-api-key"], "goog-test");
    assert_eq!(recorded[0].query, None);
    assert_eq!(
        recorded[1].path,
        "/v1/models/gemini-1.5-pro:generateContent"
    );
    assert_eq!(recorded[1].query.as_deref(), Some("key=query-key"));

    // snake_case fields (Google's curl examples) are accepted too.
    let body = json!({
        "system_instruction": {"parts": [{"text": "You are terse."}]},
        "contents": [{"role": "user", "parts": [{"text": "Say hello please"}]}]
    });
    let v = json_body(post(&server, &format!("{FLASH}:generateContent"), body).await).await;
    assert_eq!(v["usageMetadata"]["promptTokenCount"], 8);

    // countTokens agrees with promptTokenCount.
    let resp = post(&server, &format!("{FLASH}:countTokens"), gemini_body()).await;
    assert_eq!(json_body(resp).await, json!({"totalTokens": 8}));

    // Model override, x-mock-tokens and send_usage = false.
    server.set_behavior(Behavior {
        model: Some("gemini-override".into()),
        send_usage: false,
        ..Behavior::default()
    });
    let resp = send(
        &server,
        &format!("{FLASH}:generateContent"),
        &[("x-mock-tokens", "2")],
        gemini_body(),
    )
    .await;
    let v = json_body(resp).await;
    assert_eq!(v["modelVersion"], "gemini-override");
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        "Hello from"
    );
    assert!(v.get("usageMetadata").is_none());
}

/// Checks the chunks of a Gemini text stream; returns the reassembled text.
fn check_gemini_text_chunks(chunks: &[Value], model: &str, prompt: u64, tokens: u64) -> String {
    assert_eq!(chunks.len() as u64, tokens, "one chunk per token");
    let id = chunks[0]["responseId"].as_str().unwrap();
    let mut text = String::new();
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        assert_eq!(c["responseId"], id);
        assert_eq!(c["modelVersion"], model);
        let candidate = &c["candidates"][0];
        assert_eq!(candidate["index"], 0);
        assert_eq!(candidate["content"]["role"], "model");
        let parts = candidate["content"]["parts"].as_array().unwrap();
        assert_eq!(parts.len(), 1);
        text.push_str(parts[0]["text"].as_str().unwrap());
        if last {
            assert_eq!(candidate["finishReason"], "STOP");
            assert_eq!(
                c["usageMetadata"],
                json!({"promptTokenCount": prompt, "candidatesTokenCount": tokens,
                       "totalTokenCount": prompt + tokens})
            );
        } else {
            assert!(candidate.get("finishReason").is_none(), "{c}");
            assert_eq!(c["usageMetadata"], json!({"promptTokenCount": prompt}));
        }
    }
    text
}

#[tokio::test]
async fn gemini_sse_stream() {
    let server = MockServer::start(Behavior {
        tokens: 4,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(
        &server,
        &format!("{FLASH}:streamGenerateContent?alt=sse"),
        gemini_body(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (frames, errored, rest) = read_sse(resp.into_body()).await;
    assert!(!errored);
    assert!(rest.is_empty());
    for f in &frames {
        assert!(f.event.is_none());
        assert!(f.raw.starts_with("data: {"), "{:?}", f.raw);
        assert!(f.raw.ends_with("}\r\n\r\n"), "CRLF framing: {:?}", f.raw);
        assert_ne!(f.data, "[DONE]");
    }
    let chunks: Vec<Value> = frames
        .iter()
        .map(|f| serde_json::from_str(&f.data).unwrap())
        .collect();
    let text = check_gemini_text_chunks(&chunks, "gemini-2.0-flash", 8, 4);
    assert_eq!(text, "Hello from the relay");
    assert!(wait_for(&server, |s| s.streams_completed == 1).await);

    // The v1 path, with the model echoed from the path.
    let resp = post(
        &server,
        "/v1/models/gemini-other:streamGenerateContent?alt=sse&key=k",
        gemini_body(),
    )
    .await;
    let (frames, _, _) = read_sse(resp.into_body()).await;
    let chunks: Vec<Value> = frames
        .iter()
        .map(|f| serde_json::from_str(&f.data).unwrap())
        .collect();
    check_gemini_text_chunks(&chunks, "gemini-other", 8, 4);

    // send_usage = false: no usageMetadata at all.
    server.set_behavior(Behavior {
        tokens: 2,
        send_usage: false,
        ..Behavior::default()
    });
    let resp = post(
        &server,
        &format!("{FLASH}:streamGenerateContent?alt=sse"),
        gemini_body(),
    )
    .await;
    let (frames, _, _) = read_sse(resp.into_body()).await;
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().all(|f| !f.data.contains("usageMetadata")));
    assert!(frames[1].data.contains("\"finishReason\":\"STOP\""));
}

#[tokio::test]
async fn gemini_stream_without_alt_sse_is_a_json_array() {
    let server = MockServer::start(Behavior {
        tokens: 3,
        chunk_interval: Duration::from_millis(20),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(
        &server,
        &format!("{FLASH}:streamGenerateContent"),
        gemini_body(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().get("content-length").is_none());
    // Elements arrive one by one.
    let mut body = resp.into_body();
    let mut pieces = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            pieces.push((data, Instant::now()));
        }
    }
    assert!(pieces.len() >= 3, "streamed, not buffered");
    assert!(
        pieces.last().unwrap().1.duration_since(pieces[0].1) >= Duration::from_millis(35),
        "paced"
    );
    let all: Vec<u8> = pieces.iter().flat_map(|(d, _)| d.to_vec()).collect();
    assert_eq!(all.first(), Some(&b'['));
    assert_eq!(all.last(), Some(&b']'));
    let v: Value = serde_json::from_slice(&all).unwrap();
    let text = check_gemini_text_chunks(v.as_array().unwrap(), "gemini-2.0-flash", 8, 3);
    assert_eq!(text, "Hello from the");
    assert!(wait_for(&server, |s| s.streams_completed == 1).await);
}

#[tokio::test]
async fn gemini_function_calls() {
    let server = MockServer::start(Behavior {
        tool_calls: 3,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let v = json_body(
        post(
            &server,
            &format!("{FLASH}:generateContent"),
            gemini_tools_body(),
        )
        .await,
    )
    .await;
    let candidate = &v["candidates"][0];
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(candidate["content"]["role"], "model");
    let parts = candidate["content"]["parts"].as_array().unwrap();
    assert_eq!(
        parts,
        &[
            json!({"functionCall": {"name": "get_weather", "args": weather_input()}}),
            json!({"functionCall": {"name": "get_time", "args": {}}}),
            json!({"functionCall": {"name": "get_weather", "args": weather_input()}}),
        ]
    );
    assert!(v["usageMetadata"]["candidatesTokenCount"].as_u64().unwrap() >= 1);

    // Streamed: the calls come whole in the one, final frame.
    let resp = send(
        &server,
        &format!("{FLASH}:streamGenerateContent?alt=sse"),
        &[("x-mock-tool-calls", "2")],
        gemini_tools_body(),
    )
    .await;
    let (frames, errored, _) = read_sse(resp.into_body()).await;
    assert!(!errored);
    assert_eq!(frames.len(), 1);
    let chunk: Value = serde_json::from_str(&frames[0].data).unwrap();
    assert_eq!(chunk["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        chunk["candidates"][0]["content"]["parts"],
        json!([
            {"functionCall": {"name": "get_weather", "args": weather_input()}},
            {"functionCall": {"name": "get_time", "args": {}}}
        ])
    );
    assert!(chunk["usageMetadata"]["totalTokenCount"].as_u64().unwrap() > 0);

    // After a functionResponse the mock answers with text.
    let mut follow_up = gemini_tools_body();
    follow_up["contents"] = json!([
        {"role": "user", "parts": [{"text": "Weather?"}]},
        {"role": "model", "parts": [parts[0].clone()]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"sky": "sunny"}}}
        ]}
    ]);
    let v = json_body(post(&server, &format!("{FLASH}:generateContent"), follow_up).await).await;
    assert!(v["candidates"][0]["content"]["parts"][0]["text"].is_string());

    // snake_case tool declarations, as in Google's curl examples.
    let body = json!({
        "contents": [{"role": "user", "parts": [{"text": "time?"}]}],
        "tools": [{"function_declarations": [{"name": "get_time"}]}]
    });
    let v = json_body(post(&server, &format!("{FLASH}:generateContent"), body).await).await;
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
        "get_time"
    );
}

#[tokio::test]
async fn gemini_errors_and_faults_use_its_error_shape() {
    let server = MockServer::start(Behavior::default()).await.unwrap();
    let check = |v: &Value, code: u16, status: &str| {
        assert_eq!(v["error"]["code"], code, "{v}");
        assert_eq!(v["error"]["status"], status, "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    };
    let path = format!("{FLASH}:generateContent");

    for body in [
        json!({}),
        json!({"contents": []}),
        json!({"contents": "nope"}),
    ] {
        let resp = post(&server, &path, body).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        check(&json_body(resp).await, 400, "INVALID_ARGUMENT");
    }
    let resp = send_raw(&server, &path, &[], Bytes::from_static(b"{not json")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    check(&json_body(resp).await, 400, "INVALID_ARGUMENT");

    let resp = post(&server, &format!("{FLASH}:embedEverything"), gemini_body()).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    check(&json_body(resp).await, 404, "NOT_FOUND");

    server.set_behavior(Behavior {
        status: Some(429),
        retry_after: Some("7".into()),
        ..Behavior::default()
    });
    let resp = post(
        &server,
        &format!("{FLASH}:streamGenerateContent?alt=sse"),
        gemini_body(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v = json_body(resp).await;
    check(&v, 429, "RESOURCE_EXHAUSTED");
    assert_eq!(
        v["error"]["details"],
        json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}])
    );

    server.set_behavior(Behavior::default());
    for (status, name) in [
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
    ] {
        let code = status.to_string();
        let resp = send(
            &server,
            &path,
            &[("x-mock-status", &code), ("x-mock-retry-after", "2")],
            gemini_body(),
        )
        .await;
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()["retry-after"], "2");
        check(&json_body(resp).await, status, name);
    }
}

#[tokio::test]
async fn gemini_cut_after_and_cancel() {
    let server = MockServer::start(Behavior {
        tokens: 10,
        cut_after: Some(3),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(
        &server,
        &format!("{FLASH}:streamGenerateContent?alt=sse"),
        gemini_body(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (frames, errored, _) = read_sse(resp.into_body()).await;
    assert!(errored, "the client must see an incomplete body");
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|f| !f.data.contains("finishReason")));

    // A cut_after beyond the answer still withholds the finishing chunk.
    server.set_behavior(Behavior {
        tokens: 2,
        ..Behavior::default()
    });
    let resp = send(
        &server,
        &format!("{FLASH}:streamGenerateContent"),
        &[("x-mock-cut-after", "9")],
        gemini_body(),
    )
    .await;
    let mut body = resp.into_body();
    let mut received = Vec::new();
    let errored = loop {
        match body.frame().await {
            None => break false,
            Some(Err(_)) => break true,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    received.extend_from_slice(&data);
                }
            }
        }
    };
    assert!(errored);
    let received = String::from_utf8(received).unwrap();
    assert!(received.starts_with("[{"));
    assert!(!received.contains("finishReason"));

    let stats = server.stats();
    assert_eq!(stats.streams_started, 2);
    assert_eq!(stats.streams_completed, 0);
    assert_eq!(stats.streams_cancelled, 0, "a cut is not a client cancel");

    // A client that goes away mid-stream is counted as a cancel.
    server.set_behavior(Behavior {
        tokens: 500,
        chunk_interval: Duration::from_millis(10),
        ..Behavior::default()
    });
    let resp = post(
        &server,
        &format!("{FLASH}:streamGenerateContent?alt=sse"),
        gemini_body(),
    )
    .await;
    let mut body = resp.into_body();
    let mut received = Vec::new();
    while received.windows(6).filter(|w| w == b"data: ").count() < 3 {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    drop(body);
    assert!(
        wait_for(&server, |s| s.streams_cancelled == 1).await,
        "stats: {:?}",
        server.stats()
    );
    assert_eq!(server.stats().streams_completed, 0);
}

#[tokio::test]
async fn gemini_stall_first_token_sends_the_head_first() {
    let server = MockServer::start(Behavior {
        tokens: 2,
        stall_first_token: Some(Duration::from_millis(200)),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let resp = post(
        &server,
        &format!("{FLASH}:streamGenerateContent?alt=sse"),
        gemini_body(),
    )
    .await;
    let head = started.elapsed();
    assert!(head < Duration::from_millis(150), "head took {head:?}");
    let (frames, errored, _) = read_sse(resp.into_body()).await;
    assert!(!errored);
    assert_eq!(frames.len(), 2);
    assert!(frames[0].at.duration_since(started) >= Duration::from_millis(180));
}
