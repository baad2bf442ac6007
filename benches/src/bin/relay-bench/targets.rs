//! The targets a load runs against: the mock itself (direct), a bare nginx
//! hop (the floor), the gateway, and the optional peers (LiteLLM proxy,
//! Portkey gateway), each configured for the same mock; and the gateway
//! variants of the plugin and usage-logging scenarios (1, 4 or 8 no-op
//! plugins on the route; usage written to SQLite or Postgres).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::procs::{self, Proc};

/// LiteLLM proxy release the peers run (never 1.107.0, which was
/// compromised).
pub(crate) const LITELLM_VERSION: &str = "1.93.0";
/// Portkey gateway release the peers run.
pub(crate) const PORTKEY_VERSION: &str = "1.15.2";

/// Where things are.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    /// The repository root.
    pub(crate) root: PathBuf,
    /// Release binaries (relay-mock, relay-gateway, relay-load).
    pub(crate) bin: PathBuf,
    /// Scratch directory of this run (configs, logs).
    pub(crate) work: PathBuf,
    /// Where the peers are installed (`benches/.peers`).
    pub(crate) peers: PathBuf,
    /// The Postgres the `relay+postgres` target writes usage to.
    pub(crate) pg_url: Option<String>,
}

/// Which process plays a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Direct,
    Nginx,
    Gateway,
    LiteLlm,
    Portkey,
    /// The gateway with this many no-op plugins (`plugins/dist/noop.wasm`) on
    /// the route: 1, 4 or 8. The no-op plugin declares itself stateless, so its
    /// hooks run in warm, reused instances.
    GatewayPlugins(u8),
    /// The same with 8, the operator refusing reuse (`reuse_instances = false`): a
    /// fresh instance per plugin per request, as for any plugin not stateless.
    GatewayPluginsFresh,
    /// The gateway writing usage to its embedded SQLite file.
    GatewaySqlite,
    /// The gateway writing usage to Postgres (`--pg-url`).
    GatewayPostgres,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Nginx => "nginx",
            Kind::Gateway => "relay",
            Kind::LiteLlm => "litellm",
            Kind::Portkey => "portkey",
            Kind::GatewayPlugins(1) => "relay+1 plugin",
            Kind::GatewayPlugins(4) => "relay+4 plugins",
            Kind::GatewayPlugins(_) => "relay+8 plugins",
            Kind::GatewayPluginsFresh => "relay+8 fresh plugins",
            Kind::GatewaySqlite => "relay+sqlite",
            Kind::GatewayPostgres => "relay+postgres",
        }
    }

    fn port_offset(self) -> u16 {
        match self {
            Kind::Direct => 0,
            Kind::Nginx => 1,
            Kind::Gateway => 2,
            Kind::LiteLlm => 3,
            Kind::Portkey => 4,
            Kind::GatewayPlugins(1) => 5,
            Kind::GatewayPlugins(4) => 6,
            Kind::GatewayPlugins(_) => 7,
            Kind::GatewaySqlite => 8,
            Kind::GatewayPostgres => 9,
            Kind::GatewayPluginsFresh => 10,
        }
    }
}

/// A target that is up.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) kind: Kind,
    pub(crate) addr: SocketAddr,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    /// The process (none for direct: the mock is measured separately).
    pub(crate) proc: Option<Proc>,
    /// The admin listener of a gateway with a usage writer (its `/admin/metrics` tell
    /// whether the writer kept up).
    pub(crate) admin: Option<SocketAddr>,
}

/// The admin token the harness starts gateways with.
pub(crate) const ADMIN_TOKEN: &str = "relay-bench-admin-token";

/// Whether `kind` writes usage to a store (and so has a writer to watch).
fn has_store(kind: Kind) -> bool {
    matches!(kind, Kind::GatewaySqlite | Kind::GatewayPostgres)
}

/// The admin listener of a store target: 40 ports above its own.
fn admin_addr(port_base: u16, kind: Kind) -> Option<SocketAddr> {
    has_store(kind).then(|| SocketAddr::from(([127, 0, 0, 1], port_base + 40 + kind.port_offset())))
}

impl Running {
    pub(crate) fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }
}

/// The mock's address for a port base.
pub(crate) fn mock_addr(port_base: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port_base))
}

fn addr(port_base: u16, kind: Kind) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port_base + kind.port_offset()))
}

/// The request the readiness probe sends.
pub(crate) const PROBE_BODY: &str =
    r#"{"model":"mock-model","messages":[{"role":"user","content":"ready?"}]}"#;

fn s(v: &str) -> String {
    v.to_owned()
}

/// Starts the mock with `extra` arguments.
pub(crate) fn start_mock(
    paths: &Paths,
    port_base: u16,
    extra: &[String],
    cpus: Option<&str>,
) -> Result<Proc, String> {
    let addr = mock_addr(port_base);
    let mut argv = vec![
        paths.bin.join("relay-mock").display().to_string(),
        s("--listen"),
        addr.to_string(),
        s("--prerendered"),
    ];
    argv.extend(extra.iter().cloned());
    let mut proc = Proc::spawn(
        "relay-mock",
        &argv,
        cpus,
        &paths.work.join("mock.log"),
        &[],
        None,
    )?;
    procs::wait_ready(
        &mut proc,
        addr,
        "/v1/chat/completions",
        &[],
        PROBE_BODY,
        Duration::from_secs(10),
    )?;
    Ok(proc)
}

/// Starts target `kind` in front of the mock.
pub(crate) fn start(
    kind: Kind,
    paths: &Paths,
    port_base: u16,
    cpus: Option<&str>,
) -> Result<Running, String> {
    let upstream = mock_addr(port_base);
    let listen = addr(port_base, kind);
    if kind != Kind::Direct && !procs::port_free(listen) {
        return Err(format!("port {listen} is taken"));
    }
    let path = s("/v1/chat/completions");
    let (proc, headers, ready_timeout) = match kind {
        Kind::Direct => {
            return Ok(Running {
                kind,
                addr: upstream,
                path,
                headers: Vec::new(),
                proc: None,
                admin: None,
            });
        }
        Kind::Nginx => (start_nginx(paths, listen, upstream, cpus)?, Vec::new(), 10),
        Kind::Gateway
        | Kind::GatewayPlugins(_)
        | Kind::GatewayPluginsFresh
        | Kind::GatewaySqlite
        | Kind::GatewayPostgres => (
            start_gateway(
                kind,
                paths,
                listen,
                upstream,
                admin_addr(port_base, kind),
                cpus,
            )?,
            vec![(s("authorization"), s("Bearer rk-bench"))],
            // Plugins compile (cranelift) at start unless cached.
            60,
        ),
        Kind::LiteLlm => (
            start_litellm(paths, listen, upstream, cpus)?,
            vec![(s("authorization"), s("Bearer sk-bench"))],
            120,
        ),
        Kind::Portkey => (
            start_portkey(paths, listen, cpus)?,
            vec![
                (s("authorization"), s("Bearer sk-bench")),
                (s("x-portkey-provider"), s("openai")),
                (s("x-portkey-custom-host"), format!("http://{upstream}/v1")),
            ],
            60,
        ),
    };
    let mut proc = proc;
    procs::wait_ready(
        &mut proc,
        listen,
        &path,
        &headers,
        PROBE_BODY,
        Duration::from_secs(ready_timeout),
    )?;
    Ok(Running {
        kind,
        addr: listen,
        path,
        headers,
        proc: Some(proc),
        admin: admin_addr(port_base, kind),
    })
}

fn start_nginx(
    paths: &Paths,
    listen: SocketAddr,
    upstream: SocketAddr,
    cpus: Option<&str>,
) -> Result<Proc, String> {
    let nginx = procs::which("nginx").ok_or("nginx is not installed")?;
    let template_path = paths.root.join("benches/nginx/nginx.conf.template");
    let template = std::fs::read_to_string(&template_path)
        .map_err(|e| format!("cannot read {}: {e}", template_path.display()))?;
    let prefix = paths.work.join("nginx");
    for sub in ["", "tmp"] {
        std::fs::create_dir_all(prefix.join(sub))
            .map_err(|e| format!("cannot create {}: {e}", prefix.display()))?;
    }
    let conf = template
        .replace("@PREFIX@", &prefix.display().to_string())
        .replace("@LISTEN@", &listen.to_string())
        .replace("@UPSTREAM@", &upstream.to_string());
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)
        .map_err(|e| format!("cannot write {}: {e}", conf_path.display()))?;
    Proc::spawn(
        "nginx",
        &[
            nginx.display().to_string(),
            s("-p"),
            prefix.display().to_string(),
            s("-c"),
            conf_path.display().to_string(),
        ],
        cpus,
        &paths.work.join("nginx.log"),
        &[],
        None,
    )
}

/// The gateway config of the benchmark: one key, one channel on the mock.
pub(crate) fn gateway_config(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"# relay-bench: the gateway in front of the benchmark mock.
[server]
listen = "{listen}"

[[keys]]
name = "bench"
key = "rk-bench"

[[channels]]
id = "mock"
provider = "mock"
base_url = "http://{upstream}/v1"
allow_private_network = true
models = ["mock-model"]
"#
    )
}

/// The `[plugins]` section and the `mock-model` preset of a gateway with `n`
/// no-op plugins on its one route (`fresh`: instance reuse turned off).
pub(crate) fn plugins_config(n: u8, fresh: bool, plugin_dir: &Path, cache_dir: &Path) -> String {
    let list = vec![r#"{ name = "noop" }"#; usize::from(n)].join(", ");
    let limits = if fresh {
        "limits = { reuse_instances = false }"
    } else {
        ""
    };
    format!(
        r#"
[plugins]
dir = "{}"
cache_dir = "{}"

[[plugins.registry]]
name = "noop"
{limits}

[[presets]]
name = "mock-model"
[[presets.items]]
channels = ["mock"]
plugins = [{list}]
"#,
        plugin_dir.display(),
        cache_dir.display()
    )
}

fn start_gateway(
    kind: Kind,
    paths: &Paths,
    listen: SocketAddr,
    upstream: SocketAddr,
    admin: Option<SocketAddr>,
    cpus: Option<&str>,
) -> Result<Proc, String> {
    let mut toml = gateway_config(listen, upstream);
    let mut extra: Vec<String> = Vec::new();
    match kind {
        // The proxy hop alone, like nginx's: usage goes to the log, not a database.
        Kind::Gateway => extra.push(s("--no-store")),
        Kind::GatewayPlugins(_) | Kind::GatewayPluginsFresh => {
            let (n, fresh) = match kind {
                Kind::GatewayPlugins(n) => (n, false),
                _ => (8, true),
            };
            let dir = paths.root.join("plugins/dist");
            if !dir.join("noop.wasm").is_file() {
                return Err(format!(
                    "{} is missing: run scripts/build-plugins",
                    dir.join("noop.wasm").display()
                ));
            }
            toml.push_str(&plugins_config(
                n,
                fresh,
                &dir,
                &paths.work.join("plugin-cache"),
            ));
            extra.push(s("--no-store"));
        }
        // The embedded default: relay-data/<config stem>.db beside the config.
        Kind::GatewaySqlite => {}
        Kind::GatewayPostgres => {
            let url = paths
                .pg_url
                .as_deref()
                .ok_or("no Postgres (--pg-url) for the relay+postgres target")?;
            extra.extend([s("--database-url"), url.to_owned()]);
        }
        _ => return Err(format!("{} is not a gateway target", kind.name())),
    }
    let stem = kind.name().replace(['+', ' '], "-");
    let config = paths.work.join(format!("{stem}.toml"));
    std::fs::write(&config, toml).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let mut argv = vec![
        paths.bin.join("relay-gateway").display().to_string(),
        s("serve"),
        s("--config"),
        config.display().to_string(),
        s("--log-level"),
        s("warn"),
    ];
    argv.extend(extra);
    let mut env = Vec::new();
    if let Some(admin) = admin {
        argv.extend([s("--admin-listen"), admin.to_string()]);
        env.push((s("RELAY_ADMIN_TOKEN"), ADMIN_TOKEN.to_owned()));
    }
    Proc::spawn(
        "relay-gateway",
        &argv,
        cpus,
        &paths.work.join(format!("{stem}.log")),
        &env,
        None,
    )
}

/// The LiteLLM proxy config: one model on the mock, a master key.
pub(crate) fn litellm_config(upstream: SocketAddr) -> String {
    format!(
        r#"# relay-bench: LiteLLM proxy in front of the benchmark mock.
model_list:
  - model_name: mock-model
    litellm_params:
      model: openai/mock-model
      api_base: http://{upstream}/v1
      api_key: sk-bench
general_settings:
  master_key: sk-bench
litellm_settings:
  drop_params: true
  telemetry: false
"#
    )
}

pub(crate) fn litellm_bin(paths: &Paths) -> PathBuf {
    paths.peers.join("litellm-venv/bin/litellm")
}

fn start_litellm(
    paths: &Paths,
    listen: SocketAddr,
    upstream: SocketAddr,
    cpus: Option<&str>,
) -> Result<Proc, String> {
    let bin = litellm_bin(paths);
    if !bin.is_file() {
        return Err(format!(
            "LiteLLM is not installed ({} missing)",
            bin.display()
        ));
    }
    let config = paths.work.join("litellm.yaml");
    std::fs::write(&config, litellm_config(upstream))
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    Proc::spawn(
        "litellm",
        &[
            bin.display().to_string(),
            s("--config"),
            config.display().to_string(),
            s("--host"),
            listen.ip().to_string(),
            s("--port"),
            listen.port().to_string(),
            s("--num_workers"),
            s("1"),
        ],
        cpus,
        &paths.work.join("litellm.log"),
        &[
            (s("LITELLM_LOG"), s("ERROR")),
            (s("LITELLM_TELEMETRY"), s("False")),
            (s("DISABLE_SCHEMA_UPDATE"), s("True")),
        ],
        None,
    )
}

pub(crate) fn portkey_dir(paths: &Paths) -> PathBuf {
    paths.peers.join("portkey/node_modules/@portkey-ai/gateway")
}

fn portkey_entry(dir: &Path) -> Option<PathBuf> {
    [
        "build/start-server.js",
        "dist/start-server.js",
        "start-server.js",
    ]
    .iter()
    .map(|p| dir.join(p))
    .find(|p| p.is_file())
}

fn start_portkey(paths: &Paths, listen: SocketAddr, cpus: Option<&str>) -> Result<Proc, String> {
    let dir = portkey_dir(paths);
    let entry = portkey_entry(&dir).ok_or_else(|| {
        format!(
            "Portkey gateway is not installed (no start script in {})",
            dir.display()
        )
    })?;
    let node = procs::which("node").ok_or("node is not installed")?;
    Proc::spawn(
        "portkey",
        &[
            node.display().to_string(),
            entry.display().to_string(),
            format!("--port={}", listen.port()),
            format!("--host={}", listen.ip()),
        ],
        cpus,
        &paths.work.join("portkey.log"),
        &[(s("NODE_ENV"), s("production"))],
        Some(&dir),
    )
}
