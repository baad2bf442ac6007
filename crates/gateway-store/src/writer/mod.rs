//! The usage writer: a [`UsageSink`] that never waits. `record` prices the settlement
//! record and encodes it as a [tuple](crate::tuple) into its thread's
//! [shard](shards) (an uncontended lock and a few hundred bytes appended; no channel
//! message, allocation or wake-up per request). One task takes every shard's buffer
//! once per flush interval and writes them in one batch (a binary `COPY` on Postgres,
//! multi-row inserts on SQLite), retrying briefly; rows with a quota hold travel as
//! rows and are settled in the transaction that inserts them. While the database is
//! away, batches go to the [spill file](spill) and a probe waits for it to come back;
//! then the spill is replayed. Idempotent on request id, so a batch written twice (a
//! commit whose answer was lost, then spilled) is still one row. When a shard is full,
//! rows go to a spill thread rather than being dropped; `dropped` counts only rows that
//! could be neither queued nor spilled. A batch the database refuses for what it holds
//! (a constraint, a trigger) is [split](refused) until the rows it refuses are found;
//! those are set aside in a file of their own and the rest is written, so one bad row
//! never holds up the others.

mod refused;
mod shards;
mod spill;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use relay_core::{UsageRecord, UsageSink};
use tokio::sync::{mpsc, oneshot};

use crate::model::{Price, QuotaHold, UsageRow};
use crate::store::SharedStore;
use crate::tuple::{self, RowRef};
use shards::{Shards, Taken};
use spill::Spill;

/// Writer settings.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Rows waiting for the writer at most: shared by the shards (a thread whose shard
    /// is full sends its rows to the overflow spill), and the most a writer that fell
    /// behind a slow database keeps in memory (beyond half of it, what gathered behind
    /// the write in flight goes to the spill file).
    pub queue: usize,
    /// Rows per write of rows with a quota hold, and of a replayed spill file, at most.
    /// (The rows without a hold, nearly all of them, go in one write per pass.)
    pub batch: usize,
    /// How long a partial batch waits for more rows.
    pub flush_interval: Duration,
    /// Deadline of one write attempt.
    pub write_timeout: Duration,
    /// Write attempts before a batch is spilled.
    pub attempts: u32,
    /// How often an unreachable database is probed.
    pub probe_interval: Duration,
    /// Where the spill file lives.
    pub spill_dir: PathBuf,
}

impl WriterConfig {
    /// Defaults with the spill file in `spill_dir`.
    pub fn new(spill_dir: PathBuf) -> Self {
        WriterConfig {
            queue: 65_536,
            batch: 512,
            flush_interval: Duration::from_millis(50),
            write_timeout: Duration::from_secs(2),
            attempts: 2,
            probe_interval: Duration::from_millis(500),
            spill_dir,
        }
    }
}

/// Counters of the writer (all monotonic but `queue_depth`, read from the queue).
#[derive(Debug, Default)]
pub struct WriterMetrics {
    /// Rows taken in: collected from the shards by the writer, or sent to the overflow
    /// spill.
    pub enqueued: AtomicU64,
    /// Rows the database took (new rows; duplicates not counted).
    pub written: AtomicU64,
    /// Rows written to the spill file.
    pub spilled: AtomicU64,
    /// Rows read back from the spill file and applied (written, or refused and set
    /// aside). A file replayed part way is read again later: its rows count again.
    pub replayed: AtomicU64,
    /// Rows lost: neither queued nor spilled. Must stay 0.
    pub dropped: AtomicU64,
    /// Rows that went to the overflow spill because the queue was full.
    pub overflowed: AtomicU64,
    /// Rows the database refused for good (a constraint, a trigger, a value it cannot
    /// hold), set aside in `usage-refused.jsonl` in the spill directory.
    pub refused: AtomicU64,
    /// Failed write attempts.
    pub write_errors: AtomicU64,
    /// Rows the writer took from the shards and has not yet written or spilled (a pass
    /// being written, and what gathers behind it).
    pub in_writer: AtomicU64,
    /// Whether the last write or probe reached the database.
    pub healthy: AtomicBool,
}

/// Prices by model name, shared with the gateway (swapped on change).
pub type PriceTable = Arc<ArcSwap<HashMap<String, Price>>>;

/// The usage writer. Cheap to share (`Arc`).
pub struct UsageWriter {
    shards: Arc<Shards>,
    /// Flush requests to the writer task; dropping the last sender stops it.
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    overflow: std::sync::mpsc::SyncSender<Overflow>,
    metrics: Arc<WriterMetrics>,
    prices: PriceTable,
    /// The second (Unix time) a dropped row was last logged.
    drop_logged: AtomicU64,
}

impl std::fmt::Debug for UsageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageWriter")
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl UsageWriter {
    /// Start the writer task (on the current Tokio runtime) and its overflow thread.
    pub fn start(store: SharedStore, prices: PriceTable, config: WriterConfig) -> Arc<UsageWriter> {
        let (flushes, rx) = mpsc::channel(64);
        let metrics = Arc::new(WriterMetrics::default());
        metrics.healthy.store(true, Ordering::Relaxed);
        let spill = Arc::new(Spill::new(config.spill_dir.clone()));
        let spill_waiting = Arc::new(AtomicBool::new(false));
        let (otx, orx) = std::sync::mpsc::sync_channel(config.queue.max(1));
        {
            let spill = spill.clone();
            let metrics = metrics.clone();
            let waiting = spill_waiting.clone();
            let spawned = std::thread::Builder::new()
                .name("usage-overflow".into())
                .spawn(move || overflow_thread(orx, spill, metrics, waiting));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the usage overflow thread");
            }
        }
        // Two shards per CPU: a gateway's workers each get one of their own, and the
        // odd other thread that settles a request rarely shares.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = Arc::new(Shards::new(cpus * 2, config.queue));
        let task = WriterTask {
            store,
            shards: shards.clone(),
            flushes: rx,
            spill,
            spill_waiting,
            metrics: metrics.clone(),
            config,
        };
        tokio::spawn(task.run());
        Arc::new(UsageWriter {
            shards,
            flushes,
            overflow: otx,
            metrics,
            prices,
            drop_logged: AtomicU64::new(0),
        })
    }

    /// Take a record with its quota hold. Never waits: a row without a hold is priced
    /// and encoded into this thread's shard (its strings are freed here); a row with a
    /// hold waits there as a row. A row its shard refuses goes to the overflow spill.
    pub fn enqueue(&self, record: UsageRecord, hold: Option<QuotaHold>) {
        let prices = self.prices.load();
        let refused = match hold {
            None => {
                let cost = cost_micros(&record, &prices);
                if self.shards.push_tuple(&RowRef::of_record(&record, cost)) {
                    return;
                }
                to_row(record, None, &prices)
            }
            Some(hold) => match self.shards.push_held(to_row(record, Some(hold), &prices)) {
                None => return,
                Some(refused) => refused,
            },
        };
        self.metrics.overflowed.fetch_add(1, Ordering::Relaxed);
        self.metrics.enqueued.fetch_add(1, Ordering::Relaxed);
        if self.overflow.try_send(Overflow::Row(refused)).is_err() {
            let dropped = self.metrics.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Logged at most once a second: a line per row would cost the request
            // threads more than the rows themselves.
            let now = u64::try_from(crate::now_ms() / 1000).unwrap_or(0);
            let last = self.drop_logged.load(Ordering::Relaxed);
            if now > last
                && self
                    .drop_logged
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::error!(
                    dropped_total = dropped,
                    "usage rows dropped: the shards and the overflow spill are all full"
                );
            }
        }
    }

    /// Wait until everything enqueued before this call is written or spilled, and a
    /// replay of the spill was tried.
    pub async fn flush(&self) {
        if self.metrics.overflowed.load(Ordering::Relaxed) > 0 {
            // Rows the shards refused go to the overflow thread in order: once it has
            // seen this mark they are in the spill file, which the flush below replays.
            // (A full queue is waited out here, not on a blocking thread that a hung
            // disk could keep past the caller's deadline.)
            let (tx, rx) = oneshot::channel();
            let mut mark = Overflow::Mark(tx);
            loop {
                match self.overflow.try_send(mark) {
                    Ok(()) => {
                        let _ = rx.await;
                        break;
                    }
                    Err(std::sync::mpsc::TrySendError::Full(back)) => {
                        mark = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(std::sync::mpsc::TrySendError::Disconnected(_)) => break,
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        if self.flushes.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The counters.
    pub fn metrics(&self) -> &WriterMetrics {
        &self.metrics
    }

    /// Rows waiting to be written: in the shards, and taken by the writer but not yet
    /// written or spilled.
    pub fn queue_depth(&self) -> usize {
        self.shards.depth() + self.metrics.in_writer.load(Ordering::Relaxed) as usize
    }

    /// The price table used for costs.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// Whether the database answered the last write or probe.
    pub fn healthy(&self) -> bool {
        self.metrics.healthy.load(Ordering::Relaxed)
    }

    /// The counters in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let m = &self.metrics;
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        format!(
            "# TYPE relay_usage_queue_depth gauge\nrelay_usage_queue_depth {}\n\
             # TYPE relay_usage_enqueued_total counter\nrelay_usage_enqueued_total {}\n\
             # TYPE relay_usage_written_total counter\nrelay_usage_written_total {}\n\
             # TYPE relay_usage_spilled_total counter\nrelay_usage_spilled_total {}\n\
             # TYPE relay_usage_replayed_total counter\nrelay_usage_replayed_total {}\n\
             # TYPE relay_usage_dropped_total counter\nrelay_usage_dropped_total {}\n\
             # TYPE relay_usage_overflowed_total counter\nrelay_usage_overflowed_total {}\n\
             # TYPE relay_usage_refused_total counter\nrelay_usage_refused_total {}\n\
             # TYPE relay_usage_write_errors_total counter\nrelay_usage_write_errors_total {}\n\
             # TYPE relay_store_up gauge\nrelay_store_up {}\n",
            self.queue_depth(),
            g(&m.enqueued),
            g(&m.written),
            g(&m.spilled),
            g(&m.replayed),
            g(&m.dropped),
            g(&m.overflowed),
            g(&m.refused),
            g(&m.write_errors),
            u8::from(self.healthy()),
        )
    }
}

impl UsageSink for UsageWriter {
    fn record(&self, record: UsageRecord) {
        self.enqueue(record, None);
    }
}

/// A record's cost in micro-USD from the price table (by upstream model, else by the
/// requested name); 0 without a price.
fn cost_micros(record: &UsageRecord, prices: &HashMap<String, Price>) -> i64 {
    if prices.is_empty() {
        return 0;
    }
    let u = record.usage;
    record
        .upstream_model
        .as_deref()
        .and_then(|m| prices.get(m))
        .or_else(|| prices.get(&record.requested_model))
        .map_or(0, |p| {
            p.cost_micros(u.input_tokens, u.output_tokens, u.cached_input_tokens)
        })
}

/// A settlement record as a row, with its cost from the price table (by upstream model,
/// else by the requested name). The columns are [`RowRef::of_record`]'s; the record's
/// strings move into the row, and its labels stay borrowed from relay-core's static
/// names.
pub fn to_row(
    record: UsageRecord,
    hold: Option<QuotaHold>,
    prices: &HashMap<String, Price>,
) -> UsageRow {
    let cost = cost_micros(&record, prices);
    // The numbers, and the cut model names' lengths, before the strings move.
    let RowRef {
        item,
        stream,
        input_tokens,
        output_tokens,
        cached_tokens,
        reasoning_tokens,
        cost_micros,
        estimated,
        status,
        attempts,
        latency_ms,
        ttft_ms,
        started_at,
        ..
    } = RowRef::of_record(&record, cost);
    let name = |s: String| match tuple::clean(tuple::model_name(&s)) {
        Cow::Borrowed(b) if b.len() == s.len() => s,
        other => other.into_owned(),
    };
    UsageRow {
        request_id: record.request_id,
        key_id: record.key_id,
        requested_model: name(record.requested_model),
        item,
        channel: record.channel,
        upstream_model: record.upstream_model.map(name),
        client_dialect: Cow::Borrowed(record.client_dialect),
        upstream_dialect: record.upstream_dialect.map(Cow::Borrowed),
        operation: Cow::Borrowed(record.operation),
        stream,
        input_tokens,
        output_tokens,
        cached_tokens,
        reasoning_tokens,
        cost_micros,
        estimated,
        outcome: Cow::Borrowed(tuple::outcome_label(record.outcome)),
        status,
        error_kind: record.error_kind.map(Cow::Borrowed),
        attempts,
        latency_ms,
        ttft_ms,
        started_at,
        hold,
    }
}

/// What the overflow thread takes. (Nearly every message is a row: boxing it would cost
/// an allocation per row for the sake of a rare mark.)
#[allow(clippy::large_enum_variant)]
enum Overflow {
    /// A row its shard refused.
    Row(UsageRow),
    /// A flush: answered once every row sent before it is spilled.
    Mark(oneshot::Sender<()>),
}

/// Spills the rows the shards refused, in batches.
fn overflow_thread(
    rx: std::sync::mpsc::Receiver<Overflow>,
    spill: Arc<Spill>,
    metrics: Arc<WriterMetrics>,
    waiting: Arc<AtomicBool>,
) {
    while let Ok(first) = rx.recv() {
        let mut rows = Vec::new();
        let mut marks = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Overflow::Row(row) => rows.push(row),
                Overflow::Mark(ack) => marks.push(ack),
            }
            next = if rows.len() < 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !rows.is_empty() {
            count_spill(&metrics, &waiting, rows.len() as u64, spill.append(&rows));
        }
        for ack in marks {
            let _ = ack.send(());
        }
    }
}

/// Count `n` rows as spilled (and the spill file as waiting for replay), or as dropped
/// when their append, or the task making it, failed.
fn count_spill(metrics: &WriterMetrics, waiting: &AtomicBool, n: u64, result: std::io::Result<()>) {
    match result {
        Ok(()) if n > 0 => {
            metrics.spilled.fetch_add(n, Ordering::Relaxed);
            waiting.store(true, Ordering::Release);
        }
        Ok(()) => {}
        Err(e) => {
            metrics.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::error!(error = %e, rows = n, "usage rows dropped: the spill failed");
        }
    }
}

struct WriterTask {
    store: SharedStore,
    shards: Arc<Shards>,
    flushes: mpsc::Receiver<oneshot::Sender<()>>,
    spill: Arc<Spill>,
    spill_waiting: Arc<AtomicBool>,
    metrics: Arc<WriterMetrics>,
    config: WriterConfig,
}

impl WriterTask {
    async fn run(mut self) {
        let spill = self.spill.clone();
        if tokio::task::spawn_blocking(move || spill.recover())
            .await
            .unwrap_or(false)
        {
            self.spill_waiting.store(true, Ordering::Release);
        }
        let mut db_up = true;
        let mut next_probe = Instant::now();
        let mut next_forced_replay = Instant::now() + REPLAY_BEHIND_EVERY;
        let mut backlog = Taken::default();
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
        let mut closed = false;
        let mut idle = false;
        loop {
            // Wait for the next pass. Under load the writer keeps its own clock (one
            // pass per flush interval, or sooner when a shard is half full); after a
            // pass that found nothing it sleeps until the next row, a flush, or a due
            // probe of the database or the spill file.
            if backlog.len() > 0 && db_up {
                // Rows gathered while the last pass wrote: no pause. (With the
                // database away, passes keep their interval: each one is a spill.)
            } else if idle && self.shards.go_idle() {
                let probe = !db_up || self.spill_waiting.load(Ordering::Acquire);
                let due = tokio::time::Instant::from_std(next_probe);
                tokio::select! {
                    _ = self.shards.woken() => {}
                    msg = self.flushes.recv() => match msg {
                        Some(ack) => acks.push(ack),
                        None => closed = true,
                    },
                    _ = tokio::time::sleep_until(due), if probe => {}
                }
                self.shards.busy();
                if acks.is_empty() && !closed {
                    // Woken by a row: let the batch gather for one interval.
                    self.pause(&mut acks, &mut closed).await;
                }
            } else {
                self.pause(&mut acks, &mut closed).await;
            }
            loop {
                match self.flushes.try_recv() {
                    Ok(ack) => acks.push(ack),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            // This pass: what waited from the last one (rows taken while it wrote) and
            // what the shards hold now. While it is written, the shards keep being
            // emptied into `backlog`, so they never fill behind a slow write.
            let mut pass = std::mem::take(&mut backlog);
            self.collect(&mut pass, &mut spare);
            idle = pass.len() == 0;
            if pass.rows > 0 {
                let mut bufs = std::mem::take(&mut pass.bufs);
                let rows = pass.rows;
                let write = async { db_up && self.write_tuples(&bufs, rows).await };
                if self.drive(write, &mut backlog, &mut spare).await {
                    self.metrics.healthy.store(true, Ordering::Relaxed);
                } else {
                    db_up = self.went_down(db_up);
                    let spill = self.spill_tuples(bufs, rows);
                    bufs = self.drive(spill, &mut backlog, &mut spare).await;
                }
                pass.bufs = bufs;
            }
            for rows in pass.held.chunks(self.config.batch.max(1)) {
                let write = async { db_up && self.write(rows).await };
                if self.drive(write, &mut backlog, &mut spare).await {
                    self.metrics.healthy.store(true, Ordering::Relaxed);
                } else {
                    db_up = self.went_down(db_up);
                    let spill = self.to_spill(rows.to_vec());
                    self.drive(spill, &mut backlog, &mut spare).await;
                }
            }
            self.metrics
                .in_writer
                .fetch_sub(pass.len() as u64, Ordering::Relaxed);
            pass.clear(&mut spare);
            // Behind: the next pass starts now, and a replay waits until it caught up
            // (a probe of a database that is away does not wait).
            let behind = backlog.len() > 0;
            let waiting = self.spill_waiting.load(Ordering::Acquire);
            // A writer that stays behind still replays now and then (rows gathered
            // meanwhile go on to the next pass, or to the spill past half the queue),
            // so a spill is not left waiting for as long as the load lasts.
            let now = Instant::now();
            let due = now >= next_probe && (!behind || !db_up || now >= next_forced_replay);
            if (!db_up || waiting) && (due || !acks.is_empty() || closed) {
                if !db_up {
                    let ping = tokio::time::timeout(self.config.write_timeout, self.store.ping());
                    db_up = self
                        .drive(ping, &mut backlog, &mut spare)
                        .await
                        .unwrap_or(false);
                    if db_up {
                        tracing::info!("the database is back: replaying the spill file");
                    }
                }
                if db_up {
                    self.metrics.healthy.store(true, Ordering::Relaxed);
                    db_up = self.replay(&mut backlog, &mut spare).await;
                    next_forced_replay = Instant::now() + REPLAY_BEHIND_EVERY;
                }
                next_probe = Instant::now() + self.config.probe_interval;
            }
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
            // Stopping: what arrived during the last pass is written first.
            if closed && backlog.len() == 0 {
                break;
            }
        }
    }

    /// Move the shards' rows into `out` (counted as taken in).
    fn collect(&self, out: &mut Taken, spare: &mut Vec<Vec<u8>>) {
        let before = out.len();
        self.shards.take(out, spare);
        let n = (out.len() - before) as u64;
        self.metrics.enqueued.fetch_add(n, Ordering::Relaxed);
        self.metrics.in_writer.fetch_add(n, Ordering::Relaxed);
    }

    /// Run `work` (a write, a spill, a read of the spill file, a probe) while the shards
    /// keep being emptied into `backlog` each flush interval (or sooner when one passes
    /// half its capacity), so a slow database or disk never leaves them to fill. A
    /// backlog past half the queue goes to the spill file as it is (tuples in frames, at
    /// disk speed), on a blocking thread while the collecting goes on: a writer that
    /// falls behind the relay costs an append, and the rows are replayed once it has
    /// caught up. Returns when `work` and any such spill are done.
    async fn drive<F: std::future::Future>(
        &self,
        work: F,
        backlog: &mut Taken,
        spare: &mut Vec<Vec<u8>>,
    ) -> F::Output {
        tokio::pin!(work);
        let mut out = None;
        let mut spilling: Option<Spilling> = None;
        loop {
            let event = tokio::select! {
                biased;
                done = &mut work, if out.is_none() => Driven::Work(done),
                spilled = spill_done(&mut spilling) => Driven::Spilled(spilled),
                _ = tokio::time::sleep(self.config.flush_interval) => Driven::Tick,
                _ = self.shards.woken() => Driven::Tick,
            };
            match event {
                Driven::Work(done) => out = Some(done),
                Driven::Spilled(done) => {
                    if let Some(job) = spilling.take() {
                        self.spilled(job.rows, done, spare);
                    }
                }
                // Only on the writer's own clock: collecting as soon as each write
                // ends would start the next pass at once, and a lightly loaded writer
                // would write a few rows at a time back to back (1.4–1.5x the
                // gateway's CPU per request at c=1 in a harness run).
                Driven::Tick => self.collect(backlog, spare),
            }
            // Half the queue: the pass being written and its backlog together stay
            // within about the queue's size.
            // Only while the work is pending: once it is done, the backlog is the next
            // pass (spilling it then could go on as long as rows arrive).
            if out.is_none()
                && spilling.is_none()
                && backlog.len() >= (self.config.queue / 2).max(1)
            {
                spilling = Some(self.start_spill(backlog));
            }
            if spilling.is_none()
                && let Some(done) = out.take()
            {
                return done;
            }
        }
    }

    /// Send a backlog to the spill file on a blocking thread (tuples as they are, held
    /// rows as rows).
    fn start_spill(&self, backlog: &mut Taken) -> Spilling {
        let job = std::mem::take(backlog);
        let rows = job.len() as u64;
        tracing::debug!(rows, "usage writer behind: backlog spilled");
        let spill = self.spill.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let tuples = if job.rows > 0 {
                spill.append_tuples(&job.bufs)
            } else {
                Ok(())
            };
            let held = if job.held.is_empty() {
                Ok(())
            } else {
                spill.append(&job.held)
            };
            (job, tuples, held)
        });
        Spilling { rows, handle }
    }

    /// Count `n` rows as spilled or dropped (see [`count_spill`]).
    fn count_spill(&self, n: u64, result: std::io::Result<()>) {
        count_spill(&self.metrics, &self.spill_waiting, n, result);
    }

    /// Account for a finished spill of `rows` rows and keep its buffers.
    fn spilled(&self, rows: u64, done: SpillDone, spare: &mut Vec<Vec<u8>>) {
        self.metrics.in_writer.fetch_sub(rows, Ordering::Relaxed);
        match done {
            Ok((mut job, tuples, held)) => {
                self.count_spill(job.rows as u64, tuples);
                self.count_spill(job.held.len() as u64, held);
                job.clear(spare);
            }
            Err(e) => self.count_spill(rows, Err(std::io::Error::other(e))),
        }
    }

    /// Append buffers of tuples to the spill file (a failure loses them, counted); the
    /// buffers come back for reuse.
    async fn spill_tuples(&self, bufs: Vec<Vec<u8>>, rows: usize) -> Vec<Vec<u8>> {
        let spill = self.spill.clone();
        let appended =
            tokio::task::spawn_blocking(move || (spill.append_tuples(&bufs), bufs)).await;
        let (result, bufs) =
            appended.unwrap_or_else(|e| (Err(std::io::Error::other(e)), Vec::new()));
        self.count_spill(rows as u64, result);
        bufs
    }

    /// One flush interval, cut short by a flush request or a shard at half capacity.
    async fn pause(&mut self, acks: &mut Vec<oneshot::Sender<()>>, closed: &mut bool) {
        tokio::select! {
            _ = tokio::time::sleep(self.config.flush_interval) => {}
            _ = self.shards.woken() => {}
            msg = self.flushes.recv() => match msg {
                Some(ack) => acks.push(ack),
                None => *closed = true,
            },
        }
    }

    /// A write failed: from now on rows go to the spill file until a probe succeeds.
    fn went_down(&self, db_up: bool) -> bool {
        if db_up {
            tracing::warn!(
                "the database is unreachable: usage rows go to the spill file until it is back"
            );
        }
        self.metrics.healthy.store(false, Ordering::Relaxed);
        false
    }

    /// Write the tuples of a pass, retrying; false when every attempt failed. Rows the
    /// database refuses are found and set aside (see [`refused`]).
    async fn write_tuples(&self, bufs: &[Vec<u8>], rows: usize) -> bool {
        let deadline = self.write_deadline(rows);
        match self
            .attempt(rows, deadline, || self.store.insert_usage_tuples(bufs))
            .await
        {
            Attempt::Written => true,
            Attempt::Failed => false,
            Attempt::Refused(e) => self.set_aside_tuples(bufs, e).await,
        }
    }

    /// Write a batch of rows, retrying; false when every attempt failed. Rows the
    /// database refuses are found and set aside.
    async fn write(&self, rows: &[UsageRow]) -> bool {
        match self
            .attempt(rows.len(), self.config.write_timeout, || {
                self.store.insert_usage(rows)
            })
            .await
        {
            Attempt::Written => true,
            Attempt::Failed => false,
            Attempt::Refused(e) => self.set_aside_rows(rows, e).await,
        }
    }

    /// The deadline of one write of `rows` rows of tuples. A pass can hold many
    /// thousands of rows: its deadline grows with it, so a busy but working database is
    /// not taken for a dead one.
    fn write_deadline(&self, rows: usize) -> Duration {
        self.config.write_timeout + Duration::from_micros(100 * rows as u64)
    }

    /// Run one write (`write` makes it anew for each attempt) with its deadline, up to
    /// `attempts` times, counting the new rows it wrote and its failed attempts; a
    /// refusal of the rows themselves is not retried.
    async fn attempt<F>(&self, rows: usize, deadline: Duration, write: impl Fn() -> F) -> Attempt
    where
        F: std::future::Future<Output = Result<u64, crate::StoreError>>,
    {
        for attempt in 0..self.config.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
            }
            match tokio::time::timeout(deadline, write()).await {
                Ok(Ok(n)) => {
                    self.metrics.written.fetch_add(n, Ordering::Relaxed);
                    return Attempt::Written;
                }
                Ok(Err(e)) if e.refuses_rows() => {
                    self.metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                    return Attempt::Refused(e);
                }
                Ok(Err(e)) => {
                    self.metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, rows, attempt, "usage batch write failed");
                }
                Err(_) => {
                    self.metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(rows, attempt, "usage batch write timed out");
                }
            }
        }
        Attempt::Failed
    }

    async fn to_spill(&self, rows: Vec<UsageRow>) {
        let spill = self.spill.clone();
        let n = rows.len() as u64;
        let result = tokio::task::spawn_blocking(move || spill.append(&rows)).await;
        self.count_spill(n, result.unwrap_or_else(|e| Err(std::io::Error::other(e))));
    }

    /// Replay the spill files, oldest first, while the shards keep being emptied into
    /// `backlog`; false when the database failed again (the rest waits). Stops early,
    /// with the rest kept for later, when rows gathered behind it: new rows go first.
    async fn replay(&self, backlog: &mut Taken, spare: &mut Vec<Vec<u8>>) -> bool {
        self.spill_waiting.store(false, Ordering::Release);
        let spill = self.spill.clone();
        let take = tokio::task::spawn_blocking(move || spill.take());
        let files = match self.drive(take, backlog, spare).await {
            Ok(Ok(files)) => files,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot open the spill file for replay");
                self.spill_waiting.store(true, Ordering::Release);
                return true;
            }
            Err(_) => {
                self.spill_waiting.store(true, Ordering::Release);
                return true;
            }
        };
        for (i, file) in files.iter().enumerate() {
            if i > 0 && backlog.len() > 0 {
                // More files wait; they are picked up after the next pass.
                self.spill_waiting.store(true, Ordering::Release);
                return true;
            }
            let replayed = if spill::is_tuples(file) {
                self.replay_tuples(file, backlog, spare).await
            } else {
                self.replay_rows(file, backlog, spare).await
            };
            match replayed {
                Ok(n) => {
                    self.metrics.replayed.fetch_add(n, Ordering::Relaxed);
                    if let Err(e) = self
                        .drive(tokio::fs::remove_file(file), backlog, spare)
                        .await
                    {
                        // Replayed again later (idempotent; `replayed` counts it twice).
                        tracing::error!(file = %file.display(), error = %e, "cannot remove a replayed spill file");
                        self.spill_waiting.store(true, Ordering::Release);
                    }
                }
                Err(Unreplayed::Unreadable) => {
                    tracing::error!(file = %file.display(), "cannot read a spill file; kept for later");
                    self.spill_waiting.store(true, Ordering::Release);
                }
                Err(Unreplayed::DatabaseFailed) => {
                    self.spill_waiting.store(true, Ordering::Release);
                    return false;
                }
            }
        }
        if !files.is_empty() {
            tracing::info!(files = files.len(), "spill files replayed");
        }
        true
    }

    /// Read a spill file with `read` on a blocking thread, collecting meanwhile; what it
    /// holds (the torn or damaged parts it skipped are logged).
    async fn read_spill<T: Send + 'static>(
        &self,
        file: &std::path::Path,
        read: fn(&std::path::Path) -> std::io::Result<(T, u64)>,
        backlog: &mut Taken,
        spare: &mut Vec<Vec<u8>>,
    ) -> Result<T, Unreplayed> {
        let path = file.to_path_buf();
        let task = tokio::task::spawn_blocking(move || read(&path));
        let (held, bad) = match self.drive(task, backlog, spare).await {
            Ok(Ok(x)) => x,
            _ => return Err(Unreplayed::Unreadable),
        };
        if bad > 0 {
            tracing::error!(file = %file.display(), parts = bad, "torn or damaged parts of a spill file were skipped");
        }
        Ok(held)
    }

    /// Replay a file of tuples, in writes of about [`REPLAY_ROWS`]; its rows.
    async fn replay_tuples(
        &self,
        file: &std::path::Path,
        backlog: &mut Taken,
        spare: &mut Vec<Vec<u8>>,
    ) -> Result<u64, Unreplayed> {
        let frames = self
            .read_spill(file, spill::read_tuples, backlog, spare)
            .await?;
        let mut total = 0u64;
        let mut group: Vec<Vec<u8>> = Vec::new();
        let mut rows = 0;
        let mut frames = frames.into_iter().peekable();
        while let Some((buf, n)) = frames.next() {
            group.push(buf);
            rows += n;
            if rows < REPLAY_ROWS && frames.peek().is_some() {
                continue;
            }
            let write = self.write_tuples(&group, rows);
            if !self.drive(write, backlog, spare).await {
                return Err(Unreplayed::DatabaseFailed);
            }
            total += rows as u64;
            group.clear();
            rows = 0;
        }
        Ok(total)
    }

    /// Replay a file of JSON rows, in batches; its rows.
    async fn replay_rows(
        &self,
        file: &std::path::Path,
        backlog: &mut Taken,
        spare: &mut Vec<Vec<u8>>,
    ) -> Result<u64, Unreplayed> {
        let rows = self.read_spill(file, spill::read, backlog, spare).await?;
        for chunk in rows.chunks(self.config.batch.max(1)) {
            if !self.drive(self.write(chunk), backlog, spare).await {
                return Err(Unreplayed::DatabaseFailed);
            }
        }
        Ok(rows.len() as u64)
    }
}

/// How a write went.
enum Attempt {
    /// The database took the rows (the new ones are counted as written).
    Written,
    /// The database refused the rows themselves ([`crate::StoreError::refuses_rows`]):
    /// the same write would fail again.
    Refused(crate::StoreError),
    /// Every attempt failed or timed out: the database is away, or too slow.
    Failed,
}

/// Why a spill file was not replayed (it stays for a later replay either way).
enum Unreplayed {
    /// The file could not be read.
    Unreadable,
    /// A write failed: the database went away again.
    DatabaseFailed,
}

/// What a blocking spill of a backlog gives back: the backlog (for its buffers), and how
/// the tuples' and the held rows' appends went.
type SpillDone = Result<(Taken, std::io::Result<()>, std::io::Result<()>), tokio::task::JoinError>;

/// A backlog on its way to the spill file.
struct Spilling {
    rows: u64,
    handle: tokio::task::JoinHandle<(Taken, std::io::Result<()>, std::io::Result<()>)>,
}

/// Wait for the spill in flight, if any (else never).
async fn spill_done(spilling: &mut Option<Spilling>) -> SpillDone {
    match spilling {
        Some(s) => (&mut s.handle).await,
        None => std::future::pending().await,
    }
}

/// What woke [`WriterTask::drive`].
enum Driven<T> {
    Work(T),
    Spilled(SpillDone),
    Tick,
}

/// How often a writer that stays behind replays the spill anyway.
const REPLAY_BEHIND_EVERY: Duration = Duration::from_secs(10);

/// Rows per write when a file of tuples is replayed, about.
const REPLAY_ROWS: usize = 8192;

#[cfg(test)]
mod tests {
    use relay_core::{DialectId, Operation, Outcome};

    use super::*;

    #[test]
    fn a_row_and_the_tuple_of_the_same_record_have_the_same_columns() {
        let mut rec = UsageRecord::new(
            "req_x".into(),
            "fast".into(),
            DialectId::OPENAI_CHAT,
            Operation::Chat,
        );
        rec.key_id = Some("k".into());
        rec.upstream_model = Some("m1".into());
        rec.usage.input_tokens = 1000;
        rec.usage.output_tokens = 500;
        rec.outcome = Outcome::Error;
        rec.error_kind = Some("upstream_timeout");
        let prices = HashMap::from([(
            "m1".to_owned(),
            Price {
                input_per_mtok: 3.0,
                output_per_mtok: 15.0,
                cached_input_per_mtok: 0.3,
            },
        )]);
        let cost = cost_micros(&rec, &prices);
        assert_eq!(cost, 10_500);
        let row = to_row(rec.clone(), None, &prices);
        assert_eq!(RowRef::of_row(&row), RowRef::of_record(&rec, cost));
        assert!(matches!(row.client_dialect, Cow::Borrowed(_)));
    }

    /// A flush's mark is answered only once every row sent to the overflow thread before
    /// it is in the spill file (three batches of the thread's here).
    #[test]
    fn the_overflow_thread_answers_a_mark_after_the_rows_before_it() {
        let dir = std::env::temp_dir().join(format!("relay-overflow-{}", rand::random::<u32>()));
        let spill = Arc::new(Spill::new(dir.clone()));
        let metrics = Arc::new(WriterMetrics::default());
        let waiting = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::sync_channel(4096);
        let thread = {
            let (spill, metrics, waiting) = (spill.clone(), metrics.clone(), waiting.clone());
            std::thread::spawn(move || overflow_thread(rx, spill, metrics, waiting))
        };
        for i in 0..3000 {
            let rec = UsageRecord::new(
                format!("o{i}"),
                "m".into(),
                DialectId::OPENAI_CHAT,
                Operation::Chat,
            );
            tx.send(Overflow::Row(to_row(rec, None, &HashMap::new())))
                .unwrap();
        }
        let (ack, acked) = oneshot::channel();
        tx.send(Overflow::Mark(ack)).unwrap();
        acked.blocking_recv().unwrap();
        assert_eq!(metrics.spilled.load(Ordering::Relaxed), 3000);
        assert!(waiting.load(Ordering::Relaxed));
        let files = spill.take().unwrap();
        let rows: usize = files.iter().map(|f| spill::read(f).unwrap().0.len()).sum();
        assert_eq!(rows, 3000);
        drop(tx);
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
