//! Inputs shared by the criterion benches and `relay-icount`.

use relay_core::config::{PresetConfig, PresetItem};
use relay_core::select::RoutingTable;
use relay_core::{ChannelConfig, ConfigError, RelayConfig, Strategy};

/// A routing table of `n` OpenAI channels serving model `m`, in three priority tiers with
/// weights 1..=7, and two presets over all of them: `weighted` and `rr` (round robin).
pub fn selection_table(n: usize) -> Result<RoutingTable, ConfigError> {
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
    RoutingTable::build(&config, &relay_adapters::default_registry(), None)
}
