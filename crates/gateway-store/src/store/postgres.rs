//! [`PostgresStore`]: the production backend on sqlx's native Postgres driver.
//! Migrations run under `pg_advisory_lock`; a change is announced with `NOTIFY` in its
//! own transaction; usage batches go in as one cached `INSERT ... SELECT FROM UNNEST`
//! of column arrays, so a batch of any size is one prepared statement and one round
//! trip.

use std::borrow::Cow;
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

use super::portable::portable_store;
use super::{Backend, MigrationSource, NOTIFY_CHANNEL, Reconciled, Reservation, Seed, SeedReport};
use crate::crypto::MasterKey;
use crate::model::{
    AuditEntry, KeyRecord, Owner, PluginInfo, Price, Quota, QuotaKind, StoredChannel, StoredPreset,
    UsageGroup, UsageLine, UsageReport, UsageRow,
};
use crate::{StoreError, now_ms};

/// The store on PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    url: String,
    master: Option<MasterKey>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// One usage batch: every column as an array, unnested into rows by the server.
const INSERT_USAGE: &str = "INSERT INTO usage (request_id, key_id, requested_model, item, channel, \
    upstream_model, client_dialect, upstream_dialect, operation, stream, input_tokens, output_tokens, \
    cached_tokens, reasoning_tokens, cost_micros, estimated, outcome, status, error_kind, attempts, \
    latency_ms, ttft_ms, started_at) \
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], \
    $7::text[], $8::text[], $9::text[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], \
    $14::int8[], $15::int8[], $16::int8[], $17::text[], $18::int8[], $19::text[], $20::int8[], \
    $21::int8[], $22::int8[], $23::int8[]) \
    ON CONFLICT (request_id) DO NOTHING";

impl PostgresStore {
    const BACKEND: Backend = Backend::Postgres;
    /// The schema's migrations, in version order.
    const MIGRATIONS: &[MigrationSource] = &[
        (
            "init",
            include_str!("../../migrations/postgres/0001_init.sql"),
        ),
        (
            "quota_holds",
            include_str!("../../migrations/postgres/0002_quota_holds.sql"),
        ),
    ];

    /// Connect (`postgres://...`). Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(PostgresStore {
            pool,
            url: url.to_owned(),
            master: None,
        })
    }

    async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// Reserve `amount` of a key's quota and record the hold in one statement (one round
    /// trip on the request path): the conditional `UPDATE` decides (no oversell) and a
    /// data-modifying CTE inserts the hold row only when it granted. The remaining quota,
    /// or `None` when the amount does not fit.
    async fn reserve_hold(
        &self,
        key_id: &str,
        amount: i64,
        request_id: &str,
        replica: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "WITH granted AS ( \
               UPDATE api_keys SET quota_reserved = quota_reserved + $2 \
               WHERE id = $1 AND quota_limit IS NOT NULL \
                 AND quota_used + quota_reserved + $2 <= quota_limit \
               RETURNING quota_limit - quota_used - quota_reserved AS remaining), \
             hold AS ( \
               INSERT INTO quota_holds (request_id, key_id, amount, replica, created_at) \
               SELECT $3, $1, $2, $4, $5 FROM granted WHERE $2 > 0) \
             SELECT remaining FROM granted",
        )
        .bind(key_id)
        .bind(amount)
        .bind(request_id)
        .bind(replica)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    /// `NOTIFY` inside the change's transaction: listeners hear of it only if it commits.
    async fn announce(tx: &mut Tx, target: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(target)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Insert a batch (duplicates of stored request ids skipped); how many were new
    /// and, when `want_ids`, which.
    async fn insert_usage_rows(
        tx: &mut Tx,
        rows: &[UsageRow],
        want_ids: bool,
    ) -> Result<(u64, HashSet<String>), StoreError> {
        let text = |f: fn(&UsageRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        let opt_text =
            |f: fn(&UsageRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<Option<&str>>>();
        let int = |f: fn(&UsageRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let opt_int = |f: fn(&UsageRow) -> Option<i64>| rows.iter().map(f).collect::<Vec<_>>();
        let sql: Cow<'static, str> = if want_ids {
            Cow::Owned(format!("{INSERT_USAGE} RETURNING request_id"))
        } else {
            Cow::Borrowed(INSERT_USAGE)
        };
        let query = sqlx::query(&sql)
            .bind(text(|r| &r.request_id))
            .bind(opt_text(|r| r.key_id.as_deref()))
            .bind(text(|r| &r.requested_model))
            .bind(opt_int(|r| r.item))
            .bind(opt_text(|r| r.channel.as_deref()))
            .bind(opt_text(|r| r.upstream_model.as_deref()))
            .bind(text(|r| &r.client_dialect))
            .bind(opt_text(|r| r.upstream_dialect.as_deref()))
            .bind(text(|r| &r.operation))
            .bind(int(|r| i64::from(r.stream)))
            .bind(int(|r| r.input_tokens))
            .bind(int(|r| r.output_tokens))
            .bind(int(|r| r.cached_tokens))
            .bind(int(|r| r.reasoning_tokens))
            .bind(int(|r| r.cost_micros))
            .bind(int(|r| i64::from(r.estimated)))
            .bind(text(|r| &r.outcome))
            .bind(int(|r| r.status))
            .bind(opt_text(|r| r.error_kind.as_deref()))
            .bind(int(|r| r.attempts))
            .bind(int(|r| r.latency_ms))
            .bind(opt_int(|r| r.ttft_ms))
            .bind(int(|r| r.started_at));
        if want_ids {
            let mut ids = HashSet::with_capacity(rows.len());
            for row in query.fetch_all(&mut **tx).await? {
                ids.insert(row.try_get::<String, _>(0)?);
            }
            Ok((ids.len() as u64, ids))
        } else {
            let done = query.execute(&mut **tx).await?;
            Ok((done.rows_affected(), HashSet::new()))
        }
    }
}

portable_store!(PostgresStore, sqlx::Postgres, PgRow);
