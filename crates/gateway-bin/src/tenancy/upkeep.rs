//! Store upkeep, in the background (never on the request path): this process's replica
//! heartbeat, and the reconciliation of quota holds left by replicas that died.
//!
//! Each gateway process with a store is a replica with a random id (`rep_` + 32 hex
//! digits). Its reservations are recorded as `quota_holds` rows naming it. It upserts
//! its `replicas` row at start and every `store.heartbeat_interval_ms`; every
//! `store.reconcile_interval_ms` it calls [`relay_store::Store::reconcile_holds`], which
//! releases the holds of replicas not seen for `store.replica_stale_after_ms` (a
//! process killed between reserve and settle), each exactly once, however many replicas
//! reconcile at the same time. A late usage row of a released hold (replayed from a
//! spill file) is still charged once and releases nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use relay_store::Reconciled;
use tokio::time::Instant;

use super::Tenancy;
use crate::config::StoreConfig;

/// Deadline of one heartbeat, reconciliation or retirement statement.
pub const UPKEEP_TIMEOUT: Duration = Duration::from_secs(10);

/// This gateway process as the store knows it.
#[derive(Debug)]
pub struct Replica {
    /// `rep_` + 32 random hex digits, new at every start.
    pub id: String,
    /// When the process started, Unix ms.
    pub started_at: i64,
    /// Set on graceful shutdown: the heartbeat stops.
    retired: AtomicBool,
}

impl Replica {
    /// A new replica id, started now.
    pub fn new() -> Self {
        Replica {
            id: format!("rep_{:032x}", rand::random::<u128>()),
            started_at: relay_store::now_ms(),
            retired: AtomicBool::new(false),
        }
    }
}

impl Default for Replica {
    fn default() -> Self {
        Self::new()
    }
}

impl Tenancy {
    /// The upkeep settings in force (the config file's; SIGHUP replaces them).
    fn upkeep_config(&self) -> StoreConfig {
        self.file.lock().store.clone()
    }

    /// Upsert this replica's row (`seen_at` = now).
    pub async fn heartbeat(&self) -> Result<(), String> {
        let beat = self
            .store
            .heartbeat(&self.replica.id, self.replica.started_at);
        match tokio::time::timeout(UPKEEP_TIMEOUT, beat).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("the heartbeat timed out".to_owned()),
        }
    }

    /// Release the holds of replicas not seen for `store.replica_stale_after_ms`, once;
    /// logs at info what it released.
    pub async fn reconcile(&self) -> Result<Reconciled, String> {
        let stale_after = self.upkeep_config().replica_stale_after_ms;
        let stale_before =
            relay_store::now_ms().saturating_sub(i64::try_from(stale_after).unwrap_or(i64::MAX));
        let done =
            match tokio::time::timeout(UPKEEP_TIMEOUT, self.store.reconcile_holds(stale_before))
                .await
            {
                Ok(result) => result.map_err(|e| e.to_string())?,
                Err(_) => return Err("the reconciliation timed out".to_owned()),
            };
        if done.holds > 0 || done.replicas_removed > 0 {
            tracing::info!(
                holds = done.holds,
                released = done.released,
                replicas_removed = done.replicas_removed,
                "released the quota holds of gone replicas"
            );
        }
        Ok(done)
    }

    /// Graceful shutdown, after the usage writer flushed: stop heartbeating and delete
    /// this replica's row, so anything it still holds (nothing, unless usage rows were
    /// spilled) is reconcilable without waiting for the row to go stale.
    pub async fn retire(&self) {
        self.replica.retired.store(true, Ordering::Relaxed);
        let retire = self.store.retire_replica(&self.replica.id);
        match tokio::time::timeout(UPKEEP_TIMEOUT, retire).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove this replica's row"),
            Err(_) => tracing::warn!("removing this replica's row timed out"),
        }
    }

    /// Run the heartbeat and the reconciler in the background until the tenancy is
    /// dropped or retired: the next heartbeat one interval from now (the caller has just
    /// sent one), a reconciliation at once (holds of replicas gone long ago), then each
    /// at its interval. A failure is logged at warn when it starts, then at debug.
    pub fn spawn_upkeep(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let first = self.upkeep_config();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut next_heartbeat = start + Duration::from_millis(first.heartbeat_interval_ms);
            let mut next_reconcile = start;
            let (mut heartbeat_ok, mut reconcile_ok) = (true, true);
            loop {
                tokio::time::sleep_until(next_heartbeat.min(next_reconcile)).await;
                let Some(t) = weak.upgrade() else { return };
                if t.replica.retired.load(Ordering::Relaxed) {
                    return;
                }
                let config = t.upkeep_config();
                if Instant::now() >= next_heartbeat {
                    match t.heartbeat().await {
                        Ok(()) => heartbeat_ok = true,
                        Err(e) if heartbeat_ok => {
                            heartbeat_ok = false;
                            tracing::warn!(error = %e, "replica heartbeat failed; other replicas may release this one's quota holds if it lasts");
                        }
                        Err(e) => tracing::debug!(error = %e, "replica heartbeat failed"),
                    }
                    next_heartbeat =
                        Instant::now() + Duration::from_millis(config.heartbeat_interval_ms);
                }
                if Instant::now() >= next_reconcile {
                    match t.reconcile().await {
                        Ok(_) => reconcile_ok = true,
                        Err(e) if reconcile_ok => {
                            reconcile_ok = false;
                            tracing::warn!(error = %e, "quota hold reconciliation failed");
                        }
                        Err(e) => tracing::debug!(error = %e, "quota hold reconciliation failed"),
                    }
                    next_reconcile =
                        Instant::now() + Duration::from_millis(config.reconcile_interval_ms);
                }
            }
        });
    }
}
