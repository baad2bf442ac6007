//! Machine facts and per-process samples from procfs (Linux). Every reader
//! returns `None` (or an empty value) where procfs is missing.

use std::fs;

use serde::Serialize;

/// Clock ticks per second of `/proc/PID/stat` times (Linux `USER_HZ`).
pub const TICKS_PER_SECOND: u64 = 100;

/// What machine a run happened on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Online CPUs (`processor` lines of `/proc/cpuinfo`).
    pub nproc: usize,
    /// CPU model name.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// Total memory, KiB.
    pub mem_total_kib: u64,
}

/// The machine this process runs on.
pub fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let nproc = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
        .max(std::thread::available_parallelism().map_or(1, usize::from));
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
    let mem_total_kib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| status_kib(&m, "MemTotal:"))
        .unwrap_or(0);
    Machine {
        nproc,
        cpu_model,
        kernel,
        mem_total_kib,
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    Some([it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?])
}

/// The CPUs a process may run on (`Cpus_allowed_list`, e.g. `"0-1"`).
pub fn affinity(pid: Option<u32>) -> Option<String> {
    let status = fs::read_to_string(status_path(pid)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

fn status_path(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    }
}

fn status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// One sample of a process's CPU time and memory.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProcSample {
    /// utime + stime, in [`TICKS_PER_SECOND`] ticks.
    pub cpu_ticks: u64,
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size, KiB (`VmHWM`).
    pub hwm_kib: u64,
    /// Threads.
    pub threads: u64,
}

impl ProcSample {
    /// Adds another process's sample (for a process tree).
    pub fn add(&mut self, other: ProcSample) {
        self.cpu_ticks += other.cpu_ticks;
        self.rss_kib += other.rss_kib;
        self.hwm_kib += other.hwm_kib;
        self.threads += other.threads;
    }
}

/// `(utime + stime, ppid)` of a process, from `/proc/PID/stat`.
fn stat_fields(pid: Option<u32>) -> Option<(u64, u32)> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = fs::read_to_string(path).ok()?;
    // Fields after `(comm)`, which may contain spaces: state is field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid: u32 = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime, ppid))
}

/// A sample of one process (`None`: this process).
pub fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let (cpu_ticks, _) = stat_fields(pid)?;
    let status = fs::read_to_string(status_path(pid)).ok()?;
    Some(ProcSample {
        cpu_ticks,
        rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
        threads: status_kib(&status, "Threads:").unwrap_or(0),
    })
}

/// `pid` and all its descendants.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((_, ppid)) = stat_fields(Some(child)) {
                parents.push((child, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree
}

/// The summed sample of `pids` (processes that vanished count as zero).
pub fn sample_all(pids: &[u32]) -> ProcSample {
    let mut total = ProcSample::default();
    for &pid in pids {
        if let Some(s) = sample(Some(pid)) {
            total.add(s);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_sampled() {
        if fs::metadata("/proc/self/stat").is_err() {
            return;
        }
        let s = sample(None).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.threads >= 1);
        assert!(process_tree(std::process::id()).contains(&std::process::id()));
        assert!(loadavg().is_some());
        assert!(machine().nproc >= 1);
    }
}
