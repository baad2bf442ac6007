//! HdrHistograms and counters of a run, and their JSON and text summaries.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::request::Outcome;

/// Highest value tracked: 10 minutes in nanoseconds.
const MAX_NS: u64 = 600_000_000_000;

/// Time-to-first-frame samples kept verbatim, at most: enough for every stream
/// of a streaming round (about 100 to 1,000), so a harness can pool rounds
/// into one p99 instead of taking a median of per-round maxima.
const TTFT_SAMPLES_KEPT: usize = 10_000;

/// The histograms, in the order they are reported.
const METRICS: [&str; 7] = [
    "latency", "service", "headers", "ttft", "gap", "transit", "send_lag",
];

/// Everything recorded in the measured window.
pub(crate) struct Recorder {
    hists: Vec<Histogram<u64>>,
    requests: u64,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    first_errors: Vec<String>,
    events: u64,
    sse_answers: u64,
    frames_short: u64,
    frames_lost: u64,
    frames_extra: u64,
    bytes: u64,
    /// TTFT of every answer, ns, while there are at most [`TTFT_SAMPLES_KEPT`].
    ttft_samples: Vec<u64>,
    /// More answers than that: the samples are not reported.
    ttft_overflow: bool,
}

/// Three significant digits from 1 ns to [`MAX_NS`].
fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, MAX_NS, 3).map_err(|e| format!("histogram: {e}"))
}

fn nanos(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_nanos()).unwrap_or(u64::MAX)
}

impl Recorder {
    pub(crate) fn new() -> Result<Recorder, String> {
        Ok(Recorder {
            hists: METRICS
                .iter()
                .map(|_| histogram())
                .collect::<Result<_, _>>()?,
            requests: 0,
            ok: 0,
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            first_errors: Vec::new(),
            events: 0,
            sse_answers: 0,
            frames_short: 0,
            frames_lost: 0,
            frames_extra: 0,
            bytes: 0,
            ttft_samples: Vec::new(),
            ttft_overflow: false,
        })
    }

    fn put(&mut self, metric: usize, ns: u64) {
        if let Some(h) = self.hists.get_mut(metric) {
            h.saturating_record(ns.clamp(1, MAX_NS));
        }
    }

    pub(crate) fn record(&mut self, o: &Outcome, expect_frames: u64) {
        self.requests += 1;
        if let Some(status) = o.status {
            *self.statuses.entry(status).or_default() += 1;
        }
        if let Some((kind, message)) = &o.error {
            *self.errors.entry(kind).or_default() += 1;
            if self.first_errors.len() < 5 {
                self.first_errors.push(format!("{kind}: {message}"));
            }
            return;
        }
        let Some(status) = o.status else {
            return;
        };
        if !(200..300).contains(&status) {
            *self.errors.entry("status").or_default() += 1;
            return;
        }
        self.ok += 1;
        self.bytes += o.bytes;
        self.events += o.events;
        if o.sse {
            self.sse_answers += 1;
            if expect_frames > 0 {
                if o.events < expect_frames {
                    self.frames_short += 1;
                    self.frames_lost += expect_frames - o.events;
                } else if o.events > expect_frames {
                    self.frames_extra += 1;
                }
            }
        }
        self.put(0, nanos(o.start, o.end));
        self.put(1, nanos(o.sent, o.end));
        if let Some(h) = o.headers {
            self.put(2, nanos(o.start, h));
        }
        if let Some(f) = o.first {
            let ns = nanos(o.start, f);
            self.put(3, ns);
            if self.ttft_samples.len() < TTFT_SAMPLES_KEPT {
                self.ttft_samples.push(ns);
            } else {
                self.ttft_overflow = true;
            }
        }
        for &g in &o.gaps_ns {
            self.put(4, g);
        }
        for &t in &o.transits_ns {
            self.put(5, t);
        }
        self.put(6, nanos(o.start, o.sent));
    }

    fn hist_json(h: &Histogram<u64>) -> Value {
        if h.is_empty() {
            return Value::Null;
        }
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        json!({
            "count": h.len(),
            "min": us(h.min()),
            "p50": us(h.value_at_quantile(0.50)),
            "p90": us(h.value_at_quantile(0.90)),
            "p99": us(h.value_at_quantile(0.99)),
            "p999": us(h.value_at_quantile(0.999)),
            "max": us(h.max()),
            "mean": (h.mean() / 100.0).round() / 10.0,
        })
    }

    /// The JSON `results` object; `seconds` is the measured window.
    pub(crate) fn summary(&self, seconds: f64) -> Value {
        let mut metrics = serde_json::Map::new();
        for (name, h) in METRICS.iter().zip(&self.hists) {
            metrics.insert(format!("{name}_us"), Recorder::hist_json(h));
        }
        let error_count: u64 = self.errors.values().sum();
        json!({
            "requests": self.requests,
            "ok": self.ok,
            "errors": error_count,
            "error_kinds": self.errors,
            "first_errors": self.first_errors,
            "statuses": self.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "throughput_rps": if seconds > 0.0 { self.ok as f64 / seconds } else { 0.0 },
            "body_bytes_mean": if self.ok > 0 { self.bytes as f64 / self.ok as f64 } else { 0.0 },
            "sse_answers": self.sse_answers,
            "events": self.events,
            "frames_short": self.frames_short,
            "frames_lost": self.frames_lost,
            "frames_extra": self.frames_extra,
            "metrics": metrics,
            // Every answer's TTFT (µs), when there were few enough to list.
            "ttft_samples_us": if self.ttft_overflow || self.ttft_samples.is_empty() {
                Value::Null
            } else {
                json!(self.ttft_samples.iter().map(|&ns| (ns as f64 / 100.0).round() / 10.0).collect::<Vec<f64>>())
            },
        })
    }

    /// A few lines for people.
    pub(crate) fn human(
        &self,
        url: &str,
        rate: Option<f64>,
        connections: usize,
        seconds: f64,
    ) -> String {
        let mut out = String::new();
        let mode = match rate {
            Some(r) => format!("open loop {r} rps (max {connections} connections)"),
            None => format!("closed loop c={connections}"),
        };
        let errors: u64 = self.errors.values().sum();
        let _ = writeln!(
            out,
            "relay-load {url}: {mode}, {seconds} s: {} ok ({:.1}/s), {errors} errors {:?}",
            self.ok,
            if seconds > 0.0 {
                self.ok as f64 / seconds
            } else {
                0.0
            },
            self.errors
        );
        for e in &self.first_errors {
            let _ = writeln!(out, "  error: {e}");
        }
        for (name, h) in METRICS.iter().zip(&self.hists) {
            if h.is_empty() {
                continue;
            }
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "  {name:<9} us  p50 {:>10.1}  p90 {:>10.1}  p99 {:>10.1}  p99.9 {:>10.1}  max {:>10.1}  (n={})",
                us(0.5),
                us(0.9),
                us(0.99),
                us(0.999),
                h.max() as f64 / 1000.0,
                h.len()
            );
        }
        if self.sse_answers > 0 {
            let _ = writeln!(
                out,
                "  frames: {} events in {} streams, {} short ({} lost), {} with extra",
                self.events,
                self.sse_answers,
                self.frames_short,
                self.frames_lost,
                self.frames_extra
            );
        }
        out
    }
}
