// Shared by `hostile` (fail-closed, fresh instances) and `hostile-open` (fail-open,
// declares itself stateless); included by each crate's lib.rs after it defines `NAME`,
// `FAILURE` and `STATELESS`.
//
// The item config picks the misbehaviour: `{"mode": "loop" | "memory" | "stack" |
// "panic" | "trap" | "oversize" | "secret" | "allowed-secret" | "print" | "count" |
// "stream-loop" | "ok"}`. `count` answers with how many requests this instance's
// globals have seen. Modes run in `before-request`; `stream-loop` (and `loop` with
// `"stream": true`) loops in `on-stream-chunk`.

use relay_plugin_sdk::serde_json::Value;
use relay_plugin_sdk::{
    ChunkDecision, ChunkView, Hooks, Manifest, Plugin, Reply, RequestDecision, RequestView,
    deny, export, host, manifest, patch,
};

struct Hostile;

fn mode() -> String {
    relay_plugin_sdk::config()
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("ok")
        .to_owned()
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64, pad: [u64; 64]) -> u64 {
    let mut next = pad;
    next[(depth % 64) as usize] = depth;
    recurse(depth + 1, next).wrapping_add(next[3])
}

fn spin() -> u64 {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

impl Plugin for Hostile {
    fn manifest() -> Manifest {
        let mut m = manifest(NAME, Hooks::BEFORE_REQUEST | Hooks::ON_STREAM_CHUNK);
        m.failure_mode = FAILURE;
        m.secrets = vec!["ALLOWED_SECRET".into()];
        m.stateless = STATELESS;
        m
    }

    fn before_request(_request: RequestView) -> RequestDecision {
        match mode().as_str() {
            "loop" => {
                let _ = spin();
                RequestDecision::Proceed
            }
            "memory" => {
                // Grow by 8 MiB until the host's cap stops us (the allocation failure
                // aborts, which traps).
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut block: Vec<u8> = Vec::with_capacity(8 << 20);
                    block.push(1);
                    hoard.push(std::hint::black_box(block));
                }
            }
            "stack" => {
                let n = recurse(0, [0; 64]);
                host::log(host::LogLevel::Info, &n.to_string());
                RequestDecision::Proceed
            }
            "panic" => panic!("hostile plugin panics on purpose"),
            "trap" => {
                let v: Vec<u32> = Vec::new();
                let i = std::hint::black_box(7usize);
                #[allow(clippy::indexing_slicing)]
                let x = v[i];
                host::log(host::LogLevel::Info, &x.to_string());
                RequestDecision::Proceed
            }
            "oversize" => {
                // 8 MiB of header value: over the host's output cap.
                let mut p = patch();
                p.set_fields.push(("padding".into(), format!("\"{}\"", "x".repeat(8 << 20))));
                RequestDecision::Modify(p)
            }
            "secret" => match host::secret("UPSTREAM_API_KEY") {
                // The host must refuse: this name is not declared.
                Ok(value) => RequestDecision::Respond(Reply {
                    status: 200,
                    content_type: "text/plain".into(),
                    body: format!("leaked: {value}"),
                }),
                Err(e) => RequestDecision::Deny(deny(403, format!("secret refused: {e:?}"))),
            },
            "allowed-secret" => match host::secret("ALLOWED_SECRET") {
                Ok(value) => RequestDecision::Respond(Reply {
                    status: 200,
                    content_type: "text/plain".into(),
                    body: format!("declared secret has {} bytes", value.len()),
                }),
                Err(e) => RequestDecision::Deny(deny(403, format!("secret refused: {e:?}"))),
            },
            "count" => {
                static SEEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                RequestDecision::Respond(Reply {
                    status: 200,
                    content_type: "text/plain".into(),
                    body: format!("requests seen by this instance: {n}"),
                })
            }
            "print" => {
                for i in 0..1000 {
                    println!("hostile line {i}");
                }
                RequestDecision::Proceed
            }
            _ => RequestDecision::Proceed,
        }
    }

    fn on_stream_chunk(_chunk: ChunkView) -> ChunkDecision {
        let config = relay_plugin_sdk::config();
        let mode = mode();
        if mode == "stream-loop" || (mode == "loop" && config.get("stream").and_then(Value::as_bool) == Some(true)) {
            let _ = spin();
        }
        ChunkDecision::Pass
    }
}

export!(Hostile);
