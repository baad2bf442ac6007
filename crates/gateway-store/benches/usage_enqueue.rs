//! Usage enqueue cost: what `UsageSink::record` adds to a request (budget: 300 ns).
//! Each sample enqueues a batch of prepared records into a running writer (SQLite
//! behind it) and times only the enqueueing; the writer is flushed between samples.
#![allow(missing_docs)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use relay_core::UsageRecord;
use relay_store::writer::PriceTable;
use relay_store::{UsageWriter, WriterConfig};

fn enqueue(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("relay-bench-enqueue-{}", std::process::id()));
    let writer = rt.block_on(async {
        let store = support::sqlite_store(&dir).await?;
        let mut config = WriterConfig::new(dir.join("spill"));
        config.queue = 1 << 21;
        config.batch = 4096;
        Some(UsageWriter::start(store, PriceTable::default(), config))
    });
    let Some(writer): Option<Arc<UsageWriter>> = writer else {
        eprintln!("cannot start the writer");
        return;
    };
    let mut next = 0u64;
    let mut group = c.benchmark_group("usage");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    group.bench_function("enqueue", |b| {
        b.iter_custom(|iters| {
            let records: Vec<UsageRecord> = (0..iters).map(|i| support::record(next + i)).collect();
            next += iters;
            let start = Instant::now();
            for r in records {
                writer.enqueue(r, None);
            }
            let took = start.elapsed();
            rt.block_on(writer.flush());
            took
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, enqueue);
criterion_main!(benches);
