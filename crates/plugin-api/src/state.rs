//! The data of one plugin instance's store, and the host imports it serves (`host`,
//! `kv`), each scoped to the plugin (and the preset item's config) the instance was
//! made for. WASI is present only so `wasm32-wasip2` guests built with `std` link: no
//! preopened directories, no environment, no arguments, no network, stdin empty, and
//! stdout/stderr captured into small buffers that go to the log, rate-limited.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::relay::plugin::{host, kv};
use crate::kv::KvStore;
use crate::limits::PluginLimits;
use crate::metrics::PluginMetrics;

/// Bytes of guest stdout or stderr kept per call; more makes the guest's write fail.
const STDIO_CAPACITY: usize = 4096;
/// Longest log line kept.
const LOG_LINE_MAX: usize = 1024;

/// What every instance of one plugin shares: identity, grants, store, metrics, log
/// budget.
#[derive(Debug)]
pub(crate) struct PluginShared {
    /// The registered name.
    pub(crate) name: String,
    /// Secret values by declared name (undeclared ones are never here).
    pub(crate) secrets: HashMap<String, String>,
    /// Names the manifest declares as secrets.
    pub(crate) declared_secrets: Vec<String>,
    /// The plugin's key-value store.
    pub(crate) kv: KvStore,
    /// Its metrics.
    pub(crate) metrics: PluginMetrics,
    /// Its limits.
    pub(crate) limits: PluginLimits,
    log_budget: Mutex<(Instant, u32)>,
}

impl PluginShared {
    /// Shared state for a plugin.
    pub(crate) fn new(
        name: String,
        secrets: HashMap<String, String>,
        declared_secrets: Vec<String>,
        declared_metrics: &[String],
        limits: PluginLimits,
    ) -> Self {
        PluginShared {
            name,
            secrets,
            declared_secrets,
            kv: KvStore::default(),
            metrics: PluginMetrics::new(declared_metrics),
            limits,
            log_budget: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Write one line to the log if the plugin's budget allows.
    pub(crate) fn log(&self, level: host::LogLevel, message: &str) {
        {
            let mut budget = self.log_budget.lock();
            let now = Instant::now();
            if now.duration_since(budget.0) >= Duration::from_secs(1) {
                *budget = (now, 0);
            }
            if budget.1 >= self.limits.log_lines_per_sec {
                drop(budget);
                self.metrics.on_log_dropped();
                return;
            }
            budget.1 += 1;
        }
        let mut end = message.len().min(LOG_LINE_MAX);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = message.get(..end).unwrap_or_default();
        let plugin = self.name.as_str();
        match level {
            host::LogLevel::Trace => tracing::trace!(target: "relay::plugin", plugin, "{message}"),
            host::LogLevel::Debug => tracing::debug!(target: "relay::plugin", plugin, "{message}"),
            host::LogLevel::Info => tracing::info!(target: "relay::plugin", plugin, "{message}"),
            host::LogLevel::Warn => tracing::warn!(target: "relay::plugin", plugin, "{message}"),
            host::LogLevel::Error => tracing::error!(target: "relay::plugin", plugin, "{message}"),
        }
    }
}

/// The data of one instance's store.
pub(crate) struct HostState {
    shared: Arc<PluginShared>,
    config: Arc<str>,
    limits: StoreLimits,
    wasi: WasiCtx,
    table: ResourceTable,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    stdio_seen: [usize; 2],
}

impl HostState {
    /// A fresh state for an instance of `shared` with this item `config` (JSON).
    pub(crate) fn new(shared: Arc<PluginShared>, config: Arc<str>) -> Self {
        let stdout = MemoryOutputPipe::new(STDIO_CAPACITY);
        let stderr = MemoryOutputPipe::new(STDIO_CAPACITY);
        // Deny-all: the builder grants no directories, env, args or sockets by
        // default; name lookups and sockets are switched off explicitly as well.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(shared.limits.memory_bytes)
            .instances(32)
            .tables(32)
            .memories(8)
            .build();
        HostState {
            shared,
            config,
            limits,
            wasi,
            table: ResourceTable::new(),
            stdout,
            stderr,
            stdio_seen: [0, 0],
        }
    }

    /// The store limiter.
    pub(crate) fn limiter(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }

    /// Whether the captured stdout and stderr are both under half full (a warm
    /// instance whose pipes are fuller is not reused: its prints would be cut).
    pub(crate) fn stdio_room(&self) -> bool {
        self.stdio_seen.iter().all(|n| *n < STDIO_CAPACITY / 2)
    }

    /// Send what the guest printed since the last call to the log.
    pub(crate) fn flush_stdio(&mut self) {
        for (i, level) in [(0, host::LogLevel::Info), (1, host::LogLevel::Warn)] {
            let pipe = if i == 0 { &self.stdout } else { &self.stderr };
            let contents = pipe.contents();
            let seen = self.stdio_seen[i];
            let Some(new) = contents.get(seen..).filter(|b| !b.is_empty()) else {
                continue;
            };
            self.stdio_seen[i] = contents.len();
            let text = String::from_utf8_lossy(new);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                self.shared.log(level, line);
            }
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: host::LogLevel, message: String) {
        self.shared.log(level, &message);
    }

    fn config(&mut self) -> String {
        self.config.to_string()
    }

    fn secret(&mut self, name: String) -> Result<String, host::SecretError> {
        if !self.shared.declared_secrets.contains(&name) {
            tracing::warn!(
                target: "relay::plugin",
                plugin = %self.shared.name,
                secret = %name,
                "plugin asked for a secret it does not declare; refused"
            );
            return Err(host::SecretError::Undeclared);
        }
        self.shared
            .secrets
            .get(&name)
            .cloned()
            .ok_or(host::SecretError::Unset)
    }

    fn metric_add(&mut self, name: String, delta: u64) -> bool {
        self.shared.metrics.add(&name, delta)
    }

    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.shared.kv.get(&key)
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u32>) -> Result<(), kv::KvError> {
        self.shared.kv.set(&key, value, ttl_ms)
    }

    fn delete(&mut self, key: String) -> bool {
        self.shared.kv.delete(&key)
    }

    fn incr(&mut self, key: String, delta: i64, ttl_ms: Option<u32>) -> Result<i64, kv::KvError> {
        self.shared.kv.incr(&key, delta, ttl_ms)
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u32>,
    ) -> Result<bool, kv::KvError> {
        self.shared
            .kv
            .compare_and_swap(&key, expected.as_deref(), value, ttl_ms)
    }
}

impl crate::bindings::relay::plugin::types::Host for HostState {}
