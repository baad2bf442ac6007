//! Virtual API keys: `rk-` + an 8-character public prefix + a 32-character random secret.
//! Only the prefix and the SHA-256 of the whole key are stored; the key is shown once.

use rand::Rng;
use sha2::{Digest, Sha256};

/// Every generated key starts with this.
pub const KEY_PREFIX: &str = "rk-";
const PREFIX_LEN: usize = 8;
const SECRET_LEN: usize = 32;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A freshly generated key: the clear text (show it once) and what is stored.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The full key, `rk-PPPPPPPP` + secret. Never stored.
    pub clear: String,
    /// The public prefix (`rk-PPPPPPPP`), stored and shown in listings.
    pub prefix: String,
    /// Hex SHA-256 of the full key.
    pub sha256: String,
}

/// Generate a new key.
pub fn generate() -> NewKey {
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect()
    };
    let prefix = format!("{KEY_PREFIX}{}", pick(PREFIX_LEN));
    let clear = format!("{prefix}{}", pick(SECRET_LEN));
    let sha256 = hex::encode(digest(&clear));
    NewKey {
        clear,
        prefix,
        sha256,
    }
}

/// SHA-256 of a key.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The public prefix of a presented key, if it has the generated shape.
pub fn prefix_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    (rest.len() == PREFIX_LEN + SECRET_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| &key[..KEY_PREFIX.len() + PREFIX_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_shape() {
        let k = generate();
        assert!(k.clear.starts_with("rk-"));
        assert_eq!(k.clear.len(), 3 + 8 + 32);
        assert_eq!(prefix_of(&k.clear), Some(k.prefix.as_str()));
        assert_eq!(k.sha256, hex::encode(digest(&k.clear)));
        assert_ne!(generate().clear, k.clear);
        assert_eq!(prefix_of("rk-quickstart"), None);
    }
}
