//! Warm instances of stateless plugins. A plugin whose manifest says `stateless` keeps
//! nothing in its globals between hook calls, so each call may borrow an idle instance
//! made earlier for the same plugin and item config, and give it back when the call
//! succeeds. A call that fails drops its instance (a trapped instance may not be
//! entered again), and an instance is recycled after many calls or when its captured
//! output fills ([`Live::reusable`]).
//!
//! Idle instances hold slots of the engine's pooling allocator, so the host keeps one
//! budget for all pools ([`WarmBudget`], half the slots): past it, instances are
//! dropped instead of kept, and fresh instances for other requests always find room.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::host::{Live, LoadedPlugin, PluginFailure};

/// Idle instances one pool keeps at most. Calls borrow an instance only for the call
/// itself, so the instances in use at once are at most the threads running hooks.
const IDLE_MAX: usize = 16;

/// How many idle warm instances the whole host may keep.
#[derive(Debug)]
pub(crate) struct WarmBudget {
    idle: AtomicUsize,
    max: usize,
}

impl WarmBudget {
    /// A budget of `max` idle instances.
    pub(crate) fn new(max: usize) -> Self {
        WarmBudget {
            idle: AtomicUsize::new(0),
            max,
        }
    }

    fn try_take(&self) -> bool {
        self.idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.idle.fetch_sub(n, Ordering::AcqRel);
    }

    /// Idle warm instances now (all pools).
    pub(crate) fn idle(&self) -> usize {
        self.idle.load(Ordering::Acquire)
    }
}

/// The idle instances of one plugin with one item config.
pub(crate) struct WarmPool {
    idle: Mutex<Vec<Live>>,
    budget: Arc<WarmBudget>,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("idle", &self.idle.lock().len())
            .finish()
    }
}

impl WarmPool {
    /// An empty pool drawing on `budget`.
    pub(crate) fn new(budget: Arc<WarmBudget>) -> Self {
        WarmPool {
            idle: Mutex::new(Vec::new()),
            budget,
        }
    }

    /// An idle instance, or a fresh one.
    pub(crate) fn take(
        &self,
        plugin: &LoadedPlugin,
        config: &Arc<str>,
    ) -> Result<Live, PluginFailure> {
        let idle = self.idle.lock().pop();
        match idle {
            Some(live) => {
                self.budget.release(1);
                Ok(live)
            }
            None => plugin.instantiate(config.clone()),
        }
    }

    /// Keep `live` for a later call if it may serve again and there is room.
    pub(crate) fn give_back(&self, live: Live) {
        if !live.reusable() {
            return;
        }
        let refused = {
            let mut idle = self.idle.lock();
            if idle.len() < IDLE_MAX && self.budget.try_take() {
                idle.push(live);
                None
            } else {
                Some(live)
            }
        };
        // Dropped outside the lock: freeing an instance resets its memory.
        drop(refused);
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        let n = self.idle.get_mut().len();
        self.budget.release(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_idle_instances_up_to_its_max() {
        let budget = WarmBudget::new(2);
        assert!(budget.try_take());
        assert!(budget.try_take());
        assert!(
            !budget.try_take(),
            "a third idle instance is over the budget"
        );
        assert_eq!(budget.idle(), 2);
        budget.release(1);
        assert!(budget.try_take());
        budget.release(2);
        assert_eq!(budget.idle(), 0);
    }
}
