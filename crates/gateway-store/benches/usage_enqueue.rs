//! Usage enqueue cost: what `UsageSink::record` adds to a request (budget: 300 ns).
//! Each sample enqueues a batch of prepared records into a running writer (SQLite
//! behind it) and times only the enqueueing; the writer is flushed between samples.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use relay_core::UsageRecord;
use relay_store::writer::PriceTable;
use relay_store::{UsageWriter, WriterConfig};

fn record(i: u64) -> UsageRecord {
    let mut r = UsageRecord::new(
        format!("req_{i:032x}"),
        "fast".into(),
        relay_core::DialectId::OPENAI_CHAT,
        relay_core::Operation::Chat,
    );
    r.key_id = Some("bench".into());
    r.channel = Some("mock".into());
    r.upstream_model = Some("mock-model".into());
    r.usage.input_tokens = 12;
    r.usage.output_tokens = 24;
    r
}

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
        let store = relay_store::connect(dir.join("bench.db").to_str().unwrap_or("bench.db"), 2)
            .await
            .ok()?;
        store.migrate().await.ok()?;
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
            let records: Vec<UsageRecord> = (0..iters).map(|i| record(next + i)).collect();
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
