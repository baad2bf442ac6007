//! Usage: token counts, the one settlement record per request, and where records go.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::dialect::{DialectId, Operation};

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Completion tokens, reasoning included.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cached_input_tokens: u64,
    /// Reasoning tokens, when reported.
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Input plus output.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// How a request ended, for the settlement record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Completed normally.
    Ok,
    /// Failed before or during the response.
    Error,
    /// The client went away before the end.
    Cancelled,
}

/// The one final usage record of a request.
#[derive(Clone, Debug, Serialize)]
pub struct UsageRecord {
    /// The request id (unique; the sink may rely on it for idempotence).
    pub request_id: String,
    /// The caller's key id, when the embedding app authenticates.
    pub key_id: Option<String>,
    /// The model or preset the client named.
    pub requested_model: String,
    /// The index of the preset item that served it.
    pub item: Option<usize>,
    /// The channel of the final attempt.
    pub channel: Option<String>,
    /// The model name sent upstream.
    pub upstream_model: Option<String>,
    /// The client's dialect.
    pub client_dialect: &'static str,
    /// The upstream's dialect.
    pub upstream_dialect: Option<&'static str>,
    /// Chat or embeddings.
    pub operation: &'static str,
    /// Whether it streamed.
    pub stream: bool,
    /// Token counts.
    pub usage: Usage,
    /// True when the upstream reported no usage and these are estimates.
    pub estimated: bool,
    /// How it ended.
    pub outcome: Outcome,
    /// The HTTP status the client got.
    pub status: u16,
    /// The error kind label, if it failed.
    pub error_kind: Option<&'static str>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Milliseconds from arrival to the last byte.
    pub latency_ms: u64,
    /// Milliseconds from arrival to the first content byte sent, for streams.
    pub ttft_ms: Option<u64>,
    /// Wall-clock arrival time.
    pub started_at: SystemTime,
}

impl UsageRecord {
    /// A record for a request that has not reached any upstream yet.
    pub fn new(
        request_id: String,
        requested_model: String,
        dialect: DialectId,
        op: Operation,
    ) -> Self {
        UsageRecord {
            request_id,
            key_id: None,
            requested_model,
            item: None,
            channel: None,
            upstream_model: None,
            client_dialect: dialect.as_str(),
            upstream_dialect: None,
            operation: op.as_str(),
            stream: false,
            usage: Usage::default(),
            estimated: false,
            outcome: Outcome::Ok,
            status: 200,
            error_kind: None,
            attempts: 0,
            latency_ms: 0,
            ttft_ms: None,
            started_at: SystemTime::now(),
        }
    }
}

/// Where settlement records go. `record` is called on the request path and must not wait
/// on I/O: enqueue and return.
pub trait UsageSink: Send + Sync + 'static {
    /// Take one record.
    fn record(&self, record: UsageRecord);
}

#[allow(dead_code)]
fn _usage_sink_is_object_safe(_: &dyn UsageSink) {}

/// A sink that drops everything.
#[derive(Debug, Default)]
pub struct NullSink;

impl UsageSink for NullSink {
    fn record(&self, _record: UsageRecord) {}
}

/// A bounded in-memory sink: keeps the newest `capacity` records, counts the ones it
/// pushed out. Useful for tests and small embeddings.
#[derive(Debug)]
pub struct MemorySink {
    records: Mutex<VecDeque<UsageRecord>>,
    capacity: usize,
    evicted: AtomicU64,
    total: AtomicU64,
}

impl MemorySink {
    /// A sink holding at most `capacity` records.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(MemorySink {
            records: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            evicted: AtomicU64::new(0),
            total: AtomicU64::new(0),
        })
    }

    /// A copy of the records held.
    pub fn records(&self) -> Vec<UsageRecord> {
        self.records.lock().iter().cloned().collect()
    }

    /// Records received in total.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Records pushed out by newer ones.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

impl UsageSink for MemorySink {
    fn record(&self, record: UsageRecord) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut records = self.records.lock();
        if records.len() >= self.capacity {
            records.pop_front();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        records.push_back(record);
    }
}
