//! The spill file: rows the database could not take, appended as JSON lines to a local
//! file and replayed later. Appends go to `usage-spill.jsonl`; a replay first renames it
//! to `usage-replay-<n>.jsonl` (under the same lock as appends), so appends during a
//! replay start a new file and nothing is read half-written. Blocking I/O: call from a
//! blocking thread.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::model::UsageRow;

const ACTIVE: &str = "usage-spill.jsonl";
const REPLAY_PREFIX: &str = "usage-replay-";

/// The spill directory.
#[derive(Debug)]
pub(crate) struct Spill {
    dir: PathBuf,
    lock: Mutex<u64>,
}

impl Spill {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Spill {
            dir,
            lock: Mutex::new(0),
        }
    }

    /// Append rows and sync them to disk.
    pub(crate) fn append(&self, rows: &[UsageRow]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(rows.len() * 400);
        for r in rows {
            serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let _guard = self.lock.lock();
        std::fs::create_dir_all(&self.dir)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(ACTIVE))?;
        f.write_all(&buf)?;
        f.sync_data()
    }

    /// Whether anything waits for replay.
    pub(crate) fn pending(&self) -> bool {
        let _guard = self.lock.lock();
        !self.files_locked().is_empty() || self.dir.join(ACTIVE).exists()
    }

    /// Freeze the active file for replay; returns every file waiting, oldest first.
    pub(crate) fn take(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut n = self.lock.lock();
        let active = self.dir.join(ACTIVE);
        if active.exists() {
            *n += 1;
            let stamp = crate::now_ms();
            std::fs::rename(
                &active,
                self.dir
                    .join(format!("{REPLAY_PREFIX}{stamp:016}-{:06}.jsonl", *n)),
            )?;
        }
        Ok(self.files_locked())
    }

    fn files_locked(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(REPLAY_PREFIX))
            })
            .collect();
        files.sort();
        files
    }
}

/// Read a spill file: its rows, and the number of lines that did not parse (a line torn
/// by a crash mid-write).
pub(crate) fn read(path: &Path) -> std::io::Result<(Vec<UsageRow>, u64)> {
    let f = std::fs::File::open(path)?;
    let mut rows = Vec::new();
    let mut bad = 0;
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(r) => rows.push(r),
            Err(_) => bad += 1,
        }
    }
    Ok((rows, bad))
}
