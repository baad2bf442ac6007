//! The gateway with a store, on SQLite and (when DATABASE_URL names one) Postgres:
//! quotas under concurrency, usage exactly once, key auth, changes across processes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

#[path = "../plugins/dist.rs"]
mod dist;
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use relay_core::{ClientDialect, Operation, RouteParams};
use relay_mock::{Behavior, MockServer};
use serde_json::json;
use support::*;

async fn mock(b: Behavior) -> MockServer {
    MockServer::start(b).await.unwrap()
}

/// What one request reserves: its prompt estimate plus its max_tokens.
fn reservation(body: &str, max_tokens: i64) -> i64 {
    let inbound = relay_adapters::openai::OpenAiDialect
        .parse_request(Operation::Chat, body.as_bytes(), &RouteParams::default())
        .unwrap();
    inbound.estimated_prompt_tokens() as i64 + max_tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_race_lets_exactly_k_of_n_through() {
    for db in databases("quota_race").await {
        let up = mock(Behavior {
            latency: Duration::from_millis(400),
            tokens: 3,
            ..Behavior::default()
        })
        .await;
        let gw = gateway(&db, &config_text(&channel("a", &up.base_url(), &["m"]))).await;
        let body = chat_body("m", false, 100);
        let per_request = reservation(&body, 100);
        const N: usize = 24;
        const K: i64 = 5;
        let key = gw
            .create_key(json!({"name": "racer", "quota_tokens": K * per_request}))
            .await;
        let mut tasks = Vec::new();
        for _ in 0..N {
            let (client, url, key, body) = (gw.client.clone(), gw.url(), key.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                chat_at(&client, &url, &key, body).await
            }));
        }
        let mut by_status: HashMap<u16, usize> = HashMap::new();
        for t in tasks {
            let r = t.await.unwrap();
            if r.status == 429 {
                assert_eq!(
                    r.json()["error"]["code"],
                    "insufficient_quota",
                    "{}",
                    r.text()
                );
            }
            *by_status.entry(r.status).or_default() += 1;
        }
        assert_eq!(
            by_status.get(&200).copied(),
            Some(K as usize),
            "{}: {by_status:?}",
            db.name
        );
        assert_eq!(
            by_status.get(&429).copied(),
            Some(N - K as usize),
            "{}: {by_status:?}",
            db.name
        );
        gw.flush().await;
        // Settled: used = the real tokens of the K requests, nothing left reserved.
        let k = gw.store().key("racer").await.unwrap().unwrap();
        assert_eq!(k.quota_reserved, 0, "{}", db.name);
        assert!(
            k.quota_used > 0 && k.quota_used < K * per_request,
            "{}: {k:?}",
            db.name
        );
        gw.running.shutdown().await;
    }
}

#[tokio::test]
async fn usage_exactly_once_across_retries_and_failover() {
    for db in databases("usage_failover").await {
        // `flaky` fails its first 3 requests with a retryable 500; `dead` always 401s
        // (fail over for good); `good` answers.
        let flaky = mock(Behavior {
            status: Some(500),
            fail_first: 3,
            tokens: 4,
            ..Behavior::default()
        })
        .await;
        let dead = mock(Behavior {
            status: Some(401),
            ..Behavior::default()
        })
        .await;
        let good = mock(Behavior {
            tokens: 4,
            ..Behavior::default()
        })
        .await;
        let config = format!(
            "{}{}{}[[presets]]\nname = \"p\"\n[[presets.items]]\nchannels = [\"dead\"]\nmodel = \"m\"\n[[presets.items]]\nchannels = [\"flaky\", \"good\"]\nstrategy = \"failover\"\nmodel = \"m\"\nretry = {{ max_attempts = 3, backoff_base_ms = 1, backoff_max_ms = 5 }}\n",
            channel("dead", &dead.base_url(), &["m"]),
            channel("flaky", &flaky.base_url(), &["m"]),
            channel("good", &good.base_url(), &["m"]),
        );
        let gw = gateway(&db, &config_text(&config)).await;
        let mut ids = Vec::new();
        for i in 0..12 {
            let r = gw.chat(STATIC_KEY, chat_body("p", i % 2 == 0, 10)).await;
            assert_eq!(r.status, 200, "{}: {}", db.name, r.text());
            ids.push(r.request_id());
        }
        gw.flush().await;
        let rows = gw.store().usage_request_ids().await.unwrap();
        assert_eq!(rows.len(), ids.len(), "{}", db.name);
        for id in &ids {
            assert_eq!(
                gw.store().usage_count(id).await.unwrap(),
                1,
                "{}: {id}",
                db.name
            );
        }
        // The first requests took several attempts, and were billed once.
        let (attempts,): (i64,) = sqlx::query_as("SELECT MAX(attempts) FROM usage")
            .fetch_one(&gw.sql().await)
            .await
            .unwrap();
        assert!(attempts >= 3, "{}: max attempts {attempts}", db.name);
        gw.running.shutdown().await;
    }
}

#[tokio::test]
async fn usage_once_for_a_client_that_disconnects_mid_stream() {
    for db in databases("usage_disconnect").await {
        let up = mock(Behavior {
            tokens: 200,
            chunk_interval: Duration::from_millis(20),
            ..Behavior::default()
        })
        .await;
        let gw = gateway(&db, &config_text(&channel("a", &up.base_url(), &["m"]))).await;
        let req = http::Request::post(format!("{}/v1/chat/completions", gw.url()))
            .header("authorization", format!("Bearer {STATIC_KEY}"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(chat_body(
                "m", true, 500,
            ))))
            .unwrap();
        let resp = gw.client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let mut body = resp.into_body();
        // Two frames, then hang up.
        for _ in 0..2 {
            body.frame().await.unwrap().unwrap();
        }
        drop(body);
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            gw.flush().await;
            if gw.store().usage_count(&id).await.unwrap() == 1 || Instant::now() > until {
                break;
            }
        }
        assert_eq!(gw.store().usage_count(&id).await.unwrap(), 1, "{}", db.name);
        let (outcome,): (String,) =
            sqlx::query_as("SELECT outcome FROM usage WHERE request_id = $1")
                .bind(&id)
                .fetch_one(&gw.sql().await)
                .await
                .unwrap();
        assert_eq!(outcome, "cancelled", "{}", db.name);
        // And it stays one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        gw.flush().await;
        assert_eq!(
            gw.store().usage_request_ids().await.unwrap().len(),
            1,
            "{}",
            db.name
        );
        gw.running.shutdown().await;
    }
}

#[tokio::test]
async fn key_auth_expiry_and_revocation() {
    for db in databases("key_auth").await {
        let up = mock(Behavior::default()).await;
        let gw = gateway(
            &db,
            &config_text(&channel("a", &up.base_url(), &["m", "other"])),
        )
        .await;
        let body = || chat_body("m", false, 5);
        // The config file's key and a generated one.
        assert_eq!(gw.chat(STATIC_KEY, body()).await.status, 200);
        let key = gw
            .create_key(json!({"name": "dev", "allowed_models": ["m"], "rpm": 100}))
            .await;
        assert!(key.starts_with("rk-") && key.len() == 43, "{key}");
        assert_eq!(gw.chat(&key, body()).await.status, 200, "{}", db.name);
        // A wrong secret with the right prefix, and nothing at all.
        let forged = format!("{}{}", &key[..11], "x".repeat(32));
        let r = gw.chat(&forged, body()).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (401, Some("invalid_api_key"))
        );
        // Not an allowed model.
        let r = gw.chat(&key, chat_body("other", false, 5)).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (403, Some("model_not_allowed"))
        );
        // Expired.
        let r = gw
            .admin(
                "PATCH",
                "/admin/keys/dev",
                Some(json!({"expires_at": relay_store::now_ms() - 1})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = gw.chat(&key, body()).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (401, Some("expired_api_key"))
        );
        // Revoked (after un-expiring).
        gw.admin(
            "PATCH",
            "/admin/keys/dev",
            Some(json!({"expires_at": relay_store::now_ms() + 3_600_000})),
        )
        .await;
        assert_eq!(gw.chat(&key, body()).await.status, 200);
        assert_eq!(
            gw.admin("POST", "/admin/keys/dev/revoke", None)
                .await
                .status,
            204
        );
        let r = gw.chat(&key, body()).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (401, Some("revoked_api_key"))
        );
        // The stored key is a prefix and a digest, never the key.
        let (prefix, sha): (String, String) =
            sqlx::query_as("SELECT prefix, key_sha256 FROM api_keys WHERE id = 'dev'")
                .fetch_one(&gw.sql().await)
                .await
                .unwrap();
        assert_eq!(prefix, &key[..11]);
        assert_ne!(sha, key);
        // Admin responses mask credentials; the database holds them sealed.
        let r = gw.admin("GET", "/admin/channels/a", None).await;
        assert_eq!(r.json()["api_keys"][0], "sk-****al", "{}", r.text());
        assert!(!r.text().contains("credential"));
        // Without the admin token: 401.
        let req = http::Request::get(format!("{}/admin/keys", gw.admin))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        assert_eq!(
            collect(gw.client.request(req).await.unwrap()).await.status,
            401
        );
        gw.running.shutdown().await;
    }
}

#[tokio::test]
async fn a_keys_group_limits_it_to_the_channels_of_that_group() {
    for db in databases("key_group").await {
        let vip = mock(Behavior::default()).await;
        let public = mock(Behavior::default()).await;
        let channels = format!(
            "{}groups = [\"vip\"]\n\n{}",
            channel("vip", &vip.base_url(), &["m"]),
            channel("public", &public.base_url(), &["m", "only-public"])
        );
        let gw = gateway(&db, &config_text(&channels)).await;
        let key = gw
            .create_key(json!({"name": "grouped", "group": "vip"}))
            .await;
        for _ in 0..8 {
            let r = gw.chat(&key, chat_body("m", false, 5)).await;
            assert_eq!(r.status, 200, "{}: {}", db.name, r.text());
        }
        assert_eq!(vip.requests().len(), 8, "{}", db.name);
        assert_eq!(public.requests().len(), 0, "{}", db.name);
        // A model only channels outside the group serve: 404 in the client's dialect.
        let r = gw.chat(&key, chat_body("only-public", false, 5)).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (404, Some("model_not_found")),
            "{}",
            db.name
        );
        assert!(r.text().contains("`vip`"), "{}", r.text());
        // A key without a group is not limited.
        let r = gw
            .chat(STATIC_KEY, chat_body("only-public", false, 5))
            .await;
        assert_eq!(r.status, 200, "{}", db.name);
        gw.running.shutdown().await;
    }
}

#[tokio::test]
async fn rate_limit_is_a_429_with_retry_after_in_the_clients_dialect() {
    let db = databases("rate_limit").await.remove(0);
    let up = mock(Behavior::default()).await;
    let gw = gateway(&db, &config_text(&channel("a", &up.base_url(), &["m"]))).await;
    let key = gw.create_key(json!({"name": "slow", "rpm": 2})).await;
    assert_eq!(gw.chat(&key, chat_body("m", false, 5)).await.status, 200);
    assert_eq!(gw.chat(&key, chat_body("m", false, 5)).await.status, 200);
    let r = gw.chat(&key, chat_body("m", false, 5)).await;
    assert_eq!(r.status, 429);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    // Anthropic dialect: its own error shape.
    let req = http::Request::post(format!("{}/v1/messages", gw.url()))
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )))
        .unwrap();
    let r = collect(gw.client.request(req).await.unwrap()).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["type"], "error", "{}", r.text());
    gw.running.shutdown().await;
}

#[tokio::test]
async fn admin_changes_apply_live_bad_ones_are_refused_and_a_second_process_follows() {
    for db in databases("second_process").await {
        let up = mock(Behavior::default()).await;
        let gw = gateway(&db, &config_text(&channel("a", &up.base_url(), &["m"]))).await;
        // A second gateway process on the same database.
        let mut second = GatewayProcess::start(&gw.config_path, &db).await;
        let other = second.url.clone();
        // A bad change is refused with every problem, and nothing changes.
        let r = gw
            .admin(
                "POST",
                "/admin/presets",
                Some(json!({"name": "bad", "items": [{"channels": ["nope"], "model": "m"}]})),
            )
            .await;
        assert_eq!(r.status, 422, "{}", r.text());
        assert!(
            r.json()["error"]["problems"][0]
                .as_str()
                .unwrap()
                .contains("nope"),
            "{}",
            r.text()
        );
        // A new key and a new preset, made through the first gateway's admin API...
        let key = gw.create_key(json!({"name": "new"})).await;
        let r = gw
            .admin(
                "POST",
                "/admin/presets",
                Some(json!({"name": "fresh", "items": [{"channels": ["a"], "model": "m"}]})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(
            gw.chat(&key, chat_body("fresh", false, 5)).await.status,
            200
        );
        // ...work on the second process once it has seen the change.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let r = chat_at(&gw.client, &other, &key, chat_body("fresh", false, 5)).await;
            if r.status == 200 {
                break;
            }
            assert!(
                Instant::now() < until,
                "{}: the second process never saw the change: {} {}",
                db.name,
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = second.child.kill().await;
        gw.running.shutdown().await;
    }
}

#[tokio::test]
async fn usage_report_pricing_and_plugins_through_the_admin_api() {
    let db = databases("admin_misc").await.remove(0);
    let up = mock(Behavior {
        tokens: 10,
        ..Behavior::default()
    })
    .await;
    let gw = gateway(&db, &config_text(&channel("a", &up.base_url(), &["m"]))).await;
    let r = gw
        .admin(
            "PUT",
            "/admin/pricing/m",
            Some(json!({"input_per_mtok": 1.0, "output_per_mtok": 2.0, "cached_input_per_mtok": 0.5})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..3 {
        assert_eq!(
            gw.chat(STATIC_KEY, chat_body("m", false, 5)).await.status,
            200
        );
    }
    gw.flush().await;
    let r = gw.admin("GET", "/admin/usage?group_by=model", None).await;
    let v = r.json();
    assert_eq!(v["total"]["requests"], 3, "{v}");
    assert_eq!(v["lines"][0]["group"], "m");
    assert_eq!(v["total"]["output_tokens"], 30);
    // 10 output tokens × 2 USD/M = 20 micro-USD each, plus the input.
    assert!(v["total"]["cost_micros"].as_i64().unwrap() >= 60, "{v}");
    // A plugin artifact, registered by its sha256.
    let wasm = b"\0asm\x01\0\0\0".to_vec();
    let req = http::Request::post(format!(
        "{}/admin/plugins?name=noop&version=0.1.0",
        gw.admin
    ))
    .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
    .body(http_body_util::Full::new(bytes::Bytes::from(wasm.clone())))
    .unwrap();
    let r = collect(gw.client.request(req).await.unwrap()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    use sha2::Digest;
    assert_eq!(r.json()["sha256"], hex::encode(sha2::Sha256::digest(&wasm)));
    let r = gw.admin("GET", "/admin/plugins", None).await;
    assert_eq!(r.json()["plugins"][0]["name"], "noop");
    // The channel test sends one live request.
    let before = up.requests().len();
    let r = gw.admin("POST", "/admin/channels/a/test", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ok"], true, "{}", r.text());
    assert_eq!(up.requests().len(), before + 1);
    let r = gw.admin("GET", "/admin/metrics", None).await;
    assert!(
        r.text().contains("relay_usage_dropped_total 0"),
        "{}",
        r.text()
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn plugin_metrics_are_on_the_admin_metrics_endpoint() {
    let dir = dist::plugin_dir();
    let db = databases("plugin_metrics").await.remove(0);
    let up = mock(Behavior {
        tokens: 3,
        ..Behavior::default()
    })
    .await;
    let config = format!(
        "{}\n[plugins]\ndir = {:?}\ncache_dir = {:?}\n\n[[plugins.registry]]\nname = \"noop\"\nversion = \"9.9.9\"\n\n[[presets]]\nname = \"with-noop\"\n[[presets.items]]\nchannels = [\"a\"]\nmodel = \"m\"\nplugins = [{{ name = \"noop\" }}]\n",
        config_text(&channel("a", &up.base_url(), &["m"])),
        dir.display().to_string(),
        dist::root()
            .join("target/plugin-cache")
            .display()
            .to_string(),
    );
    let gw = gateway(&db, &config).await;
    for _ in 0..3 {
        let r = gw.chat(STATIC_KEY, chat_body("with-noop", false, 5)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let text = gw.admin("GET", "/admin/metrics", None).await.text();
    let has = |line: &str| assert!(text.contains(&format!("{line}\n")), "{line}: {text}");
    let labels = r#"plugin="noop",version="9.9.9""#;
    // `before-request` and `after-response` for each of the 3 requests.
    has(&format!("relay_plugin_calls_total{{{labels}}} 6"));
    has(&format!("relay_plugin_errors_total{{{labels}}} 0"));
    has(&format!(
        "relay_plugin_call_duration_seconds_count{{{labels}}} 6"
    ));
    // noop is stateless: its one warm instance is idle between requests.
    has("relay_plugin_warm_instances 1");
    // The usage writer's metrics are still there.
    has("relay_usage_dropped_total 0");
    gw.running.shutdown().await;
}

/// `(quota_reserved, hold rows, hold amount)` of a key, read straight from the database.
async fn held(sql: &sqlx::AnyPool, key: &str) -> (i64, i64, i64) {
    let (reserved,): (i64,) = sqlx::query_as("SELECT quota_reserved FROM api_keys WHERE id = $1")
        .bind(key)
        .fetch_one(sql)
        .await
        .unwrap();
    let (rows, amount): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM quota_holds WHERE key_id = $1",
    )
    .bind(key)
    .fetch_one(sql)
    .await
    .unwrap();
    (reserved, rows, amount)
}

#[tokio::test]
async fn a_killed_gateways_quota_hold_is_released_by_the_next_one() {
    for db in databases("crash_reconcile").await {
        let name = db.name;
        // A stream of 20 s: its hold is outstanding while it runs.
        let up = mock(Behavior {
            tokens: 400,
            chunk_interval: Duration::from_millis(50),
            ..Behavior::default()
        })
        .await;
        let dir = TempDir::new("relay-gw-crash");
        let config_path = dir.join("gateway.toml");
        std::fs::write(
            &config_path,
            format!(
                "{}[store]\nheartbeat_interval_ms = 200\nreplica_stale_after_ms = 1500\nreconcile_interval_ms = 300\n",
                config_text(&channel("a", &up.base_url(), &["m"]))
            ),
        )
        .unwrap();

        // A key whose whole quota is exactly what one `full` request reserves.
        let stream_body = chat_body("m", true, 500);
        let full_body = chat_body("m", false, 1000);
        let (per_stream, limit) = (
            reservation(&stream_body, 500),
            reservation(&full_body, 1000),
        );
        let store = relay_store::connect(&db.url, 2).await.unwrap();
        store.migrate().await.unwrap();
        let generated = relay_store::keys::generate();
        let mut record = relay_store::KeyRecord::new(
            "metered",
            generated.sha256.clone(),
            relay_store::Owner::Admin,
        );
        record.prefix = Some(generated.prefix.clone());
        record.quota = Some(relay_store::Quota {
            kind: relay_store::QuotaKind::Tokens,
            limit,
        });
        store.create_key(&record, "test").await.unwrap();
        let key = generated.clear;
        sqlx::any::install_default_drivers();
        let sql = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(store.url())
            .await
            .unwrap();

        // Gateway A serves a slow stream for the key.
        let mut a = GatewayProcess::start(&config_path, &db).await;
        let client = client();
        let req = http::Request::post(format!("{}/v1/chat/completions", a.url))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(stream_body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        let mut stream = resp.into_body();
        stream.frame().await.unwrap().unwrap();
        assert_eq!(
            held(&sql, "metered").await,
            (per_stream, 1, per_stream),
            "{name}"
        );
        // A is alive and reconciles every 300 ms: after more than the staleness limit
        // its own hold is still there, and the key cannot reserve its whole quota.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            held(&sql, "metered").await,
            (per_stream, 1, per_stream),
            "{name}"
        );
        let r = chat_at(&client, &a.url, &key, full_body.clone()).await;
        assert_eq!(r.status, 429, "{name}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "insufficient_quota", "{name}");

        // kill -9 mid-stream: nothing settles or releases the hold.
        a.kill_9().await;
        drop(stream);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            held(&sql, "metered").await,
            (per_stream, 1, per_stream),
            "{name}"
        );

        // Gateway B on the same database releases it once A's row is stale.
        let mut b = GatewayProcess::start(&config_path, &db).await;
        let until = Instant::now() + Duration::from_secs(20);
        while held(&sql, "metered").await != (0, 0, 0) {
            assert!(
                Instant::now() < until,
                "{name}: the hold was not released: {:?}",
                held(&sql, "metered").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (ledger_rows, released): (i64, i64) = sqlx::query_as(
            "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(released), 0) AS BIGINT) FROM quota_ledger \
             WHERE key_id = 'metered' AND note LIKE 'released: replica gone%'",
        )
        .fetch_one(&sql)
        .await
        .unwrap();
        assert_eq!((ledger_rows, released), (1, per_stream), "{name}");
        let k = store.key("metered").await.unwrap().unwrap();
        assert_eq!((k.quota_used, k.quota_reserved), (0, 0), "{name}");

        // The whole quota is usable again (B refreshes its cached balance by itself,
        // but reserves in the database anyway).
        let r = chat_at(&client, &b.url, &key, full_body).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());

        // A graceful stop settles B's request and removes B's replica row; A's was
        // removed by B's reconciler.
        b.terminate().await;
        let k = store.key("metered").await.unwrap().unwrap();
        assert!(k.quota_used > 0 && k.quota_reserved == 0, "{name}: {k:?}");
        let (replicas,): (i64,) = sqlx::query_as("SELECT CAST(COUNT(*) AS BIGINT) FROM replicas")
            .fetch_one(&sql)
            .await
            .unwrap();
        assert_eq!(replicas, 0, "{name}");
    }
}
