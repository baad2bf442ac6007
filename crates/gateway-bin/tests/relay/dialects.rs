//! The Anthropic and Gemini routes, cross-dialect translation through the engine, and
//! errors in each client's own shape.

use std::time::Instant;

use relay_mock::{Behavior, MockServer};
use serde_json::{Value, json};

use crate::support::*;

async fn three_dialects() -> (MockServer, TestGateway) {
    let up = MockServer::start(Behavior {
        tokens: 4,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let origin = format!("http://{}", up.addr());
    let gw = gateway(&format!(
        "{}{}{}",
        channel("up-openai", &up.base_url(), &["m-openai"]),
        dialect_channel("up-anthropic", "anthropic", &origin, &["m-anthropic"]),
        dialect_channel(
            "up-gemini",
            "gemini",
            &format!("{origin}/v1beta"),
            &["m-gemini"]
        ),
    ))
    .await;
    (up, gw)
}

/// The text parts of a Gemini stream, concatenated.
fn gemini_text(events: &[Seen]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|v| {
            v["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn anthropic_body(model: &str, stream: bool) -> String {
    json!({"model": model, "max_tokens": 100, "stream": stream, "messages": [{"role": "user", "content": "Say hello"}]}).to_string()
}

#[tokio::test]
async fn anthropic_clients_reach_every_upstream_dialect() {
    let (_up, gw) = three_dialects().await;
    for model in ["m-openai", "m-anthropic", "m-gemini"] {
        let r = collect(
            gw.send_with(
                "/v1/messages",
                &[("x-api-key", KEY), ("anthropic-version", "2023-06-01")],
                anthropic_body(model, false),
            )
            .await,
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{model}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["type"], "message", "{model}");
        assert_eq!(v["content"][0]["text"], "Hello from the relay", "{model}");
        assert_eq!(v["usage"]["output_tokens"], 4, "{model}");

        let resp = gw
            .send_with(
                "/v1/messages",
                &[("authorization", &format!("Bearer {KEY}"))],
                anthropic_body(model, true),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let events = read_events(resp, Instant::now()).await;
        let types: Vec<String> = events
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(&e.data).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            types.first().map(String::as_str),
            Some("message_start"),
            "{model}: {types:?}"
        );
        assert_eq!(
            types.last().map(String::as_str),
            Some("message_stop"),
            "{model}: {types:?}"
        );
        let text: String = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
            .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(text, "Hello from the relay", "{model}");
    }
    let records = gw.wait_records(6).await;
    assert!(
        records
            .iter()
            .all(|r| r.client_dialect == "anthropic-messages"
                && r.usage.output_tokens == 4
                && !r.estimated),
        "{records:?}"
    );
}

#[tokio::test]
async fn gemini_clients_reach_every_upstream_dialect() {
    let (_up, gw) = three_dialects().await;
    let body =
        json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}).to_string();
    for model in ["m-openai", "m-anthropic", "m-gemini"] {
        let r = collect(
            gw.send_with(
                &format!("/v1beta/models/{model}:generateContent"),
                &[("x-goog-api-key", KEY)],
                body.clone(),
            )
            .await,
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{model}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(
            v["candidates"][0]["content"]["parts"][0]["text"], "Hello from the relay",
            "{model}"
        );
        assert!(
            v["usageMetadata"]["promptTokenCount"].as_u64().unwrap() > 0,
            "{model}"
        );

        let resp = gw
            .send_with(
                &format!("/v1beta/models/{model}:streamGenerateContent?alt=sse&key={KEY}"),
                &[],
                body.clone(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let events = read_events(resp, Instant::now()).await;
        let text = gemini_text(&events);
        assert_eq!(text, "Hello from the relay", "{model}");
        let last: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
        assert_eq!(last["candidates"][0]["finishReason"], "STOP", "{model}");
        assert!(events.iter().all(|e| e.data != "[DONE]"));
    }
}

#[tokio::test]
async fn errors_speak_the_route_dialect() {
    let (_up, gw) = three_dialects().await;
    let r = collect(
        gw.send_with("/v1/messages", &[], anthropic_body("m-openai", false))
            .await,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = collect(
        gw.send_with(
            "/v1/messages",
            &[("x-api-key", KEY)],
            anthropic_body("nope", false),
        )
        .await,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["type"].as_str()),
        (404, Some("not_found_error"))
    );
    let r = collect(
        gw.send_with(
            "/v1/messages",
            &[("x-api-key", KEY)],
            json!({"model": "m-openai", "messages": []}).to_string(),
        )
        .await,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = collect(
        gw.send_with(
            "/v1beta/models/m-gemini:generateContent",
            &[("x-goog-api-key", "wrong")],
            "{}",
        )
        .await,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(r.json()["error"]["code"], 401);
    let r = collect(
        gw.send_with(
            "/v1beta/models/m-gemini:generateContent",
            &[("x-goog-api-key", KEY)],
            "{\"contents\": 5}",
        )
        .await,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let r = collect(gw.send_with("/v1/messages/count_tokens", &[("x-api-key", KEY)], json!({"model": "m-anthropic", "messages": [{"role": "user", "content": "four score and seven years"}]}).to_string()).await).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn cross_dialect_failover_before_the_first_byte() {
    let broken = MockServer::start(Behavior {
        status: Some(529),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let healthy = MockServer::start(Behavior {
        tokens: 3,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = gateway(&format!(
        "{}{}[[presets]]\nname = \"p\"\n[[presets.items]]\nchannels = [\"claude\"]\nmodel = \"m\"\nretry = {{ max_attempts = 1 }}\n[[presets.items]]\nchannels = [\"oai\"]\nmodel = \"m\"\n",
        dialect_channel("claude", "anthropic", &format!("http://{}", broken.addr()), &["m"]),
        channel("oai", &healthy.base_url(), &["m"]),
    ))
    .await;
    // A Gemini client, an Anthropic upstream that is overloaded, an OpenAI one that is not.
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).to_string();
    let resp = gw
        .send_with(
            "/v1beta/models/p:streamGenerateContent?alt=sse",
            &[("x-goog-api-key", KEY)],
            body,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let events = read_events(resp, Instant::now()).await;
    let text = gemini_text(&events);
    assert_eq!(text, "Hello from the");
    let rec = &gw.wait_records(1).await[0];
    assert_eq!((rec.attempts, rec.channel.as_deref()), (2, Some("oai")));
    assert_eq!(broken.stats().requests, 1);
}

#[tokio::test]
async fn a_feature_one_upstream_lacks_moves_on_to_one_that_has_it() {
    let up = MockServer::start(Behavior {
        tokens: 2,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = gateway(&format!(
        "{}{}[[presets]]\nname = \"p\"\n[[presets.items]]\nchannels = [\"claude\"]\nmodel = \"m\"\n[[presets.items]]\nchannels = [\"oai\"]\nmodel = \"m\"\n\
         [[presets]]\nname = \"claude-only\"\n[[presets.items]]\nchannels = [\"claude\"]\nmodel = \"m\"\n",
        dialect_channel("claude", "anthropic", &format!("http://{}", up.addr()), &["m"]),
        channel("oai", &up.base_url(), &["m"]),
    ))
    .await;
    // JSON mode has no Anthropic form: the OpenAI item serves it; nothing was sent to
    // the Anthropic route.
    let mut req = chat("p", false);
    req["response_format"] = json!({"type": "json_object"});
    let r = gw.post("/v1/chat/completions", &req).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(up.requests().iter().all(|q| q.path != "/v1/messages"));
    // With no other choice the client learns why, as a 400.
    req["model"] = json!("claude-only");
    let r = gw.post("/v1/chat/completions", &req).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("response_format"),
        "{}",
        r.json()
    );
}
