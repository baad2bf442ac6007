//! A usage row as bytes: what the usage writer carries from a request to the database.
//!
//! A settlement record is encoded once, on the thread that settles the request, as a
//! PostgreSQL binary `COPY` tuple (PostgreSQL docs, "COPY", binary format: a 16-bit
//! field count, then per field a 32-bit length, -1 for NULL, and the value's bytes;
//! `text` as UTF-8, `int8` as 8 bytes; every integer big-endian). The record's strings
//! are freed right there, on the thread that allocated them, and what crosses to the
//! writer is a buffer of many rows. The Postgres store streams those buffers into
//! `COPY` untouched; SQLite, the spill file and the idempotent fallback read the rows
//! back as borrowed [`RowRef`]s.
//!
//! [`RowRef`] is the one view of a row's columns, made from a [`UsageRecord`] (with its
//! cost), a [`UsageRow`] or a tuple, so every backend binds the same 23 columns in the
//! same order ([`COLUMNS`]).

use std::borrow::Cow;

use relay_core::{Outcome, UsageRecord};

use crate::model::{QuotaHold, UsageRow};

/// The usage table's columns, in the order of a tuple's fields.
pub const COLUMNS: [&str; 23] = [
    "request_id",
    "key_id",
    "requested_model",
    "item",
    "channel",
    "upstream_model",
    "client_dialect",
    "upstream_dialect",
    "operation",
    "stream",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_micros",
    "estimated",
    "outcome",
    "status",
    "error_kind",
    "attempts",
    "latency_ms",
    "ttft_ms",
    "started_at",
];

/// The fields of a tuple (the count a tuple starts with).
const FIELDS: i16 = COLUMNS.len() as i16;

/// A tuple that does not read back (never one this module wrote).
#[derive(Debug, thiserror::Error)]
#[error("malformed usage tuple: {0}")]
pub struct TupleError(&'static str);

/// One usage row's columns, borrowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowRef<'a> {
    /// Unique request id.
    pub request_id: &'a str,
    /// The key id.
    pub key_id: Option<&'a str>,
    /// The preset or model the client named.
    pub requested_model: &'a str,
    /// The preset item index.
    pub item: Option<i64>,
    /// The channel of the last attempt.
    pub channel: Option<&'a str>,
    /// The model sent upstream.
    pub upstream_model: Option<&'a str>,
    /// Client dialect.
    pub client_dialect: &'a str,
    /// Upstream dialect.
    pub upstream_dialect: Option<&'a str>,
    /// Operation.
    pub operation: &'a str,
    /// Streamed.
    pub stream: bool,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cached input tokens.
    pub cached_tokens: i64,
    /// Reasoning tokens.
    pub reasoning_tokens: i64,
    /// Cost in micro-USD.
    pub cost_micros: i64,
    /// Estimated usage.
    pub estimated: bool,
    /// `ok`, `error`, `cancelled`.
    pub outcome: &'a str,
    /// HTTP status.
    pub status: i64,
    /// Error kind label.
    pub error_kind: Option<&'a str>,
    /// Attempts.
    pub attempts: i64,
    /// Latency in ms.
    pub latency_ms: i64,
    /// Time to first token in ms.
    pub ttft_ms: Option<i64>,
    /// Arrival, Unix milliseconds.
    pub started_at: i64,
}

/// Bytes of a model name a usage row keeps at most. The names come from clients; a
/// longer one is cut (at a character boundary) rather than stored whole.
pub const MODEL_NAME_MAX: usize = 512;

/// A client-supplied name as a usage row stores it: at most [`MODEL_NAME_MAX`] bytes.
/// (NUL characters, which PostgreSQL text cannot hold, become `?` where the row is
/// written: [`clean`].)
pub fn model_name(s: &str) -> &str {
    if s.len() <= MODEL_NAME_MAX {
        return s;
    }
    let mut end = MODEL_NAME_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A client-supplied name with NUL characters replaced by `?`, as every backend stores
/// it (PostgreSQL text cannot hold NUL; a row that carried one would fail its whole
/// batch, every time it was retried or replayed).
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.as_bytes().contains(&0) {
        Cow::Owned(s.replace('\0', "?"))
    } else {
        Cow::Borrowed(s)
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The outcome's column value.
pub fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::Error => "error",
        Outcome::Cancelled => "cancelled",
    }
}

impl<'a> RowRef<'a> {
    /// A settlement record's row, with its cost.
    pub fn of_record(r: &'a UsageRecord, cost_micros: i64) -> Self {
        RowRef {
            request_id: &r.request_id,
            key_id: r.key_id.as_deref(),
            requested_model: model_name(&r.requested_model),
            item: r.item.map(|i| i64::try_from(i).unwrap_or(i64::MAX)),
            channel: r.channel.as_deref(),
            upstream_model: r.upstream_model.as_deref().map(model_name),
            client_dialect: r.client_dialect,
            upstream_dialect: r.upstream_dialect,
            operation: r.operation,
            stream: r.stream,
            input_tokens: clamp(r.usage.input_tokens),
            output_tokens: clamp(r.usage.output_tokens),
            cached_tokens: clamp(r.usage.cached_input_tokens),
            reasoning_tokens: clamp(r.usage.reasoning_tokens),
            cost_micros,
            estimated: r.estimated,
            outcome: outcome_label(r.outcome),
            status: i64::from(r.status),
            error_kind: r.error_kind,
            attempts: i64::from(r.attempts),
            latency_ms: clamp(r.latency_ms),
            ttft_ms: r.ttft_ms.map(clamp),
            started_at: r
                .started_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| clamp(d.as_millis() as u64))
                .unwrap_or(0),
        }
    }

    /// A stored row's columns.
    pub fn of_row(r: &'a UsageRow) -> Self {
        RowRef {
            request_id: &r.request_id,
            key_id: r.key_id.as_deref(),
            requested_model: &r.requested_model,
            item: r.item,
            channel: r.channel.as_deref(),
            upstream_model: r.upstream_model.as_deref(),
            client_dialect: &r.client_dialect,
            upstream_dialect: r.upstream_dialect.as_deref(),
            operation: &r.operation,
            stream: r.stream,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_tokens: r.cached_tokens,
            reasoning_tokens: r.reasoning_tokens,
            cost_micros: r.cost_micros,
            estimated: r.estimated,
            outcome: &r.outcome,
            status: r.status,
            error_kind: r.error_kind.as_deref(),
            attempts: r.attempts,
            latency_ms: r.latency_ms,
            ttft_ms: r.ttft_ms,
            started_at: r.started_at,
        }
    }

    /// An owned row (for the spill file and the idempotent path).
    pub fn to_row(&self, hold: Option<QuotaHold>) -> UsageRow {
        let owned = |s: &str| Cow::Owned(s.to_owned());
        UsageRow {
            request_id: self.request_id.to_owned(),
            key_id: self.key_id.map(str::to_owned),
            requested_model: clean(self.requested_model).into_owned(),
            item: self.item,
            channel: self.channel.map(str::to_owned),
            upstream_model: self.upstream_model.map(|m| clean(m).into_owned()),
            client_dialect: owned(self.client_dialect),
            upstream_dialect: self.upstream_dialect.map(owned),
            operation: owned(self.operation),
            stream: self.stream,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cached_tokens: self.cached_tokens,
            reasoning_tokens: self.reasoning_tokens,
            cost_micros: self.cost_micros,
            estimated: self.estimated,
            outcome: owned(self.outcome),
            status: self.status,
            error_kind: self.error_kind.map(owned),
            attempts: self.attempts,
            latency_ms: self.latency_ms,
            ttft_ms: self.ttft_ms,
            started_at: self.started_at,
            hold,
        }
    }

    /// Append the row as one tuple, fields in [`COLUMNS`] order. The tuple's size is
    /// computed first and the buffer grown once; the fields are then copied into place.
    /// False (and nothing appended) only if the fields did not fill that size.
    #[must_use]
    pub fn encode(&self, buf: &mut Vec<u8>) -> bool {
        let texts = [
            Some(self.request_id),
            self.key_id,
            Some(self.requested_model),
            self.channel,
            self.upstream_model,
            Some(self.client_dialect),
            self.upstream_dialect,
            Some(self.operation),
            Some(self.outcome),
            self.error_kind,
        ];
        let ints = 11 + usize::from(self.item.is_some()) + usize::from(self.ttft_ms.is_some());
        let size = 2
            + 4 * COLUMNS.len()
            + 8 * ints
            + texts.iter().map(|t| t.map_or(0, str::len)).sum::<usize>();
        let start = buf.len();
        buf.resize(start + size, 0);
        let mut w = Put {
            out: &mut buf[start..],
            at: 0,
        };
        w.bytes(&FIELDS.to_be_bytes());
        w.text(self.request_id);
        w.opt_text(self.key_id);
        w.text_clean(self.requested_model);
        w.opt_int8(self.item);
        w.opt_text(self.channel);
        match self.upstream_model {
            Some(m) => w.text_clean(m),
            None => w.opt_text(None),
        }
        w.text(self.client_dialect);
        w.opt_text(self.upstream_dialect);
        w.text(self.operation);
        w.int8(i64::from(self.stream));
        w.int8(self.input_tokens);
        w.int8(self.output_tokens);
        w.int8(self.cached_tokens);
        w.int8(self.reasoning_tokens);
        w.int8(self.cost_micros);
        w.int8(i64::from(self.estimated));
        w.text(self.outcome);
        w.int8(self.status);
        w.opt_text(self.error_kind);
        w.int8(self.attempts);
        w.int8(self.latency_ms);
        w.opt_int8(self.ttft_ms);
        w.int8(self.started_at);
        if w.at != size {
            // Never reached (the size above counts every field), but a tuple with a
            // wrong size would corrupt the whole stream: leave no partial tuple behind.
            debug_assert_eq!(w.at, size, "tuple size");
            buf.truncate(start);
            return false;
        }
        true
    }

    /// Read one tuple from the front of `bytes`; the row and the bytes after it.
    pub fn decode(bytes: &'a [u8]) -> Result<(RowRef<'a>, &'a [u8]), TupleError> {
        let mut r = Reader(bytes);
        if r.i16()? != FIELDS {
            return Err(TupleError("field count"));
        }
        let row = RowRef {
            request_id: r.text()?,
            key_id: r.opt_text()?,
            requested_model: r.text()?,
            item: r.opt_int8()?,
            channel: r.opt_text()?,
            upstream_model: r.opt_text()?,
            client_dialect: r.text()?,
            upstream_dialect: r.opt_text()?,
            operation: r.text()?,
            stream: r.int8()? != 0,
            input_tokens: r.int8()?,
            output_tokens: r.int8()?,
            cached_tokens: r.int8()?,
            reasoning_tokens: r.int8()?,
            cost_micros: r.int8()?,
            estimated: r.int8()? != 0,
            outcome: r.text()?,
            status: r.int8()?,
            error_kind: r.opt_text()?,
            attempts: r.int8()?,
            latency_ms: r.int8()?,
            ttft_ms: r.opt_int8()?,
            started_at: r.int8()?,
        };
        Ok((row, r.0))
    }
}

/// Append every row as a tuple.
pub fn encode_all(rows: &[RowRef<'_>], buf: &mut Vec<u8>) -> Result<(), TupleError> {
    buf.reserve(rows.len() * 320);
    for r in rows {
        if !r.encode(buf) {
            return Err(TupleError("a row's fields did not fill its tuple"));
        }
    }
    Ok(())
}

/// The rows of a buffer of tuples, in order.
pub fn rows(mut bytes: &[u8]) -> impl Iterator<Item = Result<RowRef<'_>, TupleError>> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        match RowRef::decode(bytes) {
            Ok((row, rest)) => {
                bytes = rest;
                Some(Ok(row))
            }
            Err(e) => {
                bytes = &[];
                Some(Err(e))
            }
        }
    })
}

/// Writes fields into a tuple's pre-sized bytes.
struct Put<'b> {
    out: &'b mut [u8],
    at: usize,
}

impl Put<'_> {
    fn bytes(&mut self, b: &[u8]) {
        let end = self.at + b.len();
        if let Some(dst) = self.out.get_mut(self.at..end) {
            dst.copy_from_slice(b);
        }
        self.at = end;
    }

    fn text(&mut self, s: &str) {
        // A field longer than i32::MAX bytes cannot be carried; the request body limit
        // keeps every string far below it, and a saturated length makes the database
        // refuse the batch (which is then spilled) rather than misread the stream.
        let len = i32::try_from(s.len()).unwrap_or(i32::MAX);
        self.bytes(&len.to_be_bytes());
        self.bytes(s.as_bytes());
    }

    fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.bytes(&(-1i32).to_be_bytes()),
        }
    }

    /// A client-supplied name: NUL bytes become `?` (same length; see [`clean`]).
    fn text_clean(&mut self, s: &str) {
        let start = self.at + 4;
        self.text(s);
        if let Some(written) = self.out.get_mut(start..self.at) {
            for b in written.iter_mut().filter(|b| **b == 0) {
                *b = b'?';
            }
        }
    }

    fn int8(&mut self, v: i64) {
        let mut field = [0u8; 12];
        field[..4].copy_from_slice(&8i32.to_be_bytes());
        field[4..].copy_from_slice(&v.to_be_bytes());
        self.bytes(&field);
    }

    fn opt_int8(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.int8(v),
            None => self.bytes(&(-1i32).to_be_bytes()),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TupleError> {
        if self.0.len() < n {
            return Err(TupleError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, TupleError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// A field's bytes, `None` for NULL.
    fn field(&mut self) -> Result<Option<&'a [u8]>, TupleError> {
        let b = self.take(4)?;
        let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| TupleError("length"))?;
        self.take(len).map(Some)
    }

    fn opt_text(&mut self) -> Result<Option<&'a str>, TupleError> {
        match self.field()? {
            Some(b) => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| TupleError("text is not UTF-8")),
            None => Ok(None),
        }
    }

    fn text(&mut self) -> Result<&'a str, TupleError> {
        self.opt_text()?
            .ok_or(TupleError("NULL in a NOT NULL column"))
    }

    fn opt_int8(&mut self) -> Result<Option<i64>, TupleError> {
        match self.field()? {
            Some(b) => {
                let b: [u8; 8] = b.try_into().map_err(|_| TupleError("int8 width"))?;
                Ok(Some(i64::from_be_bytes(b)))
            }
            None => Ok(None),
        }
    }

    fn int8(&mut self) -> Result<i64, TupleError> {
        self.opt_int8()?
            .ok_or(TupleError("NULL in a NOT NULL column"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use relay_core::{DialectId, Operation};

    use super::*;

    fn record() -> UsageRecord {
        let mut r = UsageRecord::new(
            "req_1".into(),
            "fast".into(),
            DialectId::OPENAI_CHAT,
            Operation::Chat,
        );
        r.key_id = Some("k".into());
        r.channel = Some("c".into());
        r.item = Some(2);
        r.stream = true;
        r.usage.input_tokens = 10;
        r.usage.output_tokens = u64::MAX;
        r.outcome = Outcome::Cancelled;
        r.error_kind = Some("client_closed");
        r.ttft_ms = Some(4);
        r.started_at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        r
    }

    #[test]
    fn a_record_reads_back_field_for_field() {
        let rec = record();
        let row = RowRef::of_record(&rec, 77);
        let mut buf = Vec::new();
        assert!(row.encode(&mut buf));
        assert!(row.encode(&mut buf));
        let back: Vec<RowRef<'_>> = rows(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(back, vec![row, row]);
        assert_eq!(row.output_tokens, i64::MAX, "clamped, not wrapped");
        assert_eq!(row.outcome, "cancelled");
        assert_eq!(row.started_at, 1_700_000_000_123);
        assert_eq!(row.upstream_model, None);
    }

    #[test]
    fn a_tuple_is_the_postgres_binary_copy_layout() {
        let rec = record();
        let mut buf = Vec::new();
        assert!(RowRef::of_record(&rec, -3).encode(&mut buf));
        assert_eq!(&buf[..2], &23i16.to_be_bytes());
        // request_id: length 5, then its bytes.
        assert_eq!(&buf[2..6], &5i32.to_be_bytes());
        assert_eq!(&buf[6..11], b"req_1");
        // key_id "k".
        assert_eq!(&buf[11..15], &1i32.to_be_bytes());
        assert_eq!(&buf[15..16], b"k");
        // upstream_model is NULL: length -1 and no bytes.
        let mut r = Reader(&buf[2..]);
        for _ in 0..5 {
            r.field().unwrap();
        }
        assert_eq!(r.field().unwrap(), None);
    }

    #[test]
    fn client_names_are_cut_and_lose_their_nul_characters() {
        let mut rec = record();
        rec.requested_model = format!("a\0b{}", "é".repeat(400));
        rec.upstream_model = Some("x\0".into());
        let row = RowRef::of_record(&rec, 0);
        assert!(row.requested_model.len() <= MODEL_NAME_MAX);
        assert!(row.requested_model.len() >= MODEL_NAME_MAX - 1);
        let mut buf = Vec::new();
        assert!(row.encode(&mut buf));
        let (back, rest) = RowRef::decode(&buf).unwrap();
        assert!(rest.is_empty());
        assert!(back.requested_model.starts_with("a?b"));
        assert_eq!(back.upstream_model, Some("x?"));
        let owned = row.to_row(None);
        assert_eq!(owned.requested_model, back.requested_model);
        assert_eq!(owned.upstream_model.as_deref(), Some("x?"));
    }

    #[test]
    fn a_row_and_its_owned_copy_agree() {
        let rec = record();
        let row = RowRef::of_record(&rec, 5);
        let owned = row.to_row(None);
        assert_eq!(RowRef::of_row(&owned), row);
    }

    #[test]
    fn truncated_or_foreign_bytes_are_an_error_not_a_panic() {
        let rec = record();
        let mut buf = Vec::new();
        assert!(RowRef::of_record(&rec, 0).encode(&mut buf));
        for cut in 0..buf.len() {
            assert!(RowRef::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        assert!(RowRef::decode(&[0, 3, 0, 0, 0, 0]).is_err());
        let mut bad = buf.clone();
        bad[6] = 0xff; // not UTF-8
        assert!(RowRef::decode(&bad).is_err());
    }
}
