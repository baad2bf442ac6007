//! Where settled rows wait for the writer: one buffer per shard, each thread appending to
//! its own shard under an uncontended lock.
//!
//! A request's record is encoded into its thread's shard as a [tuple](crate::tuple) (a
//! few hundred bytes appended to a buffer that keeps its capacity), and its strings are
//! freed on the thread that allocated them. The writer takes a shard's whole buffer by
//! swapping in an empty one, so a lock is held for a pointer swap, never for a copy.
//! Per request there is no channel message, no allocation and no wake-up: the writer
//! gathers on its own clock and is woken only when it went idle (the first row after a
//! quiet spell) or a shard passes half its capacity. Rows with a quota hold to settle
//! wait beside the tuples as owned rows. A full shard refuses the row; the caller sends
//! it to the overflow spill.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::model::UsageRow;
use crate::tuple::RowRef;

/// What one shard holds.
#[derive(Debug, Default)]
pub(super) struct Shard {
    /// Encoded rows (tuples) without a hold.
    tuples: Vec<u8>,
    /// How many rows `tuples` holds.
    rows: usize,
    /// Rows with a quota hold to settle.
    held: Vec<UsageRow>,
}

/// A shard on its own cache lines, so threads appending to neighbouring shards do not
/// contend for one line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// Everything a pass takes out of the shards.
#[derive(Debug, Default)]
pub(super) struct Taken {
    /// Buffers of tuples, one per shard that had any.
    pub(super) bufs: Vec<Vec<u8>>,
    /// Rows in `bufs`.
    pub(super) rows: usize,
    /// Rows with a hold.
    pub(super) held: Vec<UsageRow>,
}

impl Taken {
    /// Rows of both kinds.
    pub(super) fn len(&self) -> usize {
        self.rows + self.held.len()
    }

    /// Empty the buffers for reuse, keeping their capacity; a buffer that grew past
    /// [`SPARE_KEEP`] (a backlog while the database was slow), or past
    /// [`SPARE_COUNT`] spares, is freed instead, so a burst does not stay resident.
    pub(super) fn clear(&mut self, spare: &mut Vec<Vec<u8>>) {
        for mut b in self.bufs.drain(..) {
            if b.capacity() <= SPARE_KEEP && spare.len() < SPARE_COUNT {
                b.clear();
                spare.push(b);
            }
        }
        self.rows = 0;
        self.held.clear();
    }
}

/// The shards and the writer's wake-up.
#[derive(Debug)]
pub(super) struct Shards {
    shards: Box<[Padded]>,
    /// Bytes of tuples a shard takes at most.
    cap_bytes: usize,
    /// Held rows a shard takes at most.
    cap_held: usize,
    /// Set by the writer before it waits with nothing to do.
    idle: AtomicBool,
    /// Set when a shard passed half its capacity, until the writer's next pass.
    pressed: AtomicBool,
    wake: Notify,
}

/// Each thread's shard index, assigned round robin at its first row.
static NEXT_INDEX: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

fn thread_index() -> usize {
    INDEX.with(|i| match i.get() {
        Some(n) => n,
        None => {
            let n = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
            i.set(Some(n));
            n
        }
    })
}

/// Capacity a reused buffer may keep: about 3,000 rows, more than a shard gathers in
/// one flush interval at 50k requests a second.
const SPARE_KEEP: usize = 1 << 20;

/// Spare buffers kept at most (a long stall collects one per shard per tick).
const SPARE_COUNT: usize = 16;

/// Bytes a tuple takes on average (for sizing a byte cap from a row count).
pub(super) const TUPLE_BYTES: usize = 320;

impl Shards {
    /// `count` shards sharing a capacity of about `rows` rows.
    pub(super) fn new(count: usize, rows: usize) -> Self {
        let count = count.max(1);
        let per_shard = (rows / count).max(64);
        Shards {
            shards: (0..count).map(|_| Padded::default()).collect(),
            cap_bytes: per_shard * TUPLE_BYTES,
            cap_held: per_shard,
            idle: AtomicBool::new(false),
            pressed: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn mine(&self) -> &Mutex<Shard> {
        &self.shards[thread_index() % self.shards.len()].0
    }

    /// Append a row without a hold; false when this thread's shard is full.
    pub(super) fn push_tuple(&self, row: &RowRef<'_>) -> bool {
        let mut shard = self.mine().lock();
        if shard.tuples.len() >= self.cap_bytes {
            return false;
        }
        if !row.encode(&mut shard.tuples) {
            return false;
        }
        shard.rows += 1;
        let half = shard.tuples.len() >= self.cap_bytes / 2;
        // Read under the shard's lock: the writer marks itself idle before it looks
        // at the shards under their locks, so either it sees this row or this sees
        // the mark.
        let idle = self.idle.load(Ordering::Relaxed);
        drop(shard);
        self.nudge(idle, half);
        true
    }

    /// Append a row with a hold; the row back (`Some`) when this thread's shard is full.
    pub(super) fn push_held(&self, row: UsageRow) -> Option<UsageRow> {
        let mut shard = self.mine().lock();
        if shard.held.len() >= self.cap_held {
            return Some(row);
        }
        shard.held.push(row);
        let half = shard.held.len() >= self.cap_held / 2;
        let idle = self.idle.load(Ordering::Relaxed);
        drop(shard);
        self.nudge(idle, half);
        None
    }

    /// Wake the writer if it is idle, or if a shard is filling up.
    fn nudge(&self, idle: bool, half: bool) {
        let wake = (idle && self.idle.swap(false, Ordering::AcqRel))
            || (half && !self.pressed.swap(true, Ordering::AcqRel));
        if wake {
            self.wake.notify_one();
        }
    }

    /// Move every shard's rows into `out`, swapping buffers from `spare` in.
    pub(super) fn take(&self, out: &mut Taken, spare: &mut Vec<Vec<u8>>) {
        self.pressed.store(false, Ordering::Release);
        for padded in self.shards.iter() {
            let mut shard = padded.0.lock();
            if shard.rows > 0 {
                let mut fresh = spare.pop().unwrap_or_default();
                std::mem::swap(&mut shard.tuples, &mut fresh);
                out.bufs.push(fresh);
                out.rows += shard.rows;
                shard.rows = 0;
            }
            if !shard.held.is_empty() {
                out.held.append(&mut shard.held);
            }
        }
    }

    /// Rows waiting in every shard.
    pub(super) fn depth(&self) -> usize {
        self.shards
            .iter()
            .map(|p| {
                let s = p.0.lock();
                s.rows + s.held.len()
            })
            .sum()
    }

    /// Mark the writer idle (the next row wakes it). Returns false when rows arrived
    /// meanwhile, so the writer should not wait. The mark is set before the shards are
    /// looked at under their locks (see `push_tuple`).
    pub(super) fn go_idle(&self) -> bool {
        self.idle.store(true, Ordering::Relaxed);
        if self.depth() > 0 {
            self.idle.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// Clear the idle mark (the writer woke for another reason).
    pub(super) fn busy(&self) {
        self.idle.store(false, Ordering::Release);
    }

    /// Wait for a nudge.
    pub(super) async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use relay_core::{DialectId, Operation, UsageRecord};

    use super::*;

    fn record(id: &str) -> UsageRecord {
        UsageRecord::new(
            id.into(),
            "m".into(),
            DialectId::OPENAI_CHAT,
            Operation::Chat,
        )
    }

    #[test]
    fn rows_from_several_threads_are_all_taken_once() {
        let shards = std::sync::Arc::new(Shards::new(4, 100_000));
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let shards = shards.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let r = record(&format!("req_{t}_{i}"));
                        assert!(shards.push_tuple(&RowRef::of_record(&r, 0)));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(shards.depth(), 3000);
        let mut taken = Taken::default();
        let mut spare = Vec::new();
        shards.take(&mut taken, &mut spare);
        assert_eq!(taken.rows, 3000);
        let mut ids: Vec<String> = taken
            .bufs
            .iter()
            .flat_map(|b| crate::tuple::rows(b).map(|r| r.unwrap().request_id.to_owned()))
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3000);
        assert_eq!(shards.depth(), 0);
        // The buffers go back as spares with their capacity, and are reused.
        taken.clear(&mut spare);
        assert!(!spare.is_empty());
        assert!(spare.iter().all(|b| b.is_empty() && b.capacity() > 0));
        // One grown past the limit is freed, not kept.
        taken.bufs.push(Vec::with_capacity(SPARE_KEEP + 1));
        let kept = spare.len();
        taken.clear(&mut spare);
        assert_eq!(spare.len(), kept);
        let r = record("again");
        assert!(shards.push_tuple(&RowRef::of_record(&r, 0)));
        shards.take(&mut taken, &mut spare);
        assert_eq!(taken.rows, 1);
    }

    #[test]
    fn a_full_shard_refuses_rows() {
        let shards = Shards::new(1, 64);
        let r = record("req_full");
        let mut pushed = 0;
        while shards.push_tuple(&RowRef::of_record(&r, 0)) {
            pushed += 1;
            assert!(pushed < 10_000, "never full");
        }
        assert!(pushed >= 64, "took {pushed}");
        let row = RowRef::of_record(&r, 0).to_row(None);
        for _ in 0..64 {
            assert!(shards.push_held(row.clone()).is_none());
        }
        assert!(shards.push_held(row).is_some());
    }

    #[tokio::test]
    async fn an_idle_writer_is_woken_by_the_first_row() {
        let shards = std::sync::Arc::new(Shards::new(2, 1000));
        assert!(shards.go_idle());
        let waiter = {
            let shards = shards.clone();
            tokio::spawn(async move { shards.woken().await })
        };
        let r = record("req_wake");
        assert!(shards.push_tuple(&RowRef::of_record(&r, 0)));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        // With rows waiting, the writer does not go idle.
        assert!(!shards.go_idle());
    }
}
