//! The upstream HTTP client: pooled keep-alive connections, TCP_NODELAY, rustls.
//!
//! Each thread gets its own pool: a connection's I/O task runs on the runtime that
//! opened it, so with one single-threaded runtime per worker (the gateway's model) a
//! request and its upstream connection never wake another thread.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use thread_local::ThreadLocal;

use crate::config::UpstreamSettings;
use crate::error::{ErrorKind, RelayError, Side};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

type PooledClient = Client<Connector, Full<Bytes>>;

/// A pooled HTTP/1.1 client for upstream calls (http and https), one pool per thread.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    connector: Connector,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    pools: Arc<ThreadLocal<PooledClient>>,
}

impl UpstreamClient {
    /// Build a client from the settings.
    pub fn new(settings: &UpstreamSettings) -> Result<Self, RelayError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| RelayError::internal(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);

        Ok(UpstreamClient {
            connector,
            pool_idle_timeout: Duration::from_millis(settings.pool_idle_timeout_ms),
            pool_max_idle_per_host: settings.pool_max_idle_per_host,
            pools: Arc::new(ThreadLocal::new()),
        })
    }

    /// This thread's pool, built on first use.
    fn pool(&self) -> &PooledClient {
        self.pools.get_or(|| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(self.pool_idle_timeout)
                .pool_max_idle_per_host(self.pool_max_idle_per_host)
                .build(self.connector.clone())
        })
    }

    /// Send one request; connect failures and I/O errors become retryable relay errors.
    pub async fn send(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<Incoming>, RelayError> {
        let req = req.map(Full::new);
        self.pool().request(req).await.map_err(|e| {
            if e.is_connect() {
                RelayError::new(
                    ErrorKind::Connect,
                    Side::Upstream,
                    format!("cannot connect to upstream: {}", source_chain(&e)),
                )
            } else {
                RelayError::new(
                    ErrorKind::UpstreamIo,
                    Side::Upstream,
                    format!("upstream connection failed: {}", source_chain(&e)),
                )
            }
        })
    }
}

/// An error and its sources on one line (hyper's Display alone says little).
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}
