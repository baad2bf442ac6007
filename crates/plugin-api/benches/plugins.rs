//! Plugin host benchmarks (criterion). The components come from
//! `scripts/build-plugins` (`plugins/dist/`): run it first.
//!
//! The no-op guests declare themselves stateless, so their calls borrow warm instances
//! from the item's pool; the `*-fresh` registrations load the same components with
//! `reuse_instances = false` (a fresh instance per request, as for any plugin that
//! does not declare itself stateless).
//!
//! - `hook/noop_warm`: `before-request` on a warm instance, no body access;
//! - `hook/body_1k_warm`: the same with a 1 KiB body copied into the view;
//! - `hook/fresh_instance_1k`: a fresh instance plus `before-request` with 1 KiB;
//! - `hook/chunk_warm`: one stream chunk through `on-stream-chunk`, warm;
//! - `request/plugins_{0,1,4,8}`: a whole non-streaming request through the relay
//!   engine (in process) to relay-mock over loopback, with 0, 1, 4 and 8 no-op plugins
//!   (warm instances); `request/plugins_{1,8}_fresh`: the same with fresh ones.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use relay_core::hooks::HookSession;
use relay_core::{
    ClientDialect, InboundRequest, Operation, Relay, RelayConfig, RelayRequest, RouteParams,
};
use relay_plugin_api::{ChainEntry, HostSettings, ItemChain, PluginHost, PluginLimits, PluginSpec};

fn dist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist")
}

fn host() -> PluginHost {
    let host = PluginHost::new(HostSettings {
        cache_dir: Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/plugin-cache"),
        ),
        ..HostSettings::default()
    })
    .unwrap();
    for (name, file, reuse) in [
        ("noop", "noop", true),
        ("noop-body", "noop-body", true),
        ("noop-fresh", "noop", false),
        ("noop-body-fresh", "noop-body", false),
    ] {
        host.load(&PluginSpec {
            name: name.into(),
            version: "0.1.0".into(),
            path: dist().join(format!("{file}.wasm")),
            secrets: Default::default(),
            limits: PluginLimits {
                reuse_instances: reuse,
                ..PluginLimits::default()
            },
            failure_mode: None,
        })
        .unwrap_or_else(|e| panic!("{e} (run scripts/build-plugins first)"));
    }
    host
}

fn request(body_bytes: usize) -> InboundRequest {
    let filler = "x".repeat(body_bytes.saturating_sub(120));
    let body = serde_json::json!({
        "model": "m",
        "stream": false,
        "messages": [{"role": "user", "content": filler}],
    })
    .to_string();
    relay_adapters::openai::OpenAiDialect
        .parse_request(Operation::Chat, body.as_bytes(), &RouteParams::default())
        .unwrap()
}

fn chain(host: &PluginHost, name: &str, n: usize) -> ItemChain {
    let plugin = host.get(name, None).unwrap();
    ItemChain::new(
        (0..n)
            .map(|_| ChainEntry::new(plugin.clone(), Arc::from("null")))
            .collect(),
    )
}

fn hooks(c: &mut Criterion) {
    let host = host();
    let small = request(0);
    let kib = request(1024);
    let noop = chain(&host, "noop", 1);
    let body = chain(&host, "noop-body", 1);
    let body_fresh = chain(&host, "noop-body-fresh", 1);
    let mut g = c.benchmark_group("hook");

    let mut warm = noop.session("req_bench", 0);
    warm.before_request(&small).unwrap();
    g.bench_function("noop_warm", |b| {
        b.iter(|| black_box(warm.before_request(black_box(&small)).unwrap()))
    });

    let mut warm_body = body.session("req_bench", 0);
    warm_body.before_request(&kib).unwrap();
    g.bench_function("body_1k_warm", |b| {
        b.iter(|| black_box(warm_body.before_request(black_box(&kib)).unwrap()))
    });

    g.bench_function("fresh_instance_1k", |b| {
        b.iter(|| {
            let mut s = body_fresh.session("req_bench", 0);
            black_box(s.before_request(black_box(&kib)).unwrap())
        })
    });

    let chunk = b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \"}}]}\n\n";
    let mut filter = Box::new(noop.session("req_bench", 0))
        .into_stream_filter()
        .unwrap();
    let mut buf = BytesMut::from(&chunk[..]);
    filter.on_chunk(&mut buf).unwrap();
    g.bench_function("chunk_warm", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&chunk[..]);
            filter.on_chunk(&mut buf).unwrap();
            black_box(buf)
        })
    });
    g.finish();
}

fn requests(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = rt
        .block_on(relay_mock::MockServer::start(relay_mock::Behavior {
            tokens: 16,
            ..relay_mock::Behavior::default()
        }))
        .unwrap();
    let host = host();
    let plugins = |n: usize, name: &str| -> Vec<serde_json::Value> {
        (0..n)
            .map(|_| serde_json::json!({ "name": name }))
            .collect()
    };
    let variants = [
        ("plugins_0", 0, "noop"),
        ("plugins_1", 1, "noop"),
        ("plugins_4", 4, "noop"),
        ("plugins_8", 8, "noop"),
        ("plugins_1_fresh", 1, "noop-fresh"),
        ("plugins_8_fresh", 8, "noop-fresh"),
    ];
    let presets: Vec<serde_json::Value> = variants
        .iter()
        .map(|(preset, n, name)| {
            serde_json::json!({
                "name": preset,
                "items": [{"channels": ["a"], "model": "m", "plugins": plugins(*n, name)}],
            })
        })
        .collect();
    let config: RelayConfig = serde_json::from_value(serde_json::json!({
        "channels": [{
            "id": "a", "provider": "openai-compatible", "base_url": mock.base_url(),
            "allow_private_network": true, "api_keys": ["sk-a"], "models": ["m"],
        }],
        "presets": presets,
    }))
    .unwrap();
    let relay = Relay::builder(config)
        .adapters(relay_adapters::default_registry())
        .plugins(Arc::new(host))
        .build()
        .unwrap();
    let mut g = c.benchmark_group("request");
    for (preset, _, _) in variants {
        let body = format!(
            r#"{{"model":"{preset}","stream":false,"messages":[{{"role":"user","content":"Say hello"}}]}}"#
        );
        g.bench_function(preset, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let inbound = relay_adapters::openai::OpenAiDialect
                        .parse_request(Operation::Chat, body.as_bytes(), &RouteParams::default())
                        .unwrap();
                    let resp = relay
                        .handle(RelayRequest::new(inbound, "req_bench"))
                        .await
                        .unwrap();
                    black_box(resp.into_body().collect().await.unwrap().to_bytes())
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, hooks, requests);
criterion_main!(benches);
