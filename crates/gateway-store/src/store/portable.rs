//! The SQL both backends share, written once and compiled per driver:
//! `portable_store!(Type, Db, Row)` expands, inside a backend's module, to that
//! backend's `impl Store` (every operation but the backend-specific hooks) plus the
//! private helpers it needs. The backend module supplies, as inherent items of `Type`:
//! fields `pool`, `url` and `master`; `const BACKEND`; `const MIGRATIONS` (the schema);
//! `async fn begin()` (a write transaction); `async fn announce(tx, target)` (tell other
//! replicas a change committed); `async fn insert_usage_rows(tx, rows, want_ids)`;
//! `async fn write_usage_tuples(bufs)` (a batch of [tuples](crate::tuple) with no quota
//! hold to settle, in whatever transaction suits the backend);
//! `async fn reserve_hold(key, amount, request, replica, now)` (the reservation and its
//! hold row, atomically; the remaining quota, or `None` when it does not fit).
//!
//! The SQL sticks to what both speak: `$N` placeholders, BIGINT/INTEGER 0/1 flags,
//! Unix-millisecond times, `ON CONFLICT`, `RETURNING`.

macro_rules! portable_store {
    ($store:ty, $db:ty, $row:ty) => {
        type Tx = sqlx::Transaction<'static, $db>;

        impl $store {

            /// Record a change: audit entry, version bump and (Postgres) `NOTIFY`, in `tx`.
            async fn changed(
                &self,
                tx: &mut Tx,
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
                Self::announce(tx, target).await?;
                Ok(())
            }

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

            fn open_channel(&self, row: &$row) -> Result<StoredChannel, StoreError> {
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

            /// Release up to [`RECONCILE_BATCH`] stale holds (see
            /// `Store::reconcile_holds`) in one transaction. Row locks are taken in the
            /// order settlement, release and reconciliation all follow: existing holds by
            /// request id, then keys by id (a reservation locks its key, then only inserts
            /// a new hold, which waits on nobody), so they cannot deadlock on Postgres.
            /// Returns the holds released, their amount, and whether the batch was full
            /// (more may wait).
            async fn reconcile_batch(
                &self,
                stale_before_ms: i64,
            ) -> Result<(u64, i64, bool), StoreError> {
                let candidates: Vec<String> = sqlx::query(
                    "SELECT h.request_id FROM quota_holds h WHERE h.created_at < $1 AND NOT EXISTS \
                     (SELECT 1 FROM replicas r WHERE r.id = h.replica AND r.seen_at >= $1) \
                     ORDER BY h.request_id LIMIT $2",
                )
                .bind(stale_before_ms)
                .bind(RECONCILE_BATCH)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
                if candidates.is_empty() {
                    return Ok((0, 0, false));
                }
                let full = candidates.len() as i64 >= RECONCILE_BATCH;
                let mut tx = self.begin().await?;
                let mut by_key: std::collections::BTreeMap<String, i64> = Default::default();
                let mut taken = Vec::with_capacity(candidates.len());
                for request_id in &candidates {
                    // Re-checked in the DELETE: the replica may have been seen meanwhile,
                    // or another reconciler (or a late settlement) took the hold.
                    let row = sqlx::query(
                        "DELETE FROM quota_holds WHERE request_id = $1 AND created_at < $2 \
                         AND NOT EXISTS (SELECT 1 FROM replicas r \
                           WHERE r.id = quota_holds.replica AND r.seen_at >= $2) \
                         RETURNING key_id, amount, replica",
                    )
                    .bind(request_id)
                    .bind(stale_before_ms)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(row) = row {
                        let (key_id, amount, replica): (String, i64, String) =
                            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                        *by_key.entry(key_id.clone()).or_default() += amount;
                        taken.push((request_id, key_id, amount, replica));
                    }
                }
                for (key_id, amount) in &by_key {
                    unreserve(&mut tx, key_id, *amount).await?;
                }
                let now = now_ms();
                for (request_id, key_id, amount, replica) in &taken {
                    sqlx::query(
                        "INSERT INTO quota_ledger (key_id, request_id, charged, released, note, at) \
                         VALUES ($1, NULL, 0, $2, $3, $4)",
                    )
                    .bind(key_id)
                    .bind(amount)
                    .bind(format!(
                        "{RELEASED_REPLICA_GONE} (replica {replica}, request {request_id})"
                    ))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                let released = taken.iter().map(|t| t.2).sum();
                Ok((taken.len() as u64, released, full))
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
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> $crate::store::Backend {
                Self::BACKEND
            }

            fn url(&self) -> &str {
                &self.url
            }

            fn with_master_key(&self, key: MasterKey) -> $crate::store::SharedStore {
                let mut store = self.clone();
                store.master = Some(key);
                std::sync::Arc::new(store)
            }

            async fn migrate(&self) -> Result<(), StoreError> {
                $crate::store::migrator(Self::MIGRATIONS)
                    .run(&self.pool)
                    .await
                    .map_err(|e| StoreError::Migrate(e.to_string()))
            }

            async fn ping(&self) -> bool {
                sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
            }

            async fn config_version(&self) -> Result<i64, StoreError> {
                Ok(
                    sqlx::query("SELECT version FROM config_version WHERE id = 1")
                        .fetch_one(&self.pool)
                        .await?
                        .try_get::<i64, _>(0)?,
                )
            }

            async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
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

            async fn channels(&self) -> Result<Vec<StoredChannel>, StoreError> {
                let rows = sqlx::query("SELECT id, config, credentials, owner FROM channels ORDER BY id")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| self.open_channel(r)).collect()
            }

            async fn channel(&self, id: &str) -> Result<Option<StoredChannel>, StoreError> {
                let row = sqlx::query("SELECT id, config, credentials, owner FROM channels WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(|r| self.open_channel(r)).transpose()
            }

            async fn put_channel(
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

            async fn delete_channel(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
                self.delete_row("channels", "id", id, actor, "channel")
                    .await
            }

            async fn presets(&self) -> Result<Vec<StoredPreset>, StoreError> {
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

            async fn put_preset(
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

            async fn delete_preset(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
                self.delete_row("presets", "name", name, actor, "preset")
                    .await
            }

            async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
                let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id"))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(key_from_row).collect()
            }

            async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
                let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(key_from_row).transpose()
            }

            async fn create_key(&self, key: &KeyRecord, actor: &str) -> Result<(), StoreError> {
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

            async fn update_key(&self, key: &KeyRecord, actor: &str) -> Result<bool, StoreError> {
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

            async fn revoke_key(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
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

            async fn delete_key(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
                self.delete_row("api_keys", "id", id, actor, "key").await
            }

            async fn reserve(
                &self,
                key_id: &str,
                amount: i64,
                request_id: &str,
                replica: &str,
            ) -> Result<Reservation, StoreError> {
                Ok(
                    match self.reserve_hold(key_id, amount, request_id, replica, now_ms()).await? {
                        Some(remaining) => Reservation::Granted { remaining },
                        None => Reservation::Exhausted,
                    },
                )
            }

            async fn release(&self, request_id: &str) -> Result<i64, StoreError> {
                let mut tx = self.begin().await?;
                let released = match take_hold(&mut tx, request_id).await? {
                    Some((key_id, amount)) => {
                        unreserve(&mut tx, &key_id, amount).await?;
                        amount
                    }
                    None => 0,
                };
                tx.commit().await?;
                Ok(released)
            }

            async fn heartbeat(&self, replica: &str, started_at: i64) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO replicas (id, started_at, seen_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
                )
                .bind(replica)
                .bind(started_at)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn retire_replica(&self, replica: &str) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM replicas WHERE id = $1")
                    .bind(replica)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn reconcile_holds(&self, stale_before_ms: i64) -> Result<Reconciled, StoreError> {
                let mut done = Reconciled::default();
                loop {
                    let (holds, released, full) =
                        self.reconcile_batch(stale_before_ms).await?;
                    done.holds += holds;
                    done.released += released;
                    // A full batch taken by someone else meanwhile also ends the round.
                    if !full || holds == 0 {
                        break;
                    }
                }
                let mut tx = self.begin().await?;
                done.replicas_removed = sqlx::query(
                    "DELETE FROM replicas WHERE seen_at < $1 AND NOT EXISTS \
                     (SELECT 1 FROM quota_holds h WHERE h.replica = replicas.id)",
                )
                .bind(stale_before_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(done)
            }

            async fn grant_quota(
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

            async fn prices(&self) -> Result<Vec<(String, Price)>, StoreError> {
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

            async fn put_price(
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

            async fn delete_price(&self, model: &str, actor: &str) -> Result<bool, StoreError> {
                self.delete_row("pricing", "model", model, actor, "pricing")
                    .await
            }

            async fn put_plugin(
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

            async fn plugins(&self) -> Result<Vec<PluginInfo>, StoreError> {
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

            async fn plugin_artifact(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
                let row = sqlx::query("SELECT artifact FROM plugins WHERE sha256 = $1")
                    .bind(sha256)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.try_get(0)).transpose()?)
            }

            async fn delete_plugin(&self, sha256: &str, actor: &str) -> Result<bool, StoreError> {
                self.delete_row("plugins", "sha256", sha256, actor, "plugin")
                    .await
            }

            async fn seed(&self, seed: &Seed) -> Result<SeedReport, StoreError> {
                let mut report = SeedReport::default();
                let mut tx = self.begin().await?;
                let owners = |rows: Vec<$row>| -> Result<Vec<(String, Owner)>, StoreError> {
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

            async fn insert_usage(&self, rows: &[UsageRow]) -> Result<u64, StoreError> {
                if rows.is_empty() {
                    return Ok(0);
                }
                // Which rows were new matters only for settling quota holds.
                let settle = rows.iter().any(|r| r.hold.is_some() && r.key_id.is_some());
                let refs: Vec<RowRef<'_>> = rows.iter().map(RowRef::of_row).collect();
                if !settle {
                    let mut buf = Vec::new();
                    crate::tuple::encode_all(&refs, &mut buf)?;
                    return self.write_usage_tuples(std::slice::from_ref(&buf)).await;
                }
                let mut tx = self.begin().await?;
                let (new, mut inserted) = Self::insert_usage_rows(&mut tx, &refs, settle).await?;
                if settle {
                    // Settle once per inserted id, even if the batch holds the id twice.
                    let mut settled: Vec<&UsageRow> = rows
                        .iter()
                        .filter(|r| r.hold.is_some() && r.key_id.is_some())
                        .filter(|r| inserted.remove(&r.request_id))
                        .collect();
                    // The lock order of every quota transaction: holds by request id,
                    // then keys by id (see `reconcile_batch`).
                    settled.sort_unstable_by(|a, b| a.request_id.cmp(&b.request_id));
                    let mut by_key: std::collections::BTreeMap<&str, (i64, i64)> =
                        Default::default();
                    let mut ledger = Vec::with_capacity(settled.len());
                    for r in settled {
                        let (Some(hold), Some(key)) = (r.hold, r.key_id.as_deref()) else {
                            continue;
                        };
                        // What the hold still holds: nothing when it was reconciled
                        // before this (late) row arrived. Rows spilled by an older
                        // gateway have no hold row and release what they carry.
                        let released = if hold.tracked {
                            take_hold(&mut tx, &r.request_id)
                                .await?
                                .map_or(0, |(_, amount)| amount)
                        } else {
                            hold.reserved
                        };
                        let charge = r.charge(hold.kind);
                        let sums = by_key.entry(key).or_default();
                        sums.0 += charge;
                        sums.1 += released;
                        ledger.push((key, &r.request_id, charge, released));
                    }
                    for (key, (charge, released)) in &by_key {
                        sqlx::query(
                            "UPDATE api_keys SET quota_used = quota_used + $2, quota_reserved = \
                             CASE WHEN quota_reserved > $3 THEN quota_reserved - $3 ELSE 0 END WHERE id = $1",
                        )
                        .bind(*key)
                        .bind(*charge)
                        .bind(*released)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let now = now_ms();
                    for (key, request_id, charge, released) in ledger {
                        sqlx::query(
                            "INSERT INTO quota_ledger (key_id, request_id, charged, released, note, at) \
                             VALUES ($1, $2, $3, $4, NULL, $5) ON CONFLICT (request_id) DO NOTHING",
                        )
                        .bind(key)
                        .bind(request_id)
                        .bind(charge)
                        .bind(released)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                tx.commit().await?;
                Ok(new)
            }

            async fn insert_usage_tuples(&self, bufs: &[Vec<u8>]) -> Result<u64, StoreError> {
                if bufs.iter().all(|b| b.is_empty()) {
                    return Ok(0);
                }
                self.write_usage_tuples(bufs).await
            }

            async fn usage_count(&self, request_id: &str) -> Result<i64, StoreError> {
                Ok(
                    sqlx::query("SELECT COUNT(*) FROM usage WHERE request_id = $1")
                        .bind(request_id)
                        .fetch_one(&self.pool)
                        .await?
                        .try_get(0)?,
                )
            }

            async fn usage_request_ids(&self) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query("SELECT request_id FROM usage")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
            }

            async fn usage_report(
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

        /// Holds one reconciliation transaction releases at most.
        const RECONCILE_BATCH: i64 = 500;

        /// The ledger note of a hold released because its replica is gone.
        const RELEASED_REPLICA_GONE: &str = "released: replica gone";

        /// Delete a request's hold; its key and amount, if it had one.
        async fn take_hold(tx: &mut Tx, request_id: &str) -> Result<Option<(String, i64)>, StoreError> {
            let row = sqlx::query(
                "DELETE FROM quota_holds WHERE request_id = $1 RETURNING key_id, amount",
            )
            .bind(request_id)
            .fetch_optional(&mut **tx)
            .await?;
            Ok(match row {
                Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
                None => None,
            })
        }

        /// Take `amount` off a key's `quota_reserved`, clamped at 0.
        async fn unreserve(tx: &mut Tx, key_id: &str, amount: i64) -> Result<(), StoreError> {
            sqlx::query(
                "UPDATE api_keys SET quota_reserved = CASE WHEN quota_reserved > $2 \
                 THEN quota_reserved - $2 ELSE 0 END WHERE id = $1",
            )
            .bind(key_id)
            .bind(amount)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        const KEY_COLUMNS: &str = "id, prefix, key_sha256, allowed_presets, allowed_models, rpm, tpm, \
            quota_kind, quota_limit, quota_used, quota_reserved, expires_at, revoked, key_group, owner, created_at";

        fn key_from_row(r: &$row) -> Result<KeyRecord, StoreError> {
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

        async fn insert_key(tx: &mut Tx, key: &KeyRecord) -> Result<(), StoreError> {
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
            tx: &mut Tx,
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
            tx: &mut Tx,
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
    };
}

pub(crate) use portable_store;
