//! `relay-mock`: an in-tree mock LLM upstream speaking three API dialects:
//! OpenAI Chat Completions, Anthropic Messages and Gemini
//! `generateContent`.
//!
//! Relay's integration tests, benchmarks and the gateway quick start use it
//! as the upstream. It speaks real HTTP/1.1 over TCP (hyper 1, keep-alive,
//! `TCP_NODELAY` on every accepted socket) and pre-renders every response
//! into one buffer, so it keeps up with tens of thousands of requests per
//! second.
//!
//! Every dialect answers with the same deterministic words ("Hello from the
//! relay mock upstream. ..."), one token per word, and counts prompt tokens
//! as `ceil(chars / 4)` of the request's text. Credentials (`authorization`,
//! `x-api-key`, `x-goog-api-key`, `?key=`) are never checked, only
//! recorded (see [`MockServer::requests`]).
//!
//! # Routes
//!
//! OpenAI (base URL [`MockServer::base_url`], `http://HOST:PORT/v1`):
//!
//! * `POST /v1/chat/completions`: JSON completions, SSE streams (with
//!   `stream_options.include_usage`), and parallel tool calls when the
//!   request carries `tools`.
//! * `POST /v1/embeddings`: deterministic unit vectors derived from the
//!   input text (`dimensions` honoured, default 8; `encoding_format:
//!   "base64"` supported).
//! * `GET /v1/models`: lists `mock-model`.
//!
//! Anthropic Messages (base URL [`MockServer::origin`]):
//!
//! * `POST /v1/messages`: a `message` object, or with `"stream": true`
//!   Anthropic's SSE event sequence (`message_start`, `ping`,
//!   `content_block_start` / `content_block_delta` / `content_block_stop`
//!   per block, `message_delta`, `message_stop`). `thinking: {"type":
//!   "enabled"}` adds a leading thinking block (it counts 3 output tokens);
//!   `tools` (`input_schema`) yield `tool_use` blocks, streamed as
//!   `input_json_delta` fragments, unless the last message carries a
//!   `tool_result`. Errors are `{"type":"error","error":{"type":..,
//!   "message":..}}` (`rate_limit_error` for 429, `overloaded_error` for 529,
//!   `api_error` for other 5xx, ...).
//! * `POST /v1/messages/count_tokens`: `{"input_tokens": N}`.
//!
//! Gemini (base URL [`MockServer::origin`]; every route also under `/v1/`):
//!
//! * `POST /v1beta/models/{model}:generateContent`: a
//!   `GenerateContentResponse`; `modelVersion` echoes `{model}`.
//!   `functionDeclarations` yield whole `functionCall` parts unless the last
//!   content carries a `functionResponse`.
//! * `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`:
//!   `data: <chunk>\r\n\r\n` frames, one text part per token (function
//!   calls whole in one chunk); the last chunk carries `finishReason` and the
//!   full `usageMetadata`, earlier ones `promptTokenCount` only; no `[DONE]`.
//!   Without `alt=sse`: the same chunks as a streamed JSON array.
//! * `POST /v1beta/models/{model}:countTokens`: `{"totalTokens": N}`.
//! * Errors are `{"error":{"code":..,"message":..,"status":..}}`
//!   (`RESOURCE_EXHAUSTED` for 429, `UNAVAILABLE` for 503, ...); faults with
//!   a `Retry-After` in seconds also carry a `google.rpc.RetryInfo` detail.
//!
//! Anything else: 404 with the path's dialect error body (OpenAI's for
//! unknown paths).
//!
//! # Faults and overrides
//!
//! The server-wide [`Behavior`] sets latency, token count, pacing, injected
//! statuses, abrupt stream cuts and stalls; it applies to all three dialects
//! alike, and injected faults use the dialect's error body. Any request can
//! override it with headers, parsed leniently (bad values are ignored):
//! `x-mock-status`, `x-mock-retry-after`, `x-mock-latency-ms`,
//! `x-mock-tokens`, `x-mock-chunk-interval-ms`, `x-mock-cut-after`,
//! `x-mock-stall-ms`, `x-mock-stall-first-token-ms` and
//! `x-mock-tool-calls`.
//!
//! In streams, `chunk_interval` separates content frames (OpenAI content
//! chunks, Anthropic `content_block_delta` events, Gemini chunks);
//! `stall_first_token` sleeps after OpenAI's role chunk, after Anthropic's
//! `message_start`, and before Gemini's first chunk; `cut_after: N` drops
//! the connection right before the (N+1)-th content frame, and never lets
//! the answer finish (no `finish_reason`/`[DONE]`, no `message_delta`, no
//! `finishReason` chunk).
//!
//! # Benchmarks
//!
//! [`Behavior::prerendered`] answers `POST /v1/chat/completions` from bytes
//! rendered once (no per-request JSON work), [`Behavior::body_bytes`] sets
//! the size of non-streaming answers, [`Behavior::jitter`] adds a random
//! delay, and [`Behavior::stamp_frames`] writes each stream frame's send
//! time into it. `GET /__relay_mock/stats` reports the counters and the
//! process's CPU time, from which a harness derives the mock's ceiling.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use relay_mock::{Behavior, MockServer};
//!
//! let server = MockServer::start(Behavior { tokens: 5, ..Behavior::default() }).await?;
//! println!("point the client at {}", server.base_url());
//! // ... send requests ...
//! assert_eq!(server.stats().streams_cancelled, 0);
//! # Ok(())
//! # }
//! ```

mod anthropic;
mod behavior;
mod bench;
mod body;
mod conn;
mod gemini;
mod handler;
mod render;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::{Mutex, RwLock};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub use behavior::Behavior;

/// The listening socket's accept queue length.
const LISTEN_BACKLOG: u32 = 16_384;

/// How many requests [`MockServer::requests`] keeps.
pub const RECORDED_REQUESTS: usize = 64;

/// Counters of what the server has served so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests received (every route, faults included).
    pub requests: u64,
    /// Streaming responses whose head was produced (OpenAI and Anthropic
    /// SSE, Gemini SSE and streamed JSON arrays).
    pub streams_started: u64,
    /// Streams that produced their last frame (OpenAI's `[DONE]`,
    /// Anthropic's `message_stop`, Gemini's final chunk).
    pub streams_completed: u64,
    /// Streams whose body was dropped before it finished (the client went
    /// away). Streams cut on purpose by `cut_after` are not counted.
    pub streams_cancelled: u64,
}

/// A request the server received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `"POST"`.
    pub method: String,
    /// Request path without the query, e.g. `"/v1/chat/completions"`.
    pub path: String,
    /// The query string without the `?`, if any (e.g. `"alt=sse&key=..."`
    /// for a Gemini request that passes its key as `?key=`).
    pub query: Option<String>,
    /// Request headers as received.
    pub headers: http::HeaderMap,
    /// The complete request body.
    pub body: Bytes,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    streams_started: AtomicU64,
    streams_completed: AtomicU64,
    streams_cancelled: AtomicU64,
}

/// A behavior together with the number of requests served under it (the
/// `fail_first` counter); replaced wholesale by `set_behavior`.
#[derive(Debug)]
struct BehaviorState {
    behavior: Behavior,
    served: AtomicU64,
    /// The fast path's answers (`Behavior::prerendered`).
    prerendered: Option<bench::Prerendered>,
}

impl BehaviorState {
    fn new(behavior: Behavior) -> BehaviorState {
        BehaviorState {
            prerendered: bench::Prerendered::new(&behavior),
            behavior,
            served: AtomicU64::new(0),
        }
    }
}

/// State shared by the server handle and every connection.
#[derive(Debug)]
struct Shared {
    behavior: RwLock<Arc<BehaviorState>>,
    stats: Counters,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    next_id: AtomicU64,
}

impl Shared {
    fn behavior(&self) -> Arc<BehaviorState> {
        Arc::clone(&self.behavior.read())
    }

    fn record(&self, request: RecordedRequest) {
        let mut recorded = self.recorded.lock();
        if recorded.len() >= RECORDED_REQUESTS {
            recorded.pop_front();
        }
        recorded.push_back(request);
    }
}

/// A running mock upstream.
///
/// The server runs in a spawned tokio task; it stops on
/// [`shutdown`](MockServer::shutdown) or when the handle is dropped.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl MockServer {
    /// Binds `127.0.0.1:0` and serves in a spawned tokio task.
    pub async fn start(behavior: Behavior) -> std::io::Result<MockServer> {
        MockServer::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), behavior).await
    }

    /// Binds `addr` and serves in a spawned tokio task.
    pub async fn bind(addr: SocketAddr, behavior: Behavior) -> std::io::Result<MockServer> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // A deep accept queue: load tests open thousands of connections at
        // once (the kernel caps it at net.core.somaxconn).
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            behavior: RwLock::new(Arc::new(BehaviorState::new(behavior))),
            stats: Counters::default(),
            recorded: Mutex::new(VecDeque::with_capacity(RECORDED_REQUESTS)),
            next_id: AtomicU64::new(1),
        });
        let task = tokio::spawn(serve(listener, Arc::clone(&shared)));
        Ok(MockServer { addr, shared, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI-style base URL, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The server's origin, `http://127.0.0.1:PORT`: the base URL the
    /// Anthropic and Gemini SDKs expect (they add `/v1/messages` and
    /// `/v1beta/models/...` themselves).
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the behavior; applies to requests that arrive later. Also
    /// restarts the `fail_first` count.
    pub fn set_behavior(&self, behavior: Behavior) {
        *self.shared.behavior.write() = Arc::new(BehaviorState::new(behavior));
    }

    /// The current behavior.
    pub fn behavior(&self) -> Behavior {
        self.shared.behavior().behavior.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.stats;
        Stats {
            requests: c.requests.load(Ordering::Relaxed),
            streams_started: c.streams_started.load(Ordering::Relaxed),
            streams_completed: c.streams_completed.load(Ordering::Relaxed),
            streams_cancelled: c.streams_cancelled.load(Ordering::Relaxed),
        }
    }

    /// The last (up to [`RECORDED_REQUESTS`]) requests, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorded.lock().iter().cloned().collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.recorded.lock().clear();
    }

    /// Stops accepting and aborts the serving task, open connections
    /// included. Also done on drop.
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Accepts connections until aborted; aborting drops the `JoinSet`, which
/// aborts every connection task too.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // Usually fd exhaustion: back off instead of spinning.
                    tracing::warn!(error = %e, "relay-mock: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "relay-mock: could not set TCP_NODELAY");
    }
    let stream = conn::CutStream::new(stream);
    let cut = stream.cut_flag();
    let service =
        service_fn(move |req| handler::handle(Arc::clone(&shared), Arc::clone(&cut), req));
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "relay-mock: connection ended with an error");
    }
}
