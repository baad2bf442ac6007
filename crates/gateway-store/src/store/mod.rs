//! The [`Store`]: the gateway's persistence as a trait with two implementations on
//! sqlx, [`PostgresStore`] (production) and [`SqliteStore`] (the embedded default, a
//! file), each on its own native driver. [`connect`] picks one by URL and hands out a
//! [`SharedStore`].
//!
//! One schema, and the portable SQL is written once (`$N` placeholders, 0/1 integer
//! flags, Unix-millisecond times; see `portable`) and compiled for each driver. What
//! differs per backend lives in that backend's module:
//!
//! | | Postgres | SQLite |
//! |---|---|---|
//! | migrations | `migrations/postgres`, under `pg_advisory_lock` | `migrations/sqlite`, under the file lock |
//! | write transactions | `BEGIN` | `BEGIN IMMEDIATE` (take the write lock up front) |
//! | change announcements | `NOTIFY relay_config` in the change's transaction | none (replicas poll `config_version`) |
//! | usage batches | binary `COPY` (`pg_copy`); a batch that repeats a stored request id is rolled back to a savepoint and written as one cached `INSERT ... SELECT FROM UNNEST($1..$23) ON CONFLICT DO NOTHING` | multi-row `INSERT ... VALUES ... ON CONFLICT DO NOTHING` of fixed sizes (cached statements) |

mod pg_copy;
mod portable;
mod postgres;
mod sqlite;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::StoreError;
use crate::crypto::MasterKey;
use crate::model::{
    AuditEntry, KeyRecord, PluginInfo, Price, StoredChannel, StoredPreset, UsageGroup, UsageReport,
    UsageRow,
};
use crate::tuple::RowRef;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The Postgres channel config changes are announced on.
pub const NOTIFY_CHANNEL: &str = "relay_config";

/// Which database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite (a file).
    Sqlite,
}

/// A quota reservation's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Reserved; this much is left after it.
    Granted {
        /// Remaining quota.
        remaining: i64,
    },
    /// Not enough quota left.
    Exhausted,
}

/// What [`Store::reconcile_holds`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Holds released.
    pub holds: u64,
    /// Their total amount, taken off `quota_reserved`.
    pub released: i64,
    /// Replica rows deleted (gone, nothing held).
    pub replicas_removed: u64,
}

/// Every row of buffers of tuples, borrowed.
pub(crate) fn decode_all(bufs: &[Vec<u8>]) -> Result<Vec<RowRef<'_>>, StoreError> {
    let mut rows = Vec::new();
    for buf in bufs {
        for row in crate::tuple::rows(buf) {
            rows.push(row?);
        }
    }
    Ok(rows)
}

/// A store shared by the gateway's tasks.
pub type SharedStore = Arc<dyn Store>;

/// The SQLite URL of the embedded default for a config file:
/// `<config dir>/relay-data/<config stem>.db`.
pub fn default_sqlite_path(config: &Path) -> PathBuf {
    let dir = config.parent().unwrap_or_else(|| Path::new("."));
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "relay".into());
    dir.join("relay-data").join(format!("{stem}.db"))
}

/// Which backend a URL names: `postgres://` / `postgresql://` is Postgres; anything
/// else (`sqlite://PATH`, `sqlite:PATH` or a bare path) is SQLite.
pub fn backend_of(url: &str) -> Backend {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

/// One migration of a backend's schema: its description and SQL, in version order
/// (`migrations/<backend>/000N_<description>.sql` is version N).
pub(crate) type MigrationSource = (&'static str, &'static str);

/// The migrator of a backend's schema (`migrations/<backend>/`, versions 1, 2, ... in
/// order), with locking on: Postgres holds `pg_advisory_lock` while it migrates and
/// SQLite's file lock serializes writers, so replicas that start together migrate one
/// at a time. A deployed migration's SQL never changes (sqlx checks its checksum).
fn migrator(sources: &'static [MigrationSource]) -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            sources
                .iter()
                .zip(1..)
                .map(|(&(description, sql), version)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect(),
        ),
        locking: true,
        ..Migrator::DEFAULT
    }
}

/// Connect to the store a URL names (see [`backend_of`]; a SQLite file is created when
/// missing). Does not migrate: call [`Store::migrate`].
pub async fn connect(url: &str, max_connections: u32) -> Result<SharedStore, StoreError> {
    Ok(match backend_of(url) {
        Backend::Postgres => Arc::new(PostgresStore::connect(url, max_connections).await?),
        Backend::Sqlite => Arc::new(SqliteStore::open(url, max_connections).await?),
    })
}

/// The gateway's persistence: channels, presets, API keys, the quota, pricing, plugins,
/// usage and the audit log. Every change (`put_*`, `delete_*`, key updates, grants,
/// seeding) is one transaction that also writes an audit entry and bumps
/// `config_version`.
#[async_trait::async_trait]
pub trait Store: std::fmt::Debug + Send + Sync + 'static {
    /// Which backend.
    fn backend(&self) -> Backend;

    /// The connection URL (for a `LISTEN` connection).
    fn url(&self) -> &str;

    /// The same store, with this master key for channel credentials.
    fn with_master_key(&self, key: MasterKey) -> SharedStore;

    /// Apply pending migrations under the migration lock, so replicas starting together
    /// migrate one at a time.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Whether the database answers.
    async fn ping(&self) -> bool;

    /// The config version: bumped by every change to channels, presets, keys, pricing
    /// or plugins.
    async fn config_version(&self) -> Result<i64, StoreError>;

    /// The newest audit entries.
    async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError>;

    /// Every channel, credentials decrypted.
    async fn channels(&self) -> Result<Vec<StoredChannel>, StoreError>;

    /// One channel.
    async fn channel(&self, id: &str) -> Result<Option<StoredChannel>, StoreError>;

    /// Create or replace a channel (admin-owned); credentials are sealed with the master
    /// key.
    async fn put_channel(
        &self,
        config: &relay_core::ChannelConfig,
        actor: &str,
    ) -> Result<(), StoreError>;

    /// Delete a channel; false when there was none.
    async fn delete_channel(&self, id: &str, actor: &str) -> Result<bool, StoreError>;

    /// Every preset.
    async fn presets(&self) -> Result<Vec<StoredPreset>, StoreError>;

    /// Create or replace a preset (admin-owned).
    async fn put_preset(
        &self,
        config: &relay_core::PresetConfig,
        actor: &str,
    ) -> Result<(), StoreError>;

    /// Delete a preset; false when there was none.
    async fn delete_preset(&self, name: &str, actor: &str) -> Result<bool, StoreError>;

    /// Every key.
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// One key.
    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;

    /// Insert a new key; an existing id or digest is a conflict.
    async fn create_key(&self, key: &KeyRecord, actor: &str) -> Result<(), StoreError>;

    /// Update a key's policy (limits, quota limit, expiry, group, allowed lists,
    /// revocation); its digest, usage and owner stay.
    async fn update_key(&self, key: &KeyRecord, actor: &str) -> Result<bool, StoreError>;

    /// Revoke a key; false when there was none.
    async fn revoke_key(&self, id: &str, actor: &str) -> Result<bool, StoreError>;

    /// Delete a key; false when there was none.
    async fn delete_key(&self, id: &str, actor: &str) -> Result<bool, StoreError>;

    /// Reserve `amount` of a key's quota for request `request_id`, served by gateway
    /// process `replica`. One transaction: one conditional `UPDATE` decides (so
    /// concurrent reservations never oversell) and, when granted, a `quota_holds` row
    /// records the amount, the request and the replica.
    async fn reserve(
        &self,
        key_id: &str,
        amount: i64,
        request_id: &str,
        replica: &str,
    ) -> Result<Reservation, StoreError>;

    /// Release the hold of a request that will not be settled (a reservation abandoned
    /// after its deadline): delete its `quota_holds` row and take exactly its amount off
    /// the key's `quota_reserved`. Returns the amount released (0 when there was no hold:
    /// settled, released or reconciled already).
    async fn release(&self, request_id: &str) -> Result<i64, StoreError>;

    /// Say that gateway process `replica` (started at `started_at`, Unix ms) is alive:
    /// upsert its `replicas` row with `seen_at` = now.
    async fn heartbeat(&self, replica: &str, started_at: i64) -> Result<(), StoreError>;

    /// Remove a replica's row (graceful shutdown): holds it still has become
    /// reconcilable as soon as they are older than the staleness limit.
    async fn retire_replica(&self, replica: &str) -> Result<(), StoreError>;

    /// Release the holds of gone replicas: every hold created before `stale_before_ms`
    /// (Unix ms) whose replica row is missing or was last seen before it. Each hold is
    /// deleted with `DELETE ... RETURNING`, so replicas reconciling at once release it
    /// only once; its amount comes off the key's `quota_reserved` (clamped at 0) and a
    /// `quota_ledger` row says `released: replica gone`. Replica rows last seen before
    /// `stale_before_ms` that hold nothing any more are deleted.
    async fn reconcile_holds(&self, stale_before_ms: i64) -> Result<Reconciled, StoreError>;

    /// Add to a key's quota limit (a top-up), recorded in the ledger.
    async fn grant_quota(&self, key_id: &str, amount: i64, actor: &str)
    -> Result<bool, StoreError>;

    /// Every price.
    async fn prices(&self) -> Result<Vec<(String, Price)>, StoreError>;

    /// Set a model's price.
    async fn put_price(&self, model: &str, price: &Price, actor: &str) -> Result<(), StoreError>;

    /// Delete a model's price.
    async fn delete_price(&self, model: &str, actor: &str) -> Result<bool, StoreError>;

    /// Store a plugin artifact, identified by its SHA-256. Returns its listing entry.
    async fn put_plugin(
        &self,
        name: &str,
        version: &str,
        artifact: &[u8],
        actor: &str,
    ) -> Result<PluginInfo, StoreError>;

    /// Every plugin (without the bytes).
    async fn plugins(&self) -> Result<Vec<PluginInfo>, StoreError>;

    /// A plugin's bytes.
    async fn plugin_artifact(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Delete a plugin.
    async fn delete_plugin(&self, sha256: &str, actor: &str) -> Result<bool, StoreError>;

    /// Seed from the config file. The rule: every channel, preset and key of the file is
    /// upserted as config-owned; a row of the same id created through the admin API or
    /// CLI is never overwritten (a warning says so); config-owned rows no longer in the
    /// file are deleted. One transaction, so replicas starting together see either the
    /// old or the new seed.
    async fn seed(&self, seed: &Seed) -> Result<SeedReport, StoreError>;

    /// Insert usage rows and settle their quota holds, in one transaction. Rows whose
    /// request id is already stored are skipped (and not charged again). For a new row
    /// with a hold, `quota_used` grows by its charge and `quota_reserved` shrinks by what
    /// its `quota_holds` row held (deleted with `DELETE ... RETURNING`; nothing when the
    /// hold is gone, e.g. reconciled before a late replay). Returns how many were new.
    async fn insert_usage(&self, rows: &[UsageRow]) -> Result<u64, StoreError>;

    /// Write usage rows that carry no quota hold, given as buffers of
    /// [tuples](crate::tuple) (what the usage writer collects). Rows whose request id is
    /// already stored are skipped. Returns how many were new. A buffer that does not
    /// read back as tuples fails the whole batch.
    async fn insert_usage_tuples(&self, bufs: &[Vec<u8>]) -> Result<u64, StoreError>;

    /// Usage rows of one request id (tests and support).
    async fn usage_count(&self, request_id: &str) -> Result<i64, StoreError>;

    /// Every usage row's request id (tests and support).
    async fn usage_request_ids(&self) -> Result<Vec<String>, StoreError>;

    /// Usage grouped by key, preset, channel or model over `[from, to)` (Unix ms),
    /// optionally for one key.
    async fn usage_report(
        &self,
        group_by: UsageGroup,
        from: i64,
        to: i64,
        key: Option<&str>,
    ) -> Result<UsageReport, StoreError>;
}

/// What the config file contributes to the store.
#[derive(Clone, Debug, Default)]
pub struct Seed {
    /// Channels.
    pub channels: Vec<relay_core::ChannelConfig>,
    /// Presets.
    pub presets: Vec<relay_core::PresetConfig>,
    /// Keys: (name, hex SHA-256).
    pub keys: Vec<(String, String)>,
}

/// What seeding did besides upserting.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    /// Admin-owned rows the config file also names (left as they are).
    pub kept_admin: Vec<String>,
    /// Config-owned rows deleted because the file no longer names them.
    pub removed: Vec<String>,
}
