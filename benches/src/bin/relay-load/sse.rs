//! Splits an SSE body into events as the bytes arrive, and times them.

use std::time::Instant;

use crate::request::Outcome;

/// Incremental SSE event splitter.
#[derive(Debug, Default)]
pub(crate) struct Scanner {
    /// Bytes of an event not complete yet.
    carry: Vec<u8>,
    /// Arrival of the previous content event.
    last_content: Option<Instant>,
}

impl Scanner {
    /// Feeds bytes that arrived at `at` (wall clock `wall_ns`).
    pub(crate) fn feed(&mut self, data: &[u8], at: Instant, wall_ns: u64, o: &mut Outcome) {
        self.carry.extend_from_slice(data);
        let mut start = 0;
        while let Some(end) = event_end(&self.carry[start..]) {
            let event = &self.carry[start..start + end];
            on_event(&mut self.last_content, event, at, wall_ns, o);
            start += end;
        }
        self.carry.drain(..start);
    }
}

fn on_event(
    last_content: &mut Option<Instant>,
    event: &[u8],
    at: Instant,
    wall_ns: u64,
    o: &mut Outcome,
) {
    if event.iter().all(|b| b.is_ascii_whitespace()) {
        return;
    }
    o.events += 1;
    if !has_content(event) {
        return;
    }
    if o.first.is_none() {
        o.first = Some(at);
    }
    if let Some(prev) = last_content.replace(at) {
        o.gaps_ns.push(nanos(at.saturating_duration_since(prev)));
    }
    if let Some(stamp) = stamp(event) {
        o.transits_ns.push(wall_ns.saturating_sub(stamp));
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The length of the first complete event in `buf` (its blank line
/// included): it ends at `\n\n` or `\n\r\n`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether an event carries generated content: a non-empty text delta
/// (OpenAI `content`, Anthropic `text`/`partial_json`, Gemini `text`) or
/// tool-call arguments.
fn has_content(event: &[u8]) -> bool {
    const KEYS: [&[u8]; 4] = [
        b"\"content\":\"",
        b"\"text\":\"",
        b"\"arguments\":\"",
        b"\"partial_json\":\"",
    ];
    KEYS.iter().any(|key| {
        let mut from = 0;
        while let Some(p) = find(&event[from..], key) {
            let after = from + p + key.len();
            if event.get(after).is_some_and(|&b| b != b'"') {
                return true;
            }
            from = after;
        }
        false
    })
}

/// The send stamp relay-mock writes into `system_fingerprint`
/// (`"fp_t"` + 19 digits of nanoseconds since the Unix epoch).
fn stamp(event: &[u8]) -> Option<u64> {
    const HEAD: &[u8] = b"\"fp_t";
    let at = find(event, HEAD)? + HEAD.len();
    let digits = event.get(at..at + 19)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_split_on_blank_lines() {
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(event_end(b"data: a\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: a\n"), None);
    }

    #[test]
    fn content_and_stamps() {
        assert!(has_content(br#"data: {"delta":{"content":"Hi"}}"#));
        assert!(!has_content(
            br#"data: {"delta":{"role":"assistant","content":""}}"#
        ));
        assert!(!has_content(b"data: [DONE]"));
        let e = br#"data: {"system_fingerprint":"fp_t1700000000123456789","x":1}"#;
        assert_eq!(stamp(e), Some(1_700_000_000_123_456_789));
        assert_eq!(stamp(br#"data: {"system_fingerprint":null}"#), None);
    }

    #[test]
    fn split_reads_reassemble() {
        let stream = b"data: {\"delta\":{\"content\":\"\"}}\n\ndata: {\"delta\":{\"content\":\"a\"}}\n\ndata: {\"delta\":{\"content\":\"b\"}}\n\ndata: [DONE]\n\n";
        let start = Instant::now();
        let mut o = Outcome::failed(start, "x", String::new());
        let mut s = Scanner::default();
        for chunk in stream.chunks(7) {
            s.feed(chunk, Instant::now(), 0, &mut o);
        }
        assert_eq!(o.events, 4);
        assert_eq!(o.gaps_ns.len(), 1);
        assert!(o.first.is_some());
    }
}
