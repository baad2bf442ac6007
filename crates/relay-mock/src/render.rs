//! Hand-rolled JSON rendering of OpenAI-shaped payloads, plus the pieces the
//! Anthropic and Gemini renderers (in their own modules) share: escaping,
//! the word list, [`Answer`] and the pre-rendered stream [`Frames`].
//!
//! Responses are written straight into one byte buffer with OpenAI's exact
//! key order (serde_json's `Value` would sort keys), so a whole stream is
//! rendered with a single allocation and then handed out as cheap `Bytes`
//! slices.

use std::io::Write as _;

use http::StatusCode;

/// The fixed word list completion text is drawn from.
pub(crate) const WORDS: &[&str] = &[
    "Hello",
    "from",
    "the",
    "relay",
    "mock",
    "upstream.",
    "This",
    "is",
    "a",
    "deterministic",
    "completion",
    "used",
    "by",
    "tests,",
    "benchmarks",
    "and",
    "the",
    "gateway",
    "quick",
    "start;",
    "every",
    "word",
    "counts",
    "as",
    "exactly",
    "one",
    "token",
    "so",
    "usage",
    "adds",
    "up",
    "nicely.",
];

/// The `i`-th word of a completion.
pub(crate) fn word(i: u32) -> &'static str {
    WORDS[i as usize % WORDS.len()]
}

/// Appends `s` as a JSON string literal (quotes included).
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    push_str_body(out, s);
    out.push(b'"');
}

/// Appends the escaped contents of `s` without the surrounding quotes.
pub(crate) fn push_str_body(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Appends a decimal integer.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends a finite `f32` in a JSON-valid form.
pub(crate) fn push_f32(out: &mut Vec<u8>, x: f32) {
    let x = if x.is_finite() { x } else { 0.0 };
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{x}");
}

/// Appends `"usage":{...}` (no leading comma).
pub(crate) fn push_usage(out: &mut Vec<u8>, prompt: u64, completion: u64) {
    out.extend_from_slice(b"\"usage\":{\"prompt_tokens\":");
    push_u64(out, prompt);
    out.extend_from_slice(b",\"completion_tokens\":");
    push_u64(out, completion);
    out.extend_from_slice(b",\"total_tokens\":");
    push_u64(out, prompt + completion);
    out.push(b'}');
}

/// An OpenAI error body: `{"error":{"message":..,"type":..,"param":null,"code":..}}`.
pub(crate) fn error_body(message: &str, kind: &str, code: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + message.len());
    out.extend_from_slice(b"{\"error\":{\"message\":");
    push_str(&mut out, message);
    out.extend_from_slice(b",\"type\":");
    push_str(&mut out, kind);
    out.extend_from_slice(b",\"param\":null,\"code\":");
    match code {
        Some(c) => push_str(&mut out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}}");
    out
}

/// The error body of an injected fault with status `status`.
pub(crate) fn fault_body(status: StatusCode) -> Vec<u8> {
    let message = format!(
        "relay-mock injected fault: HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let (kind, code) = match status.as_u16() {
        429 => ("requests", Some("rate_limit_exceeded")),
        401 => ("invalid_request_error", Some("invalid_api_key")),
        403 => ("permission_error", None),
        404 => ("invalid_request_error", Some("model_not_found")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    error_body(&message, kind, code)
}

/// One tool call the mock makes.
#[derive(Debug)]
pub(crate) struct ToolCall {
    pub(crate) name: String,
    pub(crate) arguments: String,
}

/// What the assistant answers with.
#[derive(Debug)]
pub(crate) enum Answer {
    /// `tokens` words of text.
    Text { tokens: u32 },
    /// Parallel tool calls.
    Tools(Vec<ToolCall>),
}

impl Answer {
    /// Completion tokens reported in usage.
    pub(crate) fn completion_tokens(&self) -> u64 {
        match self {
            Answer::Text { tokens } => u64::from(*tokens),
            Answer::Tools(calls) => {
                let chars: usize = calls.iter().map(|c| c.name.len() + c.arguments.len()).sum();
                (chars as u64).div_ceil(4).max(1)
            }
        }
    }
}

/// Fields shared by every object of one completion.
#[derive(Debug)]
pub(crate) struct Meta<'a> {
    pub(crate) id: u64,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) prompt_tokens: u64,
}

fn push_id(out: &mut Vec<u8>, id: u64) {
    out.extend_from_slice(b"\"chatcmpl-mock-");
    push_u64(out, id);
    out.push(b'"');
}

fn push_call_id(out: &mut Vec<u8>, k: usize) {
    out.extend_from_slice(b"\"call_mock_");
    push_u64(out, k as u64);
    out.push(b'"');
}

/// A non-streaming `chat.completion` object.
pub(crate) fn completion(meta: &Meta<'_>, answer: &Answer, send_usage: bool) -> Vec<u8> {
    let body_len = match answer {
        Answer::Text { tokens } => *tokens as usize * 12,
        Answer::Tools(calls) => calls
            .iter()
            .map(|c| 96 + c.name.len() + 2 * c.arguments.len())
            .sum(),
    };
    let mut out = Vec::with_capacity(320 + meta.model.len() + body_len);
    out.extend_from_slice(b"{\"id\":");
    push_id(&mut out, meta.id);
    out.extend_from_slice(b",\"object\":\"chat.completion\",\"created\":");
    push_u64(&mut out, meta.created);
    out.extend_from_slice(b",\"model\":");
    push_str(&mut out, meta.model);
    out.extend_from_slice(b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",");
    let finish = match answer {
        Answer::Text { tokens } => {
            out.extend_from_slice(b"\"content\":\"");
            for i in 0..*tokens {
                out.extend_from_slice(word(i).as_bytes());
                if i + 1 < *tokens {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(b"\",");
            "stop"
        }
        Answer::Tools(calls) => {
            out.extend_from_slice(b"\"content\":null,\"tool_calls\":[");
            for (k, call) in calls.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"id\":");
                push_call_id(&mut out, k);
                out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                push_str(&mut out, &call.name);
                out.extend_from_slice(b",\"arguments\":");
                push_str(&mut out, &call.arguments);
                out.extend_from_slice(b"}}");
            }
            out.extend_from_slice(b"],");
            "tool_calls"
        }
    };
    out.extend_from_slice(b"\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"");
    out.extend_from_slice(finish.as_bytes());
    out.extend_from_slice(b"\"}],");
    if send_usage {
        push_usage(&mut out, meta.prompt_tokens, answer.completion_tokens());
        out.push(b',');
    }
    out.extend_from_slice(b"\"system_fingerprint\":null}");
    out
}

/// Pads the text content of a rendered `chat.completion` body with more
/// words so the body is `target` bytes long; a body that is already as long
/// (or that has no text content, e.g. tool calls) is left as it is.
pub(crate) fn pad_completion(out: &mut Vec<u8>, target: usize) {
    const CONTENT_END: &[u8] = b"\",\"refusal\":null}";
    let deficit = target.saturating_sub(out.len());
    if deficit == 0 || !out.starts_with(b"{\"id\":") {
        return;
    }
    let Some(at) = out
        .windows(CONTENT_END.len())
        .position(|w| w == CONTENT_END)
    else {
        return;
    };
    if out[..at].ends_with(b"\"content\":null") {
        return;
    }
    let mut filler = Vec::with_capacity(deficit + 16);
    let mut i = 0;
    while filler.len() < deficit {
        filler.push(b' ');
        filler.extend_from_slice(word(i).as_bytes());
        i += 1;
    }
    filler.truncate(deficit);
    // WORDS are plain ASCII with nothing JSON escapes, so a word cut short
    // is still valid string content.
    out.splice(at..at, filler);
}

/// A fully rendered stream: all frames back to back in one buffer.
///
/// The dialects differ in framing (OpenAI and Gemini SSE `data:` frames,
/// Anthropic `event:` + `data:` frames, Gemini's streamed JSON array), but
/// pace and cut the same way: the body sleeps `stall_first_token` before
/// frame `first_token`, `chunk_interval` before every content frame but the
/// first, and `cut_after: N` cuts the connection right before the
/// (N+1)-th content frame, or before the `finish` frame when that comes
/// first.
#[derive(Debug)]
pub(crate) struct Frames {
    /// Every frame, back to back.
    pub(crate) data: Vec<u8>,
    /// End offset of each frame in `data`.
    pub(crate) ends: Vec<usize>,
    /// The content frames (one per token, tool-call fragment or block delta).
    pub(crate) content: ContentFrames,
    /// Index of the frame that finishes the answer (OpenAI's
    /// `finish_reason` chunk, Anthropic's `message_delta`, Gemini's
    /// `finishReason` frame). A stream cut by `cut_after` never reaches it.
    pub(crate) finish: usize,
    /// Index of the frame `stall_first_token` delays.
    pub(crate) first_token: usize,
}

/// Which frames of a [`Frames`] are content frames, in order.
#[derive(Debug)]
pub(crate) enum ContentFrames {
    /// A contiguous run of frames.
    Range(std::ops::Range<usize>),
    /// Frame indexes, ascending.
    List(Vec<usize>),
}

impl ContentFrames {
    /// The index of the `n`-th (0-based) content frame.
    pub(crate) fn nth(&self, n: usize) -> Option<usize> {
        match self {
            ContentFrames::Range(r) => r.start.checked_add(n).filter(|i| r.contains(i)),
            ContentFrames::List(l) => l.get(n).copied(),
        }
    }

    /// Whether frame `i` is a content frame other than the first one.
    pub(crate) fn is_later(&self, i: usize) -> bool {
        match self {
            ContentFrames::Range(r) => i > r.start && i < r.end,
            ContentFrames::List(l) => {
                l.first().is_some_and(|&f| i > f) && l.binary_search(&i).is_ok()
            }
        }
    }
}

impl Frames {
    /// The frame index a `cut_after: n` stream is cut at.
    #[cfg(test)]
    pub(crate) fn cut_index(&self, n: u32) -> usize {
        cut_index(&self.content, self.finish, n)
    }
}

/// The frame index a `cut_after: n` stream with these content frames and
/// this finish frame is cut at.
pub(crate) fn cut_index(content: &ContentFrames, finish: usize, n: u32) -> usize {
    content.nth(n as usize).unwrap_or(finish).min(finish)
}

/// Splits `s` into about three fragments on char boundaries.
pub(crate) fn fragments(s: &str) -> Vec<&str> {
    let len = s.len();
    let mut cuts = vec![0];
    for target in [len / 3, 2 * len / 3] {
        let mut c = target;
        while c < len && !s.is_char_boundary(c) {
            c += 1;
        }
        if c > *cuts.last().unwrap_or(&0) && c < len {
            cuts.push(c);
        }
    }
    cuts.push(len);
    cuts.windows(2)
        .map(|w| &s[w[0]..w[1]])
        .filter(|f| !f.is_empty())
        .collect()
}

/// Renders a whole `chat.completion.chunk` stream.
pub(crate) fn stream(meta: &Meta<'_>, answer: &Answer, include_usage: bool) -> Frames {
    // Everything up to the inside of `"choices":[`, shared by every frame.
    let mut prefix = Vec::with_capacity(160 + meta.model.len());
    prefix.extend_from_slice(b"data: {\"id\":");
    push_id(&mut prefix, meta.id);
    prefix.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
    push_u64(&mut prefix, meta.created);
    prefix.extend_from_slice(b",\"model\":");
    push_str(&mut prefix, meta.model);
    prefix.extend_from_slice(b",\"system_fingerprint\":null,\"choices\":[");
    let suffix: &[u8] = if include_usage {
        b"],\"usage\":null}\n\n"
    } else {
        b"]}\n\n"
    };

    let (frame_count, payload) = match answer {
        Answer::Text { tokens } => (*tokens as usize + 4, *tokens as usize * 16),
        Answer::Tools(calls) => (
            calls.len() * 4 + 3,
            calls
                .iter()
                .map(|c| 160 + c.name.len() + 2 * c.arguments.len())
                .sum(),
        ),
    };
    let per_frame = prefix.len() + suffix.len() + 64;
    let mut data = Vec::with_capacity(frame_count * per_frame + payload + 64);
    let mut ends = Vec::with_capacity(frame_count);

    let choice_head: &[u8] = b"{\"index\":0,\"delta\":";
    let choice_tail: &[u8] = b",\"logprobs\":null,\"finish_reason\":null}";
    let begin = |data: &mut Vec<u8>| {
        data.extend_from_slice(&prefix);
        data.extend_from_slice(choice_head);
    };
    let end = |data: &mut Vec<u8>, ends: &mut Vec<usize>| {
        data.extend_from_slice(choice_tail);
        data.extend_from_slice(suffix);
        ends.push(data.len());
    };

    let finish_reason: &[u8] = match answer {
        Answer::Text { tokens } => {
            begin(&mut data);
            data.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}");
            end(&mut data, &mut ends);
            for i in 0..*tokens {
                begin(&mut data);
                data.extend_from_slice(b"{\"content\":\"");
                data.extend_from_slice(word(i).as_bytes());
                if i + 1 < *tokens {
                    data.push(b' ');
                }
                data.extend_from_slice(b"\"}");
                end(&mut data, &mut ends);
            }
            b"stop"
        }
        Answer::Tools(calls) => {
            for (k, call) in calls.iter().enumerate() {
                begin(&mut data);
                data.push(b'{');
                if k == 0 {
                    data.extend_from_slice(b"\"role\":\"assistant\",\"content\":null,");
                }
                data.extend_from_slice(b"\"tool_calls\":[{\"index\":");
                push_u64(&mut data, k as u64);
                data.extend_from_slice(b",\"id\":");
                push_call_id(&mut data, k);
                data.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                push_str(&mut data, &call.name);
                data.extend_from_slice(b",\"arguments\":\"\"}}]");
                if k == 0 {
                    data.extend_from_slice(b",\"refusal\":null");
                }
                data.push(b'}');
                end(&mut data, &mut ends);
                for fragment in fragments(&call.arguments) {
                    begin(&mut data);
                    data.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                    push_u64(&mut data, k as u64);
                    data.extend_from_slice(b",\"function\":{\"arguments\":");
                    push_str(&mut data, fragment);
                    data.extend_from_slice(b"}}]}");
                    end(&mut data, &mut ends);
                }
            }
            b"tool_calls"
        }
    };

    let finish = ends.len();
    begin(&mut data);
    data.extend_from_slice(b"{},\"logprobs\":null,\"finish_reason\":\"");
    data.extend_from_slice(finish_reason);
    data.extend_from_slice(b"\"}");
    data.extend_from_slice(suffix);
    ends.push(data.len());

    if include_usage {
        data.extend_from_slice(&prefix);
        data.extend_from_slice(b"],");
        push_usage(&mut data, meta.prompt_tokens, answer.completion_tokens());
        data.extend_from_slice(b"}\n\n");
        ends.push(data.len());
    }

    data.extend_from_slice(b"data: [DONE]\n\n");
    ends.push(data.len());

    Frames {
        data,
        ends,
        content: ContentFrames::Range(1..finish),
        finish,
        first_token: 1,
    }
}

/// Standard base64 (with padding) of `bytes`.
pub(crate) fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b0 = chunk[0];
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        out.push(ALPHABET[(n >> 18) as usize & 63]);
        out.push(ALPHABET[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63]
        } else {
            b'='
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta<'static> {
        Meta {
            id: 7,
            created: 1_700_000_000,
            model: "m\"x",
            prompt_tokens: 3,
        }
    }

    #[test]
    fn escaping_round_trips() {
        let s = "a\"b\\c\nd\u{1}é\t";
        let mut out = Vec::new();
        push_str(&mut out, s);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn integers() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }

    #[test]
    fn completion_is_valid_json() {
        let v: serde_json::Value =
            serde_json::from_slice(&completion(&meta(), &Answer::Text { tokens: 3 }, true))
                .unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Hello from the");
        assert_eq!(v["usage"]["total_tokens"], 6);
        assert_eq!(v["model"], "m\"x");
    }

    #[test]
    fn stream_frames_are_valid_json() {
        let answer = Answer::Tools(vec![ToolCall {
            name: "f".into(),
            arguments: r#"{"a":"mock","b":1}"#.into(),
        }]);
        let frames = stream(&meta(), &answer, true);
        let mut start = 0;
        for (i, &end) in frames.ends.iter().enumerate() {
            let frame = std::str::from_utf8(&frames.data[start..end]).unwrap();
            let json = frame.strip_prefix("data: ").unwrap().trim_end();
            if i + 1 == frames.ends.len() {
                assert_eq!(json, "[DONE]");
            } else {
                let _: serde_json::Value = serde_json::from_str(json).unwrap();
            }
            start = end;
        }
    }

    #[test]
    fn padded_completion_has_the_target_size() {
        for target in [0, 100, 400, 1400, 10_240] {
            let mut out = completion(&meta(), &Answer::Text { tokens: 1 }, true);
            let natural = out.len();
            pad_completion(&mut out, target);
            assert_eq!(out.len(), target.max(natural));
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert!(
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .starts_with("Hello")
            );
        }
    }

    #[test]
    fn fragments_cover_input() {
        for s in ["", "{}", "{\"a\":\"é\"}", "abcdefghij"] {
            assert_eq!(fragments(s).concat(), s);
            assert!(fragments(s).len() <= 3);
        }
        assert_eq!(fragments("abcdefghi").len(), 3);
    }

    #[test]
    fn base64_matches_reference() {
        let mut out = Vec::new();
        push_base64(&mut out, b"foobar");
        assert_eq!(out, b"Zm9vYmFy");
        out.clear();
        push_base64(&mut out, b"fo");
        assert_eq!(out, b"Zm8=");
        out.clear();
        push_base64(&mut out, b"f");
        assert_eq!(out, b"Zg==");
    }
}
