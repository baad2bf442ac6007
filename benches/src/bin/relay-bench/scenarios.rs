//! The scenarios: for each, the mock settings (cases) and the loads run
//! against every target in interleaved rounds.

use crate::targets::Kind;

/// Every scenario name, in run order.
pub(crate) const ALL: [&str; 9] = [
    "overhead",
    "frontier",
    "openloop",
    "slow-upstream",
    "streaming",
    "streams",
    "memory",
    "plugins",
    "usage-logging",
];

/// One load: the `relay-load` arguments that vary.
#[derive(Clone, Debug)]
pub(crate) struct Load {
    /// Short name (e.g. `c=64`).
    pub(crate) name: String,
    /// Connections (closed loop) or the connection cap (open loop).
    pub(crate) connections: usize,
    /// Open loop rate.
    pub(crate) rate: Option<f64>,
    /// Measured seconds.
    pub(crate) duration: f64,
    /// Warm-up seconds.
    pub(crate) warmup: f64,
    /// Streaming request.
    pub(crate) stream: bool,
    /// SSE events expected per answer (0: unchecked).
    pub(crate) expect_frames: u64,
    /// Per-request timeout.
    pub(crate) timeout: f64,
}

/// One mock setting and the loads run against it.
#[derive(Clone, Debug)]
pub(crate) struct Case {
    /// Scenario name.
    pub(crate) scenario: &'static str,
    /// Case name (e.g. `1.4KB`).
    pub(crate) name: String,
    /// Extra `relay-mock` arguments (besides `--listen` and
    /// `--prerendered`).
    pub(crate) mock_args: Vec<String>,
    /// The loads, each run in `rounds` interleaved rounds.
    pub(crate) loads: Vec<Load>,
    /// Rounds per load.
    pub(crate) rounds: usize,
    /// Pin the processes (gateway and nginx on CPU 0, mock and load
    /// generator on CPU 1).
    pub(crate) pin: bool,
    /// The targets, when not the usual direct, nginx, relay (and peers).
    pub(crate) targets: Option<Vec<Kind>>,
}

impl Case {
    /// Capacity scenarios run unpinned: the mock and the load generator
    /// need more than one core for thousands of paced streams.
    fn unpinned(self) -> Case {
        Case { pin: false, ..self }
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn closed(name: &str, c: usize, duration: f64, warmup: f64) -> Load {
    Load {
        name: name.to_owned(),
        connections: c,
        rate: None,
        duration,
        warmup,
        stream: false,
        expect_frames: 0,
        timeout: 30.0,
    }
}

/// The cases of scenario `name`, full-size or `smoke`-size, with `rounds`
/// rounds for the latency scenarios (ignored by `smoke`, which uses 2).
pub(crate) fn cases(name: &str, smoke: bool, rounds: usize) -> Vec<Case> {
    let r = if smoke { 2 } else { rounds.max(1) };
    let scale = |full: f64, small: f64| if smoke { small } else { full };
    let case =
        |scenario: &'static str, case: &str, mock: Vec<String>, loads: Vec<Load>, rounds| Case {
            scenario,
            name: case.to_owned(),
            mock_args: mock,
            loads,
            rounds,
            pin: true,
            targets: None,
        };
    match name {
        "overhead" => [("0.4KB", "400"), ("1.4KB", "1400"), ("10KB", "10240")]
            .iter()
            .map(|(label, bytes)| {
                case(
                    "overhead",
                    label,
                    args(&["--tokens", "1", "--body-bytes", bytes]),
                    vec![closed("c=1", 1, scale(3.0, 0.5), scale(0.5, 0.2))],
                    r,
                )
            })
            .collect(),
        "frontier" => {
            let levels: &[usize] = if smoke {
                &[1, 64]
            } else {
                &[1, 4, 16, 64, 256, 1024]
            };
            vec![case(
                "frontier",
                "0.4KB",
                args(&["--tokens", "1", "--body-bytes", "400"]),
                levels
                    .iter()
                    .map(|&c| {
                        closed(
                            &format!("c={c}"),
                            c,
                            scale(1.0, 0.5),
                            if c >= 256 {
                                scale(1.0, 0.5)
                            } else {
                                scale(0.5, 0.2)
                            },
                        )
                    })
                    .collect(),
                r,
            )]
        }
        "openloop" => {
            let rates: &[f64] = if smoke {
                &[1000.0]
            } else {
                &[1000.0, 5000.0, 10000.0]
            };
            vec![case(
                "openloop",
                "0.4KB",
                args(&["--tokens", "1", "--body-bytes", "400"]),
                rates
                    .iter()
                    .map(|&rps| Load {
                        rate: Some(rps),
                        ..closed(
                            &format!("{}k rps", rps / 1000.0),
                            4096,
                            scale(2.0, 0.5),
                            scale(0.5, 0.2),
                        )
                    })
                    .collect(),
                r,
            )]
        }
        "slow-upstream" => {
            let rps = if smoke { 500.0 } else { 5000.0 };
            vec![case(
                "slow-upstream",
                "1.5s mock",
                args(&[
                    "--tokens",
                    "1",
                    "--body-bytes",
                    "400",
                    "--latency-ms",
                    "1500",
                ]),
                vec![Load {
                    rate: Some(rps),
                    ..closed(
                        &format!("{}k rps", rps / 1000.0),
                        16000,
                        scale(4.0, 1.0),
                        scale(2.0, 1.6),
                    )
                }],
                if smoke { 1 } else { 3 },
            )]
        }
        "streaming" => {
            let tokens = if smoke { 16 } else { 64 };
            vec![
                // Frames and gaps under concurrency: 32 paced streams, started
                // together (so their first requests also arrive as a burst).
                case(
                    "streaming",
                    &format!("{tokens}x20ms"),
                    args(&[
                        "--tokens",
                        &tokens.to_string(),
                        "--chunk-interval-ms",
                        "20",
                        "--stamp-frames",
                    ]),
                    vec![Load {
                        stream: true,
                        expect_frames: tokens + 3,
                        ..closed(
                            "c=32",
                            if smoke { 4 } else { 32 },
                            scale(4.0, 0.6),
                            scale(1.5, 0.4),
                        )
                    }],
                    r,
                ),
                // Time to first token one stream at a time, as the non-streaming
                // added latency is measured: short streams (4 deltas, 1 ms apart),
                // so a round holds hundreds of them.
                case(
                    "streaming",
                    "4x1ms",
                    args(&["--tokens", "4", "--chunk-interval-ms", "1"]),
                    vec![Load {
                        stream: true,
                        expect_frames: 4 + 3,
                        ..closed("c=1", 1, scale(3.0, 0.5), scale(0.5, 0.2))
                    }],
                    r,
                ),
            ]
        }
        "streams" => {
            let levels: &[usize] = if smoke { &[256] } else { &[512, 2048, 8192] };
            vec![
                case(
                    "streams",
                    "64x20ms",
                    args(&["--tokens", "64", "--chunk-interval-ms", "20"]),
                    levels
                        .iter()
                        .map(|&c| Load {
                            stream: true,
                            expect_frames: 67,
                            timeout: 60.0,
                            // No warm-up: streams last 1.3 s; every stream
                            // started in the first `duration` seconds counts.
                            ..closed(&format!("{c} streams"), c, scale(3.0, 1.5), 0.0)
                        })
                        .collect(),
                    1,
                )
                .unpinned(),
            ]
        }
        "memory" => {
            // Streams that stay open for the whole window (tokens x 250 ms):
            // the RSS peak minus the RSS before, per stream.
            let n = if smoke { 128 } else { 1000 };
            let tokens: u64 = if smoke { 8 } else { 24 };
            vec![
                case(
                    "memory",
                    "open streams",
                    args(&[
                        "--tokens",
                        &tokens.to_string(),
                        "--chunk-interval-ms",
                        "250",
                    ]),
                    vec![Load {
                        stream: true,
                        expect_frames: tokens + 3,
                        ..closed(&format!("{n} open streams"), n, scale(3.0, 1.0), 0.0)
                    }],
                    if smoke { 1 } else { 2 },
                )
                .unpinned(),
            ]
        }
        // The gateway with 0, 1, 4 and 8 no-op plugins on the route (warm
        // instances), and 8 with fresh instances per request: what the
        // plugin host adds per request, latency at c=1 and throughput at c=32.
        "plugins" | "usage-logging" => {
            let targets = if name == "plugins" {
                vec![
                    Kind::Direct,
                    Kind::Gateway,
                    Kind::GatewayPlugins(1),
                    Kind::GatewayPlugins(4),
                    Kind::GatewayPlugins(8),
                    Kind::GatewayPluginsFresh,
                ]
            } else {
                // Usage logging off (`--no-store`) and on, into the embedded
                // SQLite file and into Postgres.
                vec![
                    Kind::Direct,
                    Kind::Gateway,
                    Kind::GatewaySqlite,
                    Kind::GatewayPostgres,
                ]
            };
            vec![Case {
                targets: Some(targets),
                ..case(
                    if name == "plugins" {
                        "plugins"
                    } else {
                        "usage-logging"
                    },
                    "0.4KB",
                    args(&["--tokens", "1", "--body-bytes", "400"]),
                    vec![
                        closed("c=1", 1, scale(3.0, 0.5), scale(0.5, 0.2)),
                        closed("c=32", 32, scale(3.0, 0.5), scale(0.5, 0.2)),
                    ],
                    r,
                )
            }]
        }
        _ => Vec::new(),
    }
}
