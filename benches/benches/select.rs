//! Channel selection at 100 channels: the fast path (nothing excluded, no open circuit)
//! and the slow path (some channels already failed in this request).
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use relay_core::select::ChannelSet;

fn select(c: &mut Criterion) {
    let t = relay_benches::fixtures::selection_table(100).unwrap();
    let none = ChannelSet::default();
    let mut group = c.benchmark_group("select_100_channels");
    for name in ["weighted", "rr"] {
        let route = &t.resolve(name).unwrap().items[0];
        group.bench_function(format!("{name}_fast_path"), |b| {
            b.iter(|| black_box(route.select(&t.board, &none).map(|c| c.id().len())))
        });
    }
    // The implicit preset for model "m" is weighted over the same 100 channels.
    let route = &t.resolve("weighted").unwrap().items[0];
    let mut skip = ChannelSet::default();
    for id in ["c0", "c3", "c6"] {
        skip.insert(t.channel(id).unwrap());
    }
    group.bench_function("weighted_3_failed", |b| {
        b.iter(|| black_box(route.select(&t.board, &skip).map(|c| c.id().len())))
    });
    group.bench_function("resolve_preset", |b| {
        b.iter(|| black_box(t.resolve(black_box("weighted")).is_some()))
    });
    group.finish();
}

criterion_group!(benches, select);
criterion_main!(benches);
