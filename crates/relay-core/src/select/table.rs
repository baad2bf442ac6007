use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::fast_rand;
use super::health::{Health, HealthBoard};
use crate::adapter::{Adapter, AdapterRegistry};
use crate::config::{
    ChannelConfig, ConfigError, PresetItem, RelayConfig, RetryPolicy, Secret, Strategy, Timeouts,
};
use crate::hooks::{ItemHooks, PluginFactory};

/// A channel ready to serve: its config, adapter, credentials and health.
pub struct Channel {
    /// The configuration it was built from.
    pub config: ChannelConfig,
    /// The base URL without a trailing slash.
    pub base_url: String,
    /// The provider's adapter.
    pub adapter: Arc<dyn Adapter>,
    /// Position in the routing table, for per-request failure sets.
    slot: usize,
    keys: Vec<Secret>,
    key_cursor: AtomicUsize,
    /// Circuit breaker and latency.
    pub health: Arc<Health>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.config.id)
            .field("provider", &self.config.provider)
            .field("base_url", &self.base_url)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Channel {
    /// The channel id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The next credential, round robin; `None` when the channel has none.
    pub fn next_key(&self) -> Option<&Secret> {
        match self.keys.len() {
            0 => None,
            1 => self.keys.first(),
            n => self
                .keys
                .get(self.key_cursor.fetch_add(1, Ordering::Relaxed) % n),
        }
    }
}

/// A set of channels, by routing-table slot (the channels that failed in one request).
#[derive(Debug, Default, Clone)]
pub struct ChannelSet {
    bits: Vec<u64>,
}

impl ChannelSet {
    /// Add a channel.
    pub fn insert(&mut self, channel: &Channel) {
        let (word, bit) = (channel.slot / 64, channel.slot % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << bit;
    }

    /// Whether the channel is in the set.
    pub fn contains(&self, channel: &Channel) -> bool {
        self.bits
            .get(channel.slot / 64)
            .is_some_and(|w| w & (1 << (channel.slot % 64)) != 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }
}

/// A compiled preset item: its channels, strategy, model, retry policy and timeouts.
#[derive(Debug)]
pub struct Route {
    /// The model asked for, before each channel's model map.
    pub model: String,
    /// How a channel is chosen.
    pub strategy: Strategy,
    /// Retries inside this item.
    pub retry: RetryPolicy,
    /// Timeouts of each attempt.
    pub timeouts: Timeouts,
    /// Enabled channels: by priority (highest first) for the weighted strategy, else in
    /// list order.
    channels: Vec<Arc<Channel>>,
    /// Weighted: `(end, total weight)` of each priority tier, in order.
    tiers: Vec<(usize, u64)>,
    /// Weighted: running weight sums inside each tier (for a binary search).
    cumulative: Vec<u64>,
    cursor: AtomicUsize,
    /// The item's plugin chain; `None` when it has no enabled plugin.
    pub hooks: Option<Arc<dyn ItemHooks>>,
}

impl Route {
    fn new(
        model: String,
        strategy: Strategy,
        mut channels: Vec<Arc<Channel>>,
        retry: RetryPolicy,
        timeouts: Timeouts,
    ) -> Route {
        let mut tiers = Vec::new();
        let mut cumulative = Vec::with_capacity(channels.len());
        if strategy == Strategy::Weighted {
            // Stable: equal priorities keep their list order.
            channels.sort_by_key(|c| std::cmp::Reverse(c.config.priority));
            let mut start = 0;
            while start < channels.len() {
                let priority = channels[start].config.priority;
                let mut end = start;
                let mut sum = 0u64;
                while end < channels.len() && channels[end].config.priority == priority {
                    sum += u64::from(channels[end].config.weight);
                    cumulative.push(sum);
                    end += 1;
                }
                tiers.push((end, sum));
                start = end;
            }
        }
        Route {
            model,
            strategy,
            retry,
            timeouts,
            channels,
            tiers,
            cumulative,
            cursor: AtomicUsize::new(0),
            hooks: None,
        }
    }

    /// The channels this item may use.
    pub fn channels(&self) -> &[Arc<Channel>] {
        &self.channels
    }

    /// Choose a channel for the next attempt, skipping `skip`. Channels with an open
    /// circuit are passed over while any other is eligible.
    pub fn select(&self, board: &HealthBoard, skip: &ChannelSet) -> Option<&Arc<Channel>> {
        let open_at = board.open_now();
        if open_at.is_none() && skip.is_empty() {
            return self.select_fast();
        }
        let healthy =
            |c: &Channel| !skip.contains(c) && !open_at.is_some_and(|now| c.health.is_open(now));
        self.select_by(&healthy)
            .or_else(|| self.select_by(&|c: &Channel| !skip.contains(c)))
    }

    /// Nothing excluded, no circuit open: one random draw and a binary search.
    fn select_fast(&self) -> Option<&Arc<Channel>> {
        match self.strategy {
            Strategy::Weighted => {
                let mut start = 0;
                for &(end, total) in &self.tiers {
                    if total > 0 {
                        let r = fast_rand::below(total);
                        let i = start + self.cumulative[start..end].partition_point(|&c| c <= r);
                        return self.channels.get(i);
                    }
                    start = end;
                }
                None
            }
            Strategy::RoundRobin => {
                let n = self.channels.len();
                if n == 0 {
                    return None;
                }
                self.channels
                    .get(self.cursor.fetch_add(1, Ordering::Relaxed) % n)
            }
            Strategy::Failover => self.channels.first(),
        }
    }

    fn select_by(&self, eligible: &dyn Fn(&Channel) -> bool) -> Option<&Arc<Channel>> {
        match self.strategy {
            Strategy::Weighted => {
                let mut start = 0;
                for &(end, _) in &self.tiers {
                    let tier = &self.channels[start..end];
                    let total: u64 = tier
                        .iter()
                        .filter(|c| eligible(c))
                        .map(|c| u64::from(c.config.weight))
                        .sum();
                    if total > 0 {
                        let mut r = fast_rand::below(total);
                        for c in tier.iter().filter(|c| eligible(c)) {
                            let w = u64::from(c.config.weight);
                            if r < w {
                                return Some(c);
                            }
                            r -= w;
                        }
                    }
                    start = end;
                }
                None
            }
            Strategy::RoundRobin => {
                let n = self.channels.len();
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| &self.channels[(start + k) % n])
                    .find(|c| eligible(c))
            }
            Strategy::Failover => self.channels.iter().find(|c| eligible(c)),
        }
    }
}

/// A preset, explicit or implicit, compiled.
#[derive(Debug)]
pub struct Preset {
    /// The name clients use.
    pub name: String,
    /// True for the preset made for a bare model name.
    pub implicit: bool,
    /// Items in order.
    pub items: Vec<Route>,
}

/// The compiled, validated routing state. Swapped whole on a config change; channel
/// health carries over by channel id.
#[derive(Debug)]
pub struct RoutingTable {
    channels: HashMap<String, Arc<Channel>>,
    presets: HashMap<String, Arc<Preset>>,
    preset_names: Vec<String>,
    models: BTreeSet<String>,
    /// Shared circuit-breaker state.
    pub board: Arc<HealthBoard>,
}

impl RoutingTable {
    /// Validate `config` and compile it. `previous` lends its channel health.
    pub fn build(
        config: &RelayConfig,
        adapters: &AdapterRegistry,
        previous: Option<&RoutingTable>,
    ) -> Result<RoutingTable, ConfigError> {
        Self::build_with_plugins(config, adapters, previous, None)
    }

    /// [`build`](Self::build), and give each preset item the plugin chain `plugins`
    /// makes of its `plugins` list. Without a factory, plugin lists are ignored (the
    /// gateway's kill switch).
    pub fn build_with_plugins(
        config: &RelayConfig,
        adapters: &AdapterRegistry,
        previous: Option<&RoutingTable>,
        plugins: Option<&dyn PluginFactory>,
    ) -> Result<RoutingTable, ConfigError> {
        config.validate(adapters)?;
        let board = previous.map_or_else(Default::default, |p| p.board.clone());
        let mut channels = HashMap::new();
        let mut ordered = Vec::new();
        for (slot, cfg) in config.channels.iter().enumerate() {
            let Some(adapter) = adapters.get(&cfg.provider).cloned() else {
                continue; // validate() reported it
            };
            let base_url = cfg
                .base_url
                .as_deref()
                .or(adapter.default_base_url())
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned();
            let mut keys = cfg.api_keys.clone();
            if let Some(var) = &cfg.api_key_env {
                if let Ok(v) = std::env::var(var) {
                    keys.push(Secret::new(v));
                }
            }
            let health = previous
                .and_then(|p| p.channels.get(&cfg.id))
                .map_or_else(Default::default, |c| c.health.clone());
            let channel = Arc::new(Channel {
                config: cfg.clone(),
                base_url,
                adapter,
                slot,
                keys,
                key_cursor: AtomicUsize::new(0),
                health,
            });
            channels.insert(cfg.id.clone(), channel.clone());
            ordered.push(channel);
        }

        let defaults = &config.defaults;
        let item_route = |item: &PresetItem, preset_name: &str| {
            let model = item.model.clone().unwrap_or_else(|| preset_name.to_owned());
            let targets: Vec<Arc<Channel>> = match &item.group {
                Some(group) => ordered
                    .iter()
                    .filter(|c| c.config.groups.iter().any(|g| g == group))
                    .filter(|c| c.config.serves(&model))
                    .cloned()
                    .collect(),
                None => item
                    .channels
                    .iter()
                    .filter_map(|id| channels.get(id).cloned())
                    .collect(),
            };
            let targets = targets.into_iter().filter(|c| c.config.enabled).collect();
            Route::new(
                model,
                item.strategy,
                targets,
                item.retry.clone().unwrap_or_else(|| defaults.retry.clone()),
                item.timeouts
                    .clone()
                    .unwrap_or_else(|| defaults.timeouts.clone()),
            )
        };

        let mut presets = HashMap::new();
        let mut preset_names = Vec::new();
        let mut problems = Vec::new();
        for p in &config.presets {
            let mut items: Vec<Route> = p.items.iter().map(|i| item_route(i, &p.name)).collect();
            if let Some(factory) = plugins {
                for (n, (item, route)) in p.items.iter().zip(items.iter_mut()).enumerate() {
                    if item.plugins.iter().all(|r| !r.enabled) {
                        continue;
                    }
                    match factory.chain(&p.name, n, &item.plugins) {
                        Ok(hooks) => route.hooks = hooks,
                        Err(e) => problems.push(format!("preset {:?}, item {n}: {e}", p.name)),
                    }
                }
            }
            preset_names.push(p.name.clone());
            presets.insert(
                p.name.clone(),
                Arc::new(Preset {
                    name: p.name.clone(),
                    implicit: false,
                    items,
                }),
            );
        }

        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let mut models = BTreeSet::new();
        for c in ordered.iter().filter(|c| c.config.enabled) {
            models.extend(c.config.models.iter().cloned());
            models.extend(c.config.model_map.keys().cloned());
        }
        for model in &models {
            if presets.contains_key(model) {
                continue; // an explicit preset of the same name wins
            }
            let serving: Vec<Arc<Channel>> = ordered
                .iter()
                .filter(|c| c.config.enabled && c.config.serves(model))
                .cloned()
                .collect();
            let route = Route::new(
                model.clone(),
                Strategy::Weighted,
                serving,
                defaults.retry.clone(),
                defaults.timeouts.clone(),
            );
            presets.insert(
                model.clone(),
                Arc::new(Preset {
                    name: model.clone(),
                    implicit: true,
                    items: vec![route],
                }),
            );
        }

        Ok(RoutingTable {
            channels,
            presets,
            preset_names,
            models,
            board,
        })
    }

    /// The preset (explicit, else implicit) for a requested model.
    pub fn resolve(&self, model: &str) -> Option<&Arc<Preset>> {
        self.presets.get(model)
    }

    /// A channel by id.
    pub fn channel(&self, id: &str) -> Option<&Arc<Channel>> {
        self.channels.get(id)
    }

    /// Explicit preset names, in config order.
    pub fn preset_names(&self) -> &[String] {
        &self.preset_names
    }

    /// Models served by enabled channels, sorted.
    pub fn served_models(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::{DecodedResponse, StreamTranslator, UpstreamCall};
    use crate::config::PresetConfig;
    use crate::dialect::DialectId;
    use crate::error::RelayError;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    struct Dummy;
    impl Adapter for Dummy {
        fn provider(&self) -> &str {
            "dummy"
        }
        fn dialect(&self) -> DialectId {
            DialectId::OPENAI_CHAT
        }
        fn default_base_url(&self) -> Option<&str> {
            Some("https://dummy.example/v1")
        }
        fn requires_key(&self) -> bool {
            false
        }
        fn accepts(&self, _: DialectId) -> bool {
            true
        }
        fn build_request(&self, _: &UpstreamCall<'_>) -> Result<http::Request<Bytes>, RelayError> {
            Err(RelayError::internal("unused"))
        }
        fn classify_error(&self, s: StatusCode, _: &HeaderMap, _: &[u8]) -> RelayError {
            RelayError::upstream_status(s.as_u16(), "x")
        }
        fn decode_response(
            &self,
            _: &UpstreamCall<'_>,
            _: Bytes,
        ) -> Result<DecodedResponse, RelayError> {
            Err(RelayError::internal("unused"))
        }
        fn stream_translator(
            &self,
            _: &UpstreamCall<'_>,
        ) -> Result<Box<dyn StreamTranslator>, RelayError> {
            Err(RelayError::internal("unused"))
        }
    }

    fn registry() -> AdapterRegistry {
        let mut r = AdapterRegistry::new();
        r.register(Arc::new(Dummy));
        r
    }

    fn channel(id: &str, weight: u32, priority: i32) -> ChannelConfig {
        let mut c = ChannelConfig::new(id, "dummy");
        c.models = vec!["m".into()];
        c.weight = weight;
        c.priority = priority;
        c
    }

    fn preset(name: &str, channels: &[&str], strategy: Strategy) -> PresetConfig {
        PresetConfig {
            name: name.into(),
            description: None,
            items: vec![PresetItem {
                channels: channels.iter().map(|s| s.to_string()).collect(),
                strategy,
                model: Some("m".into()),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn weights_are_respected_within_tolerance() {
        let config = RelayConfig {
            channels: vec![channel("a", 1, 0), channel("b", 3, 0), channel("c", 6, 0)],
            ..Default::default()
        };
        let table = RoutingTable::build(&config, &registry(), None).unwrap();
        let route = &table.resolve("m").unwrap().items[0];
        let mut counts = HashMap::new();
        let n = 100_000;
        for _ in 0..n {
            let c = route.select(&table.board, &ChannelSet::default()).unwrap();
            *counts.entry(c.id().to_owned()).or_insert(0u32) += 1;
        }
        for (id, share) in [("a", 0.1), ("b", 0.3), ("c", 0.6)] {
            let got = f64::from(counts[id]) / f64::from(n);
            assert!((got - share).abs() < 0.01, "{id}: {got} vs {share}");
        }
        // The slow path (something excluded) draws with the same weights.
        let mut skip = ChannelSet::default();
        skip.insert(table.channel("a").unwrap());
        let mut b = 0u32;
        for _ in 0..n {
            let c = route.select(&table.board, &skip).unwrap();
            assert_ne!(c.id(), "a");
            b += u32::from(c.id() == "b");
        }
        let got = f64::from(b) / f64::from(n);
        assert!((got - 1.0 / 3.0).abs() < 0.01, "b share {got}");
    }

    #[test]
    fn priority_tiers_and_skipping() {
        let config = RelayConfig {
            channels: vec![
                channel("low", 5, 0),
                channel("high1", 1, 10),
                channel("high2", 1, 10),
            ],
            ..Default::default()
        };
        let table = RoutingTable::build(&config, &registry(), None).unwrap();
        let route = &table.resolve("m").unwrap().items[0];
        let mut skip = ChannelSet::default();
        for _ in 0..200 {
            assert!(
                route
                    .select(&table.board, &skip)
                    .unwrap()
                    .id()
                    .starts_with("high")
            );
        }
        skip.insert(table.channel("high1").unwrap());
        assert_eq!(route.select(&table.board, &skip).unwrap().id(), "high2");
        skip.insert(table.channel("high2").unwrap());
        assert_eq!(route.select(&table.board, &skip).unwrap().id(), "low");
        skip.insert(table.channel("low").unwrap());
        assert!(route.select(&table.board, &skip).is_none());
    }

    #[test]
    fn round_robin_and_failover_orders() {
        let config = RelayConfig {
            channels: vec![channel("a", 1, 0), channel("b", 1, 0), channel("c", 1, 0)],
            presets: vec![
                preset("rr", &["a", "b", "c"], Strategy::RoundRobin),
                preset("fo", &["c", "a", "b"], Strategy::Failover),
            ],
            ..Default::default()
        };
        let table = RoutingTable::build(&config, &registry(), None).unwrap();
        let rr = &table.resolve("rr").unwrap().items[0];
        let none = ChannelSet::default();
        let seq: Vec<String> = (0..6)
            .map(|_| rr.select(&table.board, &none).unwrap().id().to_owned())
            .collect();
        assert_eq!(seq, ["a", "b", "c", "a", "b", "c"]);
        let fo = &table.resolve("fo").unwrap().items[0];
        assert_eq!(fo.select(&table.board, &none).unwrap().id(), "c");
        let mut skip = ChannelSet::default();
        skip.insert(table.channel("c").unwrap());
        assert_eq!(fo.select(&table.board, &skip).unwrap().id(), "a");
    }

    #[test]
    fn open_circuits_are_avoided_while_others_remain() {
        let config = RelayConfig {
            channels: vec![channel("a", 1, 0), channel("b", 1, 0)],
            ..Default::default()
        };
        let table = RoutingTable::build(&config, &registry(), None).unwrap();
        let a = table.channel("a").unwrap();
        for _ in 0..super::super::FAILURE_THRESHOLD {
            a.health.on_failure(&table.board);
        }
        let route = &table.resolve("m").unwrap().items[0];
        for _ in 0..100 {
            assert_eq!(
                route
                    .select(&table.board, &ChannelSet::default())
                    .unwrap()
                    .id(),
                "b"
            );
        }
        // With b excluded, the open channel is still better than nothing.
        let mut skip = ChannelSet::default();
        skip.insert(table.channel("b").unwrap());
        assert_eq!(route.select(&table.board, &skip).unwrap().id(), "a");
    }

    #[test]
    fn keys_rotate_and_models_map() {
        let mut c = channel("a", 1, 0);
        c.api_keys = vec![Secret::new("k1"), Secret::new("k2")];
        c.model_map.insert("alias".into(), "real".into());
        let config = RelayConfig {
            channels: vec![c],
            ..Default::default()
        };
        let table = RoutingTable::build(&config, &registry(), None).unwrap();
        let a = table.channel("a").unwrap();
        let keys: Vec<&str> = (0..4).map(|_| a.next_key().unwrap().expose()).collect();
        assert_eq!(keys, ["k1", "k2", "k1", "k2"]);
        assert!(table.resolve("alias").is_some());
        assert_eq!(a.config.map_model("alias"), "real");
        assert_eq!(a.config.map_model("m"), "m");
    }

    #[test]
    fn validation_names_each_problem() {
        let mut bad_url = channel("u", 1, 0);
        bad_url.base_url = Some("ftp://nope".into());
        bad_url.models = vec!["other".into()];
        let mut empty = channel("e", 1, 0);
        empty.models.clear();
        let config = RelayConfig {
            channels: vec![channel("a", 0, 0), channel("a", 0, 0), bad_url, empty],
            presets: vec![preset("p", &["a", "ghost"], Strategy::Weighted)],
            ..Default::default()
        };
        let err = RoutingTable::build(&config, &registry(), None).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("channel \"a\": duplicate channel id"), "{all}");
        assert!(
            all.contains("preset \"p\", item 1: unknown channel \"ghost\""),
            "{all}"
        );
        assert!(all.contains("channel \"u\": bad base_url"), "{all}");
        assert!(all.contains("channel \"e\": empty model list"), "{all}");
        assert!(all.contains("every channel has weight 0"), "{all}");
        assert!(
            all.contains("model \"m\": every channel serving it has weight 0"),
            "{all}"
        );
    }
}
