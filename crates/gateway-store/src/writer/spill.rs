//! The spill file: rows the database could not take, kept in local files and replayed
//! later. Two kinds, side by side:
//! - rows without a quota hold (nearly all of them) as the writer's own [tuples](crate::tuple),
//!   appended buffer by buffer to `usage-spill.tuples` in frames (a magic, a length, the
//!   bytes): no encoding work, so a writer that falls behind the relay spills at disk
//!   speed; the file is rolled over for replay at [`ROLL_BYTES`], so a replay reads a
//!   bounded file;
//! - rows with a hold, and rows the shards refused, as JSON lines in `usage-spill.jsonl`
//!   (the format of older gateways, still read).
//!
//! Rows the database refuses for good (a constraint, a trigger) are set aside in
//! `usage-refused.jsonl`, which is never replayed by itself.
//!
//! A replay first renames the active files to `usage-replay-<stamp>-<n>.<kind>` (under
//! the same lock as appends), so appends during a replay start new files and nothing is
//! read half-written. Blocking I/O: call from a blocking thread.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::model::UsageRow;
use crate::tuple;

const ACTIVE: &str = "usage-spill.jsonl";
const ACTIVE_TUPLES: &str = "usage-spill.tuples";
const REPLAY_PREFIX: &str = "usage-replay-";
/// Rows the database refused for good (see [`Spill::set_aside`]).
pub(crate) const REFUSED: &str = "usage-refused.jsonl";
/// Where a frame of tuples starts.
const FRAME_MAGIC: [u8; 4] = *b"RTU1";
/// A tuple file this large is rolled over for replay (about 50,000 rows).
pub(crate) const ROLL_BYTES: u64 = 16 << 20;

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

    /// Append rows and sync them to disk. All or nothing: a failed append is cut back
    /// off the file.
    pub(crate) fn append(&self, rows: &[UsageRow]) -> std::io::Result<()> {
        self.append_json(ACTIVE, rows)
    }

    /// Set aside rows the database refused for good, in [`REFUSED`] (JSON lines, as
    /// [`Spill::append`]). Never replayed by itself: an operator who fixed the cause
    /// renames the file to `usage-replay-<anything>.jsonl` to have it replayed.
    pub(crate) fn set_aside(&self, rows: &[UsageRow]) -> std::io::Result<()> {
        self.append_json(REFUSED, rows)
    }

    fn append_json(&self, file: &str, rows: &[UsageRow]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(rows.len() * 400);
        for r in rows {
            serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let _guard = self.lock.lock();
        self.append_locked(file, |out| out.write_all(&buf))
            .map(|_| ())
    }

    /// Append buffers of tuples, a frame each, and sync them to disk. The buffers are
    /// written as they are (no copy). All or nothing, as [`Spill::append`]. A file past
    /// [`ROLL_BYTES`] is frozen for replay.
    pub(crate) fn append_tuples(&self, bufs: &[Vec<u8>]) -> std::io::Result<()> {
        let mut n = self.lock.lock();
        let len = self.append_locked(ACTIVE_TUPLES, |out| {
            for buf in bufs.iter().filter(|b| !b.is_empty()) {
                let len = u32::try_from(buf.len()).map_err(std::io::Error::other)?;
                out.write_all(&FRAME_MAGIC)?;
                out.write_all(&len.to_le_bytes())?;
                out.write_all(buf)?;
            }
            Ok(())
        })?;
        if len >= ROLL_BYTES
            && let Err(e) = self.freeze(&mut n, ACTIVE_TUPLES, "tuples")
        {
            // The rows are on disk: the file is frozen by the next replay instead.
            tracing::warn!(error = %e, "cannot roll the usage spill file over");
        }
        Ok(())
    }

    /// Append to an active file under the lock, then sync it; the file's length after.
    /// On any failure the file is cut back to its length before, so a torn record never
    /// sits in front of later ones.
    fn append_locked(
        &self,
        active: &str,
        write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        std::fs::create_dir_all(&self.dir)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(active))?;
        let before = f.metadata()?.len();
        let written = (|| {
            let mut out = std::io::BufWriter::with_capacity(64 << 10, &f);
            write(&mut out)?;
            out.flush()?;
            drop(out);
            f.sync_data()?;
            f.metadata().map(|m| m.len())
        })();
        if written.is_err() {
            let _ = f.set_len(before);
        }
        written
    }

    /// At start: freeze the active files a previous run left (a crash may have torn
    /// their last record, which must stay the last), so new appends start new files;
    /// whether anything waits for replay.
    pub(crate) fn recover(&self) -> bool {
        let mut n = self.lock.lock();
        for (active, kind) in [(ACTIVE, "jsonl"), (ACTIVE_TUPLES, "tuples")] {
            if let Err(e) = self.freeze(&mut n, active, kind) {
                tracing::error!(error = %e, file = active, "cannot freeze a spill file left by an earlier run");
            }
        }
        !self.files_locked().is_empty()
            || self.dir.join(ACTIVE).exists()
            || self.dir.join(ACTIVE_TUPLES).exists()
    }

    /// Freeze the active files for replay; returns every file waiting, oldest first.
    pub(crate) fn take(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut n = self.lock.lock();
        self.freeze(&mut n, ACTIVE, "jsonl")?;
        self.freeze(&mut n, ACTIVE_TUPLES, "tuples")?;
        Ok(self.files_locked())
    }

    /// Rename an active file (if there is one) to the next replay name.
    fn freeze(&self, n: &mut u64, active: &str, kind: &str) -> std::io::Result<()> {
        let active = self.dir.join(active);
        if !active.exists() {
            return Ok(());
        }
        *n += 1;
        let stamp = crate::now_ms();
        std::fs::rename(
            &active,
            self.dir
                .join(format!("{REPLAY_PREFIX}{stamp:016}-{:06}.{kind}", *n)),
        )
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

/// Whether a replay file holds tuples (else JSON lines).
pub(crate) fn is_tuples(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tuples")
}

/// A frame of tuples read back, and how many rows it holds.
pub(crate) type Frame = (Vec<u8>, usize);

/// Read a tuple spill file: its frames, and how many frames were unreadable (a frame
/// torn by a crash mid-write ends the file; a frame whose tuples do not read back is
/// skipped).
pub(crate) fn read_tuples(path: &Path) -> std::io::Result<(Vec<Frame>, u64)> {
    let file = std::fs::File::open(path)?;
    let mut left = file.metadata()?.len();
    let mut f = std::io::BufReader::new(file);
    let mut frames = Vec::new();
    let mut bad = 0;
    loop {
        let mut head = [0u8; 8];
        match read_full(&mut f, &mut head)? {
            0 => break,
            8 if head[..4] == FRAME_MAGIC => {}
            _ => {
                bad += 1;
                break;
            }
        }
        left = left.saturating_sub(8);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if u64::from(len) > left {
            // Torn, or a damaged length: never allocate past what the file holds.
            bad += 1;
            break;
        }
        left -= u64::from(len);
        let len = len as usize;
        let mut buf = vec![0u8; len];
        if read_full(&mut f, &mut buf)? < len {
            bad += 1;
            break;
        }
        let mut rows = 0;
        if tuple::rows(&buf).all(|r| {
            rows += 1;
            r.is_ok()
        }) {
            frames.push((buf, rows));
        } else {
            bad += 1;
        }
    }
    Ok((frames, bad))
}

/// Read until `buf` is full or the file ends; how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// Read a JSON spill file: its rows, and the number of lines that did not parse (a line
/// torn by a crash mid-write).
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

#[cfg(test)]
mod tests {
    use relay_core::{DialectId, Operation, UsageRecord};

    use super::*;
    use crate::tuple::RowRef;

    fn tuples(from: usize, n: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        for i in from..from + n {
            let r = UsageRecord::new(
                format!("req_{i}"),
                "m".into(),
                DialectId::OPENAI_CHAT,
                Operation::Chat,
            );
            assert!(RowRef::of_record(&r, 0).encode(&mut buf));
        }
        buf
    }

    fn dir() -> PathBuf {
        std::env::temp_dir().join(format!("relay-spill-unit-{:08x}", rand::random::<u32>()))
    }

    /// Append a frame by hand to the active tuple file: a head claiming `len` bytes, then
    /// `bytes` (fewer, for a torn frame).
    fn append_frame(d: &Path, len: u32, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join(ACTIVE_TUPLES))
            .unwrap();
        f.write_all(&FRAME_MAGIC).unwrap();
        f.write_all(&len.to_le_bytes()).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn tuples_come_back_frame_by_frame_and_a_torn_tail_is_skipped() {
        let d = dir();
        let spill = Spill::new(d.clone());
        spill
            .append_tuples(&[tuples(0, 3), Vec::new(), tuples(3, 2)])
            .unwrap();
        spill.append_tuples(&[tuples(5, 4)]).unwrap();
        assert!(d.join(ACTIVE_TUPLES).exists());
        // A crash mid-append: a frame's head and half its bytes.
        let torn = tuples(9, 2);
        append_frame(&d, torn.len() as u32, &torn[..torn.len() / 2]);
        let files = spill.take().unwrap();
        assert_eq!(files.len(), 1);
        assert!(is_tuples(&files[0]));
        let (frames, bad) = read_tuples(&files[0]).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(
            frames.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            [3, 2, 4]
        );
        let ids: Vec<String> = frames
            .iter()
            .flat_map(|(b, _)| tuple::rows(b).map(|r| r.unwrap().request_id.to_owned()))
            .collect();
        assert_eq!(ids, (0..9).map(|i| format!("req_{i}")).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_torn_by_a_crash_is_frozen_at_start_so_later_rows_are_not_behind_the_tear() {
        let d = dir();
        let before = Spill::new(d.clone());
        before.append_tuples(&[tuples(0, 2)]).unwrap();
        append_frame(&d, 1000, b"torn");
        // The next run: the torn file is frozen before anything is appended.
        let after = Spill::new(d.clone());
        assert!(after.recover());
        assert!(!d.join(ACTIVE_TUPLES).exists());
        after.append_tuples(&[tuples(2, 3)]).unwrap();
        let files = after.take().unwrap();
        assert_eq!(files.len(), 2);
        let read: Vec<(usize, u64)> = files
            .iter()
            .map(|f| {
                let (frames, bad) = read_tuples(f).unwrap();
                (frames.iter().map(|(_, n)| n).sum(), bad)
            })
            .collect();
        assert_eq!(read, [(2, 1), (3, 0)]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_frame_length_ends_the_read_without_a_huge_allocation() {
        let d = dir();
        let spill = Spill::new(d.clone());
        spill.append_tuples(&[tuples(0, 2)]).unwrap();
        append_frame(&d, u32::MAX, &tuples(2, 1));
        let files = spill.take().unwrap();
        let (frames, bad) = read_tuples(&files[0]).unwrap();
        assert_eq!((frames.len(), frames[0].1, bad), (1, 2, 1));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_frame_that_does_not_read_back_is_skipped_and_the_rest_kept() {
        let d = dir();
        let spill = Spill::new(d.clone());
        let mut garbled = tuples(0, 2);
        garbled.truncate(garbled.len() - 3);
        spill
            .append_tuples(&[tuples(10, 1), garbled, tuples(20, 1)])
            .unwrap();
        let files = spill.take().unwrap();
        let (frames, bad) = read_tuples(&files[0]).unwrap();
        assert_eq!((frames.len(), bad), (2, 1));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_large_tuple_file_is_frozen_for_replay_and_json_rows_sit_beside_it() {
        let d = dir();
        let spill = Spill::new(d.clone());
        let one = tuples(0, 1000);
        let per = one.len() as u64;
        let appends = ROLL_BYTES / per + 1;
        let bufs: Vec<Vec<u8>> = (0..appends).map(|_| one.clone()).collect();
        spill.append_tuples(&bufs).unwrap();
        // Rolled: nothing active, one frozen file waiting.
        assert!(!d.join(ACTIVE_TUPLES).exists());
        spill.append_tuples(&[tuples(0, 1)]).unwrap();
        let row = RowRef::of_record(
            &UsageRecord::new(
                "held".into(),
                "m".into(),
                DialectId::OPENAI_CHAT,
                Operation::Chat,
            ),
            0,
        )
        .to_row(None);
        spill.append(&[row]).unwrap();
        let files = spill.take().unwrap();
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(is_tuples(&files[0]) && read_tuples(&files[0]).unwrap().0.len() == bufs.len());
        assert_eq!(files.iter().filter(|f| !is_tuples(f)).count(), 1);
        let json = files.iter().find(|f| !is_tuples(f)).unwrap();
        assert_eq!(read(json).unwrap().0[0].request_id, "held");
        let _ = std::fs::remove_dir_all(&d);
    }
}
