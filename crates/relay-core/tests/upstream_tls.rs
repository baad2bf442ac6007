//! `https` upstreams end to end over loopback: a TLS server with a certificate from a
//! private CA (`upstream.ca_file`), the relay's upstream client in front of it.

// Helpers outside `#[test]` functions panic on purpose too: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::BodyExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use relay_core::UpstreamClient;
use relay_core::config::UpstreamSettings;

struct TlsServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    ca_pem: String,
}

/// A keep-alive HTTPS server for `localhost` that answers every request with `hello`.
async fn tls_server() -> TlsServer {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request head (the client's POSTs have empty bodies).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                    if tls.write_all(answer).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    TlsServer {
        port,
        accepted,
        ca_pem: certified.cert.pem(),
    }
}

fn post(port: u16) -> http::Request<Bytes> {
    http::Request::post(format!("https://localhost:{port}/v1/chat/completions"))
        .body(Bytes::new())
        .unwrap()
}

fn ca_file(pem: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "relay-upstream-ca-{}-{}.pem",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::write(&path, pem).unwrap();
    path
}

#[tokio::test]
async fn a_private_ca_upstream_is_served_over_tls_on_one_connection() {
    let server = tls_server().await;
    let path = ca_file(&server.ca_pem);
    let client = UpstreamClient::new(&UpstreamSettings {
        ca_file: Some(path.clone()),
        ..UpstreamSettings::default()
    })
    .unwrap();
    for _ in 0..5 {
        let resp = client.send(post(server.port)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
    }
    // The TLS connection went back to the pool and was reused.
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn without_the_ca_the_certificate_is_refused() {
    let server = tls_server().await;
    let client = UpstreamClient::new(&UpstreamSettings::default()).unwrap();
    let err = client.send(post(server.port)).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cannot connect to upstream"), "{text}");
    assert!(text.to_ascii_lowercase().contains("certificate"), "{text}");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn a_ca_file_without_certificates_is_a_clear_error() {
    let path = ca_file("not a certificate\n");
    let err = UpstreamClient::new(&UpstreamSettings {
        ca_file: Some(path.clone()),
        ..UpstreamSettings::default()
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("upstream.ca_file"), "{text}");
    assert!(text.contains("no certificate"), "{text}");
    let _ = std::fs::remove_file(path);
    let missing = UpstreamClient::new(&UpstreamSettings {
        ca_file: Some("/nonexistent/relay-ca.pem".into()),
        ..UpstreamSettings::default()
    })
    .unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/relay-ca.pem"),
        "{missing}"
    );
}
