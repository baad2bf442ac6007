//! The upstream HTTP client: pooled keep-alive HTTP/1.1 connections, TCP_NODELAY, rustls.
//!
//! Each thread gets its own pool ([`super::pool`]): a connection's socket is registered
//! with the runtime that opened it, so with one single-threaded runtime per worker (the
//! gateway's model) a request and its upstream connection never wake another thread.
//! Connections ([`super::http1`]) are lent out one request at a time: the request's own
//! future writes the request and reads the head, the response body reads the rest and
//! returns the connection when it has been read to the end. Connecting (DNS, TCP, TLS)
//! is hyper-util's `HttpConnector` under hyper-rustls.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use thread_local::ThreadLocal;
use tower_service::Service;

use super::http1::{self, Conn};
use super::pool::{Lease, Origin, Pool, UpstreamBody};
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
        let (parts, body) = req.into_parts();
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
        // HTTP/1.1: the origin form on the request line, a Host header.
        let head = http1::encode_request(&parts, &host, &body);
        let rest: &[u8] = if http1::body_inlined(&body) {
            &[]
        } else {
            &body
        };

        // A pooled connection first. If writing to it fails, it was closed while idle
        // and the request did not go out: it goes out on a fresh connection. Once
        // written, a request is never sent again here (the engine's retry policy
        // decides), as Go's transport does for a POST.
        let mut conn = match idle {
            Some(mut conn) => match conn.write_request(&head, rest).await {
                Ok(()) => conn,
                Err(_) => self.fresh(&origin, &head, rest).await?,
            },
            None => self.fresh(&origin, &head, rest).await?,
        };
        let response = conn.read_head().await.map_err(|e| io_error(&e))?;
        let decoder = response.framing(&parts.method).map_err(|e| {
            RelayError::new(ErrorKind::UpstreamProtocol, Side::Upstream, e.to_string())
        })?;
        let reusable = response.keep_alive()
            && decoder != http1::Decoder::Eof
            && !http1::connection_has(&parts.headers, b"close");
        let body = UpstreamBody::new(Box::new(Lease {
            conn,
            decoder,
            reusable,
            pool: Arc::clone(pool),
            origin,
        }));
        let mut resp = http::Response::new(body);
        *resp.status_mut() = response.status;
        *resp.version_mut() = response.version;
        *resp.headers_mut() = response.headers;
        Ok(resp)
    }

    /// A new connection with the request written on it. Boxed: the connector's future
    /// (1.3 KiB) would otherwise sit inline in every request's future.
    async fn fresh(&self, origin: &Origin, head: &[u8], rest: &[u8]) -> Result<Conn, RelayError> {
        let mut conn = Box::pin(self.connect(origin)).await?;
        conn.write_request(head, rest)
            .await
            .map_err(|e| io_error(&e))?;
        Ok(conn)
    }

    /// Open a new connection to `origin` (TCP_NODELAY; TLS for `https`).
    async fn connect(&self, origin: &Origin) -> Result<Conn, RelayError> {
        let uri = Uri::builder()
            .scheme(origin.scheme.clone())
            .authority(origin.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| RelayError::internal(format!("upstream URL: {e}")))?;
        let mut connector = self.connector.clone();
        let io = connector.call(uri).await.map_err(|e| {
            RelayError::new(
                ErrorKind::Connect,
                Side::Upstream,
                format!("cannot connect to upstream: {}", source_chain(&*e)),
            )
        })?;
        Ok(Conn::new(UpstreamIo::from(io)))
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

fn io_error(e: &std::io::Error) -> RelayError {
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
