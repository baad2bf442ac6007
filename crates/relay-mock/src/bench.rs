//! The benchmark fast path ([`Behavior::prerendered`]): OpenAI chat answers
//! rendered once per behavior and handed out as shared bytes, and the
//! `/__relay_mock/stats` report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::behavior::Plan;
use crate::body::{MockBody, STAMP_DIGITS, SharedFrames};
use crate::handler::{EVENT_STREAM, json_response, stream_response};
use crate::render::{self, Answer, Frames, Meta};
use crate::{Behavior, Shared};

/// Prompt tokens the pre-rendered answers report.
const PROMPT_TOKENS: u64 = 16;

/// The pre-rendered answers of one behavior.
#[derive(Debug)]
pub(crate) struct Prerendered {
    json: Bytes,
    stream: SharedFrames,
    stream_with_usage: SharedFrames,
}

impl Prerendered {
    /// The answers for `behavior`, or `None` when it does not ask for the
    /// fast path (or injects a fault status, which the slow path serves).
    pub(crate) fn new(behavior: &Behavior) -> Option<Prerendered> {
        if !behavior.prerendered || behavior.status.is_some() {
            return None;
        }
        let meta = Meta {
            id: 1,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: behavior.model.as_deref().unwrap_or("mock-model"),
            prompt_tokens: PROMPT_TOKENS,
        };
        let answer = Answer::Text {
            tokens: behavior.tokens,
        };
        let mut json = render::completion(&meta, &answer, behavior.send_usage);
        if let Some(target) = behavior.body_bytes {
            render::pad_completion(&mut json, target);
        }
        let frames = |usage: bool| {
            let frames = render::stream(&meta, &answer, usage && behavior.send_usage);
            if behavior.stamp_frames {
                let (frames, stamps) = with_stamp_slots(frames);
                SharedFrames::new(frames, Some(stamps))
            } else {
                SharedFrames::new(frames, None)
            }
        };
        Some(Prerendered {
            json: Bytes::from(json),
            stream: frames(false),
            stream_with_usage: frames(true),
        })
    }

    /// The answer to a chat completion request with this `body`.
    pub(crate) fn respond(
        &self,
        shared: &Arc<Shared>,
        cut: Arc<AtomicBool>,
        plan: &Plan<'_>,
        body: &[u8],
    ) -> Response<MockBody> {
        if contains_flag(body, b"stream") {
            let frames = if contains_flag(body, b"include_usage") {
                &self.stream_with_usage
            } else {
                &self.stream
            };
            stream_response(shared, cut, plan, frames.clone(), &EVENT_STREAM)
        } else {
            json_response(StatusCode::OK, self.json.clone())
        }
    }
}

/// Whether the JSON `body` has `"key":true` (or `"key": true`) anywhere.
fn contains_flag(body: &[u8], key: &[u8]) -> bool {
    let mut from = 0;
    while let Some(pos) = find(&body[from..], key) {
        let after = from + pos + key.len();
        let rest = &body[after..];
        let rest = rest.strip_prefix(b"\"").unwrap_or(&[]);
        let rest = trim_start(rest);
        if let Some(rest) = rest.strip_prefix(b":") {
            if trim_start(rest).starts_with(b"true") {
                return true;
            }
        }
        from = after;
    }
    false
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\n' | b'\r', rest @ ..] = s {
        s = rest;
    }
    s
}

/// The position of `needle` (preceded by a quote) in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len() + 1)
        .position(|w| w[0] == b'"' && &w[1..] == needle)
        .map(|p| p + 1)
}

/// Replaces every frame's `"system_fingerprint":null` with a stamp slot,
/// `"system_fingerprint":"fp_t0000000000000000000"`, and returns the new
/// frames with each frame's slot offset (digits start).
fn with_stamp_slots(frames: Frames) -> (Frames, Vec<Option<usize>>) {
    const NULL: &[u8] = b"\"system_fingerprint\":null";
    const SLOT_HEAD: &[u8] = b"\"system_fingerprint\":\"fp_t";
    let mut data = Vec::with_capacity(frames.data.len() + frames.ends.len() * 32);
    let mut ends = Vec::with_capacity(frames.ends.len());
    let mut stamps = Vec::with_capacity(frames.ends.len());
    let mut start = 0;
    for &end in &frames.ends {
        let frame = &frames.data[start..end];
        let frame_start = data.len();
        match frame.windows(NULL.len()).position(|w| w == NULL) {
            Some(at) => {
                data.extend_from_slice(&frame[..at]);
                data.extend_from_slice(SLOT_HEAD);
                stamps.push(Some(data.len() - frame_start));
                data.extend_from_slice(&[b'0'; STAMP_DIGITS]);
                data.push(b'"');
                data.extend_from_slice(&frame[at + NULL.len()..]);
            }
            None => {
                data.extend_from_slice(frame);
                stamps.push(None);
            }
        }
        ends.push(data.len());
        start = end;
    }
    (
        Frames {
            data,
            ends,
            content: frames.content,
            finish: frames.finish,
            first_token: frames.first_token,
        },
        stamps,
    )
}

/// A random delay in `[0, jitter]` drawn from `seq` (a per-request counter).
pub(crate) fn jitter(jitter: Duration, seq: u64) -> Duration {
    if jitter.is_zero() {
        return Duration::ZERO;
    }
    let span = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(crate::handler::splitmix64(seq) % span.saturating_add(1))
}

/// The process's CPU time (user + system) in 1/100 s ticks, from
/// `/proc/self/stat` (Linux); `None` elsewhere.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the `(comm)`, which may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `GET /__relay_mock/stats`: the counters and the process's CPU time, so a
/// harness can tell how much CPU the mock spends per request (its ceiling
/// on one core is `requests / cpu_seconds`).
pub(crate) fn stats(shared: &Shared) -> Response<MockBody> {
    let c = &shared.stats;
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"{\"requests\":");
    render::push_u64(&mut out, c.requests.load(Ordering::Relaxed));
    out.extend_from_slice(b",\"streams_started\":");
    render::push_u64(&mut out, c.streams_started.load(Ordering::Relaxed));
    out.extend_from_slice(b",\"streams_completed\":");
    render::push_u64(&mut out, c.streams_completed.load(Ordering::Relaxed));
    out.extend_from_slice(b",\"streams_cancelled\":");
    render::push_u64(&mut out, c.streams_cancelled.load(Ordering::Relaxed));
    out.extend_from_slice(b",\"cpu_ticks\":");
    match cpu_ticks() {
        Some(t) => render::push_u64(&mut out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ticks_per_second\":100}");
    json_response(StatusCode::OK, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_found_with_or_without_spaces() {
        assert!(contains_flag(br#"{"model":"m","stream":true}"#, b"stream"));
        assert!(contains_flag(br#"{"stream" :  true}"#, b"stream"));
        assert!(!contains_flag(br#"{"stream":false}"#, b"stream"));
        assert!(!contains_flag(br#"{"streaming":true}"#, b"stream"));
        assert!(contains_flag(
            br#"{"stream":false,"stream_options":{"include_usage":true}}"#,
            b"include_usage"
        ));
        assert!(!contains_flag(br#"{"x":"stream"}"#, b"stream"));
    }

    #[test]
    fn stamp_slots_point_at_zeros() {
        let meta = Meta {
            id: 1,
            created: 2,
            model: "m",
            prompt_tokens: 3,
        };
        let frames = render::stream(&meta, &Answer::Text { tokens: 3 }, true);
        let (frames, stamps) = with_stamp_slots(frames);
        let mut start = 0;
        for (end, stamp) in frames.ends.iter().zip(&stamps) {
            let frame = &frames.data[start..*end];
            match stamp {
                Some(at) => assert_eq!(&frame[*at..*at + STAMP_DIGITS], &[b'0'; STAMP_DIGITS]),
                None => assert!(frame.starts_with(b"data: [DONE]")),
            }
            start = *end;
        }
    }

    #[test]
    fn jitter_stays_in_range() {
        let j = Duration::from_micros(500);
        assert!((0..1000).all(|s| jitter(j, s) <= j));
        assert_eq!(jitter(Duration::ZERO, 7), Duration::ZERO);
    }
}
