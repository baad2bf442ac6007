//! The usage writer: a [`UsageSink`] that never waits. `record` moves the settlement
//! record into a bounded queue (`try_send`); one task drains it in batches into the
//! store (multi-row `INSERT ... ON CONFLICT (request_id) DO NOTHING`, with the quota
//! settlement in the same transaction), retrying briefly. While the database is away,
//! batches go to the [spill file](spill) and a probe waits for it to come back; then
//! the spill is replayed. Idempotent on request id, so a batch written twice (a commit
//! whose answer was lost, then spilled) is still one row. When the queue is full, rows
//! go to a spill thread rather than being dropped; `dropped` counts only rows that
//! could be neither queued nor spilled.

mod spill;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use relay_core::{Outcome, UsageRecord, UsageSink};
use tokio::sync::{mpsc, oneshot};

use crate::model::{Price, QuotaHold, UsageRow};
use crate::store::SharedStore;
use spill::Spill;

/// Writer settings.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Queue capacity (records).
    pub queue: usize,
    /// Rows per batch at most.
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
    /// Records accepted by `record`.
    pub enqueued: AtomicU64,
    /// Rows the database took (new rows; duplicates not counted).
    pub written: AtomicU64,
    /// Rows written to the spill file.
    pub spilled: AtomicU64,
    /// Rows read back from the spill file and applied.
    pub replayed: AtomicU64,
    /// Rows lost: neither queued nor spilled. Must stay 0.
    pub dropped: AtomicU64,
    /// Rows that went to the overflow spill because the queue was full.
    pub overflowed: AtomicU64,
    /// Failed write attempts.
    pub write_errors: AtomicU64,
    /// Whether the last write or probe reached the database.
    pub healthy: AtomicBool,
}

enum Msg {
    Row(Box<(UsageRecord, Option<QuotaHold>)>),
    Flush(oneshot::Sender<()>),
}

/// Prices by model name, shared with the gateway (swapped on change).
pub type PriceTable = Arc<ArcSwap<HashMap<String, Price>>>;

/// The usage writer. Cheap to share (`Arc`).
pub struct UsageWriter {
    tx: mpsc::Sender<Msg>,
    overflow: std::sync::mpsc::SyncSender<(UsageRecord, Option<QuotaHold>)>,
    metrics: Arc<WriterMetrics>,
    prices: PriceTable,
    queue: usize,
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
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let metrics = Arc::new(WriterMetrics::default());
        metrics.healthy.store(true, Ordering::Relaxed);
        let spill = Arc::new(Spill::new(config.spill_dir.clone()));
        let spill_waiting = Arc::new(AtomicBool::new(false));
        let (otx, orx) = std::sync::mpsc::sync_channel(config.queue.max(1));
        {
            let spill = spill.clone();
            let metrics = metrics.clone();
            let prices = prices.clone();
            let waiting = spill_waiting.clone();
            let spawned = std::thread::Builder::new()
                .name("usage-overflow".into())
                .spawn(move || overflow_thread(orx, spill, metrics, prices, waiting));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the usage overflow thread");
            }
        }
        let task = WriterTask {
            store,
            rx,
            spill,
            spill_waiting,
            metrics: metrics.clone(),
            prices: prices.clone(),
            config: config.clone(),
        };
        tokio::spawn(task.run());
        Arc::new(UsageWriter {
            tx,
            overflow: otx,
            metrics,
            prices,
            queue: config.queue,
        })
    }

    /// Enqueue a record with its quota hold. Never waits.
    pub fn enqueue(&self, record: UsageRecord, hold: Option<QuotaHold>) {
        self.metrics.enqueued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Msg::Row(Box::new((record, hold)))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Msg::Row(item)))
            | Err(mpsc::error::TrySendError::Closed(Msg::Row(item))) => {
                self.metrics.overflowed.fetch_add(1, Ordering::Relaxed);
                if self.overflow.try_send(*item).is_err() {
                    self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("usage row dropped: queue and overflow spill are both full");
                }
            }
            Err(_) => {}
        }
    }

    /// Wait until everything enqueued before this call is written or spilled, and a
    /// replay of the spill was tried.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The counters.
    pub fn metrics(&self) -> &WriterMetrics {
        &self.metrics
    }

    /// Records waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.queue.saturating_sub(self.tx.capacity())
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
             # TYPE relay_usage_write_errors_total counter\nrelay_usage_write_errors_total {}\n\
             # TYPE relay_store_up gauge\nrelay_store_up {}\n",
            self.queue_depth(),
            g(&m.enqueued),
            g(&m.written),
            g(&m.spilled),
            g(&m.replayed),
            g(&m.dropped),
            g(&m.overflowed),
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

/// A settlement record as a row, with its cost from the price table (by upstream model,
/// else by the requested name).
pub fn to_row(
    record: UsageRecord,
    hold: Option<QuotaHold>,
    prices: &HashMap<String, Price>,
) -> UsageRow {
    let u = record.usage;
    let price = record
        .upstream_model
        .as_deref()
        .and_then(|m| prices.get(m))
        .or_else(|| prices.get(&record.requested_model));
    let cost_micros = price.map_or(0, |p| {
        p.cost_micros(u.input_tokens, u.output_tokens, u.cached_input_tokens)
    });
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    UsageRow {
        request_id: record.request_id,
        key_id: record.key_id,
        requested_model: record.requested_model,
        item: record.item.map(|i| i as i64),
        channel: record.channel,
        upstream_model: record.upstream_model,
        client_dialect: record.client_dialect.to_owned(),
        upstream_dialect: record.upstream_dialect.map(str::to_owned),
        operation: record.operation.to_owned(),
        stream: record.stream,
        input_tokens: clamp(u.input_tokens),
        output_tokens: clamp(u.output_tokens),
        cached_tokens: clamp(u.cached_input_tokens),
        reasoning_tokens: clamp(u.reasoning_tokens),
        cost_micros,
        estimated: record.estimated,
        outcome: match record.outcome {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        }
        .to_owned(),
        status: i64::from(record.status),
        error_kind: record.error_kind.map(str::to_owned),
        attempts: i64::from(record.attempts),
        latency_ms: clamp(record.latency_ms),
        ttft_ms: record.ttft_ms.map(clamp),
        started_at: record
            .started_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        hold,
    }
}

fn overflow_thread(
    rx: std::sync::mpsc::Receiver<(UsageRecord, Option<QuotaHold>)>,
    spill: Arc<Spill>,
    metrics: Arc<WriterMetrics>,
    prices: PriceTable,
    waiting: Arc<AtomicBool>,
) {
    while let Ok(first) = rx.recv() {
        let table = prices.load();
        let mut rows = vec![to_row(first.0, first.1, &table)];
        while rows.len() < 1024 {
            match rx.try_recv() {
                Ok((r, h)) => rows.push(to_row(r, h, &table)),
                Err(_) => break,
            }
        }
        match spill.append(&rows) {
            Ok(()) => {
                metrics
                    .spilled
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                waiting.store(true, Ordering::Release);
            }
            Err(e) => {
                metrics
                    .dropped
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %e, rows = rows.len(), "usage rows dropped: the spill file failed");
            }
        }
    }
}

/// Move a queued message into the pass: a row (priced with the table of this pass) or
/// a flush waiting for its answer.
fn take(
    msg: Msg,
    prices: &HashMap<String, Price>,
    buf: &mut Vec<UsageRow>,
    acks: &mut Vec<oneshot::Sender<()>>,
) {
    match msg {
        Msg::Row(item) => {
            let (record, hold) = *item;
            buf.push(to_row(record, hold, prices));
        }
        Msg::Flush(ack) => acks.push(ack),
    }
}

struct WriterTask {
    store: SharedStore,
    rx: mpsc::Receiver<Msg>,
    spill: Arc<Spill>,
    spill_waiting: Arc<AtomicBool>,
    metrics: Arc<WriterMetrics>,
    prices: PriceTable,
    config: WriterConfig,
}

impl WriterTask {
    async fn run(mut self) {
        let spill = self.spill.clone();
        if tokio::task::spawn_blocking(move || spill.pending())
            .await
            .unwrap_or(false)
        {
            self.spill_waiting.store(true, Ordering::Release);
        }
        let mut db_up = true;
        let mut next_probe = Instant::now();
        let mut buf: Vec<UsageRow> = Vec::with_capacity(self.config.batch);
        let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
        // Rows drained per pass at most (a backlog is worked off in several passes).
        let pass_cap = self.config.batch.max(1) * 8;
        let mut backlog = false;
        loop {
            let mut closed = false;
            let mut first = None;
            if !backlog {
                match tokio::time::timeout(self.config.flush_interval, self.rx.recv()).await {
                    Ok(Some(msg)) => first = Some(msg),
                    Ok(None) => closed = true,
                    Err(_) => {}
                }
                // Let the batch gather: the writer sleeps through the interval rather than
                // waiting on the queue, so a request's enqueue never wakes it (one wake-up
                // and one transaction per interval, not per row). A flush skips the wait.
                if matches!(first, Some(Msg::Row(_))) && !closed {
                    tokio::time::sleep(self.config.flush_interval).await;
                }
            }
            // The rows of this pass are priced with the table in force now.
            let prices = self.prices.load_full();
            if let Some(msg) = first {
                take(msg, &prices, &mut buf, &mut acks);
            }
            backlog = false;
            while !closed {
                if buf.len() >= pass_cap {
                    backlog = true;
                    break;
                }
                match self.rx.try_recv() {
                    Ok(msg) => take(msg, &prices, &mut buf, &mut acks),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
                }
            }
            // The pass is written in batches straight from `buf`, which keeps its
            // capacity from pass to pass: no per-pass allocation and no copying of the
            // rows (a fresh vector grew through its reallocations, and cutting batches
            // off its front moved the rest each time).
            for rows in buf.chunks(self.config.batch.max(1)) {
                if db_up && self.write(rows).await {
                    self.metrics.healthy.store(true, Ordering::Relaxed);
                } else {
                    if db_up {
                        tracing::warn!(
                            "the database is unreachable: usage rows go to the spill file until it is back"
                        );
                    }
                    db_up = false;
                    self.metrics.healthy.store(false, Ordering::Relaxed);
                    self.to_spill(rows.to_vec()).await;
                }
            }
            buf.clear();
            let waiting = self.spill_waiting.load(Ordering::Acquire);
            if (!db_up || waiting) && (Instant::now() >= next_probe || !acks.is_empty() || closed) {
                if !db_up {
                    db_up = tokio::time::timeout(self.config.write_timeout, self.store.ping())
                        .await
                        .unwrap_or(false);
                    if db_up {
                        tracing::info!("the database is back: replaying the spill file");
                    }
                }
                if db_up {
                    self.metrics.healthy.store(true, Ordering::Relaxed);
                    db_up = self.replay().await;
                }
                next_probe = Instant::now() + self.config.probe_interval;
            }
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
            if closed {
                break;
            }
        }
    }

    /// Write a batch, retrying; false when every attempt failed.
    async fn write(&self, rows: &[UsageRow]) -> bool {
        for attempt in 0..self.config.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
            }
            match tokio::time::timeout(self.config.write_timeout, self.store.insert_usage(rows))
                .await
            {
                Ok(Ok(n)) => {
                    self.metrics.written.fetch_add(n, Ordering::Relaxed);
                    return true;
                }
                Ok(Err(e)) => {
                    self.metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, rows = rows.len(), attempt, "usage batch write failed");
                }
                Err(_) => {
                    self.metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(rows = rows.len(), attempt, "usage batch write timed out");
                }
            }
        }
        false
    }

    async fn to_spill(&self, rows: Vec<UsageRow>) {
        let spill = self.spill.clone();
        let n = rows.len() as u64;
        let result = tokio::task::spawn_blocking(move || spill.append(&rows)).await;
        match result {
            Ok(Ok(())) => {
                self.metrics.spilled.fetch_add(n, Ordering::Relaxed);
                self.spill_waiting.store(true, Ordering::Release);
            }
            Ok(Err(e)) => {
                self.metrics.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, rows = n, "usage rows dropped: the spill file failed");
            }
            Err(e) => {
                self.metrics.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, rows = n, "usage rows dropped: the spill task failed");
            }
        }
    }

    /// Replay every spill file; false when the database failed again (the rest waits).
    async fn replay(&self) -> bool {
        self.spill_waiting.store(false, Ordering::Release);
        let spill = self.spill.clone();
        let files = match tokio::task::spawn_blocking(move || spill.take()).await {
            Ok(Ok(files)) => files,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot open the spill file for replay");
                self.spill_waiting.store(true, Ordering::Release);
                return true;
            }
            Err(_) => return true,
        };
        for file in files {
            let path = file.clone();
            let read = tokio::task::spawn_blocking(move || spill::read(&path)).await;
            let (rows, bad) = match read {
                Ok(Ok(x)) => x,
                _ => {
                    tracing::error!(file = %file.display(), "cannot read a spill file; kept for later");
                    self.spill_waiting.store(true, Ordering::Release);
                    continue;
                }
            };
            if bad > 0 {
                tracing::error!(file = %file.display(), lines = bad, "torn lines in a spill file were skipped");
            }
            for chunk in rows.chunks(self.config.batch.max(1)) {
                if !self.write(chunk).await {
                    self.spill_waiting.store(true, Ordering::Release);
                    return false;
                }
            }
            self.metrics
                .replayed
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            if let Err(e) = tokio::fs::remove_file(&file).await {
                tracing::error!(file = %file.display(), error = %e, "cannot remove a replayed spill file");
            }
        }
        tracing::info!("spill file replayed");
        true
    }
}
