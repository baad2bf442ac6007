//! Malformed input from a client or an upstream never panics: it is an error value.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use relay_adapters::openai::{OpenAiCodec, OpenAiDialect, PassthroughStream};
use relay_core::codec::DialectCodec;
use relay_core::sse::SseEvent;
use relay_core::{ClientDialect, Operation, StreamTranslator};

fn json_ish() -> impl Strategy<Value = String> {
    // Mostly JSON-looking text with the field names the parsers care about.
    let atoms = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("1e999".to_owned()),
        Just("-0".to_owned()),
        Just("\"\\ud800\"".to_owned()),
        Just("\"model\"".to_owned()),
        Just("\"messages\"".to_owned()),
        Just("\"role\"".to_owned()),
        Just("\"content\"".to_owned()),
        Just("\"stream\"".to_owned()),
        Just("\"choices\"".to_owned()),
        Just("\"delta\"".to_owned()),
        Just("\"usage\"".to_owned()),
        Just("\"tool_calls\"".to_owned()),
        Just("\"error\"".to_owned()),
        Just("\"finish_reason\"".to_owned()),
        "\"[a-z]{0,6}\"",
        "[0-9]{1,3}",
    ];
    proptest::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn client_bodies_never_panic(body in json_ish(), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        for op in [Operation::Chat, Operation::Embeddings] {
            let _ = OpenAiDialect.parse_request(op, body.as_bytes(), &Default::default());
            let _ = OpenAiDialect.parse_request(op, &raw, &Default::default());
        }
        if let Ok(obj) = serde_json::from_str::<relay_core::JsonObject>(&body) {
            let _ = OpenAiCodec.decode_request(&obj);
        }
    }

    #[test]
    fn upstream_chunks_never_panic(chunks in proptest::collection::vec(json_ish(), 0..8), ask in any::<bool>()) {
        let mut t = PassthroughStream::new(ask);
        let mut d = OpenAiCodec.stream_decoder();
        let mut out = BytesMut::new();
        let mut events = Vec::new();
        for c in &chunks {
            let ev = SseEvent { data: Bytes::copy_from_slice(c.as_bytes()), ..SseEvent::default() };
            let _ = t.on_event(ev.clone(), &mut out);
            let _ = d.decode(&ev, &mut events);
        }
        let _ = t.on_eof(&mut out);
        let _ = d.finish();
        let _ = OpenAiCodec.decode_response(chunks.concat().as_bytes());
    }
}
