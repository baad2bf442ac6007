//! The bounded, namespaced key-value store behind the `kv` import: one [`KvStore`] per
//! plugin, shared by all its instances, with TTLs, `incr` and compare-and-swap.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::bindings::relay::plugin::kv::KvError;

/// Longest key.
pub(crate) const MAX_KEY: usize = 256;
/// Largest value.
pub(crate) const MAX_VALUE: usize = 64 * 1024;
/// Keys per plugin.
pub(crate) const MAX_KEYS: usize = 10_000;

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// One plugin's store.
#[derive(Default)]
pub(crate) struct KvStore {
    map: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("keys", &self.map.lock().len())
            .finish()
    }
}

fn expiry(ttl_ms: Option<u32>, now: Instant) -> Option<Instant> {
    ttl_ms.map(|ms| now + Duration::from_millis(u64::from(ms)))
}

impl KvStore {
    /// The live value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.map
            .lock()
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }

    /// Set `key`.
    pub(crate) fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u32>,
    ) -> Result<(), KvError> {
        check(key, &value)?;
        let now = Instant::now();
        let mut map = self.map.lock();
        make_room(&mut map, key, now)?;
        map.insert(
            key.to_owned(),
            Entry {
                value,
                expires: expiry(ttl_ms, now),
            },
        );
        Ok(())
    }

    /// Remove `key`.
    pub(crate) fn delete(&self, key: &str) -> bool {
        let now = Instant::now();
        self.map.lock().remove(key).is_some_and(|e| e.live(now))
    }

    /// Add to the decimal integer at `key`.
    pub(crate) fn incr(&self, key: &str, delta: i64, ttl_ms: Option<u32>) -> Result<i64, KvError> {
        if key.len() > MAX_KEY {
            return Err(KvError::TooLarge);
        }
        let now = Instant::now();
        let mut map = self.map.lock();
        let current = match map.get(key).filter(|e| e.live(now)) {
            None => None,
            Some(e) => Some(
                std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or(KvError::NotANumber)?,
            ),
        };
        let next = current.unwrap_or(0).saturating_add(delta);
        match current {
            Some(_) => {
                if let Some(e) = map.get_mut(key) {
                    e.value = next.to_string().into_bytes();
                }
            }
            None => {
                make_room(&mut map, key, now)?;
                map.insert(
                    key.to_owned(),
                    Entry {
                        value: next.to_string().into_bytes(),
                        expires: expiry(ttl_ms, now),
                    },
                );
            }
        }
        Ok(next)
    }

    /// Set `key` to `value` if it currently holds `expected`.
    pub(crate) fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl_ms: Option<u32>,
    ) -> Result<bool, KvError> {
        check(key, &value)?;
        let now = Instant::now();
        let mut map = self.map.lock();
        let current = map
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.as_slice());
        if current != expected {
            return Ok(false);
        }
        make_room(&mut map, key, now)?;
        map.insert(
            key.to_owned(),
            Entry {
                value,
                expires: expiry(ttl_ms, now),
            },
        );
        Ok(true)
    }
}

fn check(key: &str, value: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY || value.len() > MAX_VALUE {
        return Err(KvError::TooLarge);
    }
    Ok(())
}

/// Make sure a new `key` fits: drop expired entries when the map is full.
fn make_room(map: &mut HashMap<String, Entry>, key: &str, now: Instant) -> Result<(), KvError> {
    if map.len() < MAX_KEYS || map.contains_key(key) {
        return Ok(());
    }
    map.retain(|_, e| e.live(now));
    if map.len() < MAX_KEYS {
        Ok(())
    } else {
        Err(KvError::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incr_cas_and_ttl() {
        let kv = KvStore::default();
        assert_eq!(kv.incr("n", 2, None).unwrap(), 2);
        assert_eq!(kv.incr("n", 3, None).unwrap(), 5);
        assert!(
            !kv.compare_and_swap("n", Some(b"4"), b"9".to_vec(), None)
                .unwrap()
        );
        assert!(
            kv.compare_and_swap("n", Some(b"5"), b"9".to_vec(), None)
                .unwrap()
        );
        assert_eq!(kv.get("n").unwrap(), b"9");
        assert!(
            kv.compare_and_swap("new", None, b"x".to_vec(), None)
                .unwrap()
        );
        kv.set("t", b"v".to_vec(), Some(0)).unwrap();
        assert_eq!(kv.get("t"), None);
        assert!(matches!(kv.incr("new", 1, None), Err(KvError::NotANumber)));
        assert!(matches!(
            kv.set("big", vec![0; MAX_VALUE + 1], None),
            Err(KvError::TooLarge)
        ));
    }
}
