//! Warm instances against real guest components (`scripts/build-plugins`): a
//! stateless plugin's calls reuse one instance, a plugin that is not stateless (or
//! whose claim the operator refuses) gets a fresh one per request, a failed instance
//! is never reused, and the host's budget of idle instances holds.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use relay_core::hooks::HookSession;
use relay_core::{ClientDialect, InboundRequest, Operation, RouteParams};
use relay_plugin_api::{ChainEntry, HostSettings, ItemChain, PluginHost, PluginLimits, PluginSpec};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build the guests once per test binary.
fn dist() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = std::process::Command::new("bash")
            .arg(root().join("scripts/build-plugins"))
            .status()
            .expect("run scripts/build-plugins");
        assert!(status.success(), "scripts/build-plugins failed");
        root().join("plugins/dist")
    })
}

fn host(max_instances: u32) -> PluginHost {
    PluginHost::new(HostSettings {
        cache_dir: Some(root().join("target/plugin-cache")),
        max_instances,
        ..HostSettings::default()
    })
    .unwrap()
}

fn load(host: &PluginHost, name: &str, file: &str, reuse: bool) {
    host.load(&PluginSpec {
        name: name.into(),
        version: "1".into(),
        path: dist().join(format!("{file}.wasm")),
        secrets: Default::default(),
        limits: PluginLimits {
            reuse_instances: reuse,
            hook_deadline_ms: 1_000,
            ..PluginLimits::default()
        },
        failure_mode: None,
    })
    .unwrap();
}

fn chain(host: &PluginHost, name: &str, config: &str) -> ItemChain {
    let plugin = host.get(name, None).unwrap();
    ItemChain::new(vec![ChainEntry::new(plugin, Arc::from(config))])
}

fn request() -> InboundRequest {
    relay_adapters::openai::OpenAiDialect
        .parse_request(
            Operation::Chat,
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            &RouteParams::default(),
        )
        .unwrap()
}

/// Run `before_request` in `n` sessions, one after another.
fn run(chain: &ItemChain, n: usize) {
    let request = request();
    for i in 0..n {
        let mut session = chain.session(&format!("req_{i}"), 0);
        let _ = session.before_request(&request);
    }
}

/// Instances `name` makes for `n` requests through a new chain with `config`.
fn instances_for(host: &PluginHost, name: &str, config: &str, n: usize) -> u64 {
    let plugin = host.get(name, None).unwrap();
    let before = plugin.metrics().instances;
    run(&chain(host, name, config), n);
    plugin.metrics().instances - before
}

#[test]
fn a_stateless_plugin_reuses_one_warm_instance_across_requests() {
    let host = host(16);
    load(&host, "noop", "noop", true);
    let plugin = host.get("noop", None).unwrap();
    assert!(plugin.manifest.stateless, "noop declares itself stateless");
    assert!(plugin.reuses_instances());
    let before = plugin.metrics().instances;
    let item = chain(&host, "noop", "null");
    run(&item, 20);
    let m = plugin.metrics();
    assert_eq!(m.calls, 20);
    assert_eq!(m.instances - before, 1, "one instance served every call");
    assert_eq!(host.warm_instances(), 1, "and is idle in its pool now");
    drop(item);
    assert_eq!(host.warm_instances(), 0, "the pool went with its chain");
}

#[test]
fn fresh_instances_when_the_plugin_is_not_stateless_or_reuse_is_refused() {
    let host = host(16);
    load(&host, "noop-fresh", "noop", false);
    load(&host, "hostile", "hostile", true);
    assert!(!host.get("noop-fresh", None).unwrap().reuses_instances());
    assert_eq!(instances_for(&host, "noop-fresh", "null", 5), 5);
    assert!(!host.get("hostile", None).unwrap().manifest.stateless);
    assert_eq!(instances_for(&host, "hostile", r#"{"mode":"ok"}"#, 5), 5);
    assert_eq!(host.warm_instances(), 0);
}

#[test]
fn a_failed_instance_is_never_given_back() {
    let host = host(16);
    // hostile-open declares itself stateless; `panic` traps on every call.
    load(&host, "hostile-open", "hostile-open", true);
    let plugin = host.get("hostile-open", None).unwrap();
    assert!(plugin.reuses_instances());
    assert_eq!(
        instances_for(&host, "hostile-open", r#"{"mode":"panic"}"#, 4),
        4,
        "each trapped instance was dropped"
    );
    assert_eq!(plugin.metrics().errors, 4);
    assert_eq!(host.warm_instances(), 0);
}

#[test]
fn idle_instances_stay_within_half_the_allocators_slots() {
    // 4 slots: at most 2 idle warm instances in all pools together.
    let host = host(4);
    load(&host, "noop", "noop", true);
    let plugin = host.get("noop", None).unwrap();
    let before = plugin.metrics().instances;
    let chains: Vec<ItemChain> = (0..3)
        .map(|i| chain(&host, "noop", &format!(r#"{{"item":{i}}}"#)))
        .collect();
    for c in &chains {
        run(c, 2);
    }
    assert_eq!(host.warm_instances(), 2);
    // The third pool could not keep its instance, so its second call made another.
    assert_eq!(plugin.metrics().instances - before, 4);
    drop(chains);
    assert_eq!(host.warm_instances(), 0, "dropped pools release the budget");
}

#[test]
fn the_prometheus_text_counts_calls_and_instances() {
    let host = host(16);
    load(&host, "noop", "noop", true);
    let item = chain(&host, "noop", "null");
    run(&item, 3);
    let text = host.prometheus();
    let has = |line: &str| assert!(text.contains(&format!("{line}\n")), "{line}: {text}");
    let labels = r#"plugin="noop",version="1""#;
    has(&format!("relay_plugin_calls_total{{{labels}}} 3"));
    has(&format!("relay_plugin_instances_total{{{labels}}} 1"));
    has(&format!(
        "relay_plugin_call_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3"
    ));
    has(&format!("relay_plugin_circuit_open{{{labels}}} 0"));
    has("relay_plugin_warm_instances 1");
}
