//! [`PostgresStore`]: the production backend on sqlx's native Postgres driver.
//! Migrations run under `pg_advisory_lock`; a change is announced with `NOTIFY` in its
//! own transaction; usage batches stream in by binary `COPY` ([`super::pg_copy`]), and
//! a batch that repeats a stored request id (a replay) goes in as one cached
//! `INSERT ... SELECT FROM UNNEST ... ON CONFLICT DO NOTHING` of column arrays instead.

use std::borrow::Cow;
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};

use super::decode_all;
use super::pg_copy::{self, UNIQUE_VIOLATION};
use super::portable::portable_store;
use super::{Backend, MigrationSource, NOTIFY_CHANNEL, Reconciled, Reservation, Seed, SeedReport};
use crate::crypto::MasterKey;
use crate::model::{
    AuditEntry, KeyRecord, Owner, PluginInfo, Price, Quota, QuotaKind, StoredChannel, StoredPreset,
    UsageGroup, UsageLine, UsageReport, UsageRow,
};
use crate::tuple::RowRef;
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

/// Bytes of `COPY` data encoded before they are sent: a batch streams out in pieces of
/// about this size, so the encoding buffer stays small whatever the batch.
const COPY_CHUNK: usize = 64 * 1024;

/// A usage batch the idempotent way: every column as an array, unnested into rows by
/// the server, stored request ids skipped.
const INSERT_USAGE: &str = "INSERT INTO usage (request_id, key_id, requested_model, item, channel, \
    upstream_model, client_dialect, upstream_dialect, operation, stream, input_tokens, output_tokens, \
    cached_tokens, reasoning_tokens, cost_micros, estimated, outcome, status, error_kind, attempts, \
    latency_ms, ttft_ms, started_at) \
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], \
    $7::text[], $8::text[], $9::text[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], \
    $14::int8[], $15::int8[], $16::int8[], $17::text[], $18::int8[], $19::text[], $20::int8[], \
    $21::int8[], $22::int8[], $23::int8[]) \
    ON CONFLICT (request_id) DO NOTHING";

/// A pooled connection for a `COPY`, closed instead of returned to the pool unless the
/// `COPY` ran to its end: one cut off mid-stream (its future dropped by a timeout)
/// leaves the connection in the middle of the protocol, and the next statement on it
/// would fail, or read the answers meant for another.
struct CopyConn {
    conn: PoolConnection<Postgres>,
    clean: bool,
}

impl Drop for CopyConn {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.close_on_drop();
        }
    }
}

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

    /// Insert a batch of [tuples](crate::tuple) with no quota hold to settle; how many
    /// rows were new. `COPY` is atomic on its own, so the batch needs no explicit
    /// transaction: two round trips (the `COPY` and its end) and one commit. A unique
    /// violation (a stored request id repeated) writes the batch again with
    /// `ON CONFLICT DO NOTHING`.
    async fn write_usage_tuples(&self, bufs: &[Vec<u8>]) -> Result<u64, StoreError> {
        let mut conn = CopyConn {
            conn: self.pool.acquire().await?,
            clean: false,
        };
        let copied = Self::copy_usage(&mut conn.conn, bufs).await;
        // Reached only when the COPY ran to its end (a timeout drops this future
        // before). An error the server answered leaves the protocol in step; an I/O or
        // protocol error does not.
        conn.clean = matches!(copied, Ok(_) | Err(sqlx::Error::Database(_)));
        drop(conn);
        match copied {
            Ok(n) => Ok(n),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
                let rows = decode_all(bufs)?;
                let mut tx = self.begin().await?;
                let (new, _) = Self::insert_usage_rows(&mut tx, &rows, false).await?;
                tx.commit().await?;
                Ok(new)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stream buffers of tuples by binary `COPY`; how many rows went in. Large buffers
    /// go out in pieces of [`COPY_CHUNK`] (`COPY` data need not break at rows).
    async fn copy_usage(conn: &mut PgConnection, bufs: &[Vec<u8>]) -> Result<u64, sqlx::Error> {
        let mut copy = conn.copy_in_raw(pg_copy::statement()).await?;
        copy.send(&pg_copy::header()[..]).await?;
        for buf in bufs {
            for piece in buf.chunks(COPY_CHUNK) {
                copy.send(piece).await?;
            }
        }
        copy.send(&pg_copy::TRAILER[..]).await?;
        copy.finish().await
    }

    /// Insert a batch with `ON CONFLICT (request_id) DO NOTHING` in `tx`; how many were
    /// new and, when `want_ids`, which. (Rows with a quota hold come this way, in the
    /// transaction that settles them; so does a batch `COPY` refused.)
    async fn insert_usage_rows<'r>(
        tx: &mut Tx,
        rows: &[RowRef<'r>],
        want_ids: bool,
    ) -> Result<(u64, HashSet<String>), StoreError> {
        let text = |f: fn(&RowRef<'r>) -> &'r str| rows.iter().map(f).collect::<Vec<&str>>();
        let opt_text = |f: fn(&RowRef<'r>) -> Option<&'r str>| {
            rows.iter().map(f).collect::<Vec<Option<&str>>>()
        };
        let int = |f: fn(&RowRef<'r>) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let opt_int = |f: fn(&RowRef<'r>) -> Option<i64>| rows.iter().map(f).collect::<Vec<_>>();
        let sql: Cow<'static, str> = if want_ids {
            Cow::Owned(format!("{INSERT_USAGE} RETURNING request_id"))
        } else {
            Cow::Borrowed(INSERT_USAGE)
        };
        let query = sqlx::query(&sql)
            .bind(text(|r| r.request_id))
            .bind(opt_text(|r| r.key_id))
            .bind(text(|r| r.requested_model))
            .bind(opt_int(|r| r.item))
            .bind(opt_text(|r| r.channel))
            .bind(opt_text(|r| r.upstream_model))
            .bind(text(|r| r.client_dialect))
            .bind(opt_text(|r| r.upstream_dialect))
            .bind(text(|r| r.operation))
            .bind(int(|r| i64::from(r.stream)))
            .bind(int(|r| r.input_tokens))
            .bind(int(|r| r.output_tokens))
            .bind(int(|r| r.cached_tokens))
            .bind(int(|r| r.reasoning_tokens))
            .bind(int(|r| r.cost_micros))
            .bind(int(|r| i64::from(r.estimated)))
            .bind(text(|r| r.outcome))
            .bind(int(|r| r.status))
            .bind(opt_text(|r| r.error_kind))
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
