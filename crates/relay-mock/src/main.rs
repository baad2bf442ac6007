//! `relay-mock`: run the mock LLM upstream (OpenAI, Anthropic and Gemini
//! dialects) as a standalone server, e.g. for the gateway quick start or
//! manual benchmarks.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use relay_mock::{Behavior, MockServer};

/// A mock LLM upstream speaking OpenAI Chat Completions, Anthropic Messages
/// and Gemini generateContent, with injectable latency and faults.
#[derive(Debug, Parser)]
#[command(name = "relay-mock", version, after_long_help = ROUTES)]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Delay before every response head, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    latency_ms: u64,
    /// Completion tokens per answer (one stream chunk per token).
    #[arg(long, value_name = "N", default_value_t = 16)]
    tokens: u32,
    /// Pause between stream content chunks, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    chunk_interval_ms: u64,
    /// Answer every request with this HTTP status (400-599) and an error
    /// body in the route's dialect (OpenAI, Anthropic or Gemini).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(400..=599))]
    status: Option<u16>,
    /// Retry-After header value sent with --status.
    #[arg(long, value_name = "S", requires = "status")]
    retry_after: Option<String>,
    /// Only the first N requests get --status (0 = all of them).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "status")]
    fail_first: u32,
    /// Parallel tool calls made when the request carries tools: OpenAI
    /// tool_calls, Anthropic tool_use blocks, Gemini functionCall parts
    /// (0 = always answer with text).
    #[arg(long, value_name = "N", default_value_t = 1)]
    tool_calls: u32,
    /// Model name echoed in responses (default: the request's model).
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// Random extra delay before every response head, uniform in [0, N]
    /// milliseconds (fractions allowed, e.g. 0.2).
    #[arg(long, value_name = "N", default_value_t = 0.0)]
    jitter_ms: f64,
    /// Pad non-streaming OpenAI chat answers to this many bytes of JSON.
    #[arg(long, value_name = "N")]
    body_bytes: Option<usize>,
    /// Benchmark fast path: answer POST /v1/chat/completions from bytes
    /// rendered once at start (no request parsing or recording; model
    /// --model or "mock-model").
    #[arg(long)]
    prerendered: bool,
    /// With --prerendered: stamp each stream chunk's system_fingerprint with
    /// its send time ("fp_t" + nanoseconds since the Unix epoch).
    #[arg(long, requires = "prerendered")]
    stamp_frames: bool,
}

/// The routes, shown by `--help` after the options.
const ROUTES: &str = "\
Dialects and routes (the same deterministic text, one token per word):
  OpenAI     POST /v1/chat/completions   JSON or SSE (stream: true), tool calls
             POST /v1/embeddings         deterministic unit vectors
             GET  /v1/models
  Anthropic  POST /v1/messages           JSON or SSE events (stream: true),
                                         thinking and tool_use blocks
             POST /v1/messages/count_tokens
  Gemini     POST /v1beta/models/{model}:generateContent
             POST /v1beta/models/{model}:streamGenerateContent?alt=sse
                  (without alt=sse: a streamed JSON array)
             POST /v1beta/models/{model}:countTokens
             (also under /v1/models/...)
Credentials are recorded, never checked. Faults use each dialect's error body.

Requests can override most settings with x-mock-* headers (x-mock-status,
x-mock-retry-after, x-mock-latency-ms, x-mock-tokens, x-mock-chunk-interval-ms,
x-mock-cut-after, x-mock-stall-ms, x-mock-stall-first-token-ms,
x-mock-tool-calls).

GET /__relay_mock/stats reports the counters and the mock's CPU time
(cpu_ticks at ticks_per_second): its ceiling on one core is requests per CPU
second.";

impl Args {
    fn behavior(&self) -> Behavior {
        Behavior {
            latency: Duration::from_millis(self.latency_ms),
            tokens: self.tokens,
            chunk_interval: Duration::from_millis(self.chunk_interval_ms),
            status: self.status,
            retry_after: self.retry_after.clone(),
            fail_first: self.fail_first,
            tool_calls: self.tool_calls,
            model: self.model.clone(),
            jitter: Duration::try_from_secs_f64(self.jitter_ms.max(0.0) / 1000.0)
                .unwrap_or_default(),
            body_bytes: self.body_bytes,
            prerendered: self.prerendered,
            stamp_frames: self.stamp_frames,
            ..Behavior::default()
        }
    }
}

/// Resolves on SIGINT or (on Unix) SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let server = match MockServer::bind(args.listen, args.behavior()).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("relay-mock: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let origin = server.origin();
    let printed = writeln!(stdout, "relay-mock listening on {}", server.base_url())
        .and_then(|()| {
            writeln!(
                stdout,
                "relay-mock dialects: OpenAI {origin}/v1, Anthropic {origin} (/v1/messages), \
                 Gemini {origin} (/v1beta/models/...)"
            )
        })
        .and_then(|()| stdout.flush());
    drop(stdout);
    if let Err(e) = printed {
        eprintln!("relay-mock: cannot write to stdout: {e}");
    }
    shutdown_signal().await;
    server.shutdown();
    ExitCode::SUCCESS
}
