//! Every client dialect's request parser on arbitrary bodies never panics, and whatever
//! it accepts can be encoded for every upstream dialect without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_adapters::openai::OpenAiDialect;
use relay_adapters::{CodecClient, default_codecs};
use relay_core::{ClientDialect, DialectId, Operation, RouteParams};

fuzz_target!(|data: &[u8]| {
    let codecs = default_codecs();
    let route = RouteParams { model: Some("m".into()), stream: Some(false) };
    let mut parsed = Vec::new();
    if let Ok(r) = OpenAiDialect.parse_request(Operation::Chat, data, &RouteParams::default()) {
        parsed.push(r);
    }
    for d in [DialectId::ANTHROPIC_MESSAGES, DialectId::GEMINI] {
        if let Some(c) = codecs.get(d) {
            if let Ok(r) = CodecClient::new(c.clone()).parse_request(Operation::Chat, data, &route) {
                parsed.push(r);
            }
        }
    }
    for req in parsed {
        let ir = match &req.ir {
            Some(ir) => (**ir).clone(),
            None => match codecs.get(req.dialect).map(|c| c.decode_request(&req.body)) {
                Some(Ok(ir)) => ir,
                _ => continue,
            },
        };
        for d in [DialectId::OPENAI_CHAT, DialectId::ANTHROPIC_MESSAGES, DialectId::GEMINI] {
            if let Some(c) = codecs.get(d) {
                let _ = c.encode_request(&ir);
            }
        }
    }
});
