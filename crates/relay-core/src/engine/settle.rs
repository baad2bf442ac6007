//! Settlement: exactly one usage record per request, whatever happens.
//!
//! A [`Settlement`] travels with the request (and then inside the streaming body). It
//! hands its record to the sink once: explicitly when the request ends, or from `Drop`
//! when the client goes away first, as a `cancelled` record with what was produced.

use std::sync::Arc;
use std::time::Instant;

use crate::error::RelayError;
use crate::usage::{Outcome, Usage, UsageRecord, UsageSink};

pub(crate) struct Settlement {
    record: Option<UsageRecord>,
    sink: Arc<dyn UsageSink>,
    started: Instant,
    prompt_estimate: u64,
    /// Output characters produced so far, for an estimate if the request is dropped.
    pub(crate) produced_chars: usize,
    /// Usage seen so far, for the same reason.
    pub(crate) usage_seen: Option<Usage>,
}

impl Settlement {
    pub(crate) fn new(
        record: UsageRecord,
        sink: Arc<dyn UsageSink>,
        started: Instant,
        prompt_estimate: u64,
    ) -> Self {
        Settlement {
            record: Some(record),
            sink,
            started,
            prompt_estimate,
            produced_chars: 0,
            usage_seen: None,
        }
    }

    pub(crate) fn record_mut(&mut self) -> Option<&mut UsageRecord> {
        self.record.as_mut()
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Mark the moment the first content byte went to the client.
    pub(crate) fn first_token(&mut self) {
        let ms = self.started.elapsed().as_millis() as u64;
        if let Some(r) = self.record.as_mut() {
            r.ttft_ms.get_or_insert(ms);
        }
    }

    /// Settle a success (or a stream that ended in an error after the head went out).
    pub(crate) fn finish(&mut self, outcome: Outcome, error: Option<&RelayError>) {
        let usage = self.usage_seen;
        let produced = self.produced_chars;
        self.settle(|r, prompt_estimate| {
            r.outcome = outcome;
            if let Some(e) = error {
                r.error_kind = Some(e.error_metric());
            }
            apply_usage(r, usage, produced, prompt_estimate, outcome);
        });
    }

    /// Settle a request that failed before any response went out.
    pub(crate) fn fail(&mut self, err: &RelayError) {
        self.settle(|r, _| {
            r.outcome = Outcome::Error;
            r.status = err.status_code().as_u16();
            r.error_kind = Some(err.error_metric());
        });
    }

    fn settle(&mut self, fill: impl FnOnce(&mut UsageRecord, u64)) {
        if let Some(mut record) = self.record.take() {
            fill(&mut record, self.prompt_estimate);
            record.latency_ms = self.started.elapsed().as_millis() as u64;
            self.sink.record(record);
        }
    }
}

fn apply_usage(
    r: &mut UsageRecord,
    usage: Option<Usage>,
    produced_chars: usize,
    prompt_estimate: u64,
    outcome: Outcome,
) {
    match usage {
        Some(u) => r.usage = u,
        None => {
            // The upstream reported nothing (or the stream was cut first): estimate, and
            // say so. A request that reached no upstream used nothing.
            if r.attempts > 0 && (outcome != Outcome::Error || produced_chars > 0) {
                r.usage = Usage {
                    input_tokens: prompt_estimate,
                    output_tokens: (produced_chars as u64).div_ceil(4),
                    ..Usage::default()
                };
                r.estimated = true;
            }
        }
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if self.record.is_some() {
            let usage = self.usage_seen;
            let produced = self.produced_chars;
            self.settle(|r, prompt_estimate| {
                r.outcome = Outcome::Cancelled;
                r.status = 499;
                r.error_kind = Some("cancelled");
                apply_usage(r, usage, produced, prompt_estimate, Outcome::Cancelled);
            });
        }
    }
}
