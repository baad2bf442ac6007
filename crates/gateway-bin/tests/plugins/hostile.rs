//! Hostile plugins (`plugins/hostile`, fail-closed; `plugins/hostile-open`,
//! fail-open): each misbehaviour is contained, the declared failure mode applies, the
//! circuit breaker trips, and the gateway keeps serving other requests throughout.

use std::time::Instant;

use super::*;

/// Hook deadline in these tests.
const DEADLINE_MS: u64 = 50;

async fn hostile_gateway(up: &MockServer, breaker_failures: u32) -> TestGateway {
    let limits = format!(
        "limits = {{ hook_deadline_ms = {DEADLINE_MS}, memory_bytes = 16777216, max_output_bytes = 65536, breaker_failures = {breaker_failures}, breaker_cooldown_ms = 60000 }}"
    );
    let mut presets = String::new();
    for mode in [
        "loop",
        "memory",
        "stack",
        "panic",
        "trap",
        "oversize",
        "secret",
        "allowed-secret",
        "print",
        "count",
        "stream-loop",
    ] {
        presets.push_str(&preset(
            &format!("closed-{mode}"),
            "a",
            &format!(r#"[{{ name = "hostile", config = {{ mode = "{mode}", stream = true }} }}]"#),
        ));
        presets.push_str(&preset(
            &format!("open-{mode}"),
            "a",
            &format!(
                r#"[{{ name = "hostile-open", config = {{ mode = "{mode}", stream = true }} }}]"#
            ),
        ));
    }
    presets.push_str(&preset(
        "fresh-count",
        "a",
        r#"[{ name = "hostile-open-fresh", config = { mode = "count" } }]"#,
    ));
    presets.push_str(&preset("plain", "a", "[]"));
    gateway(&format!(
        "{}{}{}",
        plugins_section(&[
            &format!("name = \"hostile\"\n{limits}\nsecrets = {{ ALLOWED_SECRET = \"s3cr3t-value\", UPSTREAM_API_KEY = \"sk-must-not-leak\" }}"),
            &format!("name = \"hostile-open\"\n{limits}"),
            // The same component, with the operator refusing its stateless claim.
            &format!(
                "name = \"hostile-open-fresh\"\npath = \"hostile-open.wasm\"\n{}",
                limits.replace(" }", ", reuse_instances = false }")
            ),
        ]),
        channel("a", &up.base_url(), &["m"]),
        presets,
    ))
    .await
}

/// Send `model`'s request and, at the same time, a plain one; the plain one must be
/// served normally whatever the plugin does.
async fn with_bystander(gw: &TestGateway, model: &str) -> (Reply, Duration) {
    let (bad, good) = (chat(model, false), chat("plain", false));
    let (hostile, plain) = tokio::join!(timed(gw, &bad), timed(gw, &good));
    assert_eq!(
        plain.0.status,
        200,
        "bystander: {}",
        String::from_utf8_lossy(&plain.0.body)
    );
    hostile
}

fn message(r: &Reply) -> String {
    r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn an_infinite_loop_is_cut_at_the_deadline_and_fails_closed() {
    let up = mock(tokens(3)).await;
    let gw = hostile_gateway(&up, 100).await;
    // Warm the instance pool and code (the first request also instantiates).
    let _ = timed(&gw, &chat("closed-loop", false)).await;
    for _ in 0..3 {
        let (r, took) = with_bystander(&gw, "closed-loop").await;
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert!(message(&r).contains("timed out"), "{}", message(&r));
        // The deadline plus a few ms (debug build, shared 2-core machine: allow 250).
        assert!(
            took < Duration::from_millis(DEADLINE_MS + 250),
            "took {took:?}"
        );
    }
    assert!(up.requests().iter().all(|r| {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        body["model"] == "m"
    }));
}

#[tokio::test]
async fn an_infinite_loop_in_a_fail_open_plugin_lets_the_request_through() {
    let up = mock(tokens(3)).await;
    let gw = hostile_gateway(&up, 100).await;
    let _ = timed(&gw, &chat("open-loop", false)).await;
    let (r, took) = with_bystander(&gw, "open-loop").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        took < Duration::from_millis(DEADLINE_MS + 250),
        "took {took:?}"
    );
}

#[tokio::test]
async fn a_loop_in_a_stream_hook_ends_the_stream_or_is_bypassed() {
    let up = mock(tokens(4)).await;
    let gw = hostile_gateway(&up, 100).await;
    // Fail-closed: the first chunk's hook is cut; the stream ends with an error event
    // and no [DONE], and nothing the plugin did not pass reached the client.
    let resp = gw
        .send(
            "/v1/chat/completions",
            Some(KEY),
            chat("closed-stream-loop", true).to_string(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let events = read_events(resp, Instant::now()).await;
    let last = events.last().unwrap();
    assert_ne!(last.data, "[DONE]");
    assert!(last.data.contains("timed out"), "{}", last.data);
    assert_eq!(text_of(&events), "");
    // A loop in before-request fails the request before any stream.
    let resp = gw
        .send(
            "/v1/chat/completions",
            Some(KEY),
            chat("closed-loop", true).to_string(),
        )
        .await;
    assert_eq!(resp.status(), 503);
    // Fail-open: before-request is cut and skipped, chunk hooks too; the answer streams.
    let resp = gw
        .send(
            "/v1/chat/completions",
            Some(KEY),
            chat("open-loop", true).to_string(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let events = read_events(resp, Instant::now()).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(text_of(&events), "Hello from the relay");
}

#[tokio::test]
async fn a_memory_bomb_is_trapped_at_the_cap() {
    let up = mock(tokens(3)).await;
    let gw = hostile_gateway(&up, 100).await;
    for _ in 0..2 {
        let (r, _) = with_bystander(&gw, "closed-memory").await;
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert!(message(&r).contains("trapped"), "{}", message(&r));
    }
    let (r, _) = with_bystander(&gw, "open-memory").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_stack_overflow_traps() {
    let up = mock(tokens(3)).await;
    let gw = hostile_gateway(&up, 100).await;
    let (r, _) = with_bystander(&gw, "closed-stack").await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(message(&r).contains("trapped"), "{}", message(&r));
    let (r, _) = with_bystander(&gw, "open-stack").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_panic_and_a_trap_are_contained() {
    let up = mock(tokens(3)).await;
    let gw = hostile_gateway(&up, 100).await;
    for mode in ["panic", "trap"] {
        let (r, _) = with_bystander(&gw, &format!("closed-{mode}")).await;
        assert_eq!(
            r.status,
            503,
            "{mode}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(message(&r).contains("trapped"), "{}", message(&r));
        let (r, _) = with_bystander(&gw, &format!("open-{mode}")).await;
        assert_eq!(r.status, 200, "{mode}");
    }
}

#[tokio::test]
async fn an_oversized_output_is_refused() {
    let up = mock(tokens(3)).await;
    let gw = hostile_gateway(&up, 100).await;
    let (r, _) = with_bystander(&gw, "closed-oversize").await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    let m = message(&r);
    // Either the host refuses the returned patch, or the guest cannot even build it
    // under its memory cap: both fail the plugin.
    assert!(m.contains("invalid output") || m.contains("trapped"), "{m}");
    let (r, _) = with_bystander(&gw, "open-oversize").await;
    assert_eq!(r.status, 200);
    let body: serde_json::Value =
        serde_json::from_slice(&up.requests().last().unwrap().body).unwrap();
    assert!(
        body.get("padding").is_none(),
        "the oversized patch was not applied"
    );
}

#[tokio::test]
async fn an_undeclared_secret_is_refused_and_a_declared_one_is_given() {
    let up = mock(tokens(3)).await;
    let gw = hostile_gateway(&up, 100).await;
    let (r, _) = with_bystander(&gw, "closed-secret").await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(message(&r).contains("undeclared"), "{}", message(&r));
    assert!(!String::from_utf8_lossy(&r.body).contains("sk-must-not-leak"));
    let (r, _) = with_bystander(&gw, "closed-allowed-secret").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "declared secret has 12 bytes"
    );
}

#[tokio::test]
async fn a_flood_of_guest_output_does_not_hurt() {
    let up = mock(tokens(3)).await;
    let gw = hostile_gateway(&up, 100).await;
    // 1000 lines overflow the captured stdout: the guest's print fails (a trap when
    // Rust's println! panics on it); fail-open goes on, and the log stays bounded.
    let (r, _) = with_bystander(&gw, "open-print").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn the_circuit_breaker_trips_on_repeated_failures() {
    let up = mock(tokens(3)).await;
    let gw = hostile_gateway(&up, 3).await;
    for _ in 0..3 {
        let (r, _) = with_bystander(&gw, "closed-panic").await;
        assert_eq!(r.status, 503);
        assert!(message(&r).contains("trapped"), "{}", message(&r));
    }
    // Open now: the plugin is not even called (fail-closed: refused at once).
    let (r, took) = with_bystander(&gw, "closed-panic").await;
    assert_eq!(r.status, 503);
    assert!(message(&r).contains("circuit open"), "{}", message(&r));
    assert!(took < Duration::from_millis(100), "{took:?}");
    // Other presets, and other plugins, are unaffected.
    let (r, _) = timed(&gw, &chat("plain", false)).await;
    assert_eq!(r.status, 200);
}

/// What `mode = "count"` answers: how many requests this instance's globals saw.
async fn counts(gw: &TestGateway, model: &str, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let (r, _) = timed(gw, &chat(model, false)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        seen.push(String::from_utf8_lossy(&r.body).into_owned());
    }
    seen
}

#[tokio::test]
async fn a_fresh_instance_per_request_keeps_nothing_between_requests() {
    let up = mock(tokens(3)).await;
    let gw = hostile_gateway(&up, 100).await;
    // `hostile` does not declare itself stateless: each request sees new globals.
    let one = "requests seen by this instance: 1";
    assert_eq!(counts(&gw, "closed-count", 3).await, [one, one, one]);
    // Nor does a stateless plugin whose claim the operator refuses.
    assert_eq!(counts(&gw, "fresh-count", 3).await, [one, one, one]);
}

#[tokio::test]
async fn a_stateless_plugin_runs_in_a_warm_reused_instance() {
    let up = mock(tokens(3)).await;
    let gw = hostile_gateway(&up, 100).await;
    // One request at a time: each call borrows the one idle instance and gives it
    // back, so its globals (which a truly stateless plugin would not have) carry over.
    let seen = counts(&gw, "open-count", 3).await;
    assert_eq!(
        seen,
        [1, 2, 3].map(|n| format!("requests seen by this instance: {n}"))
    );
}
