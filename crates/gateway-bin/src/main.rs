//! `relay-gateway`: the command line over [`relay_gateway::Gateway`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use relay_core::NullSink;
use relay_gateway::{Gateway, GatewayConfig};

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
        #[command(flatten)]
        log: LogArgs,
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
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Validate a plugin component against the relay:plugin@0.1.0 WIT, list the
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
            log,
        } => {
            init_logs(&log);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config, listen)) {
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
    let mut relay = config.relay_config();
    for ch in relay
        .channels
        .iter_mut()
        .filter(|c| c.provider == "mock" && c.base_url.is_none())
    {
        // The built-in mock gets its URL at start.
        ch.base_url = Some("http://127.0.0.1:1/v1".into());
        ch.allow_private_network = true;
    }
    if let Err(e) = relay.validate(&relay_adapters::default_registry()) {
        problems.extend(e.problems);
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

async fn serve(path: PathBuf, listen: Option<SocketAddr>) -> Result<(), String> {
    let config = load(&path)?;
    let addr = listen.unwrap_or(config.server.listen);
    let gateway = Gateway::new(&config, Arc::new(NullSink))
        .await
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        addr = %local,
        channels = config.channels.len(),
        presets = config.presets.len(),
        "relay-gateway listening on http://{local}"
    );
    spawn_reloader(gateway.clone(), path);
    gateway
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

#[cfg(unix)]
fn spawn_reloader(gateway: Arc<Gateway>, path: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; config reload is off");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let result = match load(&path) {
                Ok(config) => gateway.reload(&config).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
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
fn spawn_reloader(_gateway: Arc<Gateway>, _path: PathBuf) {}

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
