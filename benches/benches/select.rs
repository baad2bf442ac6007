//! Channel selection at 100 channels: the fast path (nothing excluded, no open circuit)
//! and the slow path (some channels already failed in this request).
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use relay_core::config::{PresetConfig, PresetItem};
use relay_core::select::{ChannelSet, RoutingTable};
use relay_core::{ChannelConfig, RelayConfig, Strategy};

fn table(n: usize) -> RoutingTable {
    let channels: Vec<ChannelConfig> = (0..n)
        .map(|i| {
            let mut c = ChannelConfig::new(format!("c{i}"), "openai");
            c.api_keys = vec![relay_core::Secret::new("sk")];
            c.models = vec!["m".into()];
            c.weight = 1 + (i as u32 % 7);
            c.priority = (i % 3) as i32;
            c
        })
        .collect();
    let ids: Vec<String> = channels.iter().map(|c| c.id.clone()).collect();
    let preset = |name: &str, strategy| PresetConfig {
        name: name.into(),
        description: None,
        items: vec![PresetItem {
            channels: ids.clone(),
            strategy,
            model: Some("m".into()),
            ..PresetItem::default()
        }],
    };
    let config = RelayConfig {
        channels,
        presets: vec![
            preset("weighted", Strategy::Weighted),
            preset("rr", Strategy::RoundRobin),
        ],
        ..RelayConfig::default()
    };
    RoutingTable::build(&config, &relay_adapters::default_registry(), None).unwrap()
}

fn select(c: &mut Criterion) {
    let t = table(100);
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
