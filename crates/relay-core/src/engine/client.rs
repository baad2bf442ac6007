//! The shared upstream HTTP client: pooled keep-alive connections, TCP_NODELAY, rustls.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamSettings;
use crate::error::{ErrorKind, RelayError, Side};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pooled HTTP/1.1 client for upstream calls (http and https).
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    inner: Client<Connector, Full<Bytes>>,
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

        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(settings.pool_idle_timeout_ms))
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .build(connector);
        Ok(UpstreamClient { inner })
    }

    /// Send one request; connect failures and I/O errors become retryable relay errors.
    pub async fn send(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<Incoming>, RelayError> {
        let req = req.map(Full::new);
        self.inner.request(req).await.map_err(|e| {
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
