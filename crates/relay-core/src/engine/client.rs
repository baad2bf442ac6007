//! The upstream HTTP client: pooled keep-alive HTTP/1.1 connections, TCP_NODELAY, rustls.
//!
//! Each thread gets its own pool ([`super::pool`]): a connection's I/O task runs on the
//! runtime that opened it, so with one single-threaded runtime per worker (the gateway's
//! model) a request and its upstream connection never wake another thread. Connections
//! are `hyper::client::conn::http1` senders lent out one request at a time; the response
//! body returns its connection when it has been read to the end.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http::header::HOST;
use http::uri::{PathAndQuery, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use thread_local::ThreadLocal;
use tower_service::Service;

use super::pool::{Lease, Origin, Pool, Sender, UpstreamBody};
use super::upstream_io::UpstreamIo;
use crate::config::UpstreamSettings;
use crate::error::{ErrorKind, RelayError, Side};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pooled HTTP/1.1 client for upstream calls (http and https), one pool per thread.
#[derive(Clone)]
pub struct UpstreamClient {
    connector: Connector,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    pools: Arc<ThreadLocal<Arc<Pool>>>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Build a client from the settings.
    pub fn new(settings: &UpstreamSettings) -> Result<Self, RelayError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &settings.ca_file {
            add_ca_file(&mut roots, path)?;
        }
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
    fn pool(&self) -> &Arc<Pool> {
        self.pools
            .get_or(|| Pool::new(self.pool_idle_timeout, self.pool_max_idle_per_host))
    }

    /// Send one request (absolute URI); connect failures and I/O errors become retryable
    /// relay errors.
    pub async fn send(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<UpstreamBody>, RelayError> {
        let (mut parts, body) = req.into_parts();
        let origin = match (parts.uri.scheme(), parts.uri.authority()) {
            (Some(scheme), Some(authority)) => Origin {
                scheme: scheme.clone(),
                authority: authority.clone(),
            },
            _ => {
                return Err(RelayError::internal(format!(
                    "upstream URL `{}` has no scheme or host",
                    parts.uri
                )));
            }
        };
        let pool = self.pool();
        let (idle, host) = pool.take(&origin);
        // HTTP/1.1 wants the origin form on the request line, and a Host header.
        let target = parts.uri.path_and_query().cloned();
        parts.uri = Uri::from(target.unwrap_or_else(|| PathAndQuery::from_static("/")));
        parts.headers.entry(HOST).or_insert(host);
        let mut req = http::Request::from_parts(parts, Full::new(body));

        // A pooled connection first; if it turns out to be closing before the request
        // went out, the request goes on a fresh one.
        if let Some(mut sender) = idle {
            if sender.is_ready() || sender.ready().await.is_ok() {
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok(leased(resp, pool, origin, sender)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(io_error(&e.into_error())),
                    },
                }
            }
        }
        // Boxed: a new connection is the cold path, and its future (the connector's,
        // 1.3 KiB) would otherwise sit inline in every request's future, which is moved
        // into its box once per request.
        let mut sender = Box::pin(self.connect(&origin)).await?;
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(leased(resp, pool, origin, sender)),
            Err(e) => Err(io_error(&e.into_error())),
        }
    }

    /// Open a new connection to `origin` and start its I/O task on this runtime.
    async fn connect(&self, origin: &Origin) -> Result<Sender, RelayError> {
        let uri = Uri::builder()
            .scheme(origin.scheme.clone())
            .authority(origin.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| RelayError::internal(format!("upstream URL: {e}")))?;
        let connect_error = |e: &dyn std::error::Error| {
            RelayError::new(
                ErrorKind::Connect,
                Side::Upstream,
                format!("cannot connect to upstream: {}", source_chain(e)),
            )
        };
        let mut connector = self.connector.clone();
        let io = connector.call(uri).await.map_err(|e| connect_error(&*e))?;
        let io = UpstreamIo::from(io);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| connect_error(&e))?;
        // A combinator, not `async move { conn.await }`: an async block keeps the
        // captured connection and the awaited one in separate slots, and this task
        // lives as long as the connection (1.7 KiB more per connection, measured with
        // `-Zprint-type-sizes`).
        tokio::spawn(conn.map(|ended| {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        }));
        Ok(sender)
    }
}

/// Trust the CA certificates of a PEM file too.
fn add_ca_file(
    roots: &mut rustls::RootCertStore,
    path: &std::path::Path,
) -> Result<(), RelayError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad =
        |why: String| RelayError::internal(format!("upstream.ca_file {}: {why}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".to_owned()));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(())
}

fn leased(
    resp: http::Response<hyper::body::Incoming>,
    pool: &Arc<Pool>,
    origin: Origin,
    sender: Sender,
) -> http::Response<UpstreamBody> {
    let lease = Box::new(Lease {
        pool: Arc::clone(pool),
        origin,
        sender,
    });
    resp.map(|body| UpstreamBody::new(body, lease))
}

fn io_error(e: &hyper::Error) -> RelayError {
    RelayError::new(
        ErrorKind::UpstreamIo,
        Side::Upstream,
        format!("upstream connection failed: {}", source_chain(e)),
    )
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
