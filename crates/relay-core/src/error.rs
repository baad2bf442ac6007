//! The one public error of the relay.
//!
//! A [`RelayError`] carries what every later decision needs: its [`ErrorKind`], the
//! [`Side`] at fault, whether a retry may help, how long the upstream asked us to wait,
//! and the HTTP status the client should see. Dialect codecs turn it into the client's
//! error shape in one place (see `Dialect::encode_error`).

use std::fmt;
use std::time::Duration;

use http::StatusCode;

/// What went wrong, coarsely. Used for metrics labels, retry decisions and status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The client sent something we cannot accept (malformed JSON, missing field).
    BadRequest,
    /// No or wrong API key.
    Unauthorized,
    /// The key is valid but may not do this.
    Forbidden,
    /// The requested model or preset does not exist.
    ModelNotFound,
    /// A route that does not exist.
    NotFound,
    /// The request body is over the configured limit.
    PayloadTooLarge,
    /// A rate limit (ours or the upstream's).
    RateLimited,
    /// Could not connect to the upstream.
    Connect,
    /// The upstream did not send a response head in time.
    FirstByteTimeout,
    /// A stream produced no content event in time.
    FirstTokenTimeout,
    /// The whole request took longer than allowed.
    TotalTimeout,
    /// A stream went silent for longer than allowed.
    IdleTimeout,
    /// The upstream answered with an error status.
    UpstreamStatus,
    /// The upstream answered something we could not understand.
    UpstreamProtocol,
    /// The upstream connection failed after the response head.
    UpstreamIo,
    /// The upstream stream ended before its terminal event.
    StreamCut,
    /// No enabled channel can serve the request.
    NoChannel,
    /// Every attempt failed; the last error is the summary.
    AllAttemptsFailed,
    /// The client went away.
    Cancelled,
    /// A plugin denied the request or failed closed.
    Plugin,
    /// A bug or an impossible state on our side.
    Internal,
}

impl ErrorKind {
    /// A stable, low-cardinality label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Connect => "connect",
            ErrorKind::FirstByteTimeout => "first_byte_timeout",
            ErrorKind::FirstTokenTimeout => "first_token_timeout",
            ErrorKind::TotalTimeout => "total_timeout",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::UpstreamStatus => "upstream_status",
            ErrorKind::UpstreamProtocol => "upstream_protocol",
            ErrorKind::UpstreamIo => "upstream_io",
            ErrorKind::StreamCut => "stream_cut",
            ErrorKind::NoChannel => "no_channel",
            ErrorKind::AllAttemptsFailed => "all_attempts_failed",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Plugin => "plugin",
            ErrorKind::Internal => "internal",
        }
    }

    fn default_status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden | ErrorKind::Plugin => StatusCode::FORBIDDEN,
            ErrorKind::ModelNotFound | ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::FirstByteTimeout
            | ErrorKind::FirstTokenTimeout
            | ErrorKind::TotalTimeout
            | ErrorKind::IdleTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Connect
            | ErrorKind::UpstreamStatus
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpstreamIo
            | ErrorKind::StreamCut
            | ErrorKind::AllAttemptsFailed => StatusCode::BAD_GATEWAY,
            ErrorKind::NoChannel => StatusCode::SERVICE_UNAVAILABLE,
            // 499 is nginx's "client closed request"; nobody reads it but logs.
            ErrorKind::Cancelled => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Who is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The caller sent something wrong.
    Client,
    /// The upstream provider failed or refused.
    Upstream,
    /// A plugin denied, trapped or timed out.
    Plugin,
    /// We did.
    Internal,
}

impl Side {
    /// A stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Plugin => "plugin",
            Side::Internal => "internal",
        }
    }
}

/// What the engine does after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Try again (another channel when there is one, else the same) after a backoff.
    Retry,
    /// This channel cannot serve it (bad credential, unknown model upstream): move on
    /// to another channel or item without waiting, but never back to this one.
    Failover,
    /// Give up and tell the client (their fault, or nothing more can help).
    Fatal,
}

/// The relay's error: kind, side, retryability, status and a human message.
#[derive(Clone, Debug)]
pub struct RelayError {
    kind: ErrorKind,
    side: Side,
    disposition: Disposition,
    status: StatusCode,
    message: String,
    code: Option<&'static str>,
    param: Option<String>,
    retry_after: Option<Duration>,
    upstream_status: Option<u16>,
    /// Boxed: errors travel in `Result`s everywhere and must stay small.
    upstream_body: Option<Box<bytes::Bytes>>,
}

impl RelayError {
    /// A new error with the kind's default status and disposition.
    pub fn new(kind: ErrorKind, side: Side, message: impl Into<String>) -> Self {
        let disposition = match kind {
            ErrorKind::Connect
            | ErrorKind::FirstByteTimeout
            | ErrorKind::FirstTokenTimeout
            | ErrorKind::UpstreamIo
            | ErrorKind::StreamCut
            | ErrorKind::IdleTimeout => Disposition::Retry,
            ErrorKind::UpstreamProtocol => Disposition::Failover,
            _ => Disposition::Fatal,
        };
        RelayError {
            kind,
            side,
            disposition,
            status: kind.default_status(),
            message: message.into(),
            code: None,
            param: None,
            retry_after: None,
            upstream_status: None,
            upstream_body: None,
        }
    }

    /// The client sent bad input (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, Side::Client, message)
    }

    /// A bad request naming the offending parameter.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message).with_param(param)
    }

    /// Unknown model or preset (404, code `model_not_found`).
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            ErrorKind::ModelNotFound,
            Side::Client,
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_code("model_not_found")
        .with_param("model")
    }

    /// A bug on our side (500). The message must not leak secrets.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, Side::Internal, message)
    }

    /// An upstream error status, classified: 408, 409, 429 and 5xx are retryable;
    /// 401, 403 and 404 move on to another channel; other 4xx are the client's fault.
    pub fn upstream_status(status: u16, message: impl Into<String>) -> Self {
        let (kind, side, disposition) = match status {
            408 | 409 | 500..=599 => (
                ErrorKind::UpstreamStatus,
                Side::Upstream,
                Disposition::Retry,
            ),
            429 => (ErrorKind::RateLimited, Side::Upstream, Disposition::Retry),
            401 | 403 | 404 => (
                ErrorKind::UpstreamStatus,
                Side::Upstream,
                Disposition::Failover,
            ),
            400..=499 => (ErrorKind::BadRequest, Side::Client, Disposition::Fatal),
            _ => (
                ErrorKind::UpstreamProtocol,
                Side::Upstream,
                Disposition::Failover,
            ),
        };
        let mut err = Self::new(kind, side, message);
        err.disposition = disposition;
        err.upstream_status = Some(status);
        // Client faults keep the upstream's status (400, 413, 422...); upstream faults
        // become 502 unless they are a rate limit, which the client should see as 429.
        err.status = match (side, status) {
            (Side::Client, s) | (_, s @ 429) => {
                StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        err
    }

    /// Set the machine-readable code (`model_not_found`, `invalid_api_key`...).
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Name the request parameter at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Set the HTTP status the client sees.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Record the upstream's (or our) Retry-After.
    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// Keep the upstream's error body (for `on_error` plugins; never sent to clients).
    pub fn with_upstream_body(mut self, body: bytes::Bytes) -> Self {
        self.upstream_body = (!body.is_empty()).then(|| Box::new(body));
        self
    }

    /// Override what the engine does next.
    pub fn with_disposition(mut self, disposition: Disposition) -> Self {
        self.disposition = disposition;
        self
    }

    /// Replace the message (keeping everything else).
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// Who is at fault.
    pub fn side(&self) -> Side {
        self.side
    }
    /// What the engine does next.
    pub fn disposition(&self) -> Disposition {
        self.disposition
    }
    /// Whether retrying the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        self.disposition == Disposition::Retry
    }
    /// The HTTP status for the client.
    pub fn status_code(&self) -> StatusCode {
        self.status
    }
    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The machine-readable code, if any.
    pub fn code(&self) -> Option<&'static str> {
        self.code
    }
    /// The parameter at fault, if any.
    pub fn param(&self) -> Option<&str> {
        self.param.as_deref()
    }
    /// How long to wait before retrying, if known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
    /// The status the upstream answered, if this came from one.
    pub fn upstream_code(&self) -> Option<u16> {
        self.upstream_status
    }
    /// The upstream's error body, when it answered with one.
    pub fn upstream_body(&self) -> Option<&bytes::Bytes> {
        self.upstream_body.as_deref()
    }
    /// A low-cardinality label for metrics.
    pub fn error_metric(&self) -> &'static str {
        self.kind.as_str()
    }
    /// The OpenAI-style `type` string for this error.
    pub fn openai_type(&self) -> &'static str {
        match self.kind {
            ErrorKind::BadRequest
            | ErrorKind::ModelNotFound
            | ErrorKind::NotFound
            | ErrorKind::PayloadTooLarge => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Forbidden | ErrorKind::Plugin => "permission_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::FirstByteTimeout
            | ErrorKind::FirstTokenTimeout
            | ErrorKind::TotalTimeout
            | ErrorKind::IdleTimeout => "timeout_error",
            ErrorKind::Connect
            | ErrorKind::UpstreamStatus
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpstreamIo
            | ErrorKind::StreamCut
            | ErrorKind::NoChannel
            | ErrorKind::AllAttemptsFailed => "upstream_error",
            ErrorKind::Cancelled | ErrorKind::Internal => "server_error",
        }
    }
}

impl fmt::Display for RelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.kind.as_str(),
            self.side.as_str(),
            self.message
        )
    }
}

impl std::error::Error for RelayError {}

/// Parse a Retry-After header value: delta seconds (possibly fractional) or an HTTP date
/// is not supported beyond seconds; `retry-after-ms` (OpenAI) is preferred when present.
pub fn parse_retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 86_400.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_statuses_are_classified() {
        for s in [408, 409, 429, 500, 502, 503, 504] {
            assert!(RelayError::upstream_status(s, "x").is_retryable(), "{s}");
        }
        for s in [400, 413, 422] {
            let e = RelayError::upstream_status(s, "x");
            assert_eq!(e.disposition(), Disposition::Fatal, "{s}");
            assert_eq!(e.status_code().as_u16(), s);
            assert_eq!(e.side(), Side::Client);
        }
        for s in [401, 403, 404] {
            let e = RelayError::upstream_status(s, "x");
            assert_eq!(e.disposition(), Disposition::Failover, "{s}");
            assert_eq!(e.status_code(), StatusCode::BAD_GATEWAY);
        }
        assert_eq!(
            RelayError::upstream_status(429, "x").status_code(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_ms() {
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(150)));
        let mut bad = http::HeaderMap::new();
        bad.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&bad), None);
    }
}
