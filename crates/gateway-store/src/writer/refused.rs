//! Rows the database refuses for good. A constraint or a trigger that says no to one row
//! fails its whole batch (a `COPY`, a multi-row insert), and would fail it on every
//! retry and every replay of the spill file it went to: one such row used to keep the
//! writer spilling everything after it. Now a refused batch is split in halves, each
//! written on its own, down to the single rows the database refuses. Those are set
//! aside in `usage-refused.jsonl` in the spill directory (counted in `refused`, logged
//! with their request ids and the database's reason); every other row is written. A
//! refused row's quota hold is released (the row is charged in full if the file is
//! replayed later, as any row whose hold is gone).
//!
//! If the database goes away part way, nothing is set aside and the whole batch takes
//! the outage path (spilled, or kept in its spill file): the rows already written are
//! skipped when it is written again (idempotent on request id), and the search starts
//! over then. A batch with `k` refused rows of `n` costs about `2k·log2(n)` writes.
//!
//! A refusal of many rows is not the rows' doing: a column type changed under a rolling
//! deploy, a trigger that makes the table read-only, a missing partition. Past
//! [`budget`] refused rows in one batch the search stops and the batch takes the outage
//! path whole, as before: its rows wait in the spill file until the database takes them
//! (nothing set aside, no hold released).
//!
//! If the set-aside file cannot be written (the disk), the refused rows are logged in
//! full and counted as dropped, and the rest of the batch stands: a batch that could
//! not be set aside must not go back to the spill file and be searched again forever.
//! (A replayed file that sets rows aside and then fails part way is kept and read
//! again, so its refused rows can be set aside, and counted, twice.)

use std::ops::Range;
use std::sync::atomic::Ordering;

use super::{Attempt, WriterTask};
use crate::StoreError;
use crate::model::UsageRow;
use crate::tuple::RowRef;

/// Refused rows logged one by one per batch, at most (then one line with the count).
const LOGGED: usize = 10;

impl WriterTask {
    /// A pass of tuples the database refused: find the refused rows, set them aside
    /// and write the rest; false when the database failed meanwhile.
    pub(super) async fn set_aside_tuples(&self, bufs: &[Vec<u8>], first: StoreError) -> bool {
        let rows = &split_tuples(bufs);
        let store = &self.store;
        let write = move |range: Range<usize>| async move {
            let buf = rows[range].concat();
            store.insert_usage_tuples(std::slice::from_ref(&buf)).await
        };
        let Some(refused) = self.isolate(rows.len(), first, write).await else {
            return false;
        };
        let mut aside = Vec::with_capacity(refused.len());
        for (i, reason) in refused {
            match RowRef::decode(rows[i]) {
                Ok((row, _)) => {
                    log_refused(aside.len(), row.request_id, &reason);
                    aside.push(row.to_row(None));
                }
                Err(e) => {
                    // Never made by this writer (its tuples are checked as they are
                    // read back from a spill file): the bytes cannot be kept as a row.
                    self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, bytes = rows[i].len(), "usage row dropped: its tuple does not read back");
                }
            }
        }
        self.set_aside(aside).await;
        true
    }

    /// A batch of rows the database refused: as [`WriterTask::set_aside_tuples`].
    pub(super) async fn set_aside_rows(&self, rows: &[UsageRow], first: StoreError) -> bool {
        let store = &self.store;
        let write = move |range: Range<usize>| store.insert_usage(&rows[range]);
        let Some(refused) = self.isolate(rows.len(), first, write).await else {
            return false;
        };
        let mut aside = Vec::with_capacity(refused.len());
        for (i, reason) in &refused {
            log_refused(aside.len(), &rows[*i].request_id, reason);
            aside.push(rows[*i].clone());
        }
        if !self.set_aside(aside).await {
            // Not kept: their holds stay for the reconciliation of their replica.
            return true;
        }
        // A refused row settles nothing: its reservation is released rather than left
        // held for as long as its replica lives. (Replayed later, the row finds no hold
        // and is charged in full, as a row whose hold was reconciled.)
        for (i, _) in refused {
            let row = &rows[i];
            if !row.hold.is_some_and(|h| h.tracked) {
                continue;
            }
            let release = self.store.release(&row.request_id);
            match tokio::time::timeout(self.config.write_timeout, release).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(request_id = %row.request_id, error = %e, "cannot release the quota hold of a refused usage row");
                }
                Err(_) => {
                    tracing::warn!(request_id = %row.request_id, "releasing the quota hold of a refused usage row timed out");
                }
            }
        }
        true
    }

    /// Which of `n` rows, refused together with `first`, the database refuses: the
    /// indices with the database's reason. Groups are split in halves and written by
    /// `write` (rows it takes are counted as written). `None` when a write failed
    /// otherwise (the database is away), or when more than [`budget`] rows are refused
    /// (not the rows' doing): the caller takes the outage path.
    async fn isolate<F>(
        &self,
        n: usize,
        first: StoreError,
        write: impl Fn(Range<usize>) -> F,
    ) -> Option<Vec<(usize, String)>>
    where
        F: std::future::Future<Output = Result<u64, StoreError>>,
    {
        tracing::warn!(error = %first, rows = n, "the database refused a usage batch: looking for the rows it refuses");
        let mut refused = Vec::new();
        // Groups still to write (the last one first), each with its refusal when known.
        let mut todo = vec![(0..n, Some(first.to_string()))];
        while let Some((range, known)) = todo.pop() {
            let reason = match known {
                Some(reason) => reason,
                None => {
                    let deadline = self.write_deadline(range.len());
                    match self
                        .attempt(range.len(), deadline, || write(range.clone()))
                        .await
                    {
                        Attempt::Written => continue,
                        Attempt::Failed => return None,
                        Attempt::Refused(e) => e.to_string(),
                    }
                }
            };
            if range.len() <= 1 {
                refused.extend(range.map(|i| (i, reason.clone())));
                if refused.len() > budget(n) {
                    tracing::error!(
                        rows = n,
                        reason,
                        "the database refuses usage rows by the batch: this is the schema or a trigger, not the rows; \
                         the batch waits in the spill file until the database takes it"
                    );
                    return None;
                }
                continue;
            }
            let mid = range.start + range.len() / 2;
            todo.push((mid..range.end, None));
            todo.push((range.start..mid, None));
        }
        if refused.len() > LOGGED {
            tracing::error!(
                rows = refused.len(),
                "usage rows refused by the database and set aside (the first {LOGGED} are logged)"
            );
        }
        Some(refused)
    }

    /// Append refused rows to the set-aside file; false when that failed, and then the
    /// rows are logged in full and counted as dropped.
    async fn set_aside(&self, rows: Vec<UsageRow>) -> bool {
        if rows.is_empty() {
            return true;
        }
        let n = rows.len() as u64;
        let spill = self.spill.clone();
        let appended = tokio::task::spawn_blocking(move || {
            let result = spill.set_aside(&rows);
            (result, rows)
        })
        .await;
        let (error, rows) = match appended {
            Ok((Ok(()), _)) => {
                self.metrics.refused.fetch_add(n, Ordering::Relaxed);
                return true;
            }
            Ok((Err(e), rows)) => (e.to_string(), rows),
            Err(e) => (e.to_string(), Vec::new()),
        };
        self.metrics.dropped.fetch_add(n, Ordering::Relaxed);
        tracing::error!(
            error,
            rows = n,
            "usage rows dropped: refused by the database, and the set-aside file cannot be written"
        );
        for row in &rows {
            // The data itself, for an operator to recover from the log.
            let json = serde_json::to_string(row).unwrap_or_default();
            tracing::error!(row = %json, "usage row dropped");
        }
        false
    }
}

/// Refused rows of a batch of `n` past which the refusal is taken for the database's
/// doing, not the rows': one in 16, at least 8 and at most 256 (the search costs about
/// two writes per refused row, times the batch's depth).
fn budget(n: usize) -> usize {
    (n / 16).clamp(8, 256)
}

/// Log the `nth` refused row of a batch (only the first [`LOGGED`]).
fn log_refused(nth: usize, request_id: &str, reason: &str) {
    if nth < LOGGED {
        tracing::error!(
            request_id,
            reason,
            file = super::spill::REFUSED,
            "usage row refused by the database: set aside"
        );
    }
}

/// The single tuples of buffers of tuples, in order. Bytes that do not read back as a
/// tuple stay together as the last piece of their buffer.
fn split_tuples(bufs: &[Vec<u8>]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    for buf in bufs {
        let mut rest = &buf[..];
        while !rest.is_empty() {
            match RowRef::decode(rest) {
                Ok((_, after)) => {
                    out.push(&rest[..rest.len() - after.len()]);
                    rest = after;
                }
                Err(_) => {
                    out.push(rest);
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use relay_core::{DialectId, Operation, UsageRecord};

    use super::*;

    #[test]
    fn tuples_split_into_single_rows_and_a_damaged_tail_stays_whole() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for i in 0..3 {
            let rec = UsageRecord::new(
                format!("r{i}"),
                "m".into(),
                DialectId::OPENAI_CHAT,
                Operation::Chat,
            );
            assert!(RowRef::of_record(&rec, 0).encode(if i < 2 { &mut a } else { &mut b }));
        }
        b.extend_from_slice(&[0xff, 0x00, 0x01]);
        let bufs = vec![a, Vec::new(), b];
        let rows = split_tuples(&bufs);
        assert_eq!(rows.len(), 4);
        let ids: Vec<&str> = rows[..3]
            .iter()
            .map(|r| RowRef::decode(r).unwrap().0.request_id)
            .collect();
        assert_eq!(ids, ["r0", "r1", "r2"]);
        assert!(RowRef::decode(rows[0]).unwrap().1.is_empty());
        assert_eq!(rows[3], &[0xff, 0x00, 0x01]);
    }
}
