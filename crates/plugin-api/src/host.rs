//! The host: one wasmtime [`Engine`] (pooling allocator, epoch interruption, on-disk
//! compilation cache), one [`Linker`] built at start, the epoch ticker, and the
//! registry of loaded plugins. Loading compiles a component (or takes it from the
//! cache) and pre-links it into an `InstancePre`, off the request path; requests only
//! instantiate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig, Store, Trap,
};

use crate::bindings::{FailureMode, Manifest, Plugin, PluginPre, StreamMode};
use crate::error::PluginError;
use crate::limits::PluginLimits;
use crate::metrics::MetricsSnapshot;
use crate::state::{HostState, PluginShared};
use crate::warm::WarmBudget;

/// The version of the `relay:plugin` WIT package this host speaks.
pub const WIT_VERSION: &str = "0.2.0";

/// The time instantiation (guest start-up code) may take at most, whatever the hook
/// deadline.
pub(crate) const INSTANTIATE_DEADLINE: Duration = Duration::from_millis(500);
/// `init` (at config load, off the request path) may take this long.
pub(crate) const INIT_DEADLINE: Duration = Duration::from_secs(1);

/// Bytes of each pooled linear memory kept resident between instances (only the pages
/// a guest dirtied are reset); a small Rust guest touches well under this.
const KEEP_RESIDENT_MEMORY: usize = 2 * 1024 * 1024;
/// The same for tables.
const KEEP_RESIDENT_TABLE: usize = 64 * 1024;

/// Epoch tick: the granularity of hook deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct HostSettings {
    /// Where compiled components are cached (absolute or relative to the working
    /// directory); no disk cache when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Plugin instances alive at once (the pooling allocator's slots). A request holds
    /// one per plugin it runs, a stream until it ends.
    pub max_instances: u32,
    /// The largest memory any plugin may be given (each plugin's own cap is lower or
    /// equal).
    pub max_memory_bytes: usize,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            cache_dir: None,
            max_instances: 1_000,
            max_memory_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One plugin to load.
#[derive(Clone, Debug)]
pub struct PluginSpec {
    /// The name preset items use.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The component file.
    pub path: PathBuf,
    /// Secret values the operator grants (only names the manifest declares are
    /// readable).
    pub secrets: HashMap<String, String>,
    /// Limits.
    pub limits: PluginLimits,
    /// Overrides the manifest's failure mode.
    pub failure_mode: Option<FailureMode>,
}

/// A compiled, pre-linked plugin.
pub struct LoadedPlugin {
    /// The registered name.
    pub name: String,
    /// The registered version.
    pub version: String,
    /// SHA-256 of the component file (hex).
    pub sha256: String,
    /// What the plugin declared.
    pub manifest: Manifest,
    /// The failure mode in force (declared, or the operator's override).
    pub failure_mode: FailureMode,
    pub(crate) pre: PluginPre<HostState>,
    pub(crate) shared: Arc<PluginShared>,
    pub(crate) breaker: crate::breaker::Breaker,
    /// The host's budget of idle warm instances.
    pub(crate) warm_budget: Arc<WarmBudget>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl LoadedPlugin {
    /// The plugin's metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Whether its circuit is open.
    pub fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// How many times its circuit opened.
    pub fn breaker_trips(&self) -> u64 {
        self.breaker.trips()
    }

    /// The declared stream mode.
    pub fn stream_mode(&self) -> StreamMode {
        self.manifest.stream_mode
    }

    /// A fresh instance with this item config (JSON).
    pub(crate) fn instantiate(&self, config: Arc<str>) -> Result<Live, PluginFailure> {
        let mut store = Store::new(
            self.pre.engine(),
            HostState::new(self.shared.clone(), config),
        );
        store.limiter(|s| s.limiter());
        // Instantiation runs no hook, only the guest's start-up code: it gets the
        // longer of the hook deadline and INSTANTIATE_DEADLINE (each hook call then sets
        // its own deadline).
        store.set_epoch_deadline(deadline_ticks(
            self.shared.limits.hook_deadline().max(INSTANTIATE_DEADLINE),
        ));
        let plugin = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.pre.instantiate(&mut store)
        }))
        .unwrap_or_else(|_| Err(wasmtime::Error::msg("a host function panicked")))
        .map_err(|e| classify(&e, "instantiate"))?;
        self.shared.metrics.on_instance();
        Ok(Live {
            store,
            plugin,
            calls: 0,
        })
    }

    /// Whether this plugin's hooks run in warm, reused instances: it declares itself
    /// stateless and the operator has not turned reuse off.
    pub fn reuses_instances(&self) -> bool {
        self.manifest.stateless && self.shared.limits.reuse_instances
    }
}

/// A live instance: its store and its bindings.
pub(crate) struct Live {
    pub(crate) store: Store<HostState>,
    pub(crate) plugin: Plugin,
    /// Hook calls it has served.
    calls: u32,
}

/// Why a hook call failed.
#[derive(Debug, Clone)]
pub enum PluginFailure {
    /// The circuit is open: not called.
    Open,
    /// The hook ran past its deadline.
    Timeout,
    /// The guest trapped (panic, unreachable, out-of-bounds, stack overflow, failed
    /// allocation at the memory cap...).
    Trap(String),
    /// The guest returned something the host refuses (too large, invalid header or
    /// JSON).
    Invalid(String),
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginFailure::Open => f.write_str("circuit open"),
            PluginFailure::Timeout => f.write_str("timed out"),
            PluginFailure::Trap(m) => write!(f, "trapped: {m}"),
            PluginFailure::Invalid(m) => write!(f, "invalid output: {m}"),
        }
    }
}

pub(crate) fn deadline_ticks(d: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    (d.as_nanos().div_ceil(tick) as u64).max(1)
}

/// Sort a wasmtime error into a timeout or a trap.
pub(crate) fn classify(e: &wasmtime::Error, phase: &str) -> PluginFailure {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginFailure::Timeout,
        Some(t) => PluginFailure::Trap(format!("{phase}: {t}")),
        None => {
            let mut msg = format!("{phase}: {e}");
            msg.truncate(300);
            PluginFailure::Trap(msg)
        }
    }
}

impl Live {
    /// Call one hook with the plugin's deadline, accounting metrics and the breaker.
    pub(crate) fn call<R>(
        &mut self,
        plugin: &LoadedPlugin,
        f: impl FnOnce(&Plugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        let shared = &plugin.shared;
        self.store
            .set_epoch_deadline(deadline_ticks(shared.limits.hook_deadline()));
        self.calls = self.calls.saturating_add(1);
        let start = Instant::now();
        // A host function that panics (a WASI call that would block on the ambient
        // runtime) unwinds through the guest to here; the instance is then dropped.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f(&self.plugin, &mut self.store)
        }))
        .unwrap_or_else(|_| {
            Err(wasmtime::Error::msg(
                "a host function panicked (blocking WASI call)",
            ))
        });
        shared.metrics.on_call(start.elapsed());
        self.store.data_mut().flush_stdio();
        result.map_err(|e| {
            let failure = classify(&e, "call");
            match failure {
                PluginFailure::Timeout => shared.metrics.on_timeout(),
                _ => shared.metrics.on_error(),
            }
            failure
        })
    }
}

impl Live {
    /// Whether a warm instance may serve another call: it has served fewer than
    /// [`WARM_CALLS_MAX`] (a slow leak in a guest's heap is bounded by recycling) and
    /// its captured stdout/stderr have room left (the pipes only grow).
    pub(crate) fn reusable(&self) -> bool {
        self.calls < WARM_CALLS_MAX && self.store.data().stdio_room()
    }
}

/// Calls one warm instance serves before it is replaced by a fresh one.
const WARM_CALLS_MAX: u32 = 100_000;

/// Run the epoch ticker until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Result<Ticker, PluginError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("relay-plugin-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The plugin host. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    engine: Engine,
    linker: Linker<HostState>,
    settings: HostSettings,
    plugins: RwLock<HashMap<String, Vec<Arc<LoadedPlugin>>>>,
    warm_budget: Arc<WarmBudget>,
    _ticker: Ticker,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field(
                "plugins",
                &self.inner.plugins.read().keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PluginHost {
    /// Start the engine, the linker and the epoch ticker.
    pub fn new(settings: HostSettings) -> Result<PluginHost, PluginError> {
        let engine = Engine::new(&engine_config(&settings)?)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        crate::stdio::add_to_linker(&mut linker)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let ticker = Ticker::start(engine.clone())?;
        // Half the allocator's slots may idle warm; the rest is for requests.
        let warm_budget = Arc::new(WarmBudget::new(
            (settings.max_instances as usize / 2).max(1),
        ));
        Ok(PluginHost {
            inner: Arc::new(HostInner {
                engine,
                linker,
                settings,
                plugins: RwLock::new(HashMap::new()),
                warm_budget,
                _ticker: ticker,
            }),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Compile (or take from the cache), link and register a plugin. Replaces a
    /// plugin of the same name and version.
    pub fn load(&self, spec: &PluginSpec) -> Result<Arc<LoadedPlugin>, PluginError> {
        let bytes = std::fs::read(&spec.path).map_err(|e| PluginError::Load {
            plugin: spec.name.clone(),
            message: format!("cannot read {}: {e}", spec.path.display()),
        })?;
        let plugin = Arc::new(self.prepare(spec, &bytes)?);
        let mut plugins = self.inner.plugins.write();
        let versions = plugins.entry(spec.name.clone()).or_default();
        versions.retain(|p| p.version != spec.version);
        versions.push(plugin.clone());
        Ok(plugin)
    }

    /// Compile, link and read the manifest of a component, without registering it.
    pub fn prepare(&self, spec: &PluginSpec, bytes: &[u8]) -> Result<LoadedPlugin, PluginError> {
        let load_err = |message: String| PluginError::Load {
            plugin: spec.name.clone(),
            message,
        };
        if spec.limits.memory_bytes > self.inner.settings.max_memory_bytes {
            return Err(load_err(format!(
                "memory_bytes {} is over the host's max_memory_bytes {}",
                spec.limits.memory_bytes, self.inner.settings.max_memory_bytes
            )));
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let started = Instant::now();
        let component = Component::new(&self.inner.engine, bytes)
            .map_err(|e| load_err(format!("not a valid component: {e:#}")))?;
        let compile_ms = started.elapsed().as_millis();
        let pre =
            self.inner.linker.instantiate_pre(&component).map_err(|e| {
                load_err(format!("imports something the host does not give: {e:#}"))
            })?;
        let pre = PluginPre::new(pre).map_err(|e| {
            load_err(format!(
                "does not export the relay:plugin@{WIT_VERSION} world (built for another \
                     version of the contract? rebuild it with the current relay-plugin-sdk): {e:#}"
            ))
        })?;

        // Read the manifest in a throwaway instance.
        let probe = Arc::new(PluginShared::new(
            spec.name.clone(),
            HashMap::new(),
            Vec::new(),
            &[],
            spec.limits.clone(),
        ));
        let mut store = Store::new(&self.inner.engine, HostState::new(probe, Arc::from("null")));
        store.limiter(|s| s.limiter());
        store.set_epoch_deadline(deadline_ticks(
            spec.limits.hook_deadline().max(Duration::from_millis(100)),
        ));
        let instance = pre.instantiate(&mut store).map_err(|e| {
            load_err(format!(
                "cannot instantiate: {}",
                classify(&e, "instantiate")
            ))
        })?;
        let manifest = instance
            .call_manifest(&mut store)
            .map_err(|e| load_err(format!("manifest: {}", classify(&e, "manifest"))))?;
        if manifest.secrets.len() > 64 || manifest.metrics.len() > 64 {
            return Err(load_err(
                "a manifest may declare at most 64 secrets and 64 metrics".into(),
            ));
        }
        let secrets = spec
            .secrets
            .iter()
            .filter(|(k, _)| manifest.secrets.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let shared = Arc::new(PluginShared::new(
            spec.name.clone(),
            secrets,
            manifest.secrets.clone(),
            &manifest.metrics,
            spec.limits.clone(),
        ));
        tracing::info!(
            plugin = %spec.name,
            version = %spec.version,
            sha256 = %sha256,
            compile_or_cache_ms = compile_ms as u64,
            "plugin loaded"
        );
        Ok(LoadedPlugin {
            name: spec.name.clone(),
            version: spec.version.clone(),
            sha256,
            failure_mode: spec.failure_mode.unwrap_or(manifest.failure_mode),
            manifest,
            pre,
            breaker: crate::breaker::Breaker::new(
                spec.limits.breaker_failures,
                Duration::from_millis(spec.limits.breaker_cooldown_ms),
            ),
            shared,
            warm_budget: self.inner.warm_budget.clone(),
        })
    }

    /// A registered plugin: the given version, or the last one registered.
    pub fn get(&self, name: &str, version: Option<&str>) -> Option<Arc<LoadedPlugin>> {
        let plugins = self.inner.plugins.read();
        let versions = plugins.get(name)?;
        match version {
            Some(v) => versions.iter().find(|p| p.version == v).cloned(),
            None => versions.last().cloned(),
        }
    }

    /// Warm instances idle in all pools now.
    pub fn warm_instances(&self) -> usize {
        self.inner.warm_budget.idle()
    }

    /// Every registered plugin's metrics, and the idle warm instances, in the
    /// Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut plugins = self.plugins();
        plugins.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        crate::prometheus::render(&plugins, self.warm_instances())
    }

    /// Every registered plugin.
    pub fn plugins(&self) -> Vec<Arc<LoadedPlugin>> {
        self.inner
            .plugins
            .read()
            .values()
            .flat_map(|v| v.iter().cloned())
            .collect()
    }

    /// A plugin's imports and exports, by name (for `plugin check`).
    pub fn describe(&self, plugin: &LoadedPlugin) -> (Vec<String>, Vec<String>) {
        let ty = plugin.pre.instance_pre().component().component_type();
        let imports = ty
            .imports(&self.inner.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let exports = ty
            .exports(&self.inner.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        (imports, exports)
    }
}

fn engine_config(settings: &HostSettings) -> Result<Config, PluginError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(512 * 1024);
    let n = settings.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .max_core_instances_per_component(32)
        .max_memories_per_component(8)
        .max_tables_per_component(32)
        .max_memory_size(settings.max_memory_bytes)
        // A freed slot keeps its pages and has only the pages the guest dirtied put
        // back (found with the PAGEMAP_SCAN ioctl on Linux >= 6.7, else a memset of
        // the low addresses): no madvise, no TLB shoot-down and no page faults when the
        // next request's instance touches the same memory.
        .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
        .table_keep_resident(KEEP_RESIDENT_TABLE)
        .pagemap_scan(Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if let Some(dir) = &settings.cache_dir {
        let dir = absolute(dir)?;
        std::fs::create_dir_all(&dir).map_err(|e| {
            PluginError::Engine(format!(
                "cannot create the cache directory {}: {e}",
                dir.display()
            ))
        })?;
        let mut cache = CacheConfig::new();
        cache.with_directory(dir);
        let cache = Cache::new(cache).map_err(|e| PluginError::Engine(format!("cache: {e:#}")))?;
        config.cache(Some(cache));
    }
    Ok(config)
}

fn absolute(p: &Path) -> Result<PathBuf, PluginError> {
    std::path::absolute(p).map_err(|e| PluginError::Engine(format!("{}: {e}", p.display())))
}
