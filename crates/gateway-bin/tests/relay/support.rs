//! Test support: a gateway on an ephemeral port in front of mock upstreams, and a small
//! HTTP client that reads streams frame by frame with timings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use relay_core::MemorySink;
use relay_core::sse::SseParser;
use relay_gateway::{Gateway, GatewayConfig, RunningGateway};

pub const KEY: &str = "rk-test";

pub struct TestGateway {
    pub running: RunningGateway,
    pub sink: Arc<MemorySink>,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

/// Start a gateway whose config is `keys + body` (channels and presets in TOML).
pub async fn gateway(toml_body: &str) -> TestGateway {
    gateway_with("", toml_body).await
}

/// A gateway with extra `[server]` settings.
pub async fn gateway_with(server: &str, toml_body: &str) -> TestGateway {
    let text = format!(
        "[server]\nmax_body_bytes = 65536\ndrain_timeout_ms = 5000\n{server}\n\n[[keys]]\nname = \"test\"\nkey = \"{KEY}\"\n\n{toml_body}"
    );
    let config = GatewayConfig::parse(&text).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
    let sink = MemorySink::new(1000);
    let gw = Gateway::new(&config, sink.clone())
        .await
        .unwrap_or_else(|e| panic!("gateway: {e}"));
    let running = gw.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build(http);
    TestGateway {
        running,
        sink,
        client,
    }
}

/// A TOML channel block for an OpenAI-compatible upstream at `base_url`.
pub fn channel(id: &str, base_url: &str, models: &[&str]) -> String {
    let models: Vec<String> = models.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[[channels]]\nid = \"{id}\"\nprovider = \"openai-compatible\"\nbase_url = \"{base_url}\"\nallow_private_network = true\napi_keys = [\"sk-{id}\"]\nmodels = [{}]\n\n",
        models.join(", ")
    )
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.running.url(), path)
    }

    pub async fn send(
        &self,
        path: &str,
        key: Option<&str>,
        body: impl Into<Bytes>,
    ) -> http::Response<Incoming> {
        let mut req =
            http::Request::post(self.url(path)).header("content-type", "application/json");
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        self.client
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        let resp = self.send(path, Some(KEY), body.to_string()).await;
        collect(resp).await
    }

    /// The settlement records so far.
    pub fn records(&self) -> Vec<relay_core::UsageRecord> {
        self.sink.records()
    }

    /// Wait (up to 3 s) until `n` records have been settled.
    pub async fn wait_records(&self, n: usize) -> Vec<relay_core::UsageRecord> {
        let until = Instant::now() + Duration::from_secs(3);
        loop {
            let r = self.records();
            if r.len() >= n || Instant::now() > until {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub async fn collect(resp: http::Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// One SSE event as the client saw it, with its arrival time.
pub struct Seen {
    pub data: String,
    pub at: Duration,
}

/// Read a whole event stream, timing each event from `start`.
pub async fn read_events(resp: http::Response<Incoming>, start: Instant) -> Vec<Seen> {
    let mut body = resp.into_body();
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        parser.push(&data);
        while let Some(ev) = parser.next_event().unwrap() {
            out.push(Seen {
                data: String::from_utf8(ev.data.to_vec()).unwrap(),
                at: start.elapsed(),
            });
        }
    }
    out
}

/// The concatenated `delta.content` of OpenAI chunks.
pub fn text_of(events: &[Seen]) -> String {
    events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.data).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

pub fn chat(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello"}],
    })
}

/// A TOML channel block for an upstream of another dialect (`anthropic`, `gemini`).
pub fn dialect_channel(id: &str, provider: &str, base_url: &str, models: &[&str]) -> String {
    let models: Vec<String> = models.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[[channels]]\nid = \"{id}\"\nprovider = \"{provider}\"\nbase_url = \"{base_url}\"\nallow_private_network = true\napi_keys = [\"sk-{id}\"]\nmodels = [{}]\n\n",
        models.join(", ")
    )
}

impl TestGateway {
    /// POST with arbitrary headers.
    pub async fn send_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> http::Response<Incoming> {
        let mut req =
            http::Request::post(self.url(path)).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.client
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap()
    }
}
