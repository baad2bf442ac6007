//! Integration tests: the gateway on an ephemeral port, real HTTP over loopback, mock
//! upstreams with faults.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod dialects;
mod support;

use std::time::{Duration, Instant};

use relay_core::Outcome;
use relay_mock::{Behavior, MockServer};
use serde_json::json;
use support::*;

async fn mock(b: Behavior) -> MockServer {
    MockServer::start(b).await.unwrap()
}

fn tokens(n: u32) -> Behavior {
    Behavior {
        tokens: n,
        ..Behavior::default()
    }
}

#[tokio::test]
async fn plain_completion_through_a_preset() {
    let up = mock(tokens(5)).await;
    let gw = gateway(&format!(
        "{}[[presets]]\nname = \"p\"\n[[presets.items]]\nchannels = [\"a\"]\nmodel = \"real-model\"\n",
        channel("a", &up.base_url(), &["real-model"])
    ))
    .await;
    let r = gw.post("/v1/chat/completions", &chat("p", false)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.headers["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    let v = r.json();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the relay mock"
    );
    assert_eq!(v["usage"]["completion_tokens"], 5);
    // The upstream saw the mapped model and the channel's key, not the client's.
    let seen = &up.requests()[0];
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["model"], "real-model");
    assert_eq!(seen.headers["authorization"], "Bearer sk-a");
    let rec = &gw.wait_records(1).await[0];
    assert_eq!(rec.outcome, Outcome::Ok);
    assert_eq!(rec.usage.output_tokens, 5);
    assert!(!rec.estimated);
    assert_eq!(rec.key_id.as_deref(), Some("test"));
    assert_eq!(rec.request_id, r.headers["x-request-id"].to_str().unwrap());
}

#[tokio::test]
async fn streams_with_and_without_include_usage() {
    let up = mock(tokens(6)).await;
    let gw = gateway(&channel("a", &up.base_url(), &["m"])).await;

    let mut req = chat("m", true);
    req["stream_options"] = json!({"include_usage": true});
    let resp = gw
        .send("/v1/chat/completions", Some(KEY), req.to_string())
        .await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = read_events(resp, Instant::now()).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(text_of(&events), "Hello from the relay mock upstream.");
    let usage: Vec<_> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.data).ok())
        .filter(|v| v["usage"].is_object())
        .collect();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["usage"]["completion_tokens"], 6);

    // Not asked: the relay still asks upstream, settles from it, and strips the chunk.
    let events = read_events(
        gw.send(
            "/v1/chat/completions",
            Some(KEY),
            chat("m", true).to_string(),
        )
        .await,
        Instant::now(),
    )
    .await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert!(
        events.iter().all(|e| !e.data.contains("\"usage\":{")),
        "usage chunk leaked"
    );
    let upstream_body: serde_json::Value = serde_json::from_slice(&up.requests()[1].body).unwrap();
    assert_eq!(upstream_body["stream_options"]["include_usage"], true);
    let records = gw.wait_records(2).await;
    assert!(
        records
            .iter()
            .all(|r| r.usage.output_tokens == 6 && !r.estimated && r.stream)
    );
    assert!(records.iter().all(|r| r.ttft_ms.is_some()));
}

#[tokio::test]
async fn no_usage_from_upstream_is_estimated() {
    let up = mock(Behavior {
        send_usage: false,
        tokens: 8,
        ..Behavior::default()
    })
    .await;
    let gw = gateway(&channel("a", &up.base_url(), &["m"])).await;
    let events = read_events(
        gw.send(
            "/v1/chat/completions",
            Some(KEY),
            chat("m", true).to_string(),
        )
        .await,
        Instant::now(),
    )
    .await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let rec = &gw.wait_records(1).await[0];
    assert!(rec.estimated);
    assert!(rec.usage.output_tokens > 0 && rec.usage.input_tokens > 0);
}

#[tokio::test]
async fn tool_call_deltas_pass_intact() {
    let up = mock(Behavior {
        tool_calls: 2,
        ..Behavior::default()
    })
    .await;
    let gw = gateway(&channel("a", &up.base_url(), &["m"])).await;
    let mut req = chat("m", true);
    req["tools"] = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
    ]);
    let events = read_events(
        gw.send("/v1/chat/completions", Some(KEY), req.to_string())
            .await,
        Instant::now(),
    )
    .await;
    let mut args = [String::new(), String::new()];
    let mut names = vec![];
    for e in events.iter().filter(|e| e.data != "[DONE]") {
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        for call in v["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = call["index"].as_u64().unwrap() as usize;
            if let Some(name) = call["function"]["name"].as_str() {
                assert!(
                    call["id"].is_string(),
                    "the first delta of a call has its id"
                );
                names.push(name.to_owned());
            } else {
                assert!(call.get("id").is_none(), "later deltas carry no id");
            }
            args[i].push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(names, ["get_weather", "get_time"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&args[0]).unwrap(),
        json!({"location": "mock"})
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&args[1]).unwrap(),
        json!({"tz": "mock"})
    );
}

#[tokio::test]
async fn fails_over_from_a_500_channel_and_across_items() {
    let broken = mock(Behavior {
        status: Some(500),
        ..Behavior::default()
    })
    .await;
    let healthy = mock(tokens(3)).await;
    let gw = gateway(&format!(
        "{}{}[[presets]]\nname = \"in-item\"\n[[presets.items]]\nchannels = [\"broken\", \"healthy\"]\nstrategy = \"failover\"\nmodel = \"m\"\n\n\
         [[presets]]\nname = \"across\"\n[[presets.items]]\nchannels = [\"broken\"]\nmodel = \"m\"\nretry = {{ max_attempts = 2, backoff_base_ms = 1, backoff_max_ms = 2 }}\n[[presets.items]]\nchannels = [\"healthy\"]\nmodel = \"m\"\n",
        channel("broken", &broken.base_url(), &["m"]),
        channel("healthy", &healthy.base_url(), &["m"]),
    ))
    .await;
    for (preset, attempts) in [("in-item", 2), ("across", 3)] {
        for stream in [false, true] {
            let resp = gw
                .send(
                    "/v1/chat/completions",
                    Some(KEY),
                    chat(preset, stream).to_string(),
                )
                .await;
            assert_eq!(resp.status(), 200, "{preset}");
            if stream {
                let events = read_events(resp, Instant::now()).await;
                assert_eq!(text_of(&events), "Hello from the");
            } else {
                let r = collect(resp).await;
                assert_eq!(
                    r.json()["choices"][0]["message"]["content"],
                    "Hello from the"
                );
            }
        }
        let records = gw
            .wait_records(if preset == "in-item" { 2 } else { 4 })
            .await;
        let rec = records
            .iter()
            .rev()
            .find(|r| r.requested_model == preset)
            .unwrap();
        assert_eq!(rec.attempts, attempts, "{preset}");
        assert_eq!(rec.channel.as_deref(), Some("healthy"));
        assert_eq!(rec.outcome, Outcome::Ok);
    }
}

#[tokio::test]
async fn connect_errors_fail_over() {
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let healthy = mock(tokens(2)).await;
    let gw = gateway(&format!(
        "{}{}[[presets]]\nname = \"p\"\n[[presets.items]]\nchannels = [\"dead\", \"healthy\"]\nstrategy = \"failover\"\nmodel = \"m\"\n",
        channel("dead", &format!("http://{closed}/v1"), &["m"]),
        channel("healthy", &healthy.base_url(), &["m"]),
    ))
    .await;
    let r = gw.post("/v1/chat/completions", &chat("p", false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.wait_records(1).await[0].attempts, 2);
}

#[tokio::test]
async fn honours_retry_after_then_succeeds() {
    let up = mock(Behavior {
        status: Some(429),
        retry_after: Some("1".into()),
        fail_first: 1,
        tokens: 2,
        ..Behavior::default()
    })
    .await;
    let gw = gateway(&format!(
        "{}[defaults.retry]\nmax_attempts = 2\nbackoff_base_ms = 1\nbackoff_max_ms = 5\nmax_retry_after_ms = 3000\n",
        channel("a", &up.base_url(), &["m"])
    ))
    .await;
    let start = Instant::now();
    let r = gw.post("/v1/chat/completions", &chat("m", false)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "waited {:?}",
        start.elapsed()
    );
    assert_eq!(up.stats().requests, 2);
    assert_eq!(gw.wait_records(1).await[0].attempts, 2);
}

#[tokio::test]
async fn retry_after_over_the_cap_reaches_the_client() {
    let up = mock(Behavior {
        status: Some(429),
        retry_after: Some("30".into()),
        ..Behavior::default()
    })
    .await;
    let gw = gateway(&format!(
        "{}[defaults.retry]\nmax_attempts = 3\nmax_retry_after_ms = 2000\n",
        channel("a", &up.base_url(), &["m"])
    ))
    .await;
    let start = Instant::now();
    let r = gw.post("/v1/chat/completions", &chat("m", false)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "30");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(up.stats().requests, 1, "no point retrying within 30 s");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    let up = mock(Behavior {
        status: Some(400),
        ..Behavior::default()
    })
    .await;
    let other = mock(tokens(1)).await;
    let gw = gateway(&format!(
        "{}{}[[presets]]\nname = \"p\"\n[[presets.items]]\nchannels = [\"a\", \"b\"]\nstrategy = \"failover\"\nmodel = \"m\"\n",
        channel("a", &up.base_url(), &["m"]),
        channel("b", &other.base_url(), &["m"]),
    ))
    .await;
    let r = gw.post("/v1/chat/completions", &chat("p", false)).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("400")
    );
    assert_eq!(up.stats().requests, 1);
    assert_eq!(other.stats().requests, 0);
}

#[tokio::test]
async fn first_token_timeout_fails_over_invisibly() {
    let slow = mock(Behavior {
        stall_first_token: Some(Duration::from_secs(10)),
        ..Behavior::default()
    })
    .await;
    let fast = mock(tokens(3)).await;
    let gw = gateway(&format!(
        "{}{}[[presets]]\nname = \"p\"\n[[presets.items]]\nchannels = [\"slow\", \"fast\"]\nstrategy = \"failover\"\nmodel = \"m\"\ntimeouts = {{ first_token_ms = 300 }}\n",
        channel("slow", &slow.base_url(), &["m"]),
        channel("fast", &fast.base_url(), &["m"]),
    ))
    .await;
    let start = Instant::now();
    let events = read_events(
        gw.send(
            "/v1/chat/completions",
            Some(KEY),
            chat("p", true).to_string(),
        )
        .await,
        start,
    )
    .await;
    assert_eq!(text_of(&events), "Hello from the");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // The slow upstream's role chunk was held back, never shown: one role chunk in all.
    let roles = events
        .iter()
        .filter(|e| e.data.contains("\"role\":\"assistant\""))
        .count();
    assert_eq!(roles, 1);
    let rec = &gw.wait_records(1).await[0];
    assert_eq!((rec.attempts, rec.channel.as_deref()), (2, Some("fast")));
    // The abandoned stream was cancelled upstream.
    let until = Instant::now() + Duration::from_secs(2);
    while slow.stats().streams_cancelled == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(slow.stats().streams_cancelled, 1);
}

#[tokio::test]
async fn mid_stream_cut_is_an_error_event_not_a_clean_stop() {
    let up = mock(Behavior {
        tokens: 10,
        cut_after: Some(3),
        ..Behavior::default()
    })
    .await;
    let other = mock(tokens(10)).await;
    let gw = gateway(&format!(
        "{}{}[[presets]]\nname = \"p\"\n[[presets.items]]\nchannels = [\"cut\", \"other\"]\nstrategy = \"failover\"\nmodel = \"m\"\n",
        channel("cut", &up.base_url(), &["m"]),
        channel("other", &other.base_url(), &["m"]),
    ))
    .await;
    let events = read_events(
        gw.send(
            "/v1/chat/completions",
            Some(KEY),
            chat("p", true).to_string(),
        )
        .await,
        Instant::now(),
    )
    .await;
    assert_eq!(
        text_of(&events),
        "Hello from the ",
        "the first three tokens arrived"
    );
    let last: serde_json::Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "stream_cut", "{last}");
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    // Content had gone out: no failover.
    assert_eq!(other.stats().requests, 0);
    let rec = &gw.wait_records(1).await[0];
    assert_eq!(rec.outcome, Outcome::Error);
    assert_eq!(rec.error_kind, Some("stream_cut"));
    assert!(rec.usage.output_tokens > 0, "what was produced is settled");
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_and_settles() {
    let up = mock(Behavior {
        tokens: 100,
        chunk_interval: Duration::from_millis(30),
        ..Behavior::default()
    })
    .await;
    let gw = gateway(&channel("a", &up.base_url(), &["m"])).await;
    let resp = gw
        .send(
            "/v1/chat/completions",
            Some(KEY),
            chat("m", true).to_string(),
        )
        .await;
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    let until = Instant::now() + Duration::from_secs(3);
    while up.stats().streams_cancelled == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.stats().streams_cancelled, 1);
    assert_eq!(up.stats().streams_completed, 0);
    let rec = &gw.wait_records(1).await[0];
    assert_eq!(rec.outcome, Outcome::Cancelled);
    assert!(rec.estimated && rec.usage.input_tokens > 0);
}

#[tokio::test]
async fn first_frame_arrives_before_the_upstream_finishes() {
    let up = mock(Behavior {
        tokens: 10,
        chunk_interval: Duration::from_millis(100),
        ..Behavior::default()
    })
    .await;
    let gw = gateway(&channel("a", &up.base_url(), &["m"])).await;
    let start = Instant::now();
    let events = read_events(
        gw.send(
            "/v1/chat/completions",
            Some(KEY),
            chat("m", true).to_string(),
        )
        .await,
        start,
    )
    .await;
    let first_content = events
        .iter()
        .find(|e| e.data.contains("\"content\":\"Hello"))
        .unwrap();
    let end = events.last().unwrap().at;
    assert!(
        end >= Duration::from_millis(900),
        "paced upstream took {end:?}"
    );
    assert!(
        first_content.at < Duration::from_millis(300),
        "first content at {:?}",
        first_content.at
    );
    // Frames arrive spread out, as paced, not in one burst at the end.
    let spread = events[events.len() - 2].at - first_content.at;
    assert!(spread >= Duration::from_millis(700), "{spread:?}");
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_streams() {
    let up = mock(Behavior {
        tokens: 10,
        chunk_interval: Duration::from_millis(50),
        ..Behavior::default()
    })
    .await;
    let gw = gateway(&channel("a", &up.base_url(), &["m"])).await;
    let resp = gw
        .send(
            "/v1/chat/completions",
            Some(KEY),
            chat("m", true).to_string(),
        )
        .await;
    let reader = tokio::spawn(read_events(resp, Instant::now()));
    tokio::time::sleep(Duration::from_millis(120)).await;
    let TestGateway { running, .. } = gw;
    let addr = running.addr;
    let shutdown = tokio::spawn(running.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // No new connections once draining.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let events = reader.await.unwrap();
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(text_of(&events).split(' ').count(), 10);
    shutdown.await.unwrap();
}

#[tokio::test]
async fn client_mistakes_get_clear_4xx() {
    let up = mock(tokens(1)).await;
    let gw = gateway(&channel("a", &up.base_url(), &["m"])).await;
    let r = collect(
        gw.send("/v1/chat/completions", None, chat("m", false).to_string())
            .await,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (401, Some("missing_api_key"))
    );
    let r = collect(
        gw.send(
            "/v1/chat/completions",
            Some("rk-wrong"),
            chat("m", false).to_string(),
        )
        .await,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let r = gw.post("/v1/chat/completions", &chat("nope", false)).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let r = collect(
        gw.send("/v1/chat/completions", Some(KEY), "{\"model\": ")
            .await,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );
    let r = gw
        .post("/v1/chat/completions", &json!({"model": "m"}))
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("messages"))
    );
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(70_000)}]});
    let r = gw.post("/v1/chat/completions", &big).await;
    assert_eq!(r.status, 413);
    let r = collect(gw.send("/v1/nothing", Some(KEY), "{}").await).await;
    assert_eq!(r.status, 404);
    assert_eq!(up.stats().requests, 0, "nothing reached the upstream");
}

/// An upstream that speaks broken HTTP bodies: the gateway must answer, not panic.
#[tokio::test]
async fn malformed_upstream_streams_are_errors_not_panics() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let bodies: [&[u8]; 4] = [
            b"data: {not json\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: \xff\xfe\n\n",
            b"event: x\ndata: {\"choices\":[]}\n\n",
            b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
        ];
        let mut i = 0;
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 65536];
            let _ = s.read(&mut buf).await;
            let body = bodies[i % bodies.len()];
            i += 1;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            // Content first, the rest later: by then the response has begun.
            let split = body
                .windows(2)
                .position(|w| w == b"\n\n")
                .map_or(body.len(), |p| p + 2);
            let _ = s.write_all(&body[..split]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = s.write_all(&body[split..]).await;
        }
    });
    let gw = gateway(&format!(
        "{}[defaults.retry]\nmax_attempts = 1\n",
        channel("bad", &format!("http://{addr}/v1"), &["m"])
    ))
    .await;
    // 1: garbage before content: a clean 502.
    let r = collect(
        gw.send(
            "/v1/chat/completions",
            Some(KEY),
            chat("m", true).to_string(),
        )
        .await,
    )
    .await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    // 2: content, then garbage: an error event after the content.
    let events = read_events(
        gw.send(
            "/v1/chat/completions",
            Some(KEY),
            chat("m", true).to_string(),
        )
        .await,
        Instant::now(),
    )
    .await;
    assert_eq!(text_of(&events), "hi");
    assert!(events.last().unwrap().data.contains("\"error\""));
    // 3: no content and no end: the stream is reported cut, before anything was sent.
    let r = collect(
        gw.send(
            "/v1/chat/completions",
            Some(KEY),
            chat("m", true).to_string(),
        )
        .await,
    )
    .await;
    assert_eq!(r.status, 502);
    // 4: an error object in the stream.
    let r = collect(
        gw.send(
            "/v1/chat/completions",
            Some(KEY),
            chat("m", true).to_string(),
        )
        .await,
    )
    .await;
    assert_eq!(r.status, 502);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("overloaded")
    );
    // And the gateway still serves.
    let r = collect(gw.send("/v1/models", Some(KEY), "").await).await;
    assert_eq!(r.status, 405, "POST on /v1/models");
}

#[tokio::test]
async fn models_lists_presets_and_served_models() {
    let up = mock(tokens(1)).await;
    let gw = gateway(&format!(
        "{}[[presets]]\nname = \"mine\"\n[[presets.items]]\nchannels = [\"a\"]\nmodel = \"m1\"\n",
        channel("a", &up.base_url(), &["m1", "m2"])
    ))
    .await;
    let req = http::Request::get(gw.url("/v1/models"))
        .header("authorization", format!("Bearer {KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = collect(gw.client.request(req).await.unwrap()).await;
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["mine", "m1", "m2"]);
}

#[tokio::test]
async fn embeddings_pass_through() {
    let up = mock(tokens(1)).await;
    let gw = gateway(&channel("a", &up.base_url(), &["emb"])).await;
    let r = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "emb", "input": ["a", "b"], "dimensions": 4}),
        )
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 4);
    let rec = &gw.wait_records(1).await[0];
    assert_eq!(rec.operation, "embeddings");
    assert!(rec.usage.input_tokens > 0);
}

#[tokio::test]
async fn client_disconnect_before_the_answer_cancels_the_attempt() {
    let up = mock(Behavior {
        latency: Duration::from_secs(2),
        ..Behavior::default()
    })
    .await;
    let gw = gateway(&channel("a", &up.base_url(), &["m"])).await;
    let send = gw.send(
        "/v1/chat/completions",
        Some(KEY),
        chat("m", false).to_string(),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), send)
            .await
            .is_err()
    );
    let rec = &gw.wait_records(1).await[0];
    assert_eq!(rec.outcome, Outcome::Cancelled);
    assert!(rec.latency_ms < 1000, "settled after {} ms", rec.latency_ms);
}

#[tokio::test]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = mock(tokens(1)).await;
    let gw = gateway_with("max_connections = 1", &channel("a", &up.base_url(), &["m"])).await;
    let addr = gw.running.addr;
    let get = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    first.write_all(get).await.unwrap();
    let mut buf = [0u8; 512];
    assert!(
        first.read(&mut buf).await.unwrap() > 0,
        "the first connection is served"
    );
    // The second connection is in the backlog, not served, while the first is open.
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    second.write_all(get).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(waited.is_err(), "served over the limit");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(3), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
