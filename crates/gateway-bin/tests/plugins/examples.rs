//! The example plugins (`plugins/`), each doing its job through the gateway.

use std::time::Instant;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[tokio::test]
async fn the_sdk_template_plugin_runs_through_the_gateway() {
    let up = mock(tokens(3)).await;
    let gw = gateway(&format!(
        "{}{}{}",
        plugins_section(&["name = \"template\""]),
        channel("a", &up.base_url(), &["m"]),
        preset(
            "p",
            "a",
            r#"[{ name = "template", config = { header = "x-from-plugin" } }]"#
        ),
    ))
    .await;
    let r = gw.post("/v1/chat/completions", &chat("p", false)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = &up.requests()[0];
    assert_eq!(seen.headers["x-from-plugin"], "p");
}

#[tokio::test]
async fn pii_redact_masks_emails_phones_and_cards_before_the_upstream() {
    let up = mock(tokens(3)).await;
    let gw = gateway(&format!(
        "{}{}{}",
        plugins_section(&["name = \"pii-redact\""]),
        channel("a", &up.base_url(), &["m"]),
        preset("p", "a", r#"[{ name = "pii-redact" }]"#),
    ))
    .await;
    let text =
        "Mail jane.doe@example.com, call +1 (415) 555-0100, card 4111 1111 1111 1111, order 42.";
    let r = gw
        .post("/v1/chat/completions", &chat_with("p", false, text))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body: serde_json::Value = serde_json::from_slice(&up.requests()[0].body).unwrap();
    let sent = body["messages"][0]["content"].as_str().unwrap();
    assert_eq!(
        sent, "Mail [EMAIL], call [PHONE], card [CARD], order 42.",
        "{body}"
    );
    // Everything else in the body is untouched.
    assert_eq!(body["model"], "m");
}

fn guard_gateway_toml(up: &str) -> String {
    format!(
        "{}{}{}{}",
        plugins_section(&["name = \"guard\""]),
        channel("a", up, &["m"]),
        preset(
            "p",
            "a",
            r#"[{ name = "guard", config = { terms = ["project zebra", "deterministic completion"], message = "blocked by policy" } }]"#
        ),
        preset("free", "a", "[]"),
    )
}

#[tokio::test]
async fn guard_denies_requests_in_the_clients_dialect() {
    let up = mock(tokens(3)).await;
    let gw = gateway(&guard_gateway_toml(&up.base_url())).await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &chat_with("p", false, "Tell me about Project Zebra"),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["error"]["message"], "blocked by policy");
    assert_eq!(v["error"]["type"], "permission_error");
    // Anthropic clients get Anthropic's error shape.
    let resp = gw
        .send_with(
            "/v1/messages",
            &[("x-api-key", KEY), ("anthropic-version", "2023-06-01")],
            json!({"model": "p", "max_tokens": 50, "messages": [{"role": "user", "content": "project zebra?"}]}).to_string(),
        )
        .await;
    let r = collect(resp).await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["message"], "blocked by policy");
    assert!(up.requests().is_empty(), "nothing reached the upstream");
    let ok = gw
        .post("/v1/chat/completions", &chat_with("p", false, "hello"))
        .await;
    assert_eq!(ok.status, 200);
    let recs = gw.wait_records(3).await;
    assert!(
        recs.iter().any(|r| r.error_kind == Some("plugin")),
        "{recs:?}"
    );
}

#[tokio::test]
async fn guard_stops_a_stream_even_when_the_term_is_split_across_chunks() {
    let up = mock(tokens(16)).await;
    let gw = gateway(&guard_gateway_toml(&up.base_url())).await;
    let resp = gw
        .send(
            "/v1/chat/completions",
            Some(KEY),
            chat_with("p", true, "say something").to_string(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let events = read_events(resp, Instant::now()).await;
    let text = text_of(&events);
    // "deterministic" and "completion" are separate chunks: the window sees both.
    assert!(text.contains("deterministic"), "{text}");
    assert!(!text.contains("completion"), "{text}");
    let last = events.last().unwrap();
    assert_ne!(last.data, "[DONE]");
    let err: serde_json::Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(err["error"]["message"], "blocked by policy");
    // The same answer on a preset without the guard streams to the end.
    let resp = gw
        .send(
            "/v1/chat/completions",
            Some(KEY),
            chat_with("free", true, "say something").to_string(),
        )
        .await;
    let events = read_events(resp, Instant::now()).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert!(text_of(&events).contains("deterministic completion"));
}

#[tokio::test]
async fn guard_replaces_a_complete_answer_that_contains_a_term() {
    let up = mock(tokens(16)).await;
    let gw = gateway(&guard_gateway_toml(&up.base_url())).await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &chat_with("p", false, "say something"),
        )
        .await;
    assert_eq!(r.status, 451, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["message"], "blocked by policy");
}

#[tokio::test]
async fn rewrite_sets_and_removes_upstream_headers_and_body_fields() {
    let up = mock(tokens(3)).await;
    let gw = gateway(&format!(
        "{}{}{}",
        plugins_section(&["name = \"rewrite\""]),
        channel("a", &up.base_url(), &["m"]),
        preset(
            "p",
            "a",
            r#"[{ name = "rewrite", config = { set_headers = { x-tenant = "acme" }, remove_headers = ["user-agent"], set_fields = { temperature = 0.25, max_tokens = 7 }, remove_fields = ["user"] } }]"#
        ),
    ))
    .await;
    let mut req = chat("p", false);
    req["user"] = json!("someone");
    req["temperature"] = json!(1.5);
    let r = gw.post("/v1/chat/completions", &req).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = &up.requests()[0];
    assert_eq!(seen.headers["x-tenant"], "acme");
    assert!(seen.headers.get("user-agent").is_none());
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["temperature"], 0.25);
    assert_eq!(body["max_tokens"], 7);
    assert!(body.get("user").is_none(), "{body}");
    assert_eq!(body["model"], "m");
}

/// An upstream that answers every request with a 429 whose body says the quota is
/// gone (as OpenAI does), counting requests.
async fn quota_exhausted_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                // Read the head and the body (Content-Length).
                loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let len = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if seen.len() >= head_end + 4 + len {
                            break;
                        }
                    }
                }
                let body = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
                let resp = format!(
                    "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/v1"), hits)
}

fn two_items(plugins: &str) -> String {
    format!(
        "[[presets]]\nname = \"p\"\n[[presets.items]]\nchannels = [\"quota\"]\nmodel = \"m\"\nretry = {{ max_attempts = 3, backoff_base_ms = 1, backoff_max_ms = 5, max_retry_after_ms = 2000 }}\nplugins = {plugins}\n[[presets.items]]\nchannels = [\"b\"]\nmodel = \"m\"\n\n"
    )
}

#[tokio::test]
async fn error_policy_falls_back_at_once_when_the_quota_is_exhausted() {
    let (quota_url, hits) = quota_exhausted_upstream().await;
    let up = mock(tokens(3)).await;
    let base = format!(
        "{}{}{}",
        plugins_section(&["name = \"error-policy\""]),
        channel("quota", &quota_url, &["m"]),
        channel("b", &up.base_url(), &["m"]),
    );
    let gw = gateway(&format!(
        "{base}{}",
        two_items(r#"[{ name = "error-policy" }]"#)
    ))
    .await;
    let t = Instant::now();
    let r = gw.post("/v1/chat/completions", &chat("p", false)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no retry on a dead quota"
    );
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "no Retry-After wait: {:?}",
        t.elapsed()
    );
    drop(gw);

    // Without the plugin the relay retries the 429 (honouring Retry-After) first.
    let gw = gateway(&format!("{base}{}", two_items("[]"))).await;
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    let r = gw.post("/v1/chat/completions", &chat("p", false)).await;
    assert_eq!(r.status, 200);
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) - before > 1);
}

#[tokio::test]
async fn error_policy_retries_a_rate_limit_the_relay_would_give_up_on() {
    // A 429 asking for 30 s: over max_retry_after_ms, so by default the relay gives up.
    let behavior = Behavior {
        status: Some(429),
        retry_after: Some("30".into()),
        fail_first: 1,
        tokens: 3,
        ..Behavior::default()
    };
    let up = mock(behavior.clone()).await;
    let item = |plugins: &str| {
        format!(
            "[[presets]]\nname = \"p\"\n[[presets.items]]\nchannels = [\"a\"]\nmodel = \"m\"\nretry = {{ max_attempts = 3, backoff_base_ms = 1, backoff_max_ms = 5, max_retry_after_ms = 1000 }}\nplugins = {plugins}\n\n"
        )
    };
    let base = format!(
        "{}{}",
        plugins_section(&["name = \"error-policy\""]),
        channel("a", &up.base_url(), &["m"]),
    );
    let gw = gateway(&format!(
        "{base}{}",
        item(r#"[{ name = "error-policy", config = { retry_on = ["rate_limit_exceeded"], retry_after_ms = 20 } }]"#)
    ))
    .await;
    let r = gw.post("/v1/chat/completions", &chat("p", false)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(up.requests().len(), 2);
    drop(gw);

    up.set_behavior(behavior);
    let gw = gateway(&format!("{base}{}", item("[]"))).await;
    let r = gw.post("/v1/chat/completions", &chat("p", false)).await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn the_kill_switch_turns_every_plugin_off() {
    let up = mock(tokens(3)).await;
    let toml =
        guard_gateway_toml(&up.base_url()).replace("[plugins]\n", "[plugins]\nenabled = false\n");
    let gw = gateway(&toml).await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &chat_with("p", false, "Tell me about Project Zebra"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}
