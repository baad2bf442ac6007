//! One connection and one request: timing every stage of the answer.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::Ctx;
use crate::sse::Scanner;

/// A keep-alive HTTP/1.1 connection's request handle.
pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Opens a connection with `TCP_NODELAY`.
pub(crate) async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        // The connection ends when the sender is dropped or the peer closes.
        let _ = conn.await;
    });
    Ok(sender)
}

/// What happened to one request.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// When it should have started (open loop: the schedule) or started.
    pub(crate) start: Instant,
    /// When it was handed to the connection.
    pub(crate) sent: Instant,
    /// The response head arrived.
    pub(crate) headers: Option<Instant>,
    /// The first content frame (SSE) or the first body bytes arrived.
    pub(crate) first: Option<Instant>,
    /// The body ended (or the request failed).
    pub(crate) end: Instant,
    /// HTTP status.
    pub(crate) status: Option<u16>,
    /// SSE events received.
    pub(crate) events: u64,
    /// Gaps between consecutive content frames, ns.
    pub(crate) gaps_ns: Vec<u64>,
    /// Transit time of stamped content frames, ns.
    pub(crate) transits_ns: Vec<u64>,
    /// Body bytes.
    pub(crate) bytes: u64,
    /// The answer was an SSE stream.
    pub(crate) sse: bool,
    /// Failure kind and message.
    pub(crate) error: Option<(&'static str, String)>,
    /// The connection cannot be reused.
    pub(crate) broken: bool,
}

impl Outcome {
    fn new(start: Instant) -> Outcome {
        let now = Instant::now();
        Outcome {
            start,
            sent: now,
            headers: None,
            first: None,
            end: now,
            status: None,
            events: 0,
            gaps_ns: Vec::new(),
            transits_ns: Vec::new(),
            bytes: 0,
            sse: false,
            error: None,
            broken: false,
        }
    }

    /// A request that failed before it was sent.
    pub(crate) fn failed(start: Instant, kind: &'static str, message: String) -> Outcome {
        let mut o = Outcome::new(start);
        o.error = Some((kind, message));
        o.broken = true;
        o
    }

    fn fail(&mut self, kind: &'static str, message: String) {
        self.end = Instant::now();
        self.error = Some((kind, message));
        self.broken = true;
    }
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Sends one request on `sender` and reads the whole answer.
pub(crate) async fn send(sender: &mut Sender, ctx: &Ctx, start: Instant) -> Outcome {
    let mut outcome = Outcome::new(start);
    match tokio::time::timeout(ctx.timeout, exchange(sender, ctx, &mut outcome)).await {
        Ok(()) => {}
        Err(_) => outcome.fail(
            "timeout",
            format!("no complete answer in {:?}", ctx.timeout),
        ),
    }
    outcome
}

async fn exchange(sender: &mut Sender, ctx: &Ctx, o: &mut Outcome) {
    if let Err(e) = sender.ready().await {
        return o.fail("connection", e.to_string());
    }
    let mut req = Request::new(Full::new(ctx.body.clone()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = ctx.uri.clone();
    *req.headers_mut() = ctx.headers.clone();
    o.sent = Instant::now();
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return o.fail("send", e.to_string()),
    };
    o.headers = Some(Instant::now());
    o.status = Some(resp.status().as_u16());
    o.sse = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = resp.into_body();
    let mut scanner = Scanner::default();
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return o.fail("body", e.to_string()),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let at = Instant::now();
                o.bytes += data.len() as u64;
                if o.sse {
                    scanner.feed(&data, at, wall_ns(), o);
                } else if o.first.is_none() && !data.is_empty() {
                    o.first = Some(at);
                }
            }
        }
    }
    o.end = Instant::now();
}
