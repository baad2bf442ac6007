//! The conformance corpus: for every (client dialect, upstream dialect) pair and every
//! case, feed a real-shaped upstream answer (JSON and SSE transcripts under
//! `tests/corpus/upstream/`) through the provider adapter exactly as the engine does, and
//!
//! 1. compare the client output with the golden file under `tests/corpus/expected/`
//!    (`BLESS=1 cargo test -p relay-adapters --test corpus` rewrites them; review the diff);
//! 2. decode the client output with the client dialect's own codec and check that it says
//!    the same thing as the upstream did: text, thinking, tool calls (names and parsed
//!    arguments), finish reason, usage, and errors.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use relay_adapters::{default_codecs, default_registry};
use relay_core::ir::{ContentPart, FinishReason, StreamEvent};
use relay_core::sse::{SseParser, encode_event};
use relay_core::{
    ChannelConfig, DialectId, InboundRequest, JsonObject, Operation, RelayError, UpstreamCall,
    Usage,
};
use serde_json::Value;

const DIALECTS: [(DialectId, &str); 3] = [
    (DialectId::OPENAI_CHAT, "openai"),
    (DialectId::ANTHROPIC_MESSAGES, "anthropic"),
    (DialectId::GEMINI, "gemini"),
];
const CASES: [&str; 6] = [
    "text",
    "tool",
    "parallel_tools",
    "thinking",
    "error_midstream",
    "error",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn inbound(client: DialectId, stream: bool) -> InboundRequest {
    InboundRequest {
        dialect: client,
        op: Operation::Chat,
        model: "corpus-model".into(),
        stream,
        include_usage: true,
        body: JsonObject::default(),
        prompt_chars: 40,
        ir: None,
    }
}

/// What an answer says, dialect aside.
#[derive(Debug, Default, PartialEq)]
struct Meaning {
    text: String,
    thinking: String,
    tools: Vec<(String, Value)>,
    finish: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    error: Option<String>,
}

fn finish_name(f: &FinishReason) -> String {
    match f {
        FinishReason::Stop => "stop".into(),
        FinishReason::Length => "length".into(),
        FinishReason::ToolCalls => "tool_calls".into(),
        FinishReason::ContentFilter => "content_filter".into(),
        FinishReason::Other(o) => o.clone(),
    }
}

fn merge_usage(m: &mut Meaning, u: &Usage) {
    if u.input_tokens > 0 {
        m.input_tokens = u.input_tokens;
    }
    if u.output_tokens > 0 {
        m.output_tokens = u.output_tokens;
    }
}

fn meaning_of_response(codec: DialectId, body: &[u8]) -> Meaning {
    let codecs = default_codecs();
    let resp = codecs
        .get(codec)
        .unwrap()
        .decode_response(body)
        .unwrap_or_else(|e| {
            panic!(
                "{codec} cannot decode: {e}\n{}",
                String::from_utf8_lossy(body)
            )
        });
    let mut m = Meaning::default();
    let choice = &resp.choices[0];
    for part in &choice.message.content {
        match part {
            ContentPart::Text { text } => m.text.push_str(text),
            ContentPart::Thinking { text, .. } => m.thinking.push_str(text),
            ContentPart::ToolCall {
                name, arguments, ..
            } => {
                m.tools
                    .push((name.clone(), serde_json::from_str(arguments).unwrap()));
            }
            _ => {}
        }
    }
    m.finish = choice.finish_reason.as_ref().map(finish_name);
    if let Some(u) = &resp.usage {
        merge_usage(&mut m, u);
    }
    m
}

fn meaning_of_stream(codec: DialectId, bytes: &[u8]) -> Meaning {
    let codecs = default_codecs();
    let mut decoder = codecs.get(codec).unwrap().stream_decoder();
    let mut events = Vec::new();
    let mut m = Meaning::default();
    let mut args: Vec<String> = Vec::new();
    let mut done = false;
    for ev in sse_events(bytes) {
        match decoder.decode(&ev, &mut events) {
            Ok(d) => done |= d,
            Err(e) => {
                m.error = Some(e.kind().as_str().to_owned());
                break;
            }
        }
        if done {
            break;
        }
    }
    if !done && m.error.is_none() {
        if let Err(e) = decoder.finish() {
            m.error = Some(e.kind().as_str().to_owned());
        }
    }
    for e in &events {
        match e {
            StreamEvent::TextDelta { text, .. } => m.text.push_str(text),
            StreamEvent::ThinkingDelta { text, .. } => m.thinking.push_str(text),
            StreamEvent::ToolCallStart { name, .. } => {
                m.tools.push((name.clone(), Value::Null));
                args.push(String::new());
            }
            StreamEvent::ToolCallDelta {
                index, arguments, ..
            } => {
                let i = (*index as usize).min(args.len().saturating_sub(1));
                args[i].push_str(arguments);
            }
            StreamEvent::Finish { reason, .. } => m.finish = Some(finish_name(reason)),
            StreamEvent::Usage(u) => merge_usage(&mut m, u),
            _ => {}
        }
    }
    for (tool, a) in m.tools.iter_mut().zip(&args) {
        tool.1 = if a.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(a).unwrap()
        };
    }
    m
}

/// Every event of a whole SSE transcript (a last event without its blank line included).
fn sse_events(bytes: &[u8]) -> Vec<relay_core::sse::SseEvent> {
    let mut parser = SseParser::new();
    parser.push(bytes);
    let mut events = Vec::new();
    while let Some(ev) = parser.next_event().unwrap() {
        events.push(ev);
    }
    if let Some(ev) = parser.finish().unwrap() {
        events.push(ev);
    }
    events
}

/// Stable output for golden files: JSON re-serialised with volatile fields zeroed.
fn normalise_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if k == "created" && val.is_number() {
                    *val = Value::from(0);
                } else {
                    normalise_json(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_json),
        _ => {}
    }
}

fn normalise_body(body: &[u8]) -> String {
    let mut v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    normalise_json(&mut v);
    serde_json::to_string_pretty(&v).unwrap() + "\n"
}

fn normalise_sse(bytes: &[u8]) -> String {
    let mut out = BytesMut::new();
    for ev in sse_events(bytes) {
        let data = match serde_json::from_slice::<Value>(&ev.data) {
            Ok(mut v) => {
                normalise_json(&mut v);
                v.to_string()
            }
            Err(_) => String::from_utf8_lossy(&ev.data).into_owned(),
        };
        let name = ev
            .event
            .as_deref()
            .map(|e| String::from_utf8_lossy(e).into_owned());
        encode_event(&mut out, name.as_deref(), data.as_bytes());
    }
    String::from_utf8(out.to_vec()).unwrap()
}

fn golden(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("BLESS").is_some() || !path.exists() && std::env::var_os("CI").is_none() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(path).unwrap_or_default();
    if want != actual {
        failures.push(format!(
            "golden mismatch: {}\n--- want\n{want}\n--- got\n{actual}",
            path.display()
        ));
    }
}

/// Run one upstream stream through the adapter's translator, as the engine does.
fn run_stream(
    adapter: &dyn relay_core::Adapter,
    call: &UpstreamCall<'_>,
    sse: &[u8],
) -> (Bytes, Option<RelayError>) {
    let mut t = adapter.stream_translator(call).unwrap();
    let mut out = BytesMut::new();
    for ev in sse_events(sse) {
        match t.on_event(ev, &mut out) {
            Ok(p) if p.done => return (out.freeze(), None),
            Ok(_) => {}
            Err(e) => {
                t.encode_error(&e, &mut out);
                return (out.freeze(), Some(e));
            }
        }
    }
    match t.on_eof(&mut out) {
        Ok(()) => (out.freeze(), None),
        Err(e) => {
            t.encode_error(&e, &mut out);
            (out.freeze(), Some(e))
        }
    }
}

#[test]
fn all_pairs_all_cases() {
    let registry = default_registry();
    let codecs = default_codecs();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (upstream, provider) in DIALECTS {
        let adapter = registry.get(provider).unwrap();
        let mut channel = ChannelConfig::new("corpus", provider);
        channel.base_url = Some("https://upstream.example/v1".into());
        for (client, client_name) in DIALECTS {
            for case in CASES {
                let dir = root().join("upstream").join(provider);
                let expected = root()
                    .join("expected")
                    .join(client_name)
                    .join(format!("from-{provider}"));

                // Errors: the upstream's error answer, rendered for the client.
                if case == "error" {
                    let status: u16 = std::fs::read_to_string(dir.join("error.status"))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    let body = std::fs::read(dir.join("error.json")).unwrap();
                    let err = adapter.classify_error(
                        StatusCode::from_u16(status).unwrap(),
                        &HeaderMap::new(),
                        &body,
                    );
                    let rendered = codecs.get(client).unwrap().error_body(&err);
                    let mut v: Value = serde_json::from_slice(&rendered).unwrap();
                    normalise_json(&mut v);
                    let out = serde_json::to_string_pretty(
                        &serde_json::json!({"status": err.status_code().as_u16(), "body": v}),
                    )
                    .unwrap()
                        + "\n";
                    golden(&expected.join("error.json"), &out, &mut failures);
                    // The upstream's own words reach the client.
                    let upstream_text = codecs.get(upstream).unwrap().error_message(&body);
                    let first_words: String = upstream_text
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" ");
                    if !String::from_utf8_lossy(&rendered).contains(&first_words) {
                        failures.push(format!("{client_name} from {provider} error: upstream message {first_words:?} lost: {}", String::from_utf8_lossy(&rendered)));
                    }
                    checked += 1;
                    continue;
                }

                // Whole answers.
                let json_path = dir.join(format!("{case}.json"));
                if json_path.exists() {
                    let req = inbound(client, false);
                    let call = UpstreamCall {
                        request: &req,
                        channel: &channel,
                        base_url: "https://upstream.example/v1",
                        api_key: None,
                        model: "upstream-model",
                    };
                    let body = std::fs::read(&json_path).unwrap();
                    match adapter.decode_response(&call, Bytes::from(body.clone())) {
                        Ok(decoded) => {
                            golden(
                                &expected.join(format!("{case}.json")),
                                &normalise_body(&decoded.body),
                                &mut failures,
                            );
                            let want = meaning_of_response(upstream, &body);
                            let got = meaning_of_response(client, &decoded.body);
                            if want != got {
                                failures.push(format!("{client_name} from {provider} {case}.json: meaning changed\n want {want:?}\n  got {got:?}"));
                            }
                            if decoded.usage.is_none() {
                                failures.push(format!(
                                    "{client_name} from {provider} {case}.json: no usage settled"
                                ));
                            }
                        }
                        Err(e) => {
                            failures.push(format!("{client_name} from {provider} {case}.json: {e}"))
                        }
                    }
                    checked += 1;
                }

                // Streams.
                let sse_path = dir.join(format!("{case}.sse"));
                if sse_path.exists() {
                    let req = inbound(client, true);
                    let call = UpstreamCall {
                        request: &req,
                        channel: &channel,
                        base_url: "https://upstream.example/v1",
                        api_key: None,
                        model: "upstream-model",
                    };
                    let sse = std::fs::read(&sse_path).unwrap();
                    let (out, err) = run_stream(adapter.as_ref(), &call, &sse);
                    golden(
                        &expected.join(format!("{case}.sse")),
                        &normalise_sse(&out),
                        &mut failures,
                    );
                    let want = meaning_of_stream(upstream, &sse);
                    let got = meaning_of_stream(client, &out);
                    let same = if case == "error_midstream" {
                        err.is_some() && got.error.is_some() && got.text == want.text
                    } else {
                        err.is_none() && want == got
                    };
                    if !same {
                        failures.push(format!(
                            "{client_name} from {provider} {case}.sse: meaning changed (translator error {err:?})\n want {want:?}\n  got {got:?}\n--- client stream\n{}",
                            String::from_utf8_lossy(&out)
                        ));
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 9 * 10, "only {checked} checks ran");
    assert!(
        failures.is_empty(),
        "{} corpus failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
