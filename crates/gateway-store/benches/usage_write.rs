//! Usage write cost on SQLite: one writer pass of 512 rows (the tuples a pass takes
//! from the shards) into the embedded store, the time per pass. On a gateway pinned to
//! one core this is CPU taken from requests, so it is what usage logging costs there.
#![allow(missing_docs)]

mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use relay_store::tuple::RowRef;

const PASS: u64 = 512;

fn write(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("relay-bench-write-{}", std::process::id()));
    let Some(store) = rt.block_on(support::sqlite_store(&dir)) else {
        return;
    };
    let mut next = 0u64;
    let mut group = c.benchmark_group("usage");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(PASS));
    group.bench_function("sqlite_write_pass_512", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let mut buf = Vec::new();
                for i in 0..PASS {
                    let r = support::record(next + i);
                    assert!(RowRef::of_record(&r, 7).encode(&mut buf), "a row fits");
                }
                next += PASS;
                let bufs = [buf];
                let start = Instant::now();
                let stored = rt.block_on(store.insert_usage_tuples(&bufs));
                took += start.elapsed();
                assert_eq!(stored.ok(), Some(PASS), "every row of the pass is new");
            }
            took
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, write);
criterion_main!(benches);
