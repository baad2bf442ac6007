//! The [`Store`]: one schema on two backends (Postgres in production, SQLite embedded),
//! reached through sqlx's runtime-selected `Any` driver with runtime queries. Both
//! backends run the same SQL (`$N` placeholders, 0/1 integer flags, Unix-millisecond
//! times); what differs per backend is the migration set and how changes are announced
//! (Postgres `NOTIFY`, SQLite polling of `config_version`).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use crate::crypto::MasterKey;
use crate::model::{
    AuditEntry, KeyRecord, Owner, PluginInfo, Price, Quota, QuotaKind, StoredChannel, StoredPreset,
    UsageGroup, UsageLine, UsageReport, UsageRow,
};
use crate::{StoreError, now_ms};

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

/// The database behind the gateway. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
    master: Option<MasterKey>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
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

fn migrations(backend: Backend) -> Migrator {
    let sql = match backend {
        Backend::Postgres => include_str!("../migrations/postgres/0001_init.sql"),
        Backend::Sqlite => include_str!("../migrations/sqlite/0001_init.sql"),
    };
    Migrator {
        migrations: Cow::Owned(vec![Migration::new(
            1,
            Cow::Borrowed("init"),
            MigrationType::Simple,
            Cow::Borrowed(sql),
            false,
        )]),
        // Postgres: sqlx holds `pg_advisory_lock` while it migrates, so replicas that
        // start together migrate one at a time. SQLite: the file lock serializes them.
        locking: true,
        ..Migrator::DEFAULT
    }
}

impl Store {
    /// Connect (`postgres://...` or `sqlite://PATH`; a bare path means SQLite, created
    /// when missing). Does not migrate: call [`Store::migrate`].
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
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
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        };
        let options = AnyConnectOptions::from_str(&url).map_err(StoreError::Db)?;
        let mut pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5));
        if backend == Backend::Sqlite {
            pool = pool.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;")
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(options).await.map_err(StoreError::Db)?;
        Ok(Store {
            pool,
            backend,
            url,
            master: None,
        })
    }

    /// Use this master key for channel credentials.
    pub fn with_master_key(mut self, key: MasterKey) -> Self {
        self.master = Some(key);
        self
    }

    /// Which backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection URL (for a `LISTEN` connection).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A write transaction. SQLite: `BEGIN IMMEDIATE`, so it takes the write lock up
    /// front and waits for it (busy timeout) instead of failing when a read inside the
    /// transaction would have to be upgraded while another connection writes.
    async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Apply pending migrations under the migration lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations(self.backend)
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    // ---- change announcements ------------------------------------------------------

    /// The config version: bumped by every change to channels, presets, keys, pricing
    /// or plugins.
    pub async fn config_version(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT version FROM config_version WHERE id = 1")
                .fetch_one(&self.pool)
                .await?
                .try_get::<i64, _>(0)?,
        )
    }

    /// Record a change: audit entry, version bump and (Postgres) `NOTIFY`, in `tx`.
    async fn changed(
        &self,
        tx: &mut Transaction<'static, Any>,
        actor: &str,
        action: &str,
        target: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE config_version SET version = version + 1 WHERE id = 1")
            .execute(&mut **tx)
            .await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(target)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// The newest audit entries.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get(0)?,
                    actor: r.try_get(1)?,
                    action: r.try_get(2)?,
                    target: r.try_get(3)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
    }

    // ---- channels --------------------------------------------------------------------

    fn seal_channel(
        &self,
        config: &relay_core::ChannelConfig,
    ) -> Result<(String, Option<Vec<u8>>), StoreError> {
        let mut bare = config.clone();
        let secrets: Vec<String> = bare
            .api_keys
            .drain(..)
            .map(|s| s.expose().to_owned())
            .collect();
        let sealed = if secrets.is_empty() {
            None
        } else {
            let master = self.master.as_ref().ok_or_else(|| {
                StoreError::Crypto("storing channel credentials needs a master key".into())
            })?;
            Some(master.encrypt(&serde_json::to_vec(&secrets)?)?)
        };
        Ok((serde_json::to_string(&bare)?, sealed))
    }

    fn open_channel(&self, row: &AnyRow) -> Result<StoredChannel, StoreError> {
        let json: String = row.try_get("config")?;
        let mut config: relay_core::ChannelConfig = serde_json::from_str(&json)?;
        let sealed: Option<Vec<u8>> = row.try_get("credentials")?;
        if let Some(sealed) = sealed {
            let master = self.master.as_ref().ok_or_else(|| {
                StoreError::Crypto("stored channel credentials need the master key".into())
            })?;
            let secrets: Vec<String> = serde_json::from_slice(&master.decrypt(&sealed)?)?;
            config.api_keys = secrets.into_iter().map(relay_core::Secret::new).collect();
        }
        let owner: String = row.try_get("owner")?;
        Ok(StoredChannel {
            config,
            owner: Owner::parse(&owner),
        })
    }

    /// Every channel, credentials decrypted.
    pub async fn channels(&self) -> Result<Vec<StoredChannel>, StoreError> {
        let rows = sqlx::query("SELECT id, config, credentials, owner FROM channels ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| self.open_channel(r)).collect()
    }

    /// One channel.
    pub async fn channel(&self, id: &str) -> Result<Option<StoredChannel>, StoreError> {
        let row = sqlx::query("SELECT id, config, credentials, owner FROM channels WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(|r| self.open_channel(r)).transpose()
    }

    /// Create or replace a channel (admin-owned).
    pub async fn put_channel(
        &self,
        config: &relay_core::ChannelConfig,
        actor: &str,
    ) -> Result<(), StoreError> {
        let (json, sealed) = self.seal_channel(config)?;
        let mut tx = self.begin().await?;
        upsert_channel(&mut tx, &config.id, &json, sealed, Owner::Admin).await?;
        self.changed(
            &mut tx,
            actor,
            "put",
            &format!("channel:{}", config.id),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Delete a channel; false when there was none.
    pub async fn delete_channel(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        self.delete_row("channels", "id", id, actor, "channel")
            .await
    }

    async fn delete_row(
        &self,
        table: &'static str,
        column: &'static str,
        id: &str,
        actor: &str,
        what: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if done {
            self.changed(&mut tx, actor, "delete", &format!("{what}:{id}"), None)
                .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    // ---- presets ---------------------------------------------------------------------

    /// Every preset.
    pub async fn presets(&self) -> Result<Vec<StoredPreset>, StoreError> {
        let rows = sqlx::query("SELECT name, config, owner FROM presets ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let json: String = r.try_get(1)?;
                let owner: String = r.try_get(2)?;
                Ok(StoredPreset {
                    config: serde_json::from_str(&json)?,
                    owner: Owner::parse(&owner),
                })
            })
            .collect()
    }

    /// Create or replace a preset (admin-owned).
    pub async fn put_preset(
        &self,
        config: &relay_core::PresetConfig,
        actor: &str,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(config)?;
        let mut tx = self.begin().await?;
        upsert_preset(&mut tx, &config.name, &json, Owner::Admin).await?;
        self.changed(
            &mut tx,
            actor,
            "put",
            &format!("preset:{}", config.name),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Delete a preset; false when there was none.
    pub async fn delete_preset(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
        self.delete_row("presets", "name", name, actor, "preset")
            .await
    }

    // ---- keys ------------------------------------------------------------------------

    /// Every key.
    pub async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// One key.
    pub async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// Insert a new key; an existing id or digest is a conflict.
    pub async fn create_key(&self, key: &KeyRecord, actor: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        if sqlx::query("SELECT 1 FROM api_keys WHERE id = $1")
            .bind(&key.id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            return Err(StoreError::Conflict(format!(
                "a key named {:?} exists already",
                key.id
            )));
        }
        insert_key(&mut tx, key).await?;
        self.changed(&mut tx, actor, "create", &format!("key:{}", key.id), None)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Update a key's policy (limits, quota limit, expiry, group, allowed lists,
    /// revocation); its digest, usage and owner stay.
    pub async fn update_key(&self, key: &KeyRecord, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET allowed_presets = $2, allowed_models = $3, rpm = $4, tpm = $5, \
             quota_kind = $6, quota_limit = $7, expires_at = $8, revoked = $9, key_group = $10 \
             WHERE id = $1",
        )
        .bind(&key.id)
        .bind(serde_json::to_string(&key.allowed_presets)?)
        .bind(serde_json::to_string(&key.allowed_models)?)
        .bind(key.rpm.map(i64::from))
        .bind(key.tpm.map(|t| t as i64))
        .bind(key.quota.map(|q| q.kind.as_str()))
        .bind(key.quota.map(|q| q.limit))
        .bind(key.expires_at)
        .bind(i64::from(key.revoked))
        .bind(key.group.as_deref())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if done {
            self.changed(&mut tx, actor, "update", &format!("key:{}", key.id), None)
                .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Revoke a key; false when there was none.
    pub async fn revoke_key(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("UPDATE api_keys SET revoked = 1 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if done {
            self.changed(&mut tx, actor, "revoke", &format!("key:{id}"), None)
                .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Delete a key; false when there was none.
    pub async fn delete_key(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        self.delete_row("api_keys", "id", id, actor, "key").await
    }

    /// Reserve `amount` of a key's quota: one conditional statement, so concurrent
    /// reservations never oversell.
    pub async fn reserve(&self, key_id: &str, amount: i64) -> Result<Reservation, StoreError> {
        let row = sqlx::query(
            "UPDATE api_keys SET quota_reserved = quota_reserved + $2 \
             WHERE id = $1 AND quota_limit IS NOT NULL \
               AND quota_used + quota_reserved + $2 <= quota_limit \
             RETURNING quota_limit - quota_used - quota_reserved",
        )
        .bind(key_id)
        .bind(amount)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Reservation::Granted {
                remaining: r.try_get(0)?,
            },
            None => Reservation::Exhausted,
        })
    }

    /// Release a reservation that was never used (the request did not reach the relay).
    pub async fn release(&self, key_id: &str, amount: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET quota_reserved = CASE WHEN quota_reserved > $2 \
             THEN quota_reserved - $2 ELSE 0 END WHERE id = $1",
        )
        .bind(key_id)
        .bind(amount)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Add to a key's quota limit (a top-up), recorded in the ledger.
    pub async fn grant_quota(
        &self,
        key_id: &str,
        amount: i64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET quota_limit = COALESCE(quota_limit, 0) + $2 WHERE id = $1",
        )
        .bind(key_id)
        .bind(amount)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if done {
            sqlx::query(
                "INSERT INTO quota_ledger (key_id, request_id, charged, released, note, at) \
                 VALUES ($1, NULL, $2, 0, 'grant', $3)",
            )
            .bind(key_id)
            .bind(-amount)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            self.changed(
                &mut tx,
                actor,
                "grant",
                &format!("key:{key_id}"),
                Some(&amount.to_string()),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    // ---- pricing ---------------------------------------------------------------------

    /// Every price.
    pub async fn prices(&self) -> Result<Vec<(String, Price)>, StoreError> {
        let rows = sqlx::query(
            "SELECT model, input_per_mtok, output_per_mtok, cached_input_per_mtok FROM pricing ORDER BY model",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    Price {
                        input_per_mtok: r.try_get(1)?,
                        output_per_mtok: r.try_get(2)?,
                        cached_input_per_mtok: r.try_get(3)?,
                    },
                ))
            })
            .collect()
    }

    /// Set a model's price.
    pub async fn put_price(
        &self,
        model: &str,
        price: &Price,
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO pricing (model, input_per_mtok, output_per_mtok, cached_input_per_mtok, owner, updated_at) \
             VALUES ($1, $2, $3, $4, 'admin', $5) ON CONFLICT (model) DO UPDATE SET \
             input_per_mtok = excluded.input_per_mtok, output_per_mtok = excluded.output_per_mtok, \
             cached_input_per_mtok = excluded.cached_input_per_mtok, owner = 'admin', updated_at = excluded.updated_at",
        )
        .bind(model)
        .bind(price.input_per_mtok)
        .bind(price.output_per_mtok)
        .bind(price.cached_input_per_mtok)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        self.changed(&mut tx, actor, "put", &format!("pricing:{model}"), None)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Delete a model's price.
    pub async fn delete_price(&self, model: &str, actor: &str) -> Result<bool, StoreError> {
        self.delete_row("pricing", "model", model, actor, "pricing")
            .await
    }

    // ---- plugins ---------------------------------------------------------------------

    /// Store a plugin artifact, identified by its SHA-256. Returns its listing entry.
    pub async fn put_plugin(
        &self,
        name: &str,
        version: &str,
        artifact: &[u8],
        actor: &str,
    ) -> Result<PluginInfo, StoreError> {
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(artifact));
        let info = PluginInfo {
            sha256: sha256.clone(),
            name: name.to_owned(),
            version: version.to_owned(),
            size: artifact.len() as i64,
            created_at: now_ms(),
        };
        let mut tx = self.begin().await?;
        let clash = sqlx::query("SELECT sha256 FROM plugins WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = clash {
            let existing: String = row.try_get(0)?;
            if existing != sha256 {
                return Err(StoreError::Conflict(format!(
                    "plugin {name} {version} exists with another artifact (sha256 {existing})"
                )));
            }
        }
        sqlx::query(
            "INSERT INTO plugins (sha256, name, version, size, artifact, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&info.sha256)
        .bind(name)
        .bind(version)
        .bind(info.size)
        .bind(artifact.to_vec())
        .bind(info.created_at)
        .execute(&mut *tx)
        .await?;
        self.changed(
            &mut tx,
            actor,
            "put",
            &format!("plugin:{sha256}"),
            Some(&format!("{name} {version}")),
        )
        .await?;
        tx.commit().await?;
        Ok(info)
    }

    /// Every plugin (without the bytes).
    pub async fn plugins(&self) -> Result<Vec<PluginInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT sha256, name, version, size, created_at FROM plugins ORDER BY name, version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PluginInfo {
                    sha256: r.try_get(0)?,
                    name: r.try_get(1)?,
                    version: r.try_get(2)?,
                    size: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// A plugin's bytes.
    pub async fn plugin_artifact(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT artifact FROM plugins WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Delete a plugin.
    pub async fn delete_plugin(&self, sha256: &str, actor: &str) -> Result<bool, StoreError> {
        self.delete_row("plugins", "sha256", sha256, actor, "plugin")
            .await
    }

    // ---- config seeding --------------------------------------------------------------

    /// Seed from the config file. The rule: every channel, preset and key of the file is
    /// upserted as config-owned; a row of the same id created through the admin API or
    /// CLI is never overwritten (a warning says so); config-owned rows no longer in the
    /// file are deleted. One transaction, so replicas starting together see either the
    /// old or the new seed.
    pub async fn seed(&self, seed: &Seed) -> Result<SeedReport, StoreError> {
        let mut report = SeedReport::default();
        let mut tx = self.begin().await?;
        let owners = |rows: Vec<AnyRow>| -> Result<Vec<(String, Owner)>, StoreError> {
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get::<String, _>(0)?,
                        Owner::parse(&r.try_get::<String, _>(1)?),
                    ))
                })
                .collect()
        };
        let existing_channels = owners(
            sqlx::query("SELECT id, owner FROM channels")
                .fetch_all(&mut *tx)
                .await?,
        )?;
        for ch in &seed.channels {
            if existing_channels
                .iter()
                .any(|(id, o)| id == &ch.id && *o == Owner::Admin)
            {
                report.kept_admin.push(format!("channel:{}", ch.id));
                continue;
            }
            let (json, sealed) = self.seal_channel(ch)?;
            upsert_channel(&mut tx, &ch.id, &json, sealed, Owner::Config).await?;
        }
        for (id, owner) in &existing_channels {
            if *owner == Owner::Config && !seed.channels.iter().any(|c| &c.id == id) {
                sqlx::query("DELETE FROM channels WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                report.removed.push(format!("channel:{id}"));
            }
        }
        let existing_presets = owners(
            sqlx::query("SELECT name, owner FROM presets")
                .fetch_all(&mut *tx)
                .await?,
        )?;
        for p in &seed.presets {
            if existing_presets
                .iter()
                .any(|(id, o)| id == &p.name && *o == Owner::Admin)
            {
                report.kept_admin.push(format!("preset:{}", p.name));
                continue;
            }
            upsert_preset(&mut tx, &p.name, &serde_json::to_string(p)?, Owner::Config).await?;
        }
        for (id, owner) in &existing_presets {
            if *owner == Owner::Config && !seed.presets.iter().any(|p| &p.name == id) {
                sqlx::query("DELETE FROM presets WHERE name = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                report.removed.push(format!("preset:{id}"));
            }
        }
        let existing_keys = owners(
            sqlx::query("SELECT id, owner FROM api_keys")
                .fetch_all(&mut *tx)
                .await?,
        )?;
        for (name, sha) in &seed.keys {
            if existing_keys
                .iter()
                .any(|(id, o)| id == name && *o == Owner::Admin)
            {
                report.kept_admin.push(format!("key:{name}"));
                continue;
            }
            // Replace the digest of a config key; its usage counters stay.
            let updated = sqlx::query("UPDATE api_keys SET key_sha256 = $2 WHERE id = $1")
                .bind(name)
                .bind(sha)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated == 0 {
                insert_key(
                    &mut tx,
                    &KeyRecord::new(name.clone(), sha.clone(), Owner::Config),
                )
                .await?;
            }
        }
        for (id, owner) in &existing_keys {
            if *owner == Owner::Config && !seed.keys.iter().any(|(n, _)| n == id) {
                sqlx::query("DELETE FROM api_keys WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                report.removed.push(format!("key:{id}"));
            }
        }
        self.changed(&mut tx, "config", "seed", "config-file", None)
            .await?;
        tx.commit().await?;
        Ok(report)
    }

    // ---- usage -----------------------------------------------------------------------

    /// Insert usage rows and settle their quota holds, in one transaction. Rows whose
    /// request id is already stored are skipped (and not charged again). Returns how
    /// many were new.
    pub async fn insert_usage(&self, rows: &[UsageRow]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let mut inserted: std::collections::HashSet<String> =
            std::collections::HashSet::with_capacity(rows.len());
        for chunk in rows.chunks(USAGE_CHUNK) {
            let mut sql = String::with_capacity(200 + chunk.len() * USAGE_COLUMNS * 5);
            sql.push_str("INSERT INTO usage (request_id, key_id, requested_model, item, channel, upstream_model, client_dialect, upstream_dialect, operation, stream, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_micros, estimated, outcome, status, error_kind, attempts, latency_ms, ttft_ms, started_at) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push('(');
                for c in 0..USAGE_COLUMNS {
                    if c > 0 {
                        sql.push(',');
                    }
                    sql.push('$');
                    sql.push_str(&(i * USAGE_COLUMNS + c + 1).to_string());
                }
                sql.push(')');
            }
            sql.push_str(" ON CONFLICT (request_id) DO NOTHING RETURNING request_id");
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(&r.request_id)
                    .bind(r.key_id.as_deref())
                    .bind(&r.requested_model)
                    .bind(r.item)
                    .bind(r.channel.as_deref())
                    .bind(r.upstream_model.as_deref())
                    .bind(&r.client_dialect)
                    .bind(r.upstream_dialect.as_deref())
                    .bind(&r.operation)
                    .bind(i64::from(r.stream))
                    .bind(r.input_tokens)
                    .bind(r.output_tokens)
                    .bind(r.cached_tokens)
                    .bind(r.reasoning_tokens)
                    .bind(r.cost_micros)
                    .bind(i64::from(r.estimated))
                    .bind(&r.outcome)
                    .bind(r.status)
                    .bind(r.error_kind.as_deref())
                    .bind(r.attempts)
                    .bind(r.latency_ms)
                    .bind(r.ttft_ms)
                    .bind(r.started_at);
            }
            for row in q.fetch_all(&mut *tx).await? {
                inserted.insert(row.try_get(0)?);
            }
        }
        let now = now_ms();
        let new = inserted.len() as u64;
        for r in rows {
            let (Some(hold), Some(key)) = (r.hold, r.key_id.as_deref()) else {
                continue;
            };
            // Settle once per inserted id, even if the batch holds the id twice.
            if !inserted.remove(&r.request_id) {
                continue;
            }
            let charge = r.charge(hold.kind);
            sqlx::query(
                "UPDATE api_keys SET quota_used = quota_used + $2, quota_reserved = \
                 CASE WHEN quota_reserved > $3 THEN quota_reserved - $3 ELSE 0 END WHERE id = $1",
            )
            .bind(key)
            .bind(charge)
            .bind(hold.reserved)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO quota_ledger (key_id, request_id, charged, released, note, at) \
                 VALUES ($1, $2, $3, $4, NULL, $5) ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(key)
            .bind(&r.request_id)
            .bind(charge)
            .bind(hold.reserved)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Usage rows of one request id (tests and support).
    pub async fn usage_count(&self, request_id: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM usage WHERE request_id = $1")
                .bind(request_id)
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }

    /// Every usage row's request id (tests and support).
    pub async fn usage_request_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT request_id FROM usage")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Usage grouped by key, preset, channel or model over `[from, to)` (Unix ms),
    /// optionally for one key.
    pub async fn usage_report(
        &self,
        group_by: UsageGroup,
        from: i64,
        to: i64,
        key: Option<&str>,
    ) -> Result<UsageReport, StoreError> {
        let col = group_by.column();
        let sql = format!(
            "SELECT {col}, COUNT(*), CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN outcome = 'ok' THEN 0 ELSE 1 END), 0) AS BIGINT) \
             FROM usage WHERE started_at >= $1 AND started_at < $2 AND ($3 IS NULL OR key_id = $3) \
             GROUP BY {col} ORDER BY {col}"
        );
        let rows = sqlx::query(&sql)
            .bind(from)
            .bind(to)
            .bind(key)
            .fetch_all(&self.pool)
            .await?;
        let mut total = UsageLine::default();
        let mut lines = Vec::with_capacity(rows.len());
        for r in &rows {
            let line = UsageLine {
                group: r.try_get(0)?,
                requests: r.try_get(1)?,
                input_tokens: r.try_get(2)?,
                output_tokens: r.try_get(3)?,
                cached_tokens: r.try_get(4)?,
                cost_micros: r.try_get(5)?,
                errors: r.try_get(6)?,
            };
            total.requests += line.requests;
            total.input_tokens += line.input_tokens;
            total.output_tokens += line.output_tokens;
            total.cached_tokens += line.cached_tokens;
            total.cost_micros += line.cost_micros;
            total.errors += line.errors;
            lines.push(line);
        }
        Ok(UsageReport {
            group_by,
            from,
            to,
            lines,
            total,
        })
    }
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

const USAGE_COLUMNS: usize = 23;
/// Rows per INSERT statement (23 parameters each; well under both backends' limits).
const USAGE_CHUNK: usize = 256;

const KEY_COLUMNS: &str = "id, prefix, key_sha256, allowed_presets, allowed_models, rpm, tpm, \
    quota_kind, quota_limit, quota_used, quota_reserved, expires_at, revoked, key_group, owner, created_at";

fn key_from_row(r: &AnyRow) -> Result<KeyRecord, StoreError> {
    let allowed_presets: String = r.try_get(3)?;
    let allowed_models: String = r.try_get(4)?;
    let quota_kind: Option<String> = r.try_get(7)?;
    let quota_limit: Option<i64> = r.try_get(8)?;
    let rpm: Option<i64> = r.try_get(5)?;
    let tpm: Option<i64> = r.try_get(6)?;
    let revoked: i64 = r.try_get(12)?;
    let owner: String = r.try_get(14)?;
    Ok(KeyRecord {
        id: r.try_get(0)?,
        prefix: r.try_get(1)?,
        key_sha256: r.try_get(2)?,
        allowed_presets: serde_json::from_str(&allowed_presets)?,
        allowed_models: serde_json::from_str(&allowed_models)?,
        rpm: rpm.map(|v| v.clamp(0, i64::from(u32::MAX)) as u32),
        tpm: tpm.map(|v| v.max(0) as u64),
        quota: match (
            quota_kind.as_deref().and_then(QuotaKind::parse),
            quota_limit,
        ) {
            (Some(kind), Some(limit)) => Some(Quota { kind, limit }),
            _ => None,
        },
        quota_used: r.try_get(9)?,
        quota_reserved: r.try_get(10)?,
        expires_at: r.try_get(11)?,
        revoked: revoked != 0,
        group: r.try_get(13)?,
        owner: Owner::parse(&owner),
        created_at: r.try_get(15)?,
    })
}

async fn insert_key(tx: &mut Transaction<'static, Any>, key: &KeyRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys (id, prefix, key_sha256, allowed_presets, allowed_models, rpm, tpm, \
         quota_kind, quota_limit, quota_used, quota_reserved, expires_at, revoked, key_group, owner, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, 0, $10, $11, $12, $13, $14)",
    )
    .bind(&key.id)
    .bind(key.prefix.as_deref())
    .bind(&key.key_sha256)
    .bind(serde_json::to_string(&key.allowed_presets)?)
    .bind(serde_json::to_string(&key.allowed_models)?)
    .bind(key.rpm.map(i64::from))
    .bind(key.tpm.map(|t| t as i64))
    .bind(key.quota.map(|q| q.kind.as_str()))
    .bind(key.quota.map(|q| q.limit))
    .bind(key.expires_at)
    .bind(i64::from(key.revoked))
    .bind(key.group.as_deref())
    .bind(key.owner.as_str())
    .bind(key.created_at)
    .execute(&mut **tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            StoreError::Conflict(format!("key {:?} or its digest exists already", key.id))
        }
        _ => StoreError::Db(e),
    })?;
    Ok(())
}

async fn upsert_channel(
    tx: &mut Transaction<'static, Any>,
    id: &str,
    json: &str,
    sealed: Option<Vec<u8>>,
    owner: Owner,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO channels (id, config, credentials, owner, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET config = excluded.config, credentials = excluded.credentials, \
         owner = excluded.owner, updated_at = excluded.updated_at",
    )
    .bind(id)
    .bind(json)
    .bind(sealed)
    .bind(owner.as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_preset(
    tx: &mut Transaction<'static, Any>,
    name: &str,
    json: &str,
    owner: Owner,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO presets (name, config, owner, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET config = excluded.config, owner = excluded.owner, \
         updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(json)
    .bind(owner.as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
