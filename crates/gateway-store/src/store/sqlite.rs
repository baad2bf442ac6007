//! [`SqliteStore`]: the embedded default on sqlx's native SQLite driver, a file in WAL
//! mode. Write transactions are `BEGIN IMMEDIATE`; there is no change announcement
//! (other processes poll `config_version`); usage batches go in as multi-row inserts
//! of a few fixed sizes, so every statement is prepared once and cached.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::error::BoxDynError;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Arguments, Row, Sqlite};

use super::decode_all;
use super::portable::portable_store;
use super::{Backend, MigrationSource, Reconciled, Reservation, Seed, SeedReport};
use crate::crypto::MasterKey;
use crate::model::{
    AuditEntry, KeyRecord, Owner, PluginInfo, Price, Quota, QuotaKind, StoredChannel, StoredPreset,
    UsageGroup, UsageLine, UsageReport, UsageRow,
};
use crate::tuple::{COLUMNS, RowRef};
use crate::{StoreError, now_ms};

/// The store on a SQLite file. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    url: String,
    master: Option<MasterKey>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

const USAGE_COLUMNS: usize = COLUMNS.len();
/// Rows per usage transaction at most: a transaction holds the file's only write lock,
/// which quota reservations also need, so a large pass goes in several.
const USAGE_TRANSACTION: usize = 512;
/// Statement sizes (rows) a batch is cut into, largest first: at most 4 distinct
/// statements, each prepared once; 23 parameters a row stays well under SQLite's limit.
const USAGE_CHUNKS: [usize; 4] = [256, 32, 8, 1];

/// The conditional reservation: grants only what fits under the limit, so concurrent
/// reservations never oversell.
const RESERVE_SQL: &str = "UPDATE api_keys SET quota_reserved = quota_reserved + $2 \
     WHERE id = $1 AND quota_limit IS NOT NULL \
       AND quota_used + quota_reserved + $2 <= quota_limit \
     RETURNING quota_limit - quota_used - quota_reserved";

/// The multi-row insert of `USAGE_CHUNKS[size]` rows, with or without `RETURNING`.
fn insert_usage_sql(size: usize, returning: bool) -> &'static str {
    static SQL: OnceLock<Vec<[String; 2]>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        USAGE_CHUNKS
            .iter()
            .map(|&n| {
                let mut sql = String::with_capacity(400 + n * USAGE_COLUMNS * 2);
                sql.push_str("INSERT INTO usage (");
                sql.push_str(&COLUMNS.join(", "));
                sql.push_str(") VALUES ");
                for i in 0..n {
                    if i > 0 {
                        sql.push(',');
                    }
                    sql.push('(');
                    // Anonymous `?` placeholders, not `$N`: SQLite finds a named
                    // parameter's name by a linear scan, and the driver asks for every
                    // parameter's name when binding, so `$N` costs O(n²) in the
                    // parameters of a statement (46 % of the gateway's CPU at 4k rows/s
                    // with 256-row statements, by `perf`).
                    for c in 0..USAGE_COLUMNS {
                        if c > 0 {
                            sql.push(',');
                        }
                        sql.push('?');
                    }
                    sql.push(')');
                }
                sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
                let returning = format!("{sql} RETURNING request_id");
                [sql, returning]
            })
            .collect()
    });
    &all[size][usize::from(returning)]
}

/// Append one usage row's `USAGE_COLUMNS` values, in the insert's column order.
fn bind_usage_row<'q>(args: &mut SqliteArguments<'q>, r: &RowRef<'q>) -> Result<(), BoxDynError> {
    args.add(r.request_id)?;
    args.add(r.key_id)?;
    args.add(r.requested_model)?;
    args.add(r.item)?;
    args.add(r.channel)?;
    args.add(r.upstream_model)?;
    args.add(r.client_dialect)?;
    args.add(r.upstream_dialect)?;
    args.add(r.operation)?;
    args.add(i64::from(r.stream))?;
    args.add(r.input_tokens)?;
    args.add(r.output_tokens)?;
    args.add(r.cached_tokens)?;
    args.add(r.reasoning_tokens)?;
    args.add(r.cost_micros)?;
    args.add(i64::from(r.estimated))?;
    args.add(r.outcome)?;
    args.add(r.status)?;
    args.add(r.error_kind)?;
    args.add(r.attempts)?;
    args.add(r.latency_ms)?;
    args.add(r.ttft_ms)?;
    args.add(r.started_at)?;
    Ok(())
}

impl SqliteStore {
    const BACKEND: Backend = Backend::Sqlite;
    /// The schema's migrations, in version order.
    const MIGRATIONS: &[MigrationSource] = &[
        (
            "init",
            include_str!("../../migrations/sqlite/0001_init.sql"),
        ),
        (
            "quota_holds",
            include_str!("../../migrations/sqlite/0002_quota_holds.sql"),
        ),
    ];

    /// Open (`sqlite://PATH`, `sqlite:PATH` or a bare path; created when missing, with
    /// its directory). Does not migrate.
    pub async fn open(url: &str, max_connections: u32) -> Result<SqliteStore, StoreError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let path = path.split('?').next().unwrap_or(path);
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(StoreError::Io)?;
        }
        let url = format!("sqlite://{path}?mode=rwc");
        let options = SqliteConnectOptions::from_str(&url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(SqliteStore {
            pool,
            url,
            master: None,
        })
    }

    /// `BEGIN IMMEDIATE`: take the write lock up front and wait for it (busy timeout)
    /// instead of failing when a read inside the transaction would have to be upgraded
    /// while another connection writes.
    async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Reserve `amount` of a key's quota and record the hold, in one local transaction:
    /// the conditional `UPDATE` decides (no oversell), then the hold row. The remaining
    /// quota, or `None` when the amount does not fit.
    async fn reserve_hold(
        &self,
        key_id: &str,
        amount: i64,
        request_id: &str,
        replica: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(RESERVE_SQL)
            .bind(key_id)
            .bind(amount)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let remaining = row.try_get(0)?;
        if amount > 0 {
            sqlx::query(
                "INSERT INTO quota_holds (request_id, key_id, amount, replica, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(request_id)
            .bind(key_id)
            .bind(amount)
            .bind(replica)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(remaining))
    }

    /// Nothing to send: other processes poll `config_version`.
    async fn announce(_tx: &mut Tx, _target: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Insert a batch of [tuples](crate::tuple) with no quota hold to settle, in write
    /// transactions of [`USAGE_TRANSACTION`] rows; how many rows were new.
    async fn write_usage_tuples(&self, bufs: &[Vec<u8>]) -> Result<u64, StoreError> {
        let rows = decode_all(bufs)?;
        let mut new = 0;
        for chunk in rows.chunks(USAGE_TRANSACTION) {
            let mut tx = self.begin().await?;
            new += Self::insert_usage_rows(&mut tx, chunk, false).await?.0;
            tx.commit().await?;
        }
        Ok(new)
    }

    /// Insert a batch (duplicates of stored request ids skipped); how many were new
    /// and, when `want_ids`, which.
    async fn insert_usage_rows(
        tx: &mut Tx,
        rows: &[RowRef<'_>],
        want_ids: bool,
    ) -> Result<(u64, HashSet<String>), StoreError> {
        let mut new = 0;
        let mut ids = HashSet::new();
        let mut rest = rows;
        while !rest.is_empty() {
            // The largest statement size that fits; the last one is a single row.
            let size = USAGE_CHUNKS
                .iter()
                .position(|&n| n <= rest.len())
                .unwrap_or(USAGE_CHUNKS.len() - 1);
            let (chunk, tail) = rest.split_at(USAGE_CHUNKS[size].min(rest.len()));
            rest = tail;
            // The arguments of a statement are sized up front (a 256-row statement has
            // 5,888): `Query::bind` grew them one reallocation at a time.
            let mut args = SqliteArguments::default();
            args.reserve(chunk.len() * USAGE_COLUMNS, 0);
            for r in chunk {
                bind_usage_row(&mut args, r).map_err(sqlx::Error::Encode)?;
            }
            let q = sqlx::query_with::<Sqlite, _>(insert_usage_sql(size, want_ids), args);
            if want_ids {
                for row in q.fetch_all(&mut **tx).await? {
                    ids.insert(row.try_get::<String, _>(0)?);
                }
            } else {
                new += q.execute(&mut **tx).await?.rows_affected();
            }
        }
        if want_ids {
            new = ids.len() as u64;
        }
        Ok((new, ids))
    }
}

portable_store!(SqliteStore, sqlx::Sqlite, SqliteRow);
