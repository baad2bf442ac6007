//! Support for the store tests: a gateway with a store (SQLite file or a fresh Postgres
//! database) in front of mock upstreams, its admin API, and a small HTTP client.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use relay_gateway::tenancy::{Started, StoreOptions, start};
use relay_gateway::{GatewayConfig, RunningGateway};
use relay_store::MasterKey;
use relay_store::testing::{fresh_postgres, fresh_sqlite, postgres_base_url, skip_postgres};

pub const STATIC_KEY: &str = "rk-static";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const MASTER_HEX: &str = "0101010101010101010101010101010101010101010101010101010101010101";

/// One database to run a test against.
#[derive(Clone, Debug)]
pub struct Db {
    pub name: &'static str,
    pub url: String,
}

/// SQLite always; Postgres when DATABASE_URL names one (each test its own database).
pub async fn databases(test: &str) -> Vec<Db> {
    let mut out = vec![Db {
        name: "sqlite",
        url: fresh_sqlite(test).display().to_string(),
    }];
    match postgres_base_url() {
        Some(base) => out.push(Db {
            name: "postgres",
            url: fresh_postgres(&base, &format!("relay_gw_{test}"))
                .await
                .unwrap(),
        }),
        None => skip_postgres(test),
    }
    out
}

pub struct Gw {
    pub started: Started,
    pub running: RunningGateway,
    pub admin: String,
    pub client: Client<HttpConnector, Full<Bytes>>,
    pub config_path: PathBuf,
    /// The config's directory, removed when the gateway is dropped (fields drop in order).
    _dir: TempDir,
}

/// A fresh directory under the system temp dir, removed (with what is in it) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn request_id(&self) -> String {
        self.headers["x-request-id"].to_str().unwrap().to_owned()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn config_text(channels: &str) -> String {
    format!(
        "[server]\nmax_body_bytes = 65536\ndrain_timeout_ms = 5000\n\n[[keys]]\nname = \"static\"\nkey = \"{STATIC_KEY}\"\n\n{channels}"
    )
}

/// A channel block for an OpenAI-compatible mock.
pub fn channel(id: &str, base_url: &str, models: &[&str]) -> String {
    let models: Vec<String> = models.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[[channels]]\nid = \"{id}\"\nprovider = \"openai-compatible\"\nbase_url = \"{base_url}\"\nallow_private_network = true\napi_keys = [\"sk-{id}-credential\"]\nmodels = [{}]\n\n",
        models.join(", ")
    )
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(http)
}

/// Start a gateway on `db` with this config (written next to a fresh directory).
pub async fn gateway(db: &Db, config: &str) -> Gw {
    let dir = TempDir::new("relay-gw-test");
    let config_path = dir.join("gateway.toml");
    std::fs::write(&config_path, config).unwrap();
    let parsed = GatewayConfig::parse(config).unwrap();
    let mut opts = StoreOptions::new(config_path.clone());
    opts.database_url = Some(db.url.clone());
    opts.admin = Some(("127.0.0.1:0".parse().unwrap(), ADMIN_TOKEN.into()));
    opts.master_key = Some(MasterKey::from_hex(MASTER_HEX).unwrap());
    let started = start(&parsed, &opts)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let running = started
        .gateway
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let admin = format!("http://{}", started.admin_addr.unwrap());
    Gw {
        started,
        running,
        admin,
        client: client(),
        config_path,
        _dir: dir,
    }
}

pub async fn collect(resp: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub fn chat_body(model: &str, stream: bool, max_tokens: u32) -> String {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Say hello"}],
    })
    .to_string()
}

pub async fn chat_at(
    client: &Client<HttpConnector, Full<Bytes>>,
    base: &str,
    key: &str,
    body: String,
) -> Reply {
    let req = http::Request::post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    collect(client.request(req).await.unwrap()).await
}

impl Gw {
    pub fn url(&self) -> String {
        self.running.url()
    }

    pub async fn chat(&self, key: &str, body: String) -> Reply {
        chat_at(&self.client, &self.url(), key, body).await
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Reply {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.admin))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        collect(self.client.request(req).await.unwrap()).await
    }

    /// Create a key through the admin API; returns the clear key.
    pub async fn create_key(&self, spec: serde_json::Value) -> String {
        let r = self.admin("POST", "/admin/keys", Some(spec)).await;
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["key"].as_str().unwrap().to_owned()
    }

    /// Wait until the usage of every settled request is in the store.
    pub async fn flush(&self) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.started.tenancy.writer().flush().await;
    }

    pub fn store(&self) -> &relay_store::SharedStore {
        self.started.tenancy.store()
    }

    /// A separate connection to the same database, for assertions in raw SQL.
    pub async fn sql(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(self.store().url())
            .await
            .unwrap()
    }
}

/// A `relay-gateway serve` process (the real binary) on `db`, listening on a free
/// loopback port; killed when dropped.
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    pub url: String,
}

impl GatewayProcess {
    /// Start it with this config file and wait until `/healthz` answers.
    pub async fn start(config_path: &std::path::Path, db: &Db) -> GatewayProcess {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay-gateway"))
            .args(["serve", "--config"])
            .arg(config_path)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                &db.url,
                "--workers",
                "1",
            ])
            .env("RELAY_MASTER_KEY", MASTER_HEX)
            .env_remove("RELAY_ADMIN_TOKEN")
            .env("RELAY_LOG", "warn")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let process = GatewayProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let probe = client();
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let req = http::Request::get(format!("{}/healthz", process.url))
                .body(Full::new(Bytes::new()))
                .unwrap();
            if probe.request(req).await.is_ok() {
                return process;
            }
            assert!(
                std::time::Instant::now() < until,
                "the gateway process did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL (no drain, no usage flush), and wait for it to be gone.
    pub async fn kill_9(&mut self) {
        self.child.start_kill().unwrap();
        let status = self.child.wait().await.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status:?}"
        );
    }

    /// SIGTERM (graceful shutdown) and wait for a clean exit.
    pub async fn terminate(&mut self) {
        let pid = self.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the gateway did not stop within 30 s")
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}
