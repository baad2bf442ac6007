//! Per-request and per-chunk work of the OpenAI pass-through path: parsing the client's
//! body, encoding the upstream body, and observing one stream chunk.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use relay_adapters::openai::{OpenAiDialect, PassthroughStream};
use relay_core::sse::SseEvent;
use relay_core::{ChannelConfig, ClientDialect, Operation, StreamTranslator, UpstreamCall};

const BODY: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about relays and streams, with a title."}],"temperature":0.7,"stream":true,"seed":42,"user":"bench"}"#;

fn request_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("openai_request");
    group.bench_function("parse_client_body", |b| {
        b.iter(|| {
            black_box(
                OpenAiDialect
                    .parse_request(Operation::Chat, black_box(BODY), &Default::default())
                    .unwrap(),
            )
        })
    });
    let req = OpenAiDialect
        .parse_request(Operation::Chat, BODY, &Default::default())
        .unwrap();
    let registry = relay_adapters::default_registry();
    let adapter = registry.get("openai").unwrap();
    let channel = ChannelConfig::new("c", "openai");
    let key = relay_core::Secret::new("sk-bench");
    group.bench_function("build_upstream_request", |b| {
        b.iter(|| {
            let call = UpstreamCall {
                request: &req,
                channel: &channel,
                base_url: "https://api.openai.com/v1",
                api_key: Some(&key),
                model: "gpt-4o-mini-2024-07-18",
            };
            black_box(adapter.build_request(&call).unwrap())
        })
    });
    group.finish();
}

fn stream_chunk(c: &mut Criterion) {
    let chunk = Bytes::from_static(br#"{"id":"chatcmpl-abc123","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":null,"choices":[{"index":0,"delta":{"content":" streams"},"logprobs":null,"finish_reason":null}],"usage":null}"#);
    let mut group = c.benchmark_group("openai_stream");
    group.bench_function("passthrough_one_chunk", |b| {
        let mut t = PassthroughStream::new(false);
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            let ev = SseEvent {
                data: chunk.clone(),
                ..SseEvent::default()
            };
            black_box(t.on_event(ev, &mut out).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, request_path, stream_chunk);
criterion_main!(benches);
