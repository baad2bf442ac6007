//! `relay-icount WORKLOAD ITERS`: runs one micro workload ITERS times, for instruction
//! counting under callgrind (`benches/icount.sh`). Counting the difference between a
//! run of 1 and a run of 1 + N iterations removes start-up and leaves the cost of one
//! iteration, as a figure a noisy shared machine cannot disturb.
//!
//! The workloads mirror the criterion benches (`benches/benches/*.rs`).

use std::hint::black_box;
use std::process::ExitCode;

use bytes::{Bytes, BytesMut};
use relay_adapters::openai::{OpenAiDialect, PassthroughStream};
use relay_core::codec::EncoderOptions;
use relay_core::select::ChannelSet;
use relay_core::sse::{SseEvent, SseParser, encode_event};
use relay_core::{
    ChannelConfig, ClientDialect, DialectId, Operation, StreamTranslator, UpstreamCall,
};

const BODY: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about relays and streams, with a title."}],"temperature":0.7,"stream":true,"seed":42,"user":"bench"}"#;

const ANTHROPIC_BODY: &[u8] = br#"{"model":"claude-sonnet-4","max_tokens":1024,"system":"You are a helpful assistant.","messages":[{"role":"user","content":"Write a haiku about relays and streams, with a title."}],"temperature":0.7,"stream":true}"#;

const CHUNK: &[u8] = br#"{"id":"chatcmpl-abc123","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":null,"choices":[{"index":0,"delta":{"content":" streams"},"logprobs":null,"finish_reason":null}],"usage":null}"#;

/// The workloads, by name, with what one iteration is.
const WORKLOADS: &[(&str, &str)] = &[
    (
        "sse_parse_64k",
        "parse 64 KiB of an OpenAI stream in 1,460-byte reads",
    ),
    ("sse_encode_event", "encode one data event"),
    ("select_weighted_100", "weighted pick among 100 channels"),
    ("select_rr_100", "round-robin pick among 100 channels"),
    (
        "select_weighted_100_3_failed",
        "weighted pick with 3 channels already failed",
    ),
    ("openai_parse_body", "parse an OpenAI chat body (fast path)"),
    (
        "openai_build_upstream",
        "build the upstream body on the pass-through path",
    ),
    (
        "openai_decode_response",
        "read usage from a 1.4 KB non-streaming answer (pass-through path)",
    ),
    (
        "openai_passthrough_chunk",
        "observe and forward one stream chunk",
    ),
    (
        "anthropic_to_openai_request",
        "parse an Anthropic body and build an OpenAI upstream body via the IR",
    ),
    (
        "openai_to_anthropic_chunk",
        "translate one OpenAI chunk into Anthropic events",
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--list") {
        for (name, what) in WORKLOADS {
            println!("{name}\t{what}");
        }
        return ExitCode::SUCCESS;
    }
    if args.len() != 2 || args[0] == "-h" || args[0] == "--help" {
        eprintln!(
            "usage: relay-icount WORKLOAD ITERS | --list\n\
             Runs one micro workload ITERS times (for callgrind; see benches/icount.sh)."
        );
        return ExitCode::from(2);
    }
    let Ok(iters) = args[1].parse::<u64>() else {
        eprintln!("relay-icount: ITERS must be a number");
        return ExitCode::from(2);
    };
    match run(&args[0], iters) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-icount: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(name: &str, iters: u64) -> Result<(), String> {
    match name {
        "sse_parse_64k" => {
            let mut input = Vec::new();
            let mut i = 0;
            while input.len() < 64 * 1024 {
                input.extend_from_slice(format!("data: {{\"id\":\"chatcmpl-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}]}}\n\n").as_bytes());
                i += 1;
            }
            let reads: Vec<Bytes> = input.chunks(1_460).map(Bytes::copy_from_slice).collect();
            for _ in 0..iters {
                let mut p = SseParser::new();
                let mut n = 0usize;
                for r in &reads {
                    p.push_bytes(r.clone());
                    while let Some(ev) = p.next_event().map_err(|e| e.to_string())? {
                        n += ev.data.len();
                    }
                }
                black_box(n);
            }
        }
        "sse_encode_event" => {
            let mut out = BytesMut::with_capacity(4096);
            for _ in 0..iters {
                out.clear();
                encode_event(&mut out, None, black_box(CHUNK));
                black_box(out.len());
            }
        }
        "select_weighted_100" | "select_rr_100" | "select_weighted_100_3_failed" => {
            let t = relay_benches::fixtures::selection_table(100).map_err(|e| e.to_string())?;
            let preset = if name == "select_rr_100" {
                "rr"
            } else {
                "weighted"
            };
            let route = &t.resolve(preset).ok_or("no preset")?.items[0];
            let mut skip = ChannelSet::default();
            if name.ends_with("3_failed") {
                for id in ["c0", "c3", "c6"] {
                    skip.insert(t.channel(id).ok_or("no channel")?);
                }
            }
            for _ in 0..iters {
                black_box(route.select(&t.board, &skip).map(|c| c.id().len()));
            }
        }
        "openai_parse_body" => {
            for _ in 0..iters {
                let r = OpenAiDialect
                    .parse_request(Operation::Chat, black_box(BODY), &Default::default())
                    .map_err(|e| e.to_string())?;
                black_box(r);
            }
        }
        "openai_build_upstream" => {
            let req = OpenAiDialect
                .parse_request(Operation::Chat, BODY, &Default::default())
                .map_err(|e| e.to_string())?;
            let registry = relay_adapters::default_registry();
            build_loop(&registry, &req, iters)?;
        }
        "anthropic_to_openai_request" => {
            let codecs = relay_adapters::default_codecs();
            let codec = codecs
                .get(DialectId::ANTHROPIC_MESSAGES)
                .ok_or("no anthropic codec")?;
            let client = relay_adapters::CodecClient::new(codec.clone());
            let registry = relay_adapters::default_registry();
            for _ in 0..iters {
                let req = client
                    .parse_request(
                        Operation::Chat,
                        black_box(ANTHROPIC_BODY),
                        &Default::default(),
                    )
                    .map_err(|e| e.to_string())?;
                build_loop(&registry, &req, 1)?;
            }
        }
        "openai_decode_response" => {
            let req = OpenAiDialect
                .parse_request(Operation::Chat, BODY, &Default::default())
                .map_err(|e| e.to_string())?;
            let registry = relay_adapters::default_registry();
            let adapter = registry.get("openai").ok_or("no adapter")?;
            let channel = ChannelConfig::new("c", "openai");
            let text = "relays and streams ".repeat(64);
            let answer = Bytes::from(format!(
                r#"{{"id":"chatcmpl-abc123","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":25,"completion_tokens":256,"total_tokens":281,"prompt_tokens_details":{{"cached_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0}}}},"system_fingerprint":"fp_1"}}"#
            ));
            for _ in 0..iters {
                let call = UpstreamCall {
                    request: &req,
                    channel: &channel,
                    base_url: "https://api.openai.com/v1",
                    api_key: None,
                    model: "gpt-4o-mini",
                };
                let decoded = adapter
                    .decode_response(&call, answer.clone())
                    .map_err(|e| e.to_string())?;
                black_box(decoded.usage);
            }
        }
        "openai_passthrough_chunk" => {
            let chunk = Bytes::from_static(CHUNK);
            let mut t = PassthroughStream::new(false);
            let mut out = BytesMut::with_capacity(4096);
            for _ in 0..iters {
                out.clear();
                let ev = SseEvent {
                    data: chunk.clone(),
                    ..SseEvent::default()
                };
                black_box(t.on_event(ev, &mut out).map_err(|e| e.to_string())?);
            }
        }
        "openai_to_anthropic_chunk" => {
            let codecs = relay_adapters::default_codecs();
            let up = codecs
                .get(DialectId::OPENAI_CHAT)
                .ok_or("no openai codec")?;
            let client = codecs
                .get(DialectId::ANTHROPIC_MESSAGES)
                .ok_or("no anthropic codec")?;
            let mut t = relay_adapters::translate::TranslatingStream::new(
                up.as_ref(),
                client.as_ref(),
                EncoderOptions::default(),
            );
            let chunk = Bytes::from_static(CHUNK);
            let mut out = BytesMut::with_capacity(4096);
            for _ in 0..iters {
                out.clear();
                let ev = SseEvent {
                    data: chunk.clone(),
                    ..SseEvent::default()
                };
                black_box(t.on_event(ev, &mut out).map_err(|e| e.to_string())?);
            }
        }
        other => return Err(format!("unknown workload {other:?} (see --list)")),
    }
    Ok(())
}

/// Builds the OpenAI upstream request for `req`, `iters` times.
fn build_loop(
    registry: &relay_core::AdapterRegistry,
    req: &relay_core::InboundRequest,
    iters: u64,
) -> Result<(), String> {
    let adapter = registry.get("openai").ok_or("no adapter")?;
    let channel = ChannelConfig::new("c", "openai");
    let key = relay_core::Secret::new("sk-bench");
    for _ in 0..iters {
        let call = UpstreamCall {
            request: req,
            channel: &channel,
            base_url: "https://api.openai.com/v1",
            api_key: Some(&key),
            model: "gpt-4o-mini-2024-07-18",
        };
        black_box(adapter.build_request(&call).map_err(|e| e.to_string())?);
    }
    Ok(())
}
