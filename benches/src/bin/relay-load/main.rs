//! `relay-load`: an HTTP/1.1 load generator for LLM API endpoints.
//!
//! Closed loop (`-c N`: N keep-alive connections, one request in flight on
//! each) or open loop (`-r RPS`: requests sent at their scheduled times
//! whatever the server does, latency measured from the scheduled time so a
//! stall is not hidden). Every socket sets `TCP_NODELAY`; the request body is
//! serialised once. Per request it records the time to the response head,
//! to the first content frame, every SSE frame's arrival (the gaps between
//! content frames), the end, the status, and the frames received against
//! the frames expected; with a mock that stamps its frames
//! (`relay-mock --stamp-frames`) also each frame's transit time. Each metric
//! goes into an HdrHistogram; the result is a JSON document (machine,
//! versions, CPU pinning, load average) and a short human summary.

mod record;
mod request;
mod sse;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use record::Recorder;
use request::{Outcome, Sender};

/// An HTTP/1.1 load generator for LLM API endpoints (closed or open loop,
/// SSE-aware, HdrHistogram latencies, JSON results).
#[derive(Debug, Parser)]
#[command(name = "relay-load", version, after_long_help = EXAMPLES)]
struct Args {
    /// Target URL, e.g. http://127.0.0.1:8080/v1/chat/completions (plain
    /// HTTP only).
    #[arg(long, short = 'u')]
    url: String,
    /// Closed loop: connections, each with one request in flight. Open loop
    /// (with --rate): the most connections (requests in flight) allowed.
    #[arg(long, short = 'c', default_value_t = 1)]
    connections: usize,
    /// Open loop: requests per second, sent on schedule.
    #[arg(long, short = 'r')]
    rate: Option<f64>,
    /// Measured duration, seconds.
    #[arg(long, short = 'd', default_value_t = 5.0)]
    duration: f64,
    /// Closed loop: stop after this many requests in all (warm-up included), or at the
    /// end of the duration, whichever comes first (for instruction counting).
    #[arg(long, short = 'n', conflicts_with = "rate")]
    requests: Option<u64>,
    /// Warm-up before the measured window, seconds (requests sent, not
    /// recorded).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Request body (default: a 250-byte chat request for --model).
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Read the request body from this file.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Model of the default body.
    #[arg(long, default_value = "mock-model")]
    model: String,
    /// Ask for a stream (adds "stream":true to the default body).
    #[arg(long)]
    stream: bool,
    /// Extra request header, "Name: value" (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// SSE frames (events, [DONE] included) each streamed answer should
    /// carry; answers with fewer count as frames lost (0: do not check).
    #[arg(long, default_value_t = 0)]
    expect_frames: u64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Runtime worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the JSON result here ("-": stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// A label copied into the JSON result.
    #[arg(long, default_value = "")]
    label: String,
    /// No human summary on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

const EXAMPLES: &str = "\
Examples:
  relay-load -u http://127.0.0.1:8080/v1/chat/completions -H 'authorization: Bearer rk-bench' -c 1 -d 10
  relay-load -u http://127.0.0.1:9100/v1/chat/completions -r 5000 -c 10000 -d 10 --json out.json
  relay-load -u http://127.0.0.1:9100/v1/chat/completions --stream --expect-frames 67 -c 64

Metrics (microseconds): latency (start to end of body; open loop: from the
scheduled send time), service (from the actual send), headers (to the
response head), ttft (to the first content frame; non-SSE: first body
bytes), gap (between consecutive content frames), transit (mock send stamp
to arrival, with relay-mock --stamp-frames), send_lag (open loop: scheduled
to actual send).";

/// What every request shares.
struct Ctx {
    addr: SocketAddr,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
    expect_frames: u64,
    warm_until: Instant,
    stop_at: Instant,
    recorder: Mutex<Recorder>,
    connections_opened: AtomicU64,
    /// Successful answers, warm-up and drain included (for CPU per request).
    completed_all: AtomicU64,
    /// Requests left to send (`--requests`), u64::MAX when unlimited.
    tickets: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

impl Ctx {
    fn record(&self, outcome: &Outcome) {
        if outcome.error.is_none() && outcome.status.is_some_and(|s| (200..300).contains(&s)) {
            self.completed_all.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.start >= self.warm_until && outcome.start < self.stop_at {
            self.recorder.lock().record(outcome, self.expect_frames);
        }
    }

    fn enter(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
    }

    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    async fn connect(&self) -> Result<Sender, String> {
        let sender = request::connect(self.addr).await?;
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }
}

fn default_body(model: &str, stream: bool) -> String {
    let mut body = format!(
        "{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"system\",\"content\":\"You are a helpful \
         assistant. Answer briefly.\"}},{{\"role\":\"user\",\"content\":\"Write one short sentence \
         about the sea and one about the mountains, please.\"}}],\"max_tokens\":64,\"temperature\":0.2"
    );
    if stream {
        body.push_str(",\"stream\":true");
    }
    body.push('}');
    body
}

fn parse_target(args: &Args) -> Result<(SocketAddr, Uri, HeaderMap, Bytes), String> {
    let full: Uri = args
        .url
        .parse()
        .map_err(|e| format!("bad --url {}: {e}", args.url))?;
    if full.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported".into());
    }
    let authority = full
        .authority()
        .ok_or_else(|| format!("--url {} has no host", args.url))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let addr = (authority.host(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to nothing"))?;
    let path = full.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let uri: Uri = path.parse().map_err(|e| format!("bad path {path}: {e}"))?;

    let body = match (&args.body, &args.body_file) {
        (Some(b), _) => b.clone().into_bytes(),
        (None, Some(f)) => {
            std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?
        }
        (None, None) => default_body(&args.model, args.stream).into_bytes(),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(body.len() as u64),
    );
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("bad header {h:?}: want \"Name: value\""))?;
        let name: HeaderName = name
            .trim()
            .parse()
            .map_err(|e| format!("bad header name in {h:?}: {e}"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|e| format!("bad header value in {h:?}: {e}"))?;
        headers.insert(name, value);
    }
    Ok((addr, uri, headers, Bytes::from(body)))
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)
}

/// One closed-loop connection: send, wait for the whole answer, repeat.
async fn closed_worker(ctx: Arc<Ctx>) {
    let mut sender: Option<Sender> = None;
    while Instant::now() < ctx.stop_at {
        if ctx
            .tickets
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(1))
            .is_err()
        {
            break;
        }
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match ctx.connect().await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    let now = Instant::now();
                    ctx.record(&Outcome::failed(now, "connect", e));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let start = Instant::now();
        ctx.enter();
        let outcome = request::send(s, &ctx, start).await;
        ctx.leave();
        if outcome.broken {
            sender = None;
        }
        ctx.record(&outcome);
    }
}

/// Sends the scheduled times of an open loop from a plain thread (sub-ms
/// precision, unlike the runtime's 1 ms timer).
fn pace(
    start: Instant,
    rate: f64,
    stop_at: Instant,
    tx: tokio::sync::mpsc::UnboundedSender<Instant>,
) {
    let interval = 1.0 / rate;
    let mut i: u64 = 0;
    loop {
        let intended = start + Duration::from_secs_f64(i as f64 * interval);
        if intended >= stop_at {
            return;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        if tx.send(intended).is_err() {
            return;
        }
        i += 1;
    }
}

/// One open-loop request: wait for a connection slot, reuse an idle
/// connection or open one, send.
async fn open_request(
    ctx: Arc<Ctx>,
    intended: Instant,
    slots: Arc<Semaphore>,
    idle: Arc<Mutex<Vec<Sender>>>,
) {
    ctx.enter();
    let outcome = match slots.acquire_owned().await {
        Err(_) => Outcome::failed(intended, "closed", "semaphore closed".into()),
        Ok(_permit) => {
            let pooled = idle.lock().pop();
            let sender = match pooled {
                Some(s) => Ok(s),
                None => ctx.connect().await,
            };
            match sender {
                Err(e) => Outcome::failed(intended, "connect", e),
                Ok(mut s) => {
                    let outcome = request::send(&mut s, &ctx, intended).await;
                    if !outcome.broken {
                        idle.lock().push(s);
                    }
                    outcome
                }
            }
        }
    };
    ctx.leave();
    ctx.record(&outcome);
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    let (addr, uri, headers, body) = parse_target(&args)?;
    let load_before = relay_benches::sys::loadavg();
    let self_before = relay_benches::sys::sample(None);
    let begin = Instant::now();
    let warm_until = begin + secs(args.warmup);
    let stop_at = warm_until + secs(args.duration);
    let ctx = Arc::new(Ctx {
        addr,
        uri,
        headers,
        body,
        timeout: secs(args.timeout),
        expect_frames: args.expect_frames,
        warm_until,
        stop_at,
        recorder: Mutex::new(Recorder::new()?),
        connections_opened: AtomicU64::new(0),
        completed_all: AtomicU64::new(0),
        tickets: AtomicU64::new(args.requests.unwrap_or(u64::MAX)),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
    });
    let grace = secs(args.timeout) + Duration::from_secs(1);

    match args.rate {
        None => {
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..args.connections.max(1) {
                workers.spawn(closed_worker(Arc::clone(&ctx)));
            }
            let drained = tokio::time::timeout(stop_at - Instant::now() + grace, async {
                while workers.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                workers.abort_all();
            }
        }
        Some(rate) if rate > 0.0 => {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let pacer = std::thread::spawn(move || pace(begin, rate, stop_at, tx));
            let slots = Arc::new(Semaphore::new(args.connections.max(1)));
            let idle = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = tokio::task::JoinSet::new();
            while let Some(intended) = rx.recv().await {
                tasks.spawn(open_request(
                    Arc::clone(&ctx),
                    intended,
                    Arc::clone(&slots),
                    Arc::clone(&idle),
                ));
                // Reap finished tasks so the set stays small.
                while tasks.try_join_next().is_some() {}
            }
            if pacer.join().is_err() {
                return Err("the pacer thread panicked".into());
            }
            let drained =
                tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                tasks.abort_all();
            }
        }
        Some(rate) => return Err(format!("--rate must be positive, not {rate}")),
    }

    let self_after = relay_benches::sys::sample(None);
    let load_after = relay_benches::sys::loadavg();
    let measured = args.duration;
    let recorder = ctx.recorder.lock();
    let cpu_ticks = match (self_before, self_after) {
        (Some(a), Some(b)) => Some(b.cpu_ticks.saturating_sub(a.cpu_ticks)),
        _ => None,
    };
    let wall = begin.elapsed().as_secs_f64();
    let summary = recorder.summary(measured);
    let json = serde_json::json!({
        "tool": "relay-load",
        "version": env!("CARGO_PKG_VERSION"),
        "label": args.label,
        "config": {
            "url": args.url,
            "mode": if args.rate.is_some() { "open" } else { "closed" },
            "connections": args.connections,
            "rate": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "stream": args.stream,
            "expect_frames": args.expect_frames,
            "request_bytes": ctx.body.len(),
            "threads": args.threads,
            "timeout_s": args.timeout,
        },
        "machine": relay_benches::sys::machine(),
        "pinning": relay_benches::sys::affinity(None),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "results": summary,
        "connections_opened": ctx.connections_opened.load(Ordering::Relaxed),
        "max_in_flight": ctx.max_in_flight.load(Ordering::Relaxed),
        "completed_all": ctx.completed_all.load(Ordering::Relaxed),
        "self_cpu": {
            "ticks": cpu_ticks,
            "ticks_per_second": relay_benches::sys::TICKS_PER_SECOND,
            "wall_s": wall,
        },
    });
    if !args.quiet {
        eprint!(
            "{}",
            recorder.human(&args.url, args.rate, args.connections, measured)
        );
    }
    Ok(json)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = args.json.clone();
    let result = runtime.block_on(run(args));
    // Do not wait for connection tasks still open.
    runtime.shutdown_background();
    let json = match result {
        Ok(json) => json,
        Err(e) => {
            eprintln!("relay-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = match serde_json::to_string_pretty(&json) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("relay-load: cannot render the result: {e}");
            return ExitCode::FAILURE;
        }
    };
    match out {
        Some(path) if path.as_os_str() == "-" => println!("{text}"),
        Some(path) => {
            if let Err(e) = std::fs::write(&path, text + "\n") {
                eprintln!("relay-load: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        None => {}
    }
    ExitCode::SUCCESS
}
