//! Client API keys: stored as SHA-256 digests, looked up by digest, confirmed in constant
//! time. The clear key is never kept or logged.

use std::borrow::Cow;
use std::collections::HashMap;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::KeyConfig;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name from the config.
    pub key_name: String,
    /// The key's limits, quota and allowed models, for keys from the store.
    pub policy: Option<std::sync::Arc<crate::keys::KeyEntry>>,
}

/// The keys the gateway accepts.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_digest: HashMap<[u8; 32], String>,
}

/// SHA-256 of a key, as bytes.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl KeyStore {
    /// Build from the config; reports keys that are malformed or duplicated.
    pub fn from_config(keys: &[KeyConfig]) -> Result<Self, Vec<String>> {
        let mut by_digest = HashMap::new();
        let mut problems = Vec::new();
        for k in keys {
            let d = match (&k.key, &k.key_sha256) {
                (Some(key), None) if !key.is_empty() => digest(key),
                (None, Some(hex_digest)) => {
                    let mut d = [0u8; 32];
                    if hex::decode_to_slice(hex_digest.trim(), &mut d).is_err() {
                        problems.push(format!(
                            "key {:?}: key_sha256 must be 64 hex characters",
                            k.name
                        ));
                        continue;
                    }
                    d
                }
                _ => {
                    problems.push(format!(
                        "key {:?}: set exactly one of `key` or `key_sha256`",
                        k.name
                    ));
                    continue;
                }
            };
            if by_digest.insert(d, k.name.clone()).is_some() {
                problems.push(format!(
                    "key {:?}: the same key is configured twice",
                    k.name
                ));
            }
        }
        if problems.is_empty() {
            Ok(KeyStore { by_digest })
        } else {
            Err(problems)
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Authenticate a presented key.
    pub fn check(&self, presented: &str) -> Option<Caller> {
        let d = digest(presented);
        let (stored, name) = self.by_digest.get_key_value(&d)?;
        // The map lookup already matched; confirm without an early-exit comparison.
        bool::from(stored.ct_eq(&d)).then(|| Caller {
            key_name: name.clone(),
            policy: None,
        })
    }
}

/// The key a client presented, in any dialect's form: `Authorization: Bearer` (OpenAI,
/// and the current Anthropic SDKs), `x-api-key` (Anthropic), `x-goog-api-key` or the
/// `key` query parameter (Gemini).
///
/// Borrowed from the headers (no copy on the request path); owned only when a `key`
/// query parameter had to be percent-decoded.
pub fn presented_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<Cow<'a, str>> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v)
            .trim();
        if !token.is_empty() {
            return Some(Cow::Borrowed(token));
        }
    }
    for name in ["x-api-key", "x-goog-api-key"] {
        if let Some(v) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            return Some(Cow::Borrowed(v));
        }
    }
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "key")
        .map(|(_, v)| percent_decode(v))
        .filter(|v| !v.is_empty())
        .map(Cow::Owned)
}

/// Minimal `%XX` decoding for a key in a query string.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => match std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => {
                    out.push(b'%');
                    i += 1;
                }
            },
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_by_clear_text_or_digest() {
        let keys = vec![
            KeyConfig {
                name: "a".into(),
                key: Some("rk-a".into()),
                key_sha256: None,
            },
            KeyConfig {
                name: "b".into(),
                key: None,
                key_sha256: Some(hex::encode(digest("rk-b"))),
            },
        ];
        let store = KeyStore::from_config(&keys).unwrap();
        assert_eq!(store.check("rk-a").unwrap().key_name, "a");
        assert_eq!(store.check("rk-b").unwrap().key_name, "b");
        assert!(store.check("rk-c").is_none());
        assert!(store.check("").is_none());
    }

    #[test]
    fn bad_key_entries_are_reported() {
        let keys = vec![
            KeyConfig {
                name: "x".into(),
                key: None,
                key_sha256: Some("zz".into()),
            },
            KeyConfig {
                name: "y".into(),
                key: None,
                key_sha256: None,
            },
            KeyConfig {
                name: "z1".into(),
                key: Some("k".into()),
                key_sha256: None,
            },
            KeyConfig {
                name: "z2".into(),
                key: Some("k".into()),
                key_sha256: None,
            },
        ];
        let problems = KeyStore::from_config(&keys).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn presented_key_forms() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer rk-1".parse().unwrap());
        assert_eq!(presented_key(&h, None).as_deref(), Some("rk-1"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "rk-2".parse().unwrap());
        assert_eq!(presented_key(&h, None).as_deref(), Some("rk-2"));
        let mut h = HeaderMap::new();
        h.insert("x-goog-api-key", "rk-3".parse().unwrap());
        assert_eq!(presented_key(&h, None).as_deref(), Some("rk-3"));
        assert_eq!(
            presented_key(&HeaderMap::new(), Some("alt=sse&key=rk%2D4")).as_deref(),
            Some("rk-4")
        );
        assert_eq!(presented_key(&HeaderMap::new(), Some("alt=sse")), None);
        assert_eq!(presented_key(&HeaderMap::new(), None), None);
    }
}
