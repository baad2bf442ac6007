//! How the mock answers: the server-wide [`Behavior`] and its per-request
//! overrides from `x-mock-*` headers.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

/// How the mock upstream answers requests.
///
/// A `Behavior` is installed with [`MockServer::start`](crate::MockServer::start)
/// or [`MockServer::set_behavior`](crate::MockServer::set_behavior) and applies
/// to every later request. Individual requests can override most fields with
/// `x-mock-*` headers (see the crate documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behavior {
    /// Delay before the response head is sent (default 0).
    pub latency: Duration,
    /// Completion tokens; a stream carries one content chunk (OpenAI chunk,
    /// Anthropic `text_delta`, Gemini chunk) per token (default 16).
    pub tokens: u32,
    /// Pause between stream content chunks (default 0).
    pub chunk_interval: Duration,
    /// Fault: answer with this HTTP status (400..=599) and an error JSON
    /// body in the route's dialect (OpenAI, Anthropic or Gemini). Values
    /// outside 400..=599 are ignored.
    pub status: Option<u16>,
    /// `Retry-After` header value sent along with `status`.
    pub retry_after: Option<String>,
    /// If > 0, only the first N requests (counted server-wide since this
    /// behavior was installed) get `status`; later ones are answered normally.
    /// 0 means every request gets `status`.
    pub fail_first: u32,
    /// Streaming: after N content chunks, close the connection abruptly (no
    /// clean end of the chunked body). The answer never finishes: no OpenAI
    /// finish chunk or `[DONE]`, no Anthropic `message_delta`/`message_stop`,
    /// no Gemini `finishReason` chunk, even when it has N chunks or fewer.
    pub cut_after: Option<u32>,
    /// Sleep before sending anything, response head included.
    pub stall: Option<Duration>,
    /// Streaming: send the head (and OpenAI's role chunk, or Anthropic's
    /// `message_start`), then sleep this long before the rest.
    pub stall_first_token: Option<Duration>,
    /// When the request declares tools (OpenAI `tools`, Anthropic `tools`,
    /// Gemini `functionDeclarations`): answer with this many parallel tool
    /// calls instead of text (default 1), unless the last message carries a
    /// tool result; 0 always answers with text.
    pub tool_calls: u32,
    /// Include usage in JSON responses (OpenAI `usage`, Anthropic `usage`,
    /// Gemini `usageMetadata`), and in OpenAI streams when the request asked
    /// for `stream_options.include_usage` (default true). When false,
    /// Anthropic streams still carry the usage objects their schema
    /// requires, with zero counts.
    pub send_usage: bool,
    /// Model name echoed in responses (default: the request's model).
    pub model: Option<String>,
    /// Extra delay before the head, uniformly random in `[0, jitter]`, added
    /// to `latency` (default 0).
    pub jitter: Duration,
    /// Non-streaming OpenAI chat answers: pad the message content so the
    /// JSON body is this many bytes (default `None`: the natural size of
    /// `tokens` words). A body whose natural size is larger is not cut.
    pub body_bytes: Option<usize>,
    /// Benchmark fast path: `POST /v1/chat/completions` requests without
    /// `x-mock-*` headers are answered from bytes rendered once when the
    /// behavior is installed (no JSON parsing of the request, no recording,
    /// model `model` or `"mock-model"`, prompt tokens fixed at 16). The
    /// request body is only scanned for `"stream":true` and
    /// `"include_usage":true`. Ignored while `status` is set. Default false.
    pub prerendered: bool,
    /// With `prerendered`: every streamed chunk's `system_fingerprint` is
    /// `"fp_t"` followed by the wall-clock time it was handed to the
    /// connection, in nanoseconds since the Unix epoch (19 digits), so a
    /// client on the same machine can measure each frame's transit time.
    /// Default false.
    pub stamp_frames: bool,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            latency: Duration::ZERO,
            tokens: 16,
            chunk_interval: Duration::ZERO,
            status: None,
            retry_after: None,
            fail_first: 0,
            cut_after: None,
            stall: None,
            stall_first_token: None,
            tool_calls: 1,
            send_usage: true,
            model: None,
            jitter: Duration::ZERO,
            body_bytes: None,
            prerendered: false,
            stamp_frames: false,
        }
    }
}

/// The effective settings for one request: the behavior merged with the
/// request's `x-mock-*` headers.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub(crate) latency: Duration,
    pub(crate) tokens: u32,
    pub(crate) chunk_interval: Duration,
    pub(crate) status: Option<StatusCode>,
    pub(crate) retry_after: Option<HeaderValue>,
    pub(crate) cut_after: Option<u32>,
    pub(crate) stall: Duration,
    pub(crate) stall_first_token: Duration,
    pub(crate) tool_calls: u32,
    pub(crate) send_usage: bool,
    pub(crate) model: Option<&'a str>,
    pub(crate) jitter: Duration,
    pub(crate) body_bytes: Option<usize>,
}

/// Whether `headers` carry any `x-mock-*` override.
pub(crate) fn has_overrides(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| k.as_str().starts_with("x-mock-"))
}

/// Parses a header value leniently: `None` when absent or malformed.
fn header<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn header_ms(headers: &HeaderMap, name: &str) -> Option<Duration> {
    header::<u64>(headers, name).map(Duration::from_millis)
}

/// A fault status, when it is one the mock answers with.
fn fault_status(code: u16) -> Option<StatusCode> {
    if (400..=599).contains(&code) {
        StatusCode::from_u16(code).ok()
    } else {
        None
    }
}

impl<'a> Plan<'a> {
    /// Merges `behavior` with the overrides found in `headers`.
    pub(crate) fn new(behavior: &'a Behavior, headers: &HeaderMap) -> Plan<'a> {
        // Fast path: benchmarks send no override headers at all.
        let has_overrides = has_overrides(headers);
        let mut plan = Plan {
            latency: behavior.latency,
            tokens: behavior.tokens,
            chunk_interval: behavior.chunk_interval,
            status: behavior.status.and_then(fault_status),
            retry_after: None,
            cut_after: behavior.cut_after,
            stall: behavior.stall.unwrap_or_default(),
            stall_first_token: behavior.stall_first_token.unwrap_or_default(),
            tool_calls: behavior.tool_calls,
            send_usage: behavior.send_usage,
            model: behavior.model.as_deref(),
            jitter: behavior.jitter,
            body_bytes: behavior.body_bytes,
        };
        if has_overrides {
            plan.apply_overrides(headers);
        }
        if plan.status.is_some() && plan.retry_after.is_none() {
            plan.retry_after = behavior
                .retry_after
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v.trim()).ok());
        }
        plan
    }

    fn apply_overrides(&mut self, headers: &HeaderMap) {
        let plan = self;
        if let Some(code) = header::<u16>(headers, "x-mock-status").and_then(fault_status) {
            plan.status = Some(code);
        }
        if let Some(v) = headers.get("x-mock-retry-after") {
            if let Ok(s) = v.to_str() {
                let s = s.trim();
                if !s.is_empty() {
                    plan.retry_after = HeaderValue::from_str(s).ok();
                }
            }
        }
        if let Some(d) = header_ms(headers, "x-mock-latency-ms") {
            plan.latency = d;
        }
        if let Some(n) = header(headers, "x-mock-tokens") {
            plan.tokens = n;
        }
        if let Some(d) = header_ms(headers, "x-mock-chunk-interval-ms") {
            plan.chunk_interval = d;
        }
        if let Some(n) = header(headers, "x-mock-cut-after") {
            plan.cut_after = Some(n);
        }
        if let Some(d) = header_ms(headers, "x-mock-stall-ms") {
            plan.stall = d;
        }
        if let Some(d) = header_ms(headers, "x-mock-stall-first-token-ms") {
            plan.stall_first_token = d;
        }
        if let Some(n) = header(headers, "x-mock-tool-calls") {
            plan.tool_calls = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_lenient() {
        let b = Behavior::default();
        let mut h = HeaderMap::new();
        h.insert("x-mock-tokens", HeaderValue::from_static(" 3 "));
        h.insert("x-mock-latency-ms", HeaderValue::from_static("abc"));
        h.insert("x-mock-status", HeaderValue::from_static("200"));
        h.insert("x-mock-cut-after", HeaderValue::from_static("2"));
        let p = Plan::new(&b, &h);
        assert_eq!(p.tokens, 3);
        assert_eq!(p.latency, Duration::ZERO);
        assert_eq!(p.status, None);
        assert_eq!(p.cut_after, Some(2));

        h.insert("x-mock-status", HeaderValue::from_static("503"));
        h.insert("x-mock-retry-after", HeaderValue::from_static("9"));
        let p = Plan::new(&b, &h);
        assert_eq!(p.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(p.retry_after, Some(HeaderValue::from_static("9")));
    }
}
