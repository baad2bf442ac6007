//! Embedding relay-core in an application, no gateway: build a relay over two channels
//! (a failing one and a healthy one, both the in-tree mock upstream), stream a completion
//! through a preset, print the text as it arrives and the settlement record at the end.
//!
//! ```sh
//! cargo run -p relay-examples --bin embed
//! ```

use std::time::Duration;

use http_body_util::BodyExt;
use relay_adapters::openai::OpenAiDialect;
use relay_core::sse::SseParser;
use relay_core::{
    ChannelConfig, ClientDialect, MemorySink, Operation, PresetConfig, PresetItem, Relay,
    RelayConfig, RelayRequest, Strategy,
};
use relay_mock::{Behavior, MockServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Two upstreams: one answers 503, the other streams 12 tokens, 40 ms apart.
    let broken = MockServer::start(Behavior {
        status: Some(503),
        ..Behavior::default()
    })
    .await?;
    let healthy = MockServer::start(Behavior {
        tokens: 12,
        chunk_interval: Duration::from_millis(40),
        ..Behavior::default()
    })
    .await?;

    let channel = |id: &str, url: String| {
        let mut c = ChannelConfig::new(id, "openai-compatible");
        c.base_url = Some(url);
        c.allow_private_network = true;
        c.models = vec!["small".into()];
        c
    };
    let config = RelayConfig {
        channels: vec![
            channel("broken", broken.base_url()),
            channel("healthy", healthy.base_url()),
        ],
        presets: vec![PresetConfig {
            name: "assistant".into(),
            description: None,
            items: vec![PresetItem {
                channels: vec!["broken".into(), "healthy".into()],
                strategy: Strategy::Failover,
                model: Some("small".into()),
                ..PresetItem::default()
            }],
        }],
        ..RelayConfig::default()
    };

    let sink = MemorySink::new(16);
    let relay = Relay::builder(config)
        .adapters(relay_adapters::default_registry())
        .usage_sink(sink.clone())
        .build()?;

    // Any OpenAI-format body works; the dialect codec validates it.
    let body = br#"{"model":"assistant","stream":true,"messages":[{"role":"user","content":"Say hello"}]}"#;
    let inbound = OpenAiDialect.parse_request(Operation::Chat, body, &Default::default())?;
    let response = relay
        .handle(RelayRequest::new(inbound, "example-1"))
        .await?;
    println!(
        "status {} (the broken channel failed over invisibly)",
        response.status()
    );

    let mut body = response.into_body();
    let mut parser = SseParser::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        parser.push(&data);
        while let Some(event) = parser.next_event()? {
            if event.is_done() {
                println!();
                continue;
            }
            let chunk: serde_json::Value = serde_json::from_slice(&event.data)?;
            if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
                print!("{text}");
                std::io::Write::flush(&mut std::io::stdout())?;
            }
        }
    }
    drop(body);

    let record = sink.records().pop().ok_or("no settlement record")?;
    println!(
        "settled: channel={} attempts={} input={} output={} estimated={} ttft={}ms latency={}ms",
        record.channel.as_deref().unwrap_or("-"),
        record.attempts,
        record.usage.input_tokens,
        record.usage.output_tokens,
        record.estimated,
        record.ttft_ms.unwrap_or(0),
        record.latency_ms,
    );
    Ok(())
}
