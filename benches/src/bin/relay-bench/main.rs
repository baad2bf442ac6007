//! `relay-bench`: the end-to-end benchmark orchestrator behind
//! `benches/run.sh`.
//!
//! For each scenario it starts the mock upstream, a bare nginx hop (the
//! floor), the gateway and optionally the peers, all in front of the same
//! mock; runs `relay-load` against every target in interleaved rounds
//! (direct, nginx, relay, direct, nginx, relay, ...); samples each target's
//! CPU ticks and RSS from procfs around (and RSS during) every round; and
//! writes one JSON document with everything plus a Markdown summary with
//! absolute numbers, ratios to direct and to nginx, and the design §7
//! budget lines.

mod procs;
mod report;
mod scenarios;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use relay_benches::sys;
use serde_json::{Value, json};

use procs::Proc;
use scenarios::{Case, Load};
use targets::{Kind, Paths, Running};

/// End-to-end benchmarks of Relay: the gateway against direct-to-mock and a
/// bare nginx hop (and optionally LiteLLM and Portkey), side by side.
#[derive(Debug, Parser)]
#[command(name = "relay-bench", version, after_long_help = AFTER)]
struct Args {
    /// A few seconds per scenario: proves the harness works end to end.
    #[arg(long)]
    smoke: bool,
    /// Also run the peers installed under benches/.peers (LiteLLM proxy,
    /// Portkey gateway); a peer that does not start is skipped and named in
    /// the summary.
    #[arg(long)]
    peers: bool,
    /// Scenario to run (repeatable; default: all). One of: overhead,
    /// frontier, openloop, slow-upstream, streaming, streams, memory,
    /// plugins, usage-logging.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Interleaved rounds per load in the latency scenarios (at least 7 for
    /// published numbers).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Refuse to start when the 1-minute load average is above this
    /// (--smoke only warns).
    #[arg(long, default_value_t = 1.0)]
    max_load: f64,
    /// Run even on a busy machine; the results are flagged.
    #[arg(long)]
    allow_busy: bool,
    /// Do not pin processes to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// First of ten consecutive loopback ports (mock, nginx, relay, litellm,
    /// portkey, relay with 1/4/8 plugins, relay with SQLite, with Postgres).
    #[arg(long, default_value_t = 19100)]
    port_base: u16,
    /// Repository root.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Directory of the release binaries (default ROOT/target/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Results directory (default ROOT/benches/results).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The Postgres the usage-logging scenario's `relay+postgres` target
    /// writes to (benches/run.sh starts a throwaway one); without it that
    /// target is skipped.
    #[arg(long, value_name = "URL")]
    pg_url: Option<String>,
    /// Where and how that Postgres runs, for the record (benches/run.sh passes
    /// it: the CPU it is pinned to and its scheduling priority).
    #[arg(long, value_name = "TEXT")]
    pg_placement: Option<String>,
    /// Skip the nginx target (e.g. when it cannot be installed).
    #[arg(long)]
    no_nginx: bool,
    /// Niceness of every benchmark process (mock, targets, relay-load):
    /// the default -10 (root only; ignored otherwise) keeps other work on a
    /// shared machine from delaying their wake-ups. 0 leaves it alone.
    #[arg(long, default_value_t = -10, allow_hyphen_values = true)]
    nice: i32,
}

const AFTER: &str = "\
Pinning (2+ CPUs): the targets (nginx, relay, peers) on CPU 0, the mock and
relay-load on CPU 1. Results: ROOT/benches/results/STAMP.json and STAMP.md.
Exit status: 0 when the harness worked (whatever the numbers), 1 when it is
broken (a process did not start, relay-load failed, a target answered
nothing), 2 when the machine is too busy to start.";

/// One round of one load against one target.
#[derive(Debug, Clone)]
pub(crate) struct Round {
    pub(crate) scenario: &'static str,
    pub(crate) case: String,
    pub(crate) load: String,
    pub(crate) target: &'static str,
    pub(crate) round: usize,
    /// relay-load's JSON (null when it failed).
    pub(crate) result: Value,
    /// Target CPU ticks spent during the round.
    pub(crate) target_ticks: Option<u64>,
    pub(crate) rss_before_kib: Option<u64>,
    pub(crate) rss_after_kib: Option<u64>,
    pub(crate) rss_peak_kib: Option<u64>,
    pub(crate) mock_ticks: Option<u64>,
    /// CPU 1 (mock + relay-load) busy share, 0..1.
    pub(crate) harness_util: Option<f64>,
    /// CPU used by other processes during the round, in cores.
    pub(crate) foreign_cores: Option<f64>,
    pub(crate) loadavg: Option<[f64; 3]>,
    pub(crate) error: Option<String>,
    /// A store target's usage writer over the round (see [`WriterRound`]).
    pub(crate) writer: Option<WriterRound>,
}

/// What a store target's usage writer did over a round, from its `/admin/metrics`
/// before and after, and how long it took to settle afterwards. A writer that falls
/// behind leaves rows in its shards (or the spill file) that the measured window did not
/// pay for; the harness waits for them to be written before the next target's turn and
/// charges the CPU that took to the round (`settled_ticks`).
#[derive(Debug, Clone, Default)]
pub(crate) struct WriterRound {
    /// Rows taken in during the load.
    pub(crate) enqueued: f64,
    /// Rows that went to the spill file because the writer fell behind (must be 0 for
    /// a writer that keeps up).
    pub(crate) spilled: f64,
    /// Rows lost: neither written nor spilled (must be 0; a round with any marks the
    /// run broken).
    pub(crate) dropped: f64,
    /// Rows not yet written when the load stopped (in the shards or held by the writer).
    pub(crate) backlog: f64,
    /// Seconds from the end of the load until every row was written.
    pub(crate) settle_s: f64,
    /// Target CPU ticks over the load and the settling together.
    pub(crate) settled_ticks: Option<u64>,
    /// Why the writer's figures are missing or incomplete.
    pub(crate) error: Option<String>,
}

/// How long the harness waits for a writer to settle after a round.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

type Metrics = std::collections::HashMap<String, f64>;

/// A store target's writer over a round that just ended: its counters against `before`
/// (read before the load), then the wait for it to settle, and the target's CPU ticks
/// since `ticks_before` once it has.
fn writer_round(
    admin: std::net::SocketAddr,
    before: Result<Metrics, String>,
    tree: &[u32],
    ticks_before: Option<u64>,
) -> WriterRound {
    let mut w = WriterRound::default();
    let counted = before.and_then(|b| {
        let end = procs::admin_metrics(admin, targets::ADMIN_TOKEN)?;
        let grew = |k: &str| end.get(k).unwrap_or(&0.0) - b.get(k).unwrap_or(&0.0);
        w.enqueued = grew("relay_usage_enqueued_total");
        w.spilled = grew("relay_usage_spilled_total");
        w.dropped = grew("relay_usage_dropped_total");
        w.backlog = end.get("relay_usage_queue_depth").copied().unwrap_or(0.0);
        Ok(())
    });
    match counted.and_then(|()| settle(admin)) {
        Ok(secs) => {
            w.settle_s = secs;
            let settled = sys::sample_all(tree);
            w.settled_ticks = ticks_before.map(|t| settled.cpu_ticks.saturating_sub(t));
        }
        Err(e) => w.error = Some(e),
    }
    w
}

/// Waits until a store target's writer has nothing queued and nothing spilled left to
/// replay; the seconds that took, or an error.
fn settle(admin: std::net::SocketAddr) -> Result<f64, String> {
    let started = Instant::now();
    loop {
        let m = procs::admin_metrics(admin, targets::ADMIN_TOKEN)?;
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        if get("relay_usage_queue_depth") == 0.0
            && get("relay_usage_replayed_total") >= get("relay_usage_spilled_total")
        {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > SETTLE_LIMIT {
            return Err(format!(
                "the usage writer did not settle in {SETTLE_LIMIT:?}: {} queued, {} spilled, {} replayed",
                get("relay_usage_queue_depth"),
                get("relay_usage_spilled_total"),
                get("relay_usage_replayed_total")
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    let total: u64 = v.iter().take(8).sum();
    Some((total - idle, total))
}

/// Samples the peak RSS of `pids` every 50 ms until stopped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = (!pids.is_empty()).then(|| {
            let stop = Arc::clone(&stop);
            let peak = Arc::clone(&peak);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(sys::sample_all(&pids).rss_kib, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        });
        RssSampler { stop, peak, thread }
    }

    fn finish(mut self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take()?;
        let _ = thread.join();
        Some(self.peak.load(Ordering::Relaxed))
    }
}

struct Bench {
    args: Args,
    paths: Paths,
    pin: bool,
    rounds: Vec<Round>,
    /// Idle RSS of each target right after start, per case.
    idle: Vec<Value>,
    notes: Vec<String>,
    broken: Vec<String>,
    stamp: String,
}

impl Bench {
    fn cpus(&self, harness: bool) -> Option<&'static str> {
        match (self.pin, harness) {
            (false, _) => None,
            (true, true) => Some("1"),
            (true, false) => Some("0"),
        }
    }

    fn kinds(&self) -> Vec<Kind> {
        let mut kinds = vec![Kind::Direct];
        if !self.args.no_nginx {
            kinds.push(Kind::Nginx);
        }
        kinds.push(Kind::Gateway);
        if self.args.peers {
            kinds.push(Kind::LiteLlm);
            kinds.push(Kind::Portkey);
        }
        kinds
    }

    fn run_case(&mut self, case: &Case) {
        eprintln!("\n== {} / {}", case.scenario, case.name);
        let pin = self.pin && case.pin;
        let harness_cpus = if pin { self.cpus(true) } else { None };
        let target_cpus = if pin { self.cpus(false) } else { None };
        let mock = match targets::start_mock(
            &self.paths,
            self.args.port_base,
            &case.mock_args,
            harness_cpus,
        ) {
            Ok(m) => m,
            Err(e) => {
                self.broken
                    .push(format!("{}/{}: mock: {e}", case.scenario, case.name));
                return;
            }
        };
        let mut running: Vec<Running> = Vec::new();
        let kinds = case.targets.clone().unwrap_or_else(|| self.kinds());
        for kind in kinds {
            if kind == Kind::GatewayPostgres && self.paths.pg_url.is_none() {
                let msg = "relay+postgres skipped: no --pg-url".to_owned();
                if !self.notes.contains(&msg) {
                    self.notes.push(msg);
                }
                continue;
            }
            match targets::start(kind, &self.paths, self.args.port_base, target_cpus) {
                Ok(r) => {
                    let idle = r
                        .proc
                        .as_ref()
                        .map(|p| sys::sample_all(&sys::process_tree(p.pid())));
                    self.idle.push(json!({
                        "scenario": case.scenario, "case": case.name, "target": kind.name(),
                        "idle": idle,
                    }));
                    running.push(r);
                }
                Err(e) => {
                    let msg = format!("{} did not start: {e}", kind.name());
                    eprintln!("  !! {msg}");
                    if matches!(kind, Kind::LiteLlm | Kind::Portkey) {
                        if !self.notes.iter().any(|n| n.starts_with(kind.name())) {
                            self.notes.push(format!("{msg} (skipped)"));
                        }
                    } else {
                        self.broken
                            .push(format!("{}/{}: {msg}", case.scenario, case.name));
                    }
                }
            }
        }
        for load in &case.loads {
            for round in 1..=case.rounds {
                for target in &running {
                    // The other targets are paused (SIGSTOP) meanwhile: an idle
                    // peer's timers and garbage collector would otherwise
                    // steal the measured target's core.
                    let paused: Vec<u32> = running
                        .iter()
                        .filter(|o| o.kind != target.kind)
                        .filter_map(|o| o.proc.as_ref())
                        .flat_map(|p| sys::process_tree(p.pid()))
                        .collect();
                    procs::signal_all(&paused, "-STOP");
                    let r = self.run_round(case, load, round, target, &mock, harness_cpus);
                    procs::signal_all(&paused, "-CONT");
                    let summary = report::round_line(&r);
                    eprintln!("  {summary}");
                    if let Some(w) = &r.writer {
                        let lost = (w.dropped > 0.0)
                            .then(|| format!("{:.0} usage rows dropped", w.dropped));
                        for e in w.error.iter().chain(lost.as_ref()) {
                            self.broken.push(format!(
                                "{}/{}: {} round {round}: {e}",
                                case.scenario,
                                case.name,
                                target.kind.name()
                            ));
                        }
                    }
                    self.rounds.push(r);
                }
            }
        }
        drop(running);
        drop(mock);
    }

    fn run_round(
        &self,
        case: &Case,
        load: &Load,
        round: usize,
        target: &Running,
        mock: &Proc,
        harness_cpus: Option<&str>,
    ) -> Round {
        let tree = target
            .proc
            .as_ref()
            .map(|p| sys::process_tree(p.pid()))
            .unwrap_or_default();
        let json_path = self.paths.work.join(format!(
            "load-{}-{}-{}-{}.json",
            case.scenario,
            self.rounds.len(),
            target.kind.name(),
            round
        ));
        let mut argv = vec![
            self.paths.bin.join("relay-load").display().to_string(),
            "-u".into(),
            target.url(),
            "-c".into(),
            load.connections.to_string(),
            "-d".into(),
            load.duration.to_string(),
            "--warmup".into(),
            load.warmup.to_string(),
            "--timeout".into(),
            load.timeout.to_string(),
            "--json".into(),
            json_path.display().to_string(),
            "--label".into(),
            format!(
                "{}/{}/{}/{}",
                case.scenario,
                case.name,
                load.name,
                target.kind.name()
            ),
            "-q".into(),
        ];
        if let Some(rate) = load.rate {
            argv.extend(["-r".into(), rate.to_string()]);
        }
        if load.stream {
            argv.extend([
                "--stream".into(),
                "--expect-frames".into(),
                load.expect_frames.to_string(),
            ]);
        }
        for (k, v) in &target.headers {
            argv.extend(["-H".into(), format!("{k}: {v}")]);
        }
        let loadavg = sys::loadavg();
        let writer_before = target
            .admin
            .map(|a| (a, procs::admin_metrics(a, targets::ADMIN_TOKEN)));
        let before = (!tree.is_empty()).then(|| sys::sample_all(&tree));
        let mock_before = sys::sample(Some(mock.pid()));
        let jiffies_before = machine_jiffies();
        let sampler = RssSampler::start(tree.clone());
        let started = Instant::now();
        let status = procs::pinned(&argv, harness_cpus).and_then(|mut cmd| {
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .output()
                .map_err(|e| format!("cannot run relay-load: {e}"))
        });
        let wall = started.elapsed().as_secs_f64();
        let rss_peak = sampler.finish();
        let after = (!tree.is_empty()).then(|| sys::sample_all(&tree));
        let mock_after = sys::sample(Some(mock.pid()));
        let jiffies_after = machine_jiffies();
        let writer = writer_before.map(|(admin, metrics)| {
            writer_round(admin, metrics, &tree, before.as_ref().map(|b| b.cpu_ticks))
        });

        let mut error = None;
        let result = match status {
            Err(e) => {
                error = Some(e);
                Value::Null
            }
            Ok(out) if !out.status.success() => {
                error = Some(format!(
                    "relay-load failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                Value::Null
            }
            Ok(_) => match std::fs::read_to_string(&json_path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
            {
                Ok(v) => v,
                Err(e) => {
                    error = Some(format!("cannot read relay-load's result: {e}"));
                    Value::Null
                }
            },
        };
        let mock_ticks = match (mock_before, mock_after) {
            (Some(a), Some(b)) => Some(b.cpu_ticks.saturating_sub(a.cpu_ticks)),
            _ => None,
        };
        let target_ticks = match (before, after) {
            (Some(a), Some(b)) => Some(b.cpu_ticks.saturating_sub(a.cpu_ticks)),
            _ => None,
        };
        let load_ticks = result["self_cpu"]["ticks"].as_u64();
        let harness_util = match (mock_ticks, load_ticks) {
            (Some(m), Some(l)) if wall > 0.0 => {
                Some((m + l) as f64 / (wall * sys::TICKS_PER_SECOND as f64))
            }
            _ => None,
        };
        let foreign_cores = match (jiffies_before, jiffies_after) {
            (Some((b0, _)), Some((b1, _))) if wall > 0.0 => {
                let ours =
                    target_ticks.unwrap_or(0) + mock_ticks.unwrap_or(0) + load_ticks.unwrap_or(0);
                Some(
                    (b1.saturating_sub(b0).saturating_sub(ours)) as f64
                        / (wall * sys::TICKS_PER_SECOND as f64),
                )
            }
            _ => None,
        };
        Round {
            scenario: case.scenario,
            case: case.name.clone(),
            load: load.name.clone(),
            target: target.kind.name(),
            round,
            result,
            target_ticks,
            rss_before_kib: before.map(|s| s.rss_kib),
            rss_after_kib: after.map(|s| s.rss_kib),
            rss_peak_kib: rss_peak,
            mock_ticks,
            harness_util,
            foreign_cores,
            loadavg,
            error,
            writer,
        }
    }
}

fn versions(paths: &Paths) -> Value {
    let bin = |name: &str| paths.bin.join(name).display().to_string();
    let git = procs::version_of(&[
        "git",
        "-C",
        &paths.root.display().to_string(),
        "rev-parse",
        "--short",
        "HEAD",
    ]);
    let dirty = std::process::Command::new("git")
        .args([
            "-C",
            &paths.root.display().to_string(),
            "status",
            "--porcelain",
        ])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    let portkey = std::fs::read_to_string(targets::portkey_dir(paths).join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned));
    let litellm = procs::version_of(&[
        &paths
            .peers
            .join("litellm-venv/bin/python")
            .display()
            .to_string(),
        "-c",
        "import importlib.metadata as m; print(m.version('litellm'))",
    ]);
    json!({
        "git": git.map(|g| if dirty { format!("{g} (dirty tree)") } else { g }),
        "rustc": procs::version_of(&["rustc", "-V"]),
        "relay-gateway": procs::version_of(&[&bin("relay-gateway"), "--version"]),
        "relay-mock": procs::version_of(&[&bin("relay-mock"), "--version"]),
        "relay-load": procs::version_of(&[&bin("relay-load"), "--version"]),
        "nginx": procs::version_of(&["nginx", "-v"]).or_else(|| procs::version_of(&["/usr/sbin/nginx", "-v"])),
        "litellm": litellm,
        "portkey": portkey,
        "node": procs::version_of(&["node", "--version"]),
    })
}

fn utc_stamp() -> String {
    procs::version_of(&["date", "-u", "+%Y%m%dT%H%M%SZ"]).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string()
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = match std::fs::canonicalize(&args.root) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relay-bench: bad --root {}: {e}", args.root.display());
            return ExitCode::FAILURE;
        }
    };
    let bin = args
        .bin_dir
        .clone()
        .unwrap_or_else(|| root.join("target/release"));
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("benches/results"));
    let stamp = format!("{}{}", utc_stamp(), if args.smoke { "-smoke" } else { "" });
    let work = std::env::temp_dir().join(format!("relay-bench-{stamp}"));
    for dir in [&out_dir, &work] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("relay-bench: cannot create {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    for name in ["relay-mock", "relay-gateway", "relay-load"] {
        if !bin.join(name).is_file() {
            eprintln!(
                "relay-bench: {} missing: build with `cargo build --release -p relay-benches -p relay-gateway -p relay-mock`",
                bin.join(name).display()
            );
            return ExitCode::FAILURE;
        }
    }
    let selected: Vec<&'static str> = if args.scenarios.is_empty() {
        scenarios::ALL.to_vec()
    } else {
        let mut v = Vec::new();
        for s in &args.scenarios {
            match scenarios::ALL.iter().find(|a| **a == s.as_str()) {
                Some(a) => v.push(*a),
                None => {
                    eprintln!(
                        "relay-bench: unknown scenario {s:?}; known: {}",
                        scenarios::ALL.join(", ")
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
        v
    };
    procs::stop_all_on_signal();
    let is_root = procs::version_of(&["id", "-u"]).is_some_and(|u| u == "0");
    let nice = if args.nice < 0 && !is_root {
        0
    } else {
        args.nice
    };
    procs::set_nice(nice);
    let machine = sys::machine();
    let pin = !args.no_pin && machine.nproc >= 2;
    let load = sys::loadavg();
    let load1 = load.map_or(0.0, |l| l[0]);
    let mut notes = Vec::new();
    eprintln!(
        "relay-bench: {} x {}, kernel {}, load average {:?}",
        machine.nproc, machine.cpu_model, machine.kernel, load
    );
    let busy = load1 > args.max_load;
    if busy {
        let msg = format!(
            "the 1-minute load average was {load1:.2} at the start (limit {:.2}): other work shares the CPUs, so absolute figures are noisy",
            args.max_load
        );
        if args.smoke || args.allow_busy {
            eprintln!("relay-bench: WARNING: {msg}; continuing (flagged)");
            notes.push(format!("BUSY MACHINE: {msg}."));
        } else {
            eprintln!(
                "relay-bench: refusing to start: {msg}. Wait for a quiet machine, or pass --allow-busy to run anyway (the results are flagged)."
            );
            return ExitCode::from(2);
        }
    }
    if !pin {
        notes.push("Processes were not pinned (fewer than 2 CPUs or --no-pin).".into());
    }
    if args.no_nginx {
        notes.push(
            "NO NGINX: the nginx floor was not run (not installed); ratios to nginx are missing."
                .into(),
        );
    }
    let paths = Paths {
        root: root.clone(),
        bin,
        work,
        peers: root.join("benches/.peers"),
        pg_url: args.pg_url.clone(),
    };
    let mut bench = Bench {
        pin,
        paths,
        rounds: Vec::new(),
        idle: Vec::new(),
        notes,
        broken: Vec::new(),
        stamp,
        args,
    };
    let started = Instant::now();
    for name in &selected {
        for case in scenarios::cases(name, bench.args.smoke, bench.args.rounds) {
            bench.run_case(&case);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let load_end = sys::loadavg();

    // Broken harness: a required target answered nothing in some load.
    for r in &bench.rounds {
        if let Some(e) = &r.error {
            bench.broken.push(format!(
                "{}/{}/{}/{} round {}: {e}",
                r.scenario, r.case, r.load, r.target, r.round
            ));
        } else if r.result["results"]["ok"].as_u64() == Some(0)
            && (matches!(r.target, "direct" | "nginx") || r.target.starts_with("relay"))
        {
            bench.broken.push(format!(
                "{}/{}/{}/{} round {}: no successful answer ({})",
                r.scenario, r.case, r.load, r.target, r.round, r.result["results"]["first_errors"]
            ));
        }
    }

    let aggregates = report::aggregate(&bench.rounds);
    let budgets = report::budgets(&aggregates, &bench.idle);
    let versions = versions(&bench.paths);
    let doc = json!({
        "tool": "relay-bench",
        "stamp": bench.stamp,
        "smoke": bench.args.smoke,
        "peers": bench.args.peers,
        "scenarios": selected,
        "rounds_per_load": if bench.args.smoke { 2 } else { bench.args.rounds },
        "machine": machine,
        "nice": nice,
        "pinning": if pin { json!({"targets": "CPU 0", "mock_and_load_generator": "CPU 1"}) } else { Value::Null },
        "database": bench.args.pg_url.as_ref().map(|_| json!({
            "placement": bench.args.pg_placement.clone().unwrap_or_else(|| "not given".into()),
        })),
        "loadavg_start": load,
        "loadavg_end": load_end,
        "busy": busy,
        "elapsed_s": elapsed,
        "versions": versions,
        "configs": {
            "gateway": targets::gateway_config(
                std::net::SocketAddr::from(([127, 0, 0, 1], bench.args.port_base + 2)),
                targets::mock_addr(bench.args.port_base),
            ),
            "nginx_template": "benches/nginx/nginx.conf.template",
            "litellm": targets::litellm_config(targets::mock_addr(bench.args.port_base)),
            "litellm_version": targets::LITELLM_VERSION,
            "portkey_version": targets::PORTKEY_VERSION,
        },
        "notes": bench.notes,
        "broken": bench.broken,
        "idle": bench.idle,
        "aggregates": aggregates,
        "budgets": budgets,
        "rounds": bench.rounds.iter().map(report::round_json).collect::<Vec<_>>(),
    });
    let markdown = report::markdown(&doc);
    let json_path = out_dir.join(format!("{}.json", bench.stamp));
    let md_path = out_dir.join(format!("{}.md", bench.stamp));
    let written = serde_json::to_string_pretty(&doc)
        .map_err(|e| e.to_string())
        .and_then(|t| std::fs::write(&json_path, t + "\n").map_err(|e| e.to_string()))
        .and_then(|()| std::fs::write(&md_path, &markdown).map_err(|e| e.to_string()));
    if let Err(e) = written {
        eprintln!("relay-bench: cannot write the results: {e}");
        return ExitCode::FAILURE;
    }
    println!("{markdown}");
    eprintln!(
        "relay-bench: {:.0} s; results in {} and {}",
        elapsed,
        json_path.display(),
        md_path.display()
    );
    // The targets' logs (warnings such as a failed upstream attempt explain outliers)
    // are kept beside the results; the rest of the work directory goes.
    let logs = out_dir.join(format!("{}-logs", bench.stamp));
    if let Ok(entries) = std::fs::read_dir(&bench.paths.work) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log")
                && std::fs::create_dir_all(&logs).is_ok()
            {
                let _ = std::fs::copy(&path, logs.join(entry.file_name()));
            }
        }
    }
    if bench.broken.is_empty() {
        let _ = std::fs::remove_dir_all(&bench.paths.work);
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "relay-bench: the harness is BROKEN (logs kept in {}):",
            bench.paths.work.display()
        );
        for b in &bench.broken {
            eprintln!("  - {b}");
        }
        ExitCode::FAILURE
    }
}
