//! A usage sink that writes each settlement record as one structured log line, then
//! passes it on.

use std::sync::Arc;

use relay_core::{UsageRecord, UsageSink};

/// Logs every record at `info` (target `relay::usage`) and forwards it.
pub struct LogSink {
    next: Arc<dyn UsageSink>,
}

impl LogSink {
    /// Log, then hand records to `next`.
    pub fn new(next: Arc<dyn UsageSink>) -> Self {
        LogSink { next }
    }
}

impl UsageSink for LogSink {
    fn record(&self, r: UsageRecord) {
        tracing::info!(
            target: "relay::usage",
            request_id = %r.request_id,
            key = r.key_id.as_deref().unwrap_or("-"),
            model = %r.requested_model,
            channel = r.channel.as_deref().unwrap_or("-"),
            upstream_model = r.upstream_model.as_deref().unwrap_or("-"),
            stream = r.stream,
            outcome = ?r.outcome,
            status = r.status,
            error = r.error_kind.unwrap_or("-"),
            attempts = r.attempts,
            input_tokens = r.usage.input_tokens,
            output_tokens = r.usage.output_tokens,
            cached_tokens = r.usage.cached_input_tokens,
            estimated = r.estimated,
            latency_ms = r.latency_ms,
            ttft_ms = r.ttft_ms.unwrap_or(0),
            "request settled"
        );
        self.next.record(r);
    }
}
