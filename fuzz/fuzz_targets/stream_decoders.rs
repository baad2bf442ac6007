//! Every dialect's upstream stream path on arbitrary SSE: the decoders and the translators
//! into every client dialect never panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use relay_adapters::{default_codecs, default_registry};
use relay_core::sse::SseParser;
use relay_core::{ChannelConfig, DialectId, InboundRequest, JsonObject, Operation, UpstreamCall};

const DIALECTS: [(DialectId, &str); 3] = [
    (DialectId::OPENAI_CHAT, "openai"),
    (DialectId::ANTHROPIC_MESSAGES, "anthropic"),
    (DialectId::GEMINI, "gemini"),
];

fuzz_target!(|data: &[u8]| {
    let mut parser = SseParser::with_limit(1 << 16);
    parser.push(data);
    let mut events = Vec::new();
    while let Ok(Some(e)) = parser.next_event() {
        events.push(e);
    }
    if let Ok(Some(e)) = parser.finish() {
        events.push(e);
    }
    let codecs = default_codecs();
    let registry = default_registry();
    for (upstream, provider) in DIALECTS {
        let Some(codec) = codecs.get(upstream) else { continue };
        let mut decoder = codec.stream_decoder();
        let mut out = Vec::new();
        for e in &events {
            if decoder.decode(e, &mut out).is_err() {
                break;
            }
        }
        let _ = decoder.finish();
        let _ = codec.decode_response(data);
        let _ = codec.error_message(data);
        let Some(adapter) = registry.get(provider) else { continue };
        let channel = ChannelConfig::new("fuzz", provider);
        for (client, _) in DIALECTS {
            let req = InboundRequest {
                dialect: client,
                op: Operation::Chat,
                model: "m".into(),
                stream: true,
                include_usage: true,
                body: JsonObject::default(),
                prompt_chars: 4,
                ir: None,
            };
            let call = UpstreamCall { request: &req, channel: &channel, base_url: "https://x.example", api_key: None, model: "m" };
            let Ok(mut t) = adapter.stream_translator(&call) else { continue };
            let mut buf = BytesMut::new();
            for e in &events {
                match t.on_event(e.clone(), &mut buf) {
                    Ok(p) if p.done => break,
                    Ok(_) => {}
                    Err(err) => {
                        t.encode_error(&err, &mut buf);
                        break;
                    }
                }
            }
            let _ = t.on_eof(&mut buf);
        }
    }
});
