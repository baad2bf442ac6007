//! SSE framing throughput: parse a realistic OpenAI stream fed in network-sized reads,
//! and encode events.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use relay_core::sse::{SseParser, encode_event};

fn transcript(chunks: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..chunks {
        out.extend_from_slice(
            format!(
                "data: {{\"id\":\"chatcmpl-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}]}}\n\n"
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

/// Parse every read; the total data bytes seen.
fn parse_reads(reads: &[Bytes]) -> usize {
    let mut p = SseParser::new();
    let mut n = 0usize;
    for r in reads {
        p.push_bytes(r.clone());
        while let Some(ev) = p.next_event().unwrap() {
            n += ev.data.len();
        }
    }
    n
}

fn parse(c: &mut Criterion) {
    let input = transcript(2_000);
    let mut group = c.benchmark_group("sse_parse");
    group.throughput(Throughput::Bytes(input.len() as u64));
    for read in [1_460usize, 16_384] {
        let reads: Vec<Bytes> = input.chunks(read).map(Bytes::copy_from_slice).collect();
        group.bench_function(format!("openai_stream_{read}B_reads"), |b| {
            b.iter(|| black_box(parse_reads(&reads)))
        });
    }
    // CRLF line ends and multi-line data take the slower paths.
    let crlf: Vec<u8> = String::from_utf8(input.clone())
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    let reads: Vec<Bytes> = crlf.chunks(1_460).map(Bytes::copy_from_slice).collect();
    group.throughput(Throughput::Bytes(crlf.len() as u64));
    group.bench_function("openai_stream_crlf_1460B_reads", |b| {
        b.iter(|| black_box(parse_reads(&reads)))
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let data = br#"{"id":"chatcmpl-abc123","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"hello "},"finish_reason":null}]}"#;
    let mut group = c.benchmark_group("sse_encode");
    group.throughput(Throughput::Bytes((data.len() + 8) as u64 * 1000));
    group.bench_function("1000_events", |b| {
        let mut out = BytesMut::with_capacity(256 * 1024);
        b.iter(|| {
            out.clear();
            for _ in 0..1000 {
                encode_event(&mut out, None, data);
            }
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, parse, encode);
criterion_main!(benches);
