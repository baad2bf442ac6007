//! The upstream client's connection pool against a real loopback server that counts its
//! connections and records what it was sent.

// Helpers outside `#[test]` functions panic on purpose too: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use relay_core::UpstreamClient;
use relay_core::config::UpstreamSettings;

/// How the test server answers: `/big` streams 1 MiB slowly, `/close` answers with
/// `Connection: close`, anything else a small body.
struct Server {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (a, h) = (accepted.clone(), heads.clone());
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(sock, h.clone()));
        }
    });
    Server {
        addr,
        accepted,
        heads,
    }
}

async fn serve(mut sock: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        // Read one request head (the test requests have no body).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        heads.lock().push(head);
        match path.as_str() {
            "/big" => {
                let chunk = vec![b'x'; 64 * 1024];
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                    16 * chunk.len()
                );
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..16 {
                    if sock.write_all(&chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            "/drop" => {
                // Looks reusable, then the server hangs up (its keep-alive timeout).
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                return;
            }
            "/linger" => {
                // Reusable, but the server hangs up 20 ms later while it is idle.
                if sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                return;
            }
            "/stream" => {
                // A chunked answer whose terminating chunk goes out with its last data.
                if sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                          e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n",
                    )
                    .await
                    .is_err()
                {
                    return;
                }
            }
            "/ten" => {
                // Head and body in one write: the body arrives with the head.
                if sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhelloworld")
                    .await
                    .is_err()
                {
                    return;
                }
            }
            "/close" => {
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                return;
            }
            _ => {
                if sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

fn client(idle_timeout_ms: u64) -> UpstreamClient {
    UpstreamClient::new(&UpstreamSettings {
        pool_idle_timeout_ms: idle_timeout_ms,
        ..UpstreamSettings::default()
    })
    .unwrap()
}

/// An empty POST to `path` on `addr`.
fn post(addr: std::net::SocketAddr, path: &str) -> http::Request<Bytes> {
    http::Request::post(format!("http://{addr}{path}"))
        .body(Bytes::new())
        .unwrap()
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn get(client: &UpstreamClient, server: &Server, path: &str) -> Bytes {
    let resp = client.send(post(server.addr, path)).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let server = server().await;
    let client = client(90_000);
    for _ in 0..20 {
        assert_eq!(get(&client, &server, "/v1/x?alt=sse").await, "hello");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    // HTTP/1.1 origin form on the request line, and a Host header.
    let heads = server.heads.lock();
    assert_eq!(heads.len(), 20);
    for head in heads.iter() {
        assert!(
            head.starts_with("POST /v1/x?alt=sse HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("host: {}\r\n", server.addr)),
            "{head}"
        );
    }
}

#[tokio::test]
async fn concurrent_requests_open_as_many_connections_then_reuse_them() {
    let server = server().await;
    let client = client(90_000);
    let all = (0..8).map(|_| get(&client, &server, "/"));
    futures::future::join_all(all).await;
    let opened = server.accepted.load(Ordering::SeqCst);
    assert_eq!(opened, 8);
    let all = (0..8).map(|_| get(&client, &server, "/"));
    futures::future::join_all(all).await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), 8);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let server = server().await;
    let client = client(90_000);
    let req = post(server.addr, "/big");
    let resp = client.send(req).await.unwrap();
    let mut body = resp.into_body();
    // One frame, then the reader goes away (a client that disconnected).
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop(body);
    // The next request cannot use the half-read connection.
    assert_eq!(get(&client, &server, "/").await, "hello");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    // A body read to its end gives its connection back.
    assert_eq!(get(&client, &server, "/big").await.len(), 1024 * 1024);
    assert_eq!(get(&client, &server, "/").await, "hello");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_stream_dropped_after_its_last_event_keeps_its_connection() {
    let server = server().await;
    let client = client(90_000);
    for _ in 0..5 {
        let req = post(server.addr, "/stream");
        let mut body = client.send(req).await.unwrap().into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap().as_ref(), b"data: [DONE]\n\n");
        // The reader stops at `[DONE]`, before the terminating chunk is read.
        drop(body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&client, &server, "/").await, "hello");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_dropped_unread_whose_rest_arrived_keeps_its_connection() {
    let server = server().await;
    let client = client(90_000);
    for _ in 0..5 {
        let resp = client.send(post(server.addr, "/ten")).await.unwrap();
        // Never read: the whole body came with the head, so the connection is clean.
        drop(resp);
    }
    assert_eq!(get(&client, &server, "/").await, "hello");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_server_closes_is_not_reused() {
    let server = server().await;
    let client = client(90_000);
    assert_eq!(get(&client, &server, "/close").await, "ok");
    // Give the connection task a moment to see the close.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(&client, &server, "/").await, "hello");
    assert_eq!(get(&client, &server, "/").await, "hello");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_on_a_connection_closed_under_it_goes_out_on_a_fresh_one() {
    let server = server().await;
    let client = client(90_000);
    // `/close` closes the connection right after its answer; ask again at once, before
    // the pool can have noticed.
    for _ in 0..10 {
        assert_eq!(get(&client, &server, "/close").await, "ok");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn a_connection_the_server_hung_up_on_is_replaced() {
    let server = server().await;
    let client = client(90_000);
    for i in 0..20 {
        assert_eq!(get(&client, &server, "/drop").await, "ok", "request {i}");
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 20);
}

#[test]
fn a_request_written_as_the_server_hangs_up_fails_retryably_and_the_connection_is_dropped() {
    // The server runs on its own thread. The client's runtime is blocked while the
    // server hangs up on the idle connection, so the connection still looks alive when
    // it is taken and the request is written before the close is seen. Like Go's
    // transport for a POST, the client does not replay a request that went out: it
    // reports a retryable I/O error (the engine's retry policy decides), and the dead
    // connection is never handed out again.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = current_thread_runtime();
        rt.block_on(async move {
            let server = server().await;
            tx.send((server.addr, server.accepted.clone())).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let (addr, accepted) = rx.recv().unwrap();
    let server = Server {
        addr,
        accepted,
        heads: Arc::default(),
    };
    let rt = current_thread_runtime();
    rt.block_on(async {
        let client = client(90_000);
        assert_eq!(get(&client, &server, "/linger").await, "ok");
        std::thread::sleep(Duration::from_millis(60));
        let req = post(server.addr, "/");
        match client.send(req).await {
            // The close was seen first after all: the request went out on a new one.
            Ok(resp) => assert_eq!(resp.status(), 200),
            Err(err) => {
                assert_eq!(err.kind(), relay_core::ErrorKind::UpstreamIo, "{err}");
                assert!(err.is_retryable(), "{err}");
            }
        }
        assert_eq!(get(&client, &server, "/").await, "hello");
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    });
}

#[tokio::test]
async fn idle_connections_expire() {
    let server = server().await;
    let client = client(100);
    assert_eq!(get(&client, &server, "/").await, "hello");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&client, &server, "/").await, "hello");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connect_failures_are_connect_errors() {
    // A port nothing listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let req = post(addr, "/");
    let err = client(90_000).send(req).await.unwrap_err();
    assert_eq!(err.kind(), relay_core::ErrorKind::Connect, "{err}");
    assert!(
        err.message().contains("cannot connect to upstream"),
        "{err}"
    );
}

/// `https` origins go through TLS: the server sees a TLS
/// handshake record, not an HTTP request line; other schemes are refused.
#[test]
fn https_origins_speak_tls_and_other_schemes_are_refused() {
    current_thread_runtime().block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let first = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut byte = [0u8; 1];
            sock.read_exact(&mut byte).await.unwrap();
            // Close without answering: the handshake fails on the client side.
            byte[0]
        });
        let client = client(1_000);
        let req = http::Request::post(format!("https://{addr}/v1/x"))
            .body(Bytes::new())
            .unwrap();
        let err = client.send(req).await.unwrap_err();
        // 0x16: the TLS record type of a handshake (the ClientHello).
        assert_eq!(first.await.unwrap(), 0x16);
        assert!(
            err.is_retryable(),
            "a failed TLS connect is retryable: {err}"
        );

        let req = http::Request::post(format!("ftp://{addr}/v1/x"))
            .body(Bytes::new())
            .unwrap();
        let err = client.send(req).await.unwrap_err();
        assert!(err.to_string().contains("scheme ftp"), "{err}");
    });
}
