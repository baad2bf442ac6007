//! Config from the store: rebuild the relay config, keys and prices, validate, apply;
//! watch for changes (Postgres `LISTEN`, and polling of `config_version` on both
//! backends) so every replica on the database follows.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use relay_core::{ChannelConfig, PresetConfig, RelayConfig};
use relay_store::{Backend, Seed};

use super::Tenancy;
use crate::config::GatewayConfig;
use crate::keys::KeyCache;
use crate::server::Gateway;

/// How often `config_version` is polled (every backend), and key balances refreshed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(1000);
/// How often key balances are refreshed from the store when nothing changed.
pub const BALANCE_REFRESH: Duration = Duration::from_secs(5);

impl Tenancy {
    /// The relay config for these channels and presets, with the file's defaults and
    /// upstream settings.
    pub fn relay_config(
        &self,
        channels: Vec<ChannelConfig>,
        presets: Vec<PresetConfig>,
    ) -> RelayConfig {
        let file = self.file.lock();
        RelayConfig {
            channels,
            presets,
            defaults: file.defaults.clone(),
            upstream: file.upstream.clone(),
        }
    }

    /// Check a candidate config; every problem is listed.
    pub fn validate(
        &self,
        channels: Vec<ChannelConfig>,
        presets: Vec<PresetConfig>,
    ) -> Result<(), Vec<String>> {
        crate::admin::ops::validate_relay(self.relay_config(channels, presets))
    }

    /// The relay config as stored now.
    pub async fn stored_relay_config(&self) -> Result<RelayConfig, String> {
        let channels = self.store.channels().await.map_err(|e| e.to_string())?;
        let presets = self.store.presets().await.map_err(|e| e.to_string())?;
        Ok(self.relay_config(
            channels.into_iter().map(|c| c.config).collect(),
            presets.into_iter().map(|p| p.config).collect(),
        ))
    }

    /// Reload keys and prices from the store.
    pub async fn reload_keys(&self) -> Result<(), String> {
        let keys = self.store.keys().await.map_err(|e| e.to_string())?;
        let prices = self.store.prices().await.map_err(|e| e.to_string())?;
        let cache = KeyCache::build(keys, Some(&self.keys.load()));
        self.keys.store(Arc::new(cache));
        self.prices.store(Arc::new(prices.into_iter().collect()));
        Ok(())
    }

    /// Apply what the store holds: channels and presets (a bad config is refused and the
    /// last good one keeps serving), keys and prices.
    pub async fn reload(&self, gateway: &Gateway) -> Result<(), String> {
        let version = self
            .store
            .config_version()
            .await
            .map_err(|e| e.to_string())?;
        self.reload_keys().await?;
        let relay = self.stored_relay_config().await?;
        self.version.store(version, Ordering::Relaxed);
        gateway.reload_relay(relay).await.map_err(|e| {
            format!("the stored config was refused; the previous one keeps serving: {e}")
        })
    }

    /// Seed the store from the config file (at start and on SIGHUP).
    pub async fn seed(&self, config: &GatewayConfig) -> Result<(), String> {
        let seed = seed_of(config)?;
        let report = self.store.seed(&seed).await.map_err(|e| e.to_string())?;
        for row in &report.kept_admin {
            tracing::warn!(row = %row, "the config file names a row created through the admin API; the admin's version is kept");
        }
        for row in &report.removed {
            tracing::info!(row = %row, "config-owned row removed: no longer in the config file");
        }
        *self.file.lock() = config.clone();
        Ok(())
    }

    /// Follow the store: reload when `config_version` moves (Postgres also wakes on
    /// `NOTIFY`), and refresh key balances now and then.
    pub fn spawn_watcher(self: &Arc<Self>, gateway: Arc<Gateway>) {
        let wake = Arc::new(tokio::sync::Notify::new());
        if self.store.backend() == Backend::Postgres {
            let url = self.store.url().to_owned();
            let wake = wake.clone();
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    if weak.upgrade().is_none() {
                        return;
                    }
                    match sqlx::postgres::PgListener::connect(&url).await {
                        Ok(mut listener) => {
                            if listener
                                .listen(relay_store::store::NOTIFY_CHANNEL)
                                .await
                                .is_ok()
                            {
                                while listener.recv().await.is_ok() {
                                    wake.notify_one();
                                }
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "LISTEN connection failed; polling meanwhile")
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut since_refresh = Duration::ZERO;
            loop {
                let _ = tokio::time::timeout(POLL_INTERVAL, wake.notified()).await;
                since_refresh += POLL_INTERVAL;
                let Some(t) = weak.upgrade() else { return };
                let Ok(version) = t.store.config_version().await else {
                    continue;
                };
                if version != t.version.load(Ordering::Relaxed) {
                    match t.reload(&gateway).await {
                        Ok(()) => tracing::info!(version, "config reloaded from the store"),
                        Err(e) => {
                            // Do not retry the same bad version in a loop.
                            t.version.store(version, Ordering::Relaxed);
                            tracing::error!("{e}");
                        }
                    }
                    since_refresh = Duration::ZERO;
                } else if since_refresh >= BALANCE_REFRESH {
                    since_refresh = Duration::ZERO;
                    if let Err(e) = t.reload_keys().await {
                        tracing::debug!(error = %e, "key balance refresh failed");
                    }
                }
            }
        });
    }
}

/// What the config file contributes: channels, presets, and keys as digests.
pub fn seed_of(config: &GatewayConfig) -> Result<Seed, String> {
    crate::auth::KeyStore::from_config(&config.keys)
        .map_err(|p| format!("invalid keys:\n  - {}", p.join("\n  - ")))?;
    let keys = config
        .keys
        .iter()
        .map(|k| {
            let sha = match (&k.key, &k.key_sha256) {
                (Some(key), _) => hex::encode(crate::auth::digest(key)),
                (None, Some(sha)) => sha.trim().to_ascii_lowercase(),
                (None, None) => String::new(),
            };
            (k.name.clone(), sha)
        })
        .collect();
    Ok(Seed {
        channels: config.channels.clone(),
        presets: config.presets.clone(),
        keys,
    })
}
