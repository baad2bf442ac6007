//! Starting a gateway with a store: connect, migrate, seed from the config file, load
//! keys and prices, start the usage writer, build the gateway, watch for changes, start
//! the replica heartbeat and hold reconciler ([`super::upkeep`]), and open the admin
//! listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use relay_store::writer::PriceTable;
use relay_store::{Backend, MasterKey, SharedStore, UsageWriter, WriterConfig};

use super::Tenancy;
use crate::config::GatewayConfig;
use crate::keys::KeyCache;
use crate::server::Gateway;

/// Where the store is and how the admin API listens.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `postgres://...` or `sqlite://PATH`; `None`: the embedded SQLite default,
    /// `<config dir>/relay-data/<config stem>.db`.
    pub database_url: Option<String>,
    /// The config file (locates the embedded default and the spill directory).
    pub config_path: PathBuf,
    /// The admin API's address (loopback by default) and token; `None`: no admin API.
    pub admin: Option<(SocketAddr, String)>,
    /// Connections in the pool.
    pub max_connections: u32,
    /// The master key for channel credentials; `None`: from the environment (see
    /// [`open_store`]).
    pub master_key: Option<MasterKey>,
}

impl StoreOptions {
    /// The embedded default for `config_path`, no admin API.
    pub fn new(config_path: impl Into<PathBuf>) -> Self {
        StoreOptions {
            database_url: None,
            config_path: config_path.into(),
            admin: None,
            max_connections: 16,
            master_key: None,
        }
    }

    /// `<config dir>/relay-data`: the SQLite file, the spill file, the master key.
    pub fn data_dir(&self) -> PathBuf {
        self.config_path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("relay-data")
    }

    /// The database URL in force.
    pub fn url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            relay_store::store::default_sqlite_path(&self.config_path)
                .display()
                .to_string()
        })
    }
}

/// Connect and migrate; the master key from `RELAY_MASTER_KEY` / `RELAY_MASTER_KEY_FILE`
/// or, for the embedded SQLite default, `relay-data/master.key` (created when missing).
pub async fn open_store(opts: &StoreOptions) -> Result<SharedStore, String> {
    let url = opts.url();
    let store = relay_store::connect(&url, opts.max_connections)
        .await
        .map_err(|e| format!("cannot open the store ({}): {e}", redact(&url)))?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let default_key =
        (store.backend() == Backend::Sqlite).then(|| opts.data_dir().join("master.key"));
    let master = match &opts.master_key {
        Some(k) => Ok(k.clone()),
        None => tokio::task::spawn_blocking(move || MasterKey::load(default_key.as_deref()))
            .await
            .map_err(|e| e.to_string())?,
    };
    Ok(match master {
        Ok(key) => store.with_master_key(key),
        Err(e) => {
            tracing::warn!("{e}: channel credentials cannot be stored or read");
            store
        }
    })
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:****{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A gateway started with a store.
#[derive(Debug)]
pub struct Started {
    /// The gateway (serve it).
    pub gateway: Arc<Gateway>,
    /// Its tenancy layer.
    pub tenancy: Arc<Tenancy>,
    /// Where the admin API listens, if it does.
    pub admin_addr: Option<SocketAddr>,
}

/// Start a gateway whose channels, presets and keys live in the store, seeded from
/// `config`.
pub async fn start(config: &GatewayConfig, opts: &StoreOptions) -> Result<Started, String> {
    let store = open_store(opts).await?;
    let prices: PriceTable = Arc::default();
    let writer = UsageWriter::start(
        store.clone(),
        prices.clone(),
        WriterConfig::new(opts.data_dir().join("spill")),
    );
    let tenancy = Arc::new(Tenancy {
        store,
        replica: super::upkeep::Replica::new(),
        writer,
        keys: ArcSwap::from_pointee(KeyCache::default()),
        prices,
        holds: Mutex::new(Default::default()),
        hold_count: AtomicUsize::new(0),
        file: Mutex::new(config.clone()),
        version: AtomicI64::new(0),
    });
    tenancy.seed(config).await?;
    tenancy.reload_keys().await?;
    let version = tenancy
        .store
        .config_version()
        .await
        .map_err(|e| e.to_string())?;
    tenancy
        .version
        .store(version, std::sync::atomic::Ordering::Relaxed);
    let relay = tenancy.stored_relay_config().await?;
    let mut effective = config.clone();
    effective.channels = relay.channels;
    effective.presets = relay.presets;
    let gateway = Gateway::new(&effective, tenancy.clone())
        .await
        .map_err(|e| e.to_string())?;
    gateway.attach_tenancy(tenancy.clone());
    tenancy.spawn_watcher(gateway.clone());
    // Alive before the first reservation names this replica; then heartbeat and
    // reconcile the holds of gone replicas in the background.
    tenancy.heartbeat().await?;
    tenancy.spawn_upkeep();
    tracing::info!(
        backend = ?tenancy.store.backend(),
        replica = %tenancy.replica.id,
        keys = tenancy.keys().len(),
        "store ready"
    );
    let admin_addr = match &opts.admin {
        Some((addr, token)) => {
            Some(crate::admin::spawn(gateway.clone(), tenancy.clone(), *addr, token.clone()).await?)
        }
        None => None,
    };
    Ok(Started {
        gateway,
        tenancy,
        admin_addr,
    })
}
