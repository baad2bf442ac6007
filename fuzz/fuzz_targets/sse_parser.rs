//! The SSE parser on arbitrary bytes, split at an arbitrary point: never panics, and the
//! split does not change the events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::sse::{SseEvent, SseParser};

fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut p = SseParser::with_limit(4096);
    let mut out = Vec::new();
    for c in chunks {
        p.push(c);
        loop {
            match p.next_event() {
                Ok(Some(e)) => out.push(e),
                Ok(None) => break,
                Err(_) => return out,
            }
        }
    }
    while let Ok(Some(e)) = p.finish() {
        out.push(e);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let body = &data[1..];
    let split = split.min(body.len());
    let whole = parse(&[body]);
    let halves = parse(&[&body[..split], &body[split..]]);
    // Over-limit input may stop at a different point; only compare when under it.
    if body.len() < 4096 {
        assert_eq!(whole, halves);
    }
});
