//! End-to-end tests: a started `MockServer` driven over real HTTP/1.1 with
//! hyper-util's legacy client.

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
use relay_mock::{Behavior, MockServer};
use serde_json::{Value, json};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    server: &MockServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Response<Incoming> {
    let mut builder =
        Request::builder()
            .method(method)
            .uri(format!("http://{}{}", server.addr(), path));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let body = match body {
        Some(v) => {
            builder = builder.header("content-type", "application/json");
            Full::new(Bytes::from(serde_json::to_vec(&v).unwrap()))
        }
        None => Full::new(Bytes::new()),
    };
    client().request(builder.body(body).unwrap()).await.unwrap()
}

async fn post(server: &MockServer, path: &str, body: Value) -> Response<Incoming> {
    send(server, Method::POST, path, &[], Some(body)).await
}

async fn json_body(resp: Response<Incoming>) -> Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn chat_body(stream: bool, include_usage: bool) -> Value {
    let mut body = json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello please"}]}
        ],
        "stream": stream,
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// An SSE frame with the time it was completely received.
struct Event {
    data: String,
    at: Instant,
}

/// Reads SSE frames until the body ends; returns the frames and whether the
/// body ended with an error.
async fn read_events(mut body: Incoming) -> (Vec<Event>, bool) {
    let mut buf = Vec::<u8>::new();
    let mut events = Vec::new();
    loop {
        match body.frame().await {
            None => return (events, false),
            Some(Err(_)) => return (events, true),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                let now = Instant::now();
                while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
                    let raw: Vec<u8> = buf.drain(..pos + 2).collect();
                    let text = String::from_utf8(raw).unwrap();
                    let data = text
                        .trim_end()
                        .strip_prefix("data: ")
                        .unwrap_or_else(|| panic!("not an SSE data frame: {text:?}"))
                        .to_owned();
                    events.push(Event { data, at: now });
                }
            }
        }
    }
}

fn parse_chunks(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .take_while(|e| e.data != "[DONE]")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect()
}

async fn wait_for(server: &MockServer, what: impl Fn(&relay_mock::Stats) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if what(&server.stats()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    what(&server.stats())
}

#[tokio::test]
async fn json_completion_has_openai_shape_and_usage() {
    let server = MockServer::start(Behavior {
        tokens: 5,
        ..Behavior::default()
    })
    .await
    .unwrap();
    assert!(server.base_url().starts_with("http://127.0.0.1:"));
    assert!(server.base_url().ends_with("/v1"));

    let resp = post(&server, "/v1/chat/completions", chat_body(false, false)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v = json_body(resp).await;
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["system_fingerprint"], Value::Null);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(content, "Hello from the relay mock");
    assert_eq!(content.split(' ').count(), 5);
    // "You are terse." (14) + "Say hello please" (16) = 30 chars -> 8 tokens.
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13})
    );

    // Exact key order on the wire, as OpenAI sends it.
    let resp = post(&server, "/v1/chat/completions", chat_body(false, false)).await;
    let raw = resp.into_body().collect().await.unwrap().to_bytes();
    let raw = std::str::from_utf8(&raw).unwrap();
    assert!(raw.starts_with("{\"id\":\"chatcmpl-mock-"), "{raw}");
    assert!(
        raw.ends_with("\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":5,\"total_tokens\":13},\"system_fingerprint\":null}"),
        "{raw}"
    );

    // Model override, send_usage = false and x-mock-tokens.
    server.set_behavior(Behavior {
        model: Some("mock-x".into()),
        send_usage: false,
        ..Behavior::default()
    });
    let resp = send(
        &server,
        Method::POST,
        "/v1/chat/completions",
        &[("x-mock-tokens", "3")],
        Some(chat_body(false, false)),
    )
    .await;
    let v = json_body(resp).await;
    assert_eq!(v["model"], "mock-x");
    assert!(v.get("usage").is_none());
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from the");

    let stats = server.stats();
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.streams_started, 0);
}

#[tokio::test]
async fn invalid_requests_get_openai_errors() {
    let server = MockServer::start(Behavior::default()).await.unwrap();
    let cases = [
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "m"}),
        json!({"model": "m", "messages": "nope"}),
    ];
    for body in cases {
        let resp = post(&server, "/v1/chat/completions", body).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let v = json_body(resp).await;
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], Value::Null);
        assert_eq!(v["error"]["code"], Value::Null);
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }

    let req = Request::post(format!("{}/chat/completions", server.base_url()))
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_body(resp).await["error"]["type"],
        "invalid_request_error"
    );

    let resp = send(&server, Method::GET, "/v2/nothing", &[], None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "unknown_url");
}

#[tokio::test]
async fn models_lists_the_mock_model() {
    let server = MockServer::start(Behavior::default()).await.unwrap();
    let resp = send(&server, Method::GET, "/v1/models", &[], None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        json_body(resp).await,
        json!({"object": "list", "data": [
            {"id": "mock-model", "object": "model", "created": 0, "owned_by": "relay-mock"}
        ]})
    );
}

#[tokio::test]
async fn stream_without_usage_has_openai_frame_sequence() {
    let server = MockServer::start(Behavior {
        tokens: 4,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(&server, "/v1/chat/completions", chat_body(true, false)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(resp.headers().get("content-length").is_none());
    let (events, errored) = read_events(resp.into_body()).await;
    assert!(!errored);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks = parse_chunks(&events);
    // role + 4 content + finish.
    assert_eq!(chunks.len(), 6);
    assert_eq!(events.len(), 7);

    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-mock-"));
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-test");
        assert_eq!(c["system_fingerprint"], Value::Null);
        assert!(
            c.get("usage").is_none(),
            "no usage key without include_usage"
        );
    }
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
                "logprobs": null, "finish_reason": null}])
    );
    let text: String = chunks[1..5]
        .iter()
        .map(|c| {
            assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "Hello from the relay");
    assert_eq!(
        chunks[1]["choices"][0]["delta"],
        json!({"content": "Hello "})
    );
    assert_eq!(
        chunks[5]["choices"],
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])
    );

    assert!(wait_for(&server, |s| s.streams_completed == 1).await);
    let stats = server.stats();
    assert_eq!(stats.streams_started, 1);
    assert_eq!(stats.streams_cancelled, 0);
}

#[tokio::test]
async fn stream_with_include_usage_ends_with_usage_chunk() {
    let server = MockServer::start(Behavior {
        tokens: 3,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(&server, "/v1/chat/completions", chat_body(true, true)).await;
    let (events, errored) = read_events(resp.into_body()).await;
    assert!(!errored);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks = parse_chunks(&events);
    // role + 3 content + finish + usage.
    assert_eq!(chunks.len(), 6);
    for c in &chunks[..5] {
        assert_eq!(c["usage"], Value::Null);
        assert!(
            c.get("usage").is_some(),
            "usage:null present on every chunk"
        );
    }
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[5];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11})
    );

    // send_usage = false suppresses usage even when asked.
    server.set_behavior(Behavior {
        tokens: 3,
        send_usage: false,
        ..Behavior::default()
    });
    let resp = post(&server, "/v1/chat/completions", chat_body(true, true)).await;
    let (events, _) = read_events(resp.into_body()).await;
    let chunks = parse_chunks(&events);
    assert_eq!(chunks.len(), 5);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn stream_is_paced_frame_by_frame() {
    let server = MockServer::start(Behavior {
        tokens: 5,
        chunk_interval: Duration::from_millis(20),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let resp = post(&server, "/v1/chat/completions", chat_body(true, false)).await;
    let (events, errored) = read_events(resp.into_body()).await;
    assert!(!errored);
    assert_eq!(events.len(), 8);
    let first_content = events[1].at;
    let done = events.last().unwrap().at;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    // 4 gaps of 20 ms between the 5 content chunks.
    assert!(
        done.duration_since(first_content) >= Duration::from_millis(70),
        "first content chunk must arrive well before the end: {:?}",
        done.duration_since(first_content)
    );
    assert!(
        first_content.duration_since(started) < Duration::from_millis(60),
        "first content chunk took {:?}",
        first_content.duration_since(started)
    );
    // Content frames arrive one by one.
    for pair in events[1..6].windows(2) {
        assert!(pair[1].at.duration_since(pair[0].at) >= Duration::from_millis(10));
    }
}

#[tokio::test]
async fn fault_status_with_retry_after() {
    let server = MockServer::start(Behavior {
        status: Some(429),
        retry_after: Some("7".into()),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(&server, "/v1/chat/completions", chat_body(false, false)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "7");
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"].as_str().unwrap().contains("429"));
    assert_eq!(v["error"]["param"], Value::Null);

    // Per-request header override.
    server.set_behavior(Behavior::default());
    let resp = send(
        &server,
        Method::POST,
        "/v1/chat/completions",
        &[("x-mock-status", "503"), ("x-mock-retry-after", "2")],
        Some(chat_body(true, false)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "2");
    let v = json_body(resp).await;
    assert_eq!(v["error"]["type"], "server_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("503"));

    // Bad override values are ignored.
    let resp = send(
        &server,
        Method::POST,
        "/v1/chat/completions",
        &[("x-mock-status", "banana"), ("x-mock-tokens", "-3")],
        Some(chat_body(false, false)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_body(resp).await["usage"]["completion_tokens"], 16);
}

#[tokio::test]
async fn fail_first_only_fails_the_first_requests() {
    let server = MockServer::start(Behavior {
        status: Some(500),
        fail_first: 1,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let first = post(&server, "/v1/chat/completions", chat_body(false, false)).await;
    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(first.headers().get("retry-after").is_none());
    assert_eq!(json_body(first).await["error"]["type"], "server_error");
    let second = post(&server, "/v1/chat/completions", chat_body(false, false)).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(json_body(second).await["object"], "chat.completion");
    let third = post(&server, "/v1/chat/completions", chat_body(false, false)).await;
    assert_eq!(third.status(), StatusCode::OK);

    // Installing a behavior restarts the count.
    server.set_behavior(Behavior {
        status: Some(502),
        fail_first: 2,
        ..Behavior::default()
    });
    for expected in [502, 502, 200] {
        let resp = post(&server, "/v1/chat/completions", chat_body(false, false)).await;
        assert_eq!(resp.status().as_u16(), expected);
    }
}

#[tokio::test]
async fn cut_after_ends_the_body_abruptly() {
    let server = MockServer::start(Behavior {
        tokens: 10,
        cut_after: Some(3),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(&server, "/v1/chat/completions", chat_body(true, true)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (events, errored) = read_events(resp.into_body()).await;
    assert!(errored, "the client must see an incomplete body");
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    let chunks = parse_chunks(&events);
    // role + exactly 3 content chunks, no finish chunk.
    assert_eq!(chunks.len(), 4);
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["finish_reason"] == Value::Null)
    );

    // Header override on an otherwise normal server.
    server.set_behavior(Behavior::default());
    let resp = send(
        &server,
        Method::POST,
        "/v1/chat/completions",
        &[("x-mock-cut-after", "1")],
        Some(chat_body(true, false)),
    )
    .await;
    let (events, errored) = read_events(resp.into_body()).await;
    assert!(errored);
    assert_eq!(events.len(), 2);

    let stats = server.stats();
    assert_eq!(stats.streams_started, 2);
    assert_eq!(stats.streams_completed, 0);
    assert_eq!(stats.streams_cancelled, 0, "a cut is not a client cancel");

    // The server keeps serving after the cut.
    let resp = post(&server, "/v1/chat/completions", chat_body(false, false)).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn stall_and_latency_delay_the_head() {
    let server = MockServer::start(Behavior {
        stall: Some(Duration::from_millis(250)),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let resp = post(&server, "/v1/chat/completions", chat_body(true, false)).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(resp.status(), StatusCode::OK);
    let (events, _) = read_events(resp.into_body()).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");

    server.set_behavior(Behavior::default());
    let started = Instant::now();
    let resp = send(
        &server,
        Method::POST,
        "/v1/chat/completions",
        &[("x-mock-latency-ms", "150")],
        Some(chat_body(false, false)),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(resp.status(), StatusCode::OK);

    // A stall can outlast a client timeout.
    let timed_out = tokio::time::timeout(
        Duration::from_millis(100),
        send(
            &server,
            Method::POST,
            "/v1/chat/completions",
            &[("x-mock-stall-ms", "1000")],
            Some(chat_body(false, false)),
        ),
    )
    .await;
    assert!(timed_out.is_err());
}

#[tokio::test]
async fn stall_first_token_sends_role_chunk_first() {
    let server = MockServer::start(Behavior {
        tokens: 2,
        stall_first_token: Some(Duration::from_millis(200)),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let resp = post(&server, "/v1/chat/completions", chat_body(true, false)).await;
    let head = started.elapsed();
    let (events, _) = read_events(resp.into_body()).await;
    assert!(head < Duration::from_millis(150), "head took {head:?}");
    assert!(events[0].data.contains("\"role\":\"assistant\""));
    assert!(events[0].at.duration_since(started) < Duration::from_millis(150));
    assert!(events[1].at.duration_since(events[0].at) >= Duration::from_millis(180));
    assert_eq!(events.last().unwrap().data, "[DONE]");
}

fn tool_request(stream: bool) -> Value {
    json!({
        "model": "gpt-tools",
        "stream": stream,
        "messages": [{"role": "user", "content": "Weather in Paris, and the time?"}],
        "tools": [
            {"type": "function", "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "days": {"type": "integer"},
                        "metric": {"type": "boolean"},
                        "note": {"type": "string"}
                    },
                    "required": ["city", "days", "metric"]
                }
            }},
            {"type": "function", "function": {
                "name": "get_time",
                "parameters": {"type": "object", "properties": {}}
            }}
        ]
    })
}

fn check_weather_args(args: &str) {
    let v: Value = serde_json::from_str(args).unwrap();
    assert_eq!(v, json!({"city": "mock", "days": 1, "metric": true}));
}

#[tokio::test]
async fn tool_calls_json() {
    let server = MockServer::start(Behavior {
        tool_calls: 3,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(&server, "/v1/chat/completions", tool_request(false)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json_body(resp).await;
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3);
    let names: Vec<&str> = calls
        .iter()
        .map(|c| c["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["get_weather", "get_time", "get_weather"]);
    for (k, call) in calls.iter().enumerate() {
        assert_eq!(call["id"], format!("call_mock_{k}"));
        assert_eq!(call["type"], "function");
    }
    check_weather_args(calls[0]["function"]["arguments"].as_str().unwrap());
    assert_eq!(calls[1]["function"]["arguments"], "{}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);

    // After a tool result the mock answers with text.
    let mut follow_up = tool_request(false);
    follow_up["messages"] = json!([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_mock_0", "content": "sunny"}
    ]);
    let v = json_body(post(&server, "/v1/chat/completions", follow_up).await).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"]["content"].is_string());

    // x-mock-tool-calls: 0 forces text.
    let resp = send(
        &server,
        Method::POST,
        "/v1/chat/completions",
        &[("x-mock-tool-calls", "0")],
        Some(tool_request(false)),
    )
    .await;
    assert_eq!(json_body(resp).await["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn tool_calls_streamed() {
    let server = MockServer::start(Behavior {
        tool_calls: 2,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let mut body = tool_request(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&server, "/v1/chat/completions", body).await;
    let (events, errored) = read_events(resp.into_body()).await;
    assert!(!errored);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks = parse_chunks(&events);

    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    assert_eq!(first["content"], Value::Null);
    assert_eq!(first["tool_calls"][0]["id"], "call_mock_0");
    assert_eq!(first["tool_calls"][0]["function"]["arguments"], "");

    // Reassemble like an OpenAI client does.
    let mut names = vec![String::new(); 2];
    let mut args = vec![String::new(); 2];
    let mut ids = vec![String::new(); 2];
    let mut fragments = [0usize; 2];
    let mut finish = None;
    let mut usage = None;
    for c in &chunks {
        if let Some(u) = c.get("usage").filter(|u| !u.is_null()) {
            usage = Some(u.clone());
        }
        let Some(choice) = c["choices"].get(0) else {
            continue;
        };
        if !choice["finish_reason"].is_null() {
            finish = Some(choice["finish_reason"].clone());
        }
        for tc in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let k = tc["index"].as_u64().unwrap() as usize;
            if let Some(id) = tc["id"].as_str() {
                ids[k] = id.to_owned();
            }
            if let Some(name) = tc["function"]["name"].as_str() {
                names[k].push_str(name);
            }
            let fragment = tc["function"]["arguments"].as_str().unwrap();
            if !fragment.is_empty() {
                fragments[k] += 1;
            }
            args[k].push_str(fragment);
        }
    }
    assert_eq!(finish, Some(json!("tool_calls")));
    assert_eq!(ids, ["call_mock_0", "call_mock_1"]);
    assert_eq!(names, ["get_weather", "get_time"]);
    check_weather_args(&args[0]);
    assert_eq!(args[1], "{}");
    assert_eq!(fragments[0], 3, "arguments arrive in about 3 fragments");
    assert!(usage.unwrap()["completion_tokens"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn embeddings_are_deterministic() {
    let server = MockServer::start(Behavior::default()).await.unwrap();
    let body =
        json!({"model": "text-embedding-3-small", "input": ["hello world", "bye", "hello world"]});
    let resp = post(&server, "/v1/embeddings", body.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json_body(resp).await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert_eq!(d["embedding"].as_array().unwrap().len(), 8);
    }
    assert_eq!(data[0]["embedding"], data[2]["embedding"]);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    // 11 chars -> 3, 3 chars -> 1, 11 chars -> 3.
    assert_eq!(v["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));

    let again = json_body(post(&server, "/v1/embeddings", body).await).await;
    assert_eq!(again["data"], v["data"]);

    let v = json_body(
        post(
            &server,
            "/v1/embeddings",
            json!({"model": "e", "input": "hello world", "dimensions": 16}),
        )
        .await,
    )
    .await;
    let vector: Vec<f64> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(vector.len(), 16);
    let norm: f64 = vector.iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-3);

    let v = json_body(
        post(
            &server,
            "/v1/embeddings",
            json!({"model": "e", "input": "hello world", "encoding_format": "base64"}),
        )
        .await,
    )
    .await;
    // 8 f32 = 32 bytes -> 44 base64 chars.
    assert_eq!(v["data"][0]["embedding"].as_str().unwrap().len(), 44);

    let resp = post(&server, "/v1/embeddings", json!({"model": "e"})).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn dropped_stream_counts_as_cancelled() {
    let server = MockServer::start(Behavior {
        tokens: 500,
        chunk_interval: Duration::from_millis(10),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(&server, "/v1/chat/completions", chat_body(true, false)).await;
    let mut body = resp.into_body();
    let mut received = Vec::new();
    while received.windows(7).filter(|w| w == b"content").count() < 3 {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    assert!(wait_for(&server, |s| s.streams_started == 1).await);
    assert_eq!(server.stats().streams_cancelled, 0);
    drop(body);
    assert!(
        wait_for(&server, |s| s.streams_cancelled == 1).await,
        "stats: {:?}",
        server.stats()
    );
    let stats = server.stats();
    assert_eq!(stats.streams_completed, 0);
    assert_eq!(stats.streams_started, 1);
}

#[tokio::test]
async fn requests_are_recorded() {
    let server = MockServer::start(Behavior::default()).await.unwrap();
    let _ = send(
        &server,
        Method::POST,
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-test")],
        Some(chat_body(false, false)),
    )
    .await;
    let _ = send(&server, Method::GET, "/v1/models", &[], None).await;
    let recorded = server.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(recorded[0].headers["authorization"], "Bearer sk-test");
    let body: Value = serde_json::from_slice(&recorded[0].body).unwrap();
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(recorded[1].method, "GET");
    assert_eq!(recorded[1].path, "/v1/models");

    for _ in 0..70 {
        let _ = send(&server, Method::GET, "/v1/models", &[], None).await;
    }
    assert_eq!(server.requests().len(), 64);
    assert_eq!(server.stats().requests, 72);
}

#[tokio::test]
async fn keep_alive_reuses_connections_and_shutdown_stops_serving() {
    let server = MockServer::start(Behavior::default()).await.unwrap();
    let client = client();
    for _ in 0..20 {
        let req = Request::get(format!("{}/models", server.base_url()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
    }
    let addr = server.addr();
    server.shutdown();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let refused = tokio::net::TcpStream::connect(addr).await.is_err();
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "server still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn prerendered_answers_have_the_set_size_and_stamped_frames() {
    let server = MockServer::start(Behavior {
        prerendered: true,
        stamp_frames: true,
        tokens: 4,
        body_bytes: Some(1400),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let resp = post(&server, "/v1/chat/completions", chat_body(false, false)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes.len(), 1400);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["model"], "mock-model");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Hello from the relay")
    );
    // The fast path records nothing.
    assert!(server.requests().is_empty());

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let resp = post(&server, "/v1/chat/completions", chat_body(true, true)).await;
    let (events, _) = read_events(resp.into_body()).await;
    let chunks = parse_chunks(&events);
    // Role chunk, 4 words, finish chunk, usage chunk.
    assert_eq!(chunks.len(), 7);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert!(chunks.last().unwrap()["usage"]["completion_tokens"] == 4);
    for chunk in &chunks {
        let fp = chunk["system_fingerprint"].as_str().unwrap();
        let ns: u128 = fp.strip_prefix("fp_t").unwrap().parse().unwrap();
        assert!(ns >= before, "stamp {ns} before the request {before}");
    }

    let stats = json_body(send(&server, Method::GET, "/__relay_mock/stats", &[], None).await).await;
    assert_eq!(stats["streams_completed"], 1);
    assert_eq!(stats["requests"], 3);
}
