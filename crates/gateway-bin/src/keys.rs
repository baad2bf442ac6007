//! The in-memory key cache for keys from the store: looked up by the public prefix of a
//! generated key (`rk-XXXXXXXX…`) or by digest (keys seeded from the config file), then
//! confirmed in constant time against the stored SHA-256. Rebuilt whole when the store
//! announces a change; a request never reads the database to authenticate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use relay_store::KeyRecord;
use relay_store::keys::{digest, prefix_of};
use subtle::ConstantTimeEq;

use crate::limits::Limiter;

/// One key with its live state.
#[derive(Debug)]
pub struct KeyEntry {
    /// The stored policy.
    pub record: KeyRecord,
    digest: [u8; 32],
    /// Rate-limit buckets (kept across reloads).
    pub limiter: Arc<Limiter>,
    /// Quota reserved in process while the store was unreachable (kept across reloads).
    pub local_outstanding: Arc<AtomicI64>,
    /// Quota settled in process since this entry was loaded (charges on their way to
    /// the store), so an outage does not reopen a spent quota.
    pub local_spent: AtomicI64,
}

impl KeyEntry {
    /// Quota left by the last known balance, less in-process reservations.
    pub fn cached_balance(&self) -> Option<i64> {
        let q = self.record.quota?;
        Some(
            q.limit
                - self.record.quota_used
                - self.record.quota_reserved
                - self.local_outstanding.load(Ordering::Relaxed)
                - self.local_spent.load(Ordering::Relaxed),
        )
    }
}

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No such key.
    Unknown,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
}

/// Keys by prefix and digest.
#[derive(Debug, Default)]
pub struct KeyCache {
    by_prefix: HashMap<String, Arc<KeyEntry>>,
    by_digest: HashMap<[u8; 32], Arc<KeyEntry>>,
    by_id: HashMap<String, Arc<KeyEntry>>,
    /// Whether any key has a TPM limit (settlement charges tokens only then).
    any_tpm: bool,
}

impl KeyCache {
    /// Build from stored keys, carrying rate-limit and in-process quota state over from
    /// `previous` by key id.
    pub fn build(records: Vec<KeyRecord>, previous: Option<&KeyCache>) -> Self {
        let mut cache = KeyCache::default();
        for record in records {
            let mut d = [0u8; 32];
            if hex::decode_to_slice(record.key_sha256.trim(), &mut d).is_err() {
                tracing::error!(key = %record.id, "stored key digest is not 64 hex characters; key skipped");
                continue;
            }
            let old = previous.and_then(|p| p.by_id.get(&record.id));
            let entry = Arc::new(KeyEntry {
                digest: d,
                limiter: old.map_or_else(|| Arc::new(Limiter::default()), |o| o.limiter.clone()),
                local_outstanding: old.map_or_else(Arc::default, |o| o.local_outstanding.clone()),
                local_spent: AtomicI64::new(0),
                record,
            });
            if let Some(p) = &entry.record.prefix {
                cache.by_prefix.insert(p.clone(), entry.clone());
            }
            cache.by_digest.insert(d, entry.clone());
            cache.any_tpm |= entry.record.tpm.is_some();
            cache.by_id.insert(entry.record.id.clone(), entry);
        }
        cache
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether any key has a TPM limit.
    pub fn any_tpm(&self) -> bool {
        self.any_tpm
    }

    /// A key by id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<KeyEntry>> {
        self.by_id.get(id)
    }

    /// Authenticate a presented key at time `now_ms`.
    pub fn check(&self, presented: &str, now_ms: i64) -> Result<Arc<KeyEntry>, KeyRefusal> {
        let d = digest(presented);
        let entry = match prefix_of(presented) {
            Some(prefix) => self.by_prefix.get(prefix),
            None => self.by_digest.get(&d),
        }
        .ok_or(KeyRefusal::Unknown)?;
        if !bool::from(entry.digest.ct_eq(&d)) {
            return Err(KeyRefusal::Unknown);
        }
        if entry.record.revoked {
            return Err(KeyRefusal::Revoked);
        }
        if entry.record.expires_at.is_some_and(|t| t <= now_ms) {
            return Err(KeyRefusal::Expired);
        }
        Ok(entry.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_store::Owner;

    #[test]
    fn prefix_digest_revoked_expired() {
        let k = relay_store::keys::generate();
        let mut rec = KeyRecord::new("gen", k.sha256.clone(), Owner::Admin);
        rec.prefix = Some(k.prefix.clone());
        let cfg = KeyRecord::new("cfg", hex::encode(digest("rk-quickstart")), Owner::Config);
        let mut revoked = KeyRecord::new("rev", hex::encode(digest("rk-revoked")), Owner::Admin);
        revoked.revoked = true;
        let mut expired = KeyRecord::new("exp", hex::encode(digest("rk-expired")), Owner::Admin);
        expired.expires_at = Some(1000);
        let cache = KeyCache::build(vec![rec, cfg, revoked, expired], None);
        assert_eq!(cache.check(&k.clear, 0).unwrap().record.id, "gen");
        assert_eq!(cache.check("rk-quickstart", 0).unwrap().record.id, "cfg");
        // Right prefix, wrong secret.
        let forged = format!("{}{}", k.prefix, "A".repeat(32));
        assert_eq!(cache.check(&forged, 0).unwrap_err(), KeyRefusal::Unknown);
        assert_eq!(
            cache.check("rk-revoked", 0).unwrap_err(),
            KeyRefusal::Revoked
        );
        assert_eq!(cache.check("rk-expired", 999).unwrap().record.id, "exp");
        assert_eq!(
            cache.check("rk-expired", 1000).unwrap_err(),
            KeyRefusal::Expired
        );
    }
}
