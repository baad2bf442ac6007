//! # relay-store
//!
//! Persistence for the Relay gateway, kept out of `relay-core` (which never sees a
//! database):
//!
//! - [`store`]: the [`Store`] trait and its two implementations, [`PostgresStore`] and
//!   [`SqliteStore`] (native sqlx drivers, runtime queries,
//!   per-backend migrations applied under a lock), with channels, presets, API keys,
//!   usage, quota holds (one row per reservation, released by settlement, by release,
//!   or by the reconciliation of replicas that stopped heartbeating), the quota ledger,
//!   pricing, plugins and the audit log;
//! - [`writer`]: the [`UsageWriter`], a `UsageSink` that batches rows into the store,
//!   retries, spills to a local append-only file while the database is away and replays
//!   it after, idempotent on request id;
//! - [`tuple`]: a usage row as bytes (a PostgreSQL binary `COPY` tuple), what the writer
//!   carries from a settled request to the database;
//! - [`keys`]: virtual key generation and digests;
//! - [`crypto`]: AES-256-GCM for upstream credentials at rest;
//! - [`model`]: the typed rows.

pub mod crypto;
pub mod keys;
pub mod model;
pub mod store;
pub mod testing;
pub mod tuple;
pub mod writer;

pub use crypto::MasterKey;
pub use model::{KeyRecord, Owner, Price, Quota, QuotaHold, QuotaKind, UsageGroup, UsageRow};
pub use store::{
    Backend, PostgresStore, Reconciled, Reservation, Seed, SharedStore, SqliteStore, Store,
    backend_of, connect,
};
pub use writer::{UsageWriter, WriterConfig, WriterMetrics};

/// Something the store could not do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(String),
    /// A stored value could not be (de)serialized.
    #[error("stored value: {0}")]
    Json(#[from] serde_json::Error),
    /// Encryption or the master key.
    #[error("credentials: {0}")]
    Crypto(String),
    /// A name or id is taken.
    #[error("{0}")]
    Conflict(String),
    /// Local file I/O (spill file, master key file).
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// Usage tuples that do not read back.
    #[error("{0}")]
    Tuple(#[from] tuple::TupleError),
}

impl StoreError {
    /// Whether the database refused the rows themselves: a constraint or a trigger said
    /// no, or a value does not fit (PostgreSQL SQLSTATE classes 22, 23 and P0; SQLite's
    /// constraint, mismatch and too-big results), or the writer's own tuples do not read
    /// back. Writing the same rows again fails the same way, unlike a database that is
    /// away, busy, or missing a table or a permission (where waiting, with the rows
    /// spilled, is the answer).
    pub fn refuses_rows(&self) -> bool {
        use sqlx::error::DatabaseError as _;
        match self {
            StoreError::Tuple(_) => true,
            StoreError::Db(sqlx::Error::Database(e)) => {
                if let Some(pg) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    matches!(pg.code().get(..2), Some("22" | "23" | "P0"))
                } else if let Some(lite) = e.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                    // The primary result code is the extended code's low byte:
                    // SQLITE_TOOBIG, SQLITE_CONSTRAINT (triggers included), SQLITE_MISMATCH.
                    lite.code()
                        .and_then(|c| c.parse::<i32>().ok())
                        .is_some_and(|c| matches!(c & 0xff, 18..=20))
                } else {
                    false
                }
            }
            _ => false,
        }
    }
}

/// Now, as Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
