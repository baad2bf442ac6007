//! Starting, pinning, probing and stopping the processes of a run: the mock,
//! the targets (nginx, the gateway, the peers) and the load generator.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `argv`, pinned to `cpus` (a `taskset -c` list) when given,
    /// with stdout and stderr going to `log`.
    pub(crate) fn spawn(
        name: &str,
        argv: &[String],
        cpus: Option<&str>,
        log: &Path,
        env: &[(String, String)],
        dir: Option<&Path>,
    ) -> Result<Proc, String> {
        let out = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot dup {}: {e}", log.display()))?;
        let mut cmd = pinned(argv, cpus)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // A target gets a database only by its own arguments: relay-gateway reads
        // DATABASE_URL, which run.sh's throwaway PostgreSQL exports, and the embedded
        // SQLite target would otherwise be one more Postgres target.
        cmd.env_remove("DATABASE_URL");
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({}): {e}", argv.join(" ")))?;
        CHILDREN.lock().push(child.id());
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of its log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL.
    pub(crate) fn stop(&mut self) {
        let pid = self.pid();
        CHILDREN.lock().retain(|&p| p != pid);
        if !self.alive() {
            return;
        }
        signal_pid(pid, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Niceness every benchmark process runs at (0: unchanged); set once at
/// start. A negative value keeps other work on a shared machine from
/// delaying the measured processes' wake-ups.
static NICE: AtomicI32 = AtomicI32::new(0);

/// Sets the niceness of the processes started from now on.
pub(crate) fn set_nice(nice: i32) {
    NICE.store(nice, Ordering::Relaxed);
}

/// Children alive, stopped by [`stop_all_on_signal`] on SIGINT or SIGTERM.
static CHILDREN: parking_lot::Mutex<Vec<u32>> = parking_lot::Mutex::new(Vec::new());

fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Sends `signal` (e.g. `"-STOP"`) to every process of `pids` at once.
pub(crate) fn signal_all(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// On SIGINT or SIGTERM: stop every child still running, then exit 130.
pub(crate) fn stop_all_on_signal() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        let pids: Vec<u32> = CHILDREN.lock().clone();
        eprintln!(
            "relay-bench: interrupted; stopping {} processes",
            pids.len()
        );
        for pid in pids {
            // Paused targets (and their workers) must run to handle TERM.
            signal_all(&relay_benches::sys::process_tree(pid), "-CONT");
            signal_pid(pid, "-TERM");
        }
        std::process::exit(130);
    });
}

/// A command for `argv`, under `taskset -c CPUS` when pinned and under
/// `nice` when a niceness is set.
pub(crate) fn pinned(argv: &[String], cpus: Option<&str>) -> Result<Command, String> {
    let mut full: Vec<String> = Vec::new();
    if let Some(cpus) = cpus {
        full.extend(["taskset".into(), "-c".into(), cpus.to_owned()]);
    }
    let nice = NICE.load(Ordering::Relaxed);
    if nice != 0 {
        full.extend(["nice".into(), "-n".into(), nice.to_string()]);
    }
    full.extend(argv.iter().cloned());
    let (program, args) = full.split_first().ok_or("empty command")?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    Ok(cmd)
}

/// Whether a program can be run (found on PATH or as a path).
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether nothing listens on `addr`.
pub(crate) fn port_free(addr: SocketAddr) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

/// One blocking HTTP/1.1 POST with `Connection: close`; the status code.
pub(crate) fn probe(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "no HTTP status in {:?}",
                text.chars().take(200).collect::<String>()
            )
        })
}

/// The Prometheus text of a gateway's `/admin/metrics` as name → value (samples
/// without labels only).
pub(crate) fn admin_metrics(
    addr: SocketAddr,
    token: &str,
) -> Result<std::collections::HashMap<String, f64>, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET /admin/metrics HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("no HTTP response from the admin listener")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(format!(
            "admin metrics: {}",
            head.lines().next().unwrap_or("no status line")
        ));
    }
    Ok(parse_metrics(body))
}

/// Prometheus text → name → value, for samples without labels.
fn parse_metrics(body: &str) -> std::collections::HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            (!name.contains('{')).then_some(())?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Waits until `addr` answers `path` with a 2xx (or `timeout` passes, or
/// the process dies).
pub(crate) fn wait_ready(
    proc: &mut Proc,
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    body: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not tried");
    while Instant::now() < deadline {
        if !proc.alive() {
            return Err(format!(
                "{} exited during start-up; its log ends with:\n{}",
                proc.name,
                proc.log_tail()
            ));
        }
        match probe(addr, path, headers, body) {
            Ok(status) if (200..300).contains(&status) => return Ok(()),
            Ok(status) => last = format!("HTTP {status}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{} not ready on {addr} after {timeout:?} (last: {last}); its log ends with:\n{}",
        proc.name,
        proc.log_tail()
    ))
}

/// First line of `argv`'s output (stdout, else stderr), for versions.
pub(crate) fn version_of(argv: &[&str]) -> Option<String> {
    let (program, args) = argv.split_first()?;
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::parse_metrics;

    #[test]
    fn metrics_text_is_read_by_name() {
        let m = parse_metrics(
            "# TYPE relay_usage_queue_depth gauge\nrelay_usage_queue_depth 12\n\
             relay_usage_spilled_total 3\nlabelled{a=\"b\"} 1\nbroken\n",
        );
        assert_eq!(m.get("relay_usage_queue_depth"), Some(&12.0));
        assert_eq!(m.get("relay_usage_spilled_total"), Some(&3.0));
        assert_eq!(m.len(), 2, "{m:?}");
    }
}
