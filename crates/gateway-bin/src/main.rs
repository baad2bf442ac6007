//! `relay-gateway`: the command line over [`relay_gateway::Gateway`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use relay_core::NullSink;
use relay_gateway::cli;
use relay_gateway::tenancy::Tenancy;
use relay_gateway::{Gateway, GatewayConfig};

/// mimalloc: per-thread free lists; malloc/free were 14 % of the gateway's user-space
/// instructions per request under glibc (benches/icount.sh --e2e).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Relay gateway: an OpenAI-compatible LLM API gateway with presets, failover and
/// streaming.
#[derive(Parser, Debug)]
#[command(name = "relay-gateway", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the gateway until SIGINT or SIGTERM (SIGHUP reloads the config file).
    Serve {
        /// The TOML config file.
        #[arg(short, long, env = "RELAY_CONFIG")]
        config: PathBuf,
        /// Listen address; overrides `server.listen` in the config.
        #[arg(short, long, env = "RELAY_LISTEN")]
        listen: Option<SocketAddr>,
        /// Worker threads, each with its own single-threaded runtime; overrides
        /// `server.workers` (default: one per CPU this process may run on).
        #[arg(short, long, env = "RELAY_WORKERS")]
        workers: Option<usize>,
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        store: cli::ServeStoreArgs,
    },
    /// Validate a config file and print what it defines.
    Check {
        /// The TOML config file.
        #[arg(short, long, env = "RELAY_CONFIG")]
        config: PathBuf,
    },
    /// Work with WebAssembly plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Print the SHA-256 of an API key, for `key_sha256` in the config.
    HashKey {
        /// The key.
        key: String,
    },
    /// Apply the database migrations (under a lock) and exit.
    Migrate(cli::DbArgs),
    /// Create, list and revoke API keys in the store.
    #[command(subcommand)]
    Keys(cli::KeysCommand),
    /// Add, list and test channels in the store.
    #[command(subcommand)]
    Channels(cli::ChannelsCommand),
    /// Usage and cost report from the store.
    Usage(cli::UsageArgs),
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Validate a plugin component against the relay:plugin@0.2.0 WIT, list the
    /// hooks it exports and the capabilities it imports, and run its init and each
    /// declared hook once on a sample request, with timings.
    Check {
        /// The component (`.wasm`, built for wasm32-wasip2).
        file: PathBuf,
        /// The preset item config to give the plugin (JSON).
        #[arg(long, default_value = "null")]
        config: String,
    },
}

#[derive(clap::Args, Debug)]
struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "RELAY_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter (`info`, `relay=debug,warn`...); RUST_LOG also works.
    #[arg(long, default_value = "info", env = "RELAY_LOG")]
    log_level: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logs(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn load(path: &Path) -> Result<GatewayConfig, String> {
    GatewayConfig::load(path).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::HashKey { key } => {
            println!("{}", hex::encode(relay_gateway::auth::digest(&key)));
            ExitCode::SUCCESS
        }
        Command::Check { config } => check(&config),
        Command::Migrate(db) => cli::run(cli::StoreCommand::Migrate(db)),
        Command::Keys(c) => cli::run(cli::StoreCommand::Keys(c)),
        Command::Channels(c) => cli::run(cli::StoreCommand::Channels(c)),
        Command::Usage(u) => cli::run(cli::StoreCommand::Usage(u)),
        Command::Plugin {
            command: PluginCommand::Check { file, config },
        } => match relay_gateway::plugins::check(&file, &config) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            listen,
            workers,
            log,
            store,
        } => {
            init_logs(&log);
            match run_server(config, listen, workers, store) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Serve with `workers` threads. Each runs a single-threaded Tokio runtime and accepts
/// from the same listener, so a request, its upstream connection and its stream stay
/// on one thread (nginx's worker model: no cross-thread wake-ups, no work stealing).
/// The main thread is worker 0 and also handles signals and the built-in mocks.
fn run_server(
    path: PathBuf,
    listen: Option<SocketAddr>,
    workers: Option<usize>,
    store: cli::ServeStoreArgs,
) -> Result<(), String> {
    let config = load(&path)?;
    let workers = workers
        .filter(|&n| n > 0)
        .or((config.server.workers > 0).then_some(config.server.workers))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(path, config, listen, workers, store))
}

async fn serve(
    path: PathBuf,
    config: GatewayConfig,
    listen: Option<SocketAddr>,
    workers: usize,
    store: cli::ServeStoreArgs,
) -> Result<(), String> {
    let addr = listen.unwrap_or(config.server.listen);
    let (gateway, tenancy, mut background) = if store.no_store {
        let gateway = Gateway::new(&config, Arc::new(NullSink))
            .await
            .map_err(|e| e.to_string())?;
        (gateway, None, None)
    } else {
        // The store and everything around it run on the background thread, at a lower
        // priority than the request workers.
        let (started, background) =
            relay_gateway::background::start(config.clone(), store.options(path.clone())).await?;
        (started.gateway, Some(started.tenancy), Some(background))
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        addr = %local,
        channels = config.channels.len(),
        presets = config.presets.len(),
        workers,
        "relay-gateway listening on http://{local}"
    );
    spawn_reloader(gateway.clone(), path, tenancy.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let listener = listener.into_std().map_err(|e| e.to_string())?;
    let mut threads = Vec::with_capacity(workers.saturating_sub(1));
    for i in 1..workers {
        let listener = listener
            .try_clone()
            .map_err(|e| format!("cannot share the listener: {e}"))?;
        let gateway = gateway.clone();
        let mut stop = stop_rx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("relay-worker-{i}"))
            .spawn(move || -> Result<(), String> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("worker {i}: cannot start the runtime: {e}"))?;
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .map_err(|e| format!("worker {i}: {e}"))?;
                    let stopped = async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                    };
                    gateway
                        .serve(listener, stopped)
                        .await
                        .map_err(|e| format!("worker {i}: {e}"))
                })
            })
            .map_err(|e| format!("cannot start worker {i}: {e}"))?;
        threads.push(thread);
    }
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    if config.server.release_startup_pages {
        release_startup_pages().await;
    }
    let stopped = async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    let served = gateway
        .serve(listener, stopped)
        .await
        .map_err(|e| e.to_string());
    // The other workers drain in parallel; wait for them off the runtime thread.
    let joined = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err("a worker panicked".into())))
            .collect::<Result<Vec<()>, String>>()
    })
    .await
    .map_err(|e| e.to_string())?;
    if let Some(t) = tenancy {
        // Every settled request's usage row is written (or spilled) before exit.
        if tokio::time::timeout(std::time::Duration::from_secs(15), t.writer().flush())
            .await
            .is_err()
        {
            tracing::error!("usage writer did not flush within 15 s");
        }
        t.retire().await;
    }
    if let Some(background) = background.as_mut() {
        background.stop().await;
    }
    served?;
    joined.map(|_| ())
}

/// Start-up is over: give back the code pages only it used (`startup_pages`; procfs
/// reads and `madvise`, so off the runtime's thread).
async fn release_startup_pages() {
    match tokio::task::spawn_blocking(relay_gateway::startup_pages::release).await {
        Ok(Ok(r)) => tracing::debug!(
            mappings = r.mappings,
            resident_kib = r.resident_kib,
            "start-up code pages released"
        ),
        Ok(Err(e)) => tracing::debug!(error = %e, "start-up pages not released"),
        Err(e) => tracing::debug!(error = %e, "start-up pages not released"),
    }
}

fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut problems = Vec::new();
    if let Err(p) = relay_gateway::auth::KeyStore::from_config(&config.keys) {
        problems.extend(p);
    }
    if let Err(p) = relay_gateway::admin::ops::validate_relay(config.relay_config()) {
        problems.extend(p);
    }
    if problems.is_empty() {
        println!(
            "{}: ok ({} channels, {} presets, {} keys)",
            path.display(),
            config.channels.len(),
            config.presets.len(),
            config.keys.len()
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("{}: {} problem(s):", path.display(), problems.len());
        for p in problems {
            eprintln!("  - {p}");
        }
        ExitCode::FAILURE
    }
}

#[cfg(unix)]
fn spawn_reloader(gateway: Arc<Gateway>, path: PathBuf, tenancy: Option<Arc<Tenancy>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; config reload is off");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let result = match (load(&path), &tenancy) {
                // With a store: re-seed it from the file, then apply what it holds.
                (Ok(config), Some(t)) => match t.seed(&config).await {
                    Ok(()) => t.reload(&gateway).await,
                    Err(e) => Err(e),
                },
                (Ok(config), None) => gateway.reload(&config).await.map_err(|e| e.to_string()),
                (Err(e), _) => Err(e),
            };
            match result {
                Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
                Err(e) => {
                    tracing::error!(path = %path.display(), "config reload refused; the previous config keeps serving: {e}")
                }
            }
        }
    });
}

#[cfg(not(unix))]
fn spawn_reloader(_gateway: Arc<Gateway>, _path: PathBuf, _tenancy: Option<Arc<Tenancy>>) {}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
