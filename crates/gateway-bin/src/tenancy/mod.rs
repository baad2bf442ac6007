//! Tenancy: the gateway with a store. Keys, per-key limits and quotas on the request
//! path; usage to the store through the [`relay_store::UsageWriter`]; config changes from
//! the store (admin API, CLI, other replicas) applied without a restart.
//!
//! Request path, for a key from the store:
//! 1. [`Tenancy::authenticate`]: the in-memory [`KeyCache`] (no database read);
//! 2. [`Tenancy::admit`]: allowed presets and models (403), RPM/TPM (429 with
//!    Retry-After), then, for keys with a quota only, the reservation: one conditional
//!    `UPDATE` and its `quota_holds` row, atomically (one statement on Postgres, a
//!    local transaction on SQLite), with a short deadline.
//!    When the store is unreachable (or the writer saw it fail), the reservation is made
//!    in process against the cached balance instead, so an outage never refuses every
//!    key;
//! 3. settlement: relay-core hands the one usage record to [`Tenancy`] (a `UsageSink`),
//!    which charges TPM and passes the record with its quota hold to the writer; the
//!    writer settles the hold in the same transaction that inserts the usage row.
//!
//! Every reservation made in the store has a `quota_holds` row naming this process's
//! replica id; [`upkeep`] keeps the replica's heartbeat fresh and releases the holds of
//! replicas that stopped heartbeating (a process killed between reserve and settle).

pub mod reload;
pub mod start;
pub mod upkeep;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use relay_core::{ErrorKind, InboundRequest, RelayError, Side, UsageRecord, UsageSink};
use relay_store::writer::PriceTable;
use relay_store::{QuotaHold, QuotaKind, Reservation, SharedStore, UsageWriter};

use crate::auth::Caller;
use crate::config::GatewayConfig;
use crate::keys::{KeyCache, KeyEntry, KeyRefusal};

pub use start::{Started, StoreOptions, start};

/// Output tokens reserved for a request that names no `max_tokens`.
pub const DEFAULT_OUTPUT_RESERVE: u64 = 1024;
/// Deadline of the quota statement before falling back to an in-process reservation.
pub const RESERVE_TIMEOUT: Duration = Duration::from_millis(250);

/// A quota amount held for a request in flight.
#[derive(Debug)]
struct Hold {
    key: Arc<KeyEntry>,
    kind: QuotaKind,
    /// Reserved in the database.
    db: i64,
    /// Reserved in process (store unreachable).
    local: i64,
}

/// Keys, limits, quotas and the store of a gateway.
pub struct Tenancy {
    store: SharedStore,
    /// This process in the store's `replicas` table; its holds name it.
    replica: upkeep::Replica,
    writer: Arc<UsageWriter>,
    keys: ArcSwap<KeyCache>,
    prices: PriceTable,
    holds: Mutex<HashMap<String, Hold>>,
    hold_count: AtomicUsize,
    /// The file's settings that are not in the store (defaults, upstream, server).
    file: Mutex<GatewayConfig>,
    version: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Tenancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenancy")
            .field("store", &self.store)
            .field("replica", &self.replica.id)
            .finish()
    }
}

fn unauthorized(message: &str, code: &'static str) -> RelayError {
    RelayError::new(ErrorKind::Unauthorized, Side::Client, message.to_owned()).with_code(code)
}

impl Tenancy {
    /// The store.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// This process's replica id (its quota holds name it).
    pub fn replica_id(&self) -> &str {
        &self.replica.id
    }

    /// The usage writer.
    pub fn writer(&self) -> &Arc<UsageWriter> {
        &self.writer
    }

    /// The key cache in force.
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeyCache>> {
        self.keys.load()
    }

    /// Authenticate a presented key against the cache.
    pub fn authenticate(&self, presented: &str) -> Result<Caller, RelayError> {
        match self.keys.load().check(presented, relay_store::now_ms()) {
            Ok(entry) => Ok(Caller {
                key_name: entry.record.id.clone(),
                policy: Some(entry),
            }),
            Err(KeyRefusal::Unknown) => Err(unauthorized(
                "Incorrect API key provided.",
                "invalid_api_key",
            )),
            Err(KeyRefusal::Revoked) => Err(unauthorized(
                "This API key has been revoked.",
                "revoked_api_key",
            )),
            Err(KeyRefusal::Expired) => {
                Err(unauthorized("This API key has expired.", "expired_api_key"))
            }
        }
    }

    /// Admit a request: allowed models, rate limits, quota reservation.
    pub async fn admit(
        &self,
        caller: &Caller,
        inbound: &InboundRequest,
        request_id: &str,
    ) -> Result<(), RelayError> {
        let Some(entry) = &caller.policy else {
            return Ok(());
        };
        let rec = &entry.record;
        let restricted = !rec.allowed_presets.is_empty() || !rec.allowed_models.is_empty();
        if restricted
            && !rec.allowed_presets.contains(&inbound.model)
            && !rec.allowed_models.contains(&inbound.model)
        {
            return Err(RelayError::new(
                ErrorKind::Forbidden,
                Side::Client,
                format!("This API key may not use the model `{}`.", inbound.model),
            )
            .with_code("model_not_allowed")
            .with_param("model"));
        }
        if rec.rpm.is_some() || rec.tpm.is_some() {
            entry
                .limiter
                .admit(rec.rpm, rec.tpm, Instant::now())
                .map_err(|wait| {
                    RelayError::new(
                        ErrorKind::RateLimited,
                        Side::Client,
                        format!(
                            "Rate limit reached for this API key ({}); retry in {} ms.",
                            match (rec.rpm, rec.tpm) {
                                (Some(r), Some(t)) =>
                                    format!("{r} requests and {t} tokens per minute"),
                                (Some(r), None) => format!("{r} requests per minute"),
                                (None, Some(t)) => format!("{t} tokens per minute"),
                                (None, None) => String::new(),
                            },
                            wait.as_millis()
                        ),
                    )
                    .with_code("rate_limit_exceeded")
                    .with_retry_after(Some(wait))
                })?;
        }
        let Some(quota) = rec.quota else {
            return Ok(());
        };
        let amount = self.reservation_amount(quota.kind, inbound);
        let hold = self.reserve(entry, quota.kind, amount, request_id).await?;
        self.holds.lock().insert(request_id.to_owned(), hold);
        self.hold_count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// What a request reserves: its prompt estimate plus its `max_tokens` (or
    /// [`DEFAULT_OUTPUT_RESERVE`]), in tokens or, for cost quotas, priced by the model
    /// it names (or the dearest price known).
    fn reservation_amount(&self, kind: QuotaKind, inbound: &InboundRequest) -> i64 {
        let output = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .find_map(|f| inbound.body.get(*f))
            .and_then(|raw| raw.get().trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_OUTPUT_RESERVE);
        let input = inbound.estimated_prompt_tokens();
        match kind {
            QuotaKind::Tokens => i64::try_from(input + output).unwrap_or(i64::MAX),
            QuotaKind::Cost => {
                let prices = self.prices.load();
                let price = prices.get(&inbound.model).copied().or_else(|| {
                    prices.values().copied().max_by(|a, b| {
                        (a.input_per_mtok + a.output_per_mtok)
                            .total_cmp(&(b.input_per_mtok + b.output_per_mtok))
                    })
                });
                price.map_or(0, |p| p.cost_micros(input, output, 0))
            }
        }
    }

    /// Reserve in the store (one transaction: the conditional statement and the hold
    /// row; short deadline), else in process.
    async fn reserve(
        &self,
        entry: &Arc<KeyEntry>,
        kind: QuotaKind,
        amount: i64,
        request_id: &str,
    ) -> Result<Hold, RelayError> {
        let exhausted = || {
            RelayError::new(
                ErrorKind::RateLimited,
                Side::Client,
                "This API key has no quota left for this request.",
            )
            .with_code("insufficient_quota")
        };
        if self.writer.healthy() {
            // Run the statement in its own task: if the client goes away mid-way, a
            // reservation that did commit is released rather than leaked.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let store = self.store.clone();
            let key = entry.record.id.clone();
            let request = request_id.to_owned();
            let replica = self.replica.id.clone();
            tokio::spawn(async move {
                let result = store.reserve(&key, amount, &request, &replica).await;
                if let (Err(Ok(Reservation::Granted { .. })), true) = (tx.send(result), amount > 0)
                {
                    release_abandoned(&store, &request).await;
                }
            });
            match tokio::time::timeout(RESERVE_TIMEOUT, rx).await {
                Ok(Ok(Ok(Reservation::Granted { .. }))) => {
                    return Ok(Hold {
                        key: entry.clone(),
                        kind,
                        db: amount,
                        local: 0,
                    });
                }
                Ok(Ok(Ok(Reservation::Exhausted))) => return Err(exhausted()),
                Ok(Ok(Err(e))) => {
                    tracing::warn!(key = %entry.record.id, error = %e, "quota reservation failed; reserving in process");
                }
                Ok(Err(_)) | Err(_) => {
                    // Timed out: the task, if it still commits, cannot hand the hold
                    // over any more and releases it.
                    tracing::warn!(key = %entry.record.id, "quota reservation timed out; reserving in process");
                }
            }
        }
        // The store is unreachable: reserve against the cached balance.
        let outstanding = &entry.local_outstanding;
        let mut current = outstanding.load(Ordering::Relaxed);
        loop {
            let balance =
                entry.cached_balance().unwrap_or(0) + outstanding.load(Ordering::Relaxed) - current;
            if balance < amount {
                return Err(exhausted());
            }
            match outstanding.compare_exchange(
                current,
                current + amount,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        Ok(Hold {
            key: entry.clone(),
            kind,
            db: 0,
            local: amount,
        })
    }
}

/// Attempts at releasing an abandoned reservation before leaving it to settlement.
const ABANDONED_RELEASE_ATTEMPTS: u32 = 3;

/// Release the hold of a reservation that committed after the request stopped waiting
/// for it, by request id, retrying a little: this process is alive, so the reconciler
/// would not release it. (Settlement of the request's usage row deletes the hold as
/// well, if it comes after the hold committed.)
async fn release_abandoned(store: &SharedStore, request_id: &str) {
    for attempt in 1..=ABANDONED_RELEASE_ATTEMPTS {
        match store.release(request_id).await {
            Ok(_) => return,
            Err(e) if attempt == ABANDONED_RELEASE_ATTEMPTS => {
                tracing::warn!(request_id, error = %e, "releasing an abandoned reservation failed");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await,
        }
    }
}

impl UsageSink for Tenancy {
    fn record(&self, record: UsageRecord) {
        let hold = if self.hold_count.load(Ordering::Relaxed) > 0 {
            let h = self.holds.lock().remove(&record.request_id);
            if h.is_some() {
                self.hold_count.fetch_sub(1, Ordering::Relaxed);
            }
            h
        } else {
            None
        };
        let key_entry = match &hold {
            Some(h) => Some(h.key.clone()),
            None => {
                let keys = self.keys.load();
                // The lookup by id only when some key has a TPM limit to charge.
                if keys.any_tpm() {
                    record
                        .key_id
                        .as_deref()
                        .and_then(|id| keys.by_id(id).cloned())
                        .filter(|e| e.record.tpm.is_some())
                } else {
                    None
                }
            }
        };
        if let Some(entry) = &key_entry {
            entry.limiter.charge(
                entry.record.tpm,
                record.usage.total_tokens(),
                Instant::now(),
            );
        }
        let quota_hold = hold.map(|h| {
            let charge = match h.kind {
                QuotaKind::Tokens => i64::try_from(record.usage.total_tokens()).unwrap_or(i64::MAX),
                // The cost is priced by the writer; count the reservation meanwhile.
                QuotaKind::Cost => h.db + h.local,
            };
            h.key.local_spent.fetch_add(charge, Ordering::Relaxed);
            if h.local > 0 {
                // The in-process reservation ends; the charge reaches the store with
                // the usage row (`quota_used += charge`).
                h.key
                    .local_outstanding
                    .fetch_sub(h.local, Ordering::Relaxed);
            }
            // Tracked even when reserved in process: a store reservation that timed out
            // and committed late is released by settlement if the abandoned release
            // has not run yet.
            QuotaHold {
                kind: h.kind,
                reserved: h.db,
                tracked: true,
            }
        });
        self.writer.enqueue(record, quota_hold);
    }
}
