//! The gateway: state, the accept loop, graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::FutureExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use relay_adapters::CodecClient;
use relay_adapters::openai::OpenAiDialect;
use relay_core::{BuildError, DialectId, Relay, RelayConfig, UsageSink};
use relay_mock::{Behavior, MockServer};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::auth::KeyStore;
use crate::config::{GatewayConfig, ServerConfig};
use crate::routes;
use crate::usage_log::LogSink;

/// The gateway could not start (or reload).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The relay config is invalid.
    #[error(transparent)]
    Relay(#[from] BuildError),
    /// The key list is invalid.
    #[error("invalid keys:\n  - {}", .0.join("\n  - "))]
    Keys(Vec<String>),
    /// A plugin could not be loaded.
    #[error("{0}")]
    Plugins(String),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Shared gateway state.
pub struct Gateway {
    relay: Relay,
    keys: ArcSwap<KeyStore>,
    server: ServerConfig,
    openai: OpenAiDialect,
    anthropic: Option<CodecClient>,
    gemini: Option<CodecClient>,
    /// Built-in mock upstreams, by channel id (`provider = "mock"` without a base_url).
    mocks: Mutex<HashMap<String, MockServer>>,
    /// Client connection slots (`server.max_connections`), shared by every worker.
    slots: Arc<tokio::sync::Semaphore>,
    /// Keys, limits, quotas and the store, when the gateway runs with a database.
    tenancy: std::sync::OnceLock<Arc<crate::tenancy::Tenancy>>,
    /// The plugin host, when plugins are on and registered.
    plugins: Option<relay_plugin_api::PluginHost>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("relay", &self.relay)
            .finish()
    }
}

/// The quick start's mock: a short answer, paced so streaming is visible.
fn builtin_mock_behavior() -> Behavior {
    Behavior {
        tokens: 24,
        chunk_interval: Duration::from_millis(20),
        ..Behavior::default()
    }
}

impl Gateway {
    /// Build the gateway from its config, starting built-in mock upstreams as needed.
    pub async fn new(
        config: &GatewayConfig,
        sink: Arc<dyn UsageSink>,
    ) -> Result<Arc<Gateway>, StartError> {
        let keys = KeyStore::from_config(&config.keys).map_err(StartError::Keys)?;
        let mocks = Mutex::new(HashMap::new());
        let relay_config = with_builtin_mocks(config.relay_config(), &mocks).await?;
        let mut builder = Relay::builder(relay_config)
            .adapters(relay_adapters::default_registry())
            .usage_sink(Arc::new(LogSink::new(sink)));
        let plugins = config.plugins.start().map_err(StartError::Plugins)?;
        if let Some(host) = &plugins {
            builder = builder.plugins(Arc::new(host.clone()));
        }
        let relay = builder.build()?;
        if keys.is_empty() {
            tracing::warn!("no API keys configured: every relay request will get 401");
        }
        let codecs = relay_adapters::default_codecs();
        let client = |d| codecs.get(d).map(|c| CodecClient::new(c.clone()));
        Ok(Arc::new(Gateway {
            relay,
            keys: ArcSwap::from_pointee(keys),
            server: config.server.clone(),
            openai: OpenAiDialect,
            anthropic: client(DialectId::ANTHROPIC_MESSAGES),
            gemini: client(DialectId::GEMINI),
            mocks,
            slots: Arc::new(tokio::sync::Semaphore::new(
                config.server.max_connections.max(1),
            )),
            tenancy: std::sync::OnceLock::new(),
            plugins,
        }))
    }

    /// Apply a new config (channels, presets, keys). A bad one is refused whole and the
    /// current one keeps serving. Server settings need a restart.
    pub async fn reload(&self, config: &GatewayConfig) -> Result<(), StartError> {
        let keys = KeyStore::from_config(&config.keys).map_err(StartError::Keys)?;
        let relay_config = with_builtin_mocks(config.relay_config(), &self.mocks).await?;
        self.relay
            .reload(&relay_config)
            .map_err(|e| StartError::Relay(e.into()))?;
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    /// Swap in a new relay config (channels, presets) and leave the keys alone; for
    /// changes that come from the store. A bad config is refused whole.
    pub async fn reload_relay(&self, config: RelayConfig) -> Result<(), StartError> {
        let relay_config = with_builtin_mocks(config, &self.mocks).await?;
        self.relay
            .reload(&relay_config)
            .map_err(|e| StartError::Relay(e.into()))
    }

    /// Attach the tenancy layer (keys, limits, quotas from the store); once.
    pub fn attach_tenancy(&self, tenancy: Arc<crate::tenancy::Tenancy>) {
        let _ = self.tenancy.set(tenancy);
    }

    /// The plugins' metrics in the Prometheus text format (empty without plugins).
    pub fn plugin_metrics(&self) -> String {
        self.plugins
            .as_ref()
            .map(relay_plugin_api::PluginHost::prometheus)
            .unwrap_or_default()
    }

    /// The tenancy layer, when the gateway runs with a store.
    pub fn tenancy(&self) -> Option<&Arc<crate::tenancy::Tenancy>> {
        self.tenancy.get()
    }

    /// The relay engine.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// The key store in force.
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeyStore>> {
        self.keys.load()
    }

    /// The OpenAI client dialect.
    pub fn openai_dialect(&self) -> &OpenAiDialect {
        &self.openai
    }

    /// The Anthropic Messages client dialect, if its codec is built in.
    pub fn anthropic_dialect(&self) -> Option<&CodecClient> {
        self.anthropic.as_ref()
    }

    /// The Gemini client dialect, if its codec is built in.
    pub fn gemini_dialect(&self) -> Option<&CodecClient> {
        self.gemini.as_ref()
    }

    /// Request body limit.
    pub fn max_body_bytes(&self) -> usize {
        self.server.max_body_bytes
    }

    /// Request body read timeout.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.server.body_timeout_ms)
    }

    /// Serve on `listener` until `shutdown` resolves, then stop accepting and let
    /// in-flight requests and streams finish (up to the drain timeout).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(self.server.header_timeout_ms))
            .keep_alive(true)
            .max_buf_size(256 * 1024);
        tokio::pin!(shutdown);
        let slots = self.slots.clone();
        loop {
            // At the connection limit, stop accepting until one closes.
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "set_nodelay failed");
                    }
                    let gw = self.clone();
                    let service = service_fn(move |req| {
                        let gw = gw.clone();
                        // Boxed: hyper keeps a slot the size of the service's future for
                        // the connection's whole life (about 6.5 KiB of it). Boxed, the
                        // slot is one pointer and the request's state is freed once the
                        // response head is out, so an open stream or an idle keep-alive
                        // connection does not hold it.
                        Box::pin(async move {
                            let request_id = routes::new_request_id();
                            let span = tracing::info_span!("request", id = %request_id);
                            let header = routes::request_id_header(&request_id);
                            let mut resp = routes::handle(&gw, req, request_id).instrument(span).await;
                            routes::tag(&mut resp, header);
                            Ok::<_, Infallible>(resp)
                        })
                    });
                    let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    // A combinator, not `async move { conn.await }`, which would keep
                    // the connection twice (captured and awaited) for its whole life.
                    tokio::spawn(conn.map(move |ended| {
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        drop(slot);
                    }));
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!("shutting down: draining in-flight requests");
        let drain = Duration::from_millis(self.server.drain_timeout_ms);
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections drained"),
            () = tokio::time::sleep(drain) => tracing::warn!("drain timeout reached; closing the remaining connections"),
        }
        Ok(())
    }

    /// Bind `addr` and serve in a background task; for tests and embedding.
    pub async fn spawn(self: Arc<Self>, addr: SocketAddr) -> Result<RunningGateway, StartError> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(listener, async move {
            let _ = rx.await;
        }));
        Ok(RunningGateway {
            addr,
            stop: Some(tx),
            task,
        })
    }
}

/// A gateway serving in the background.
#[derive(Debug)]
pub struct RunningGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningGateway {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting, drain, and wait for the server task.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Point `provider = "mock"` channels without a base_url at a built-in mock upstream,
/// started on loopback (one per channel, kept across reloads).
async fn with_builtin_mocks(
    mut config: RelayConfig,
    mocks: &Mutex<HashMap<String, MockServer>>,
) -> std::io::Result<RelayConfig> {
    for ch in config
        .channels
        .iter_mut()
        .filter(|c| c.provider == "mock" && c.base_url.is_none())
    {
        let existing = mocks.lock().get(&ch.id).map(MockServer::base_url);
        let url = match existing {
            Some(url) => url,
            None => {
                let server = MockServer::start(builtin_mock_behavior()).await?;
                let url = server.base_url();
                tracing::info!(channel = %ch.id, %url, "started the built-in mock upstream");
                mocks.lock().insert(ch.id.clone(), server);
                url
            }
        };
        ch.base_url = Some(url);
        ch.allow_private_network = true;
    }
    Ok(config)
}
