//! Upstream credentials at rest: AES-256-GCM under a master key that never enters the
//! database. Each value gets a fresh 96-bit nonce, stored in front of the ciphertext.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use std::path::Path;

use crate::StoreError;

/// Environment variable holding the master key (64 hex characters).
pub const MASTER_KEY_ENV: &str = "RELAY_MASTER_KEY";
/// Environment variable naming a file that holds the master key (64 hex characters).
pub const MASTER_KEY_FILE_ENV: &str = "RELAY_MASTER_KEY_FILE";

/// The AES-256-GCM master key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct MasterKey {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(****)")
    }
}

impl MasterKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        MasterKey {
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// A key from 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, StoreError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
            StoreError::Crypto("the master key must be 64 hex characters (32 bytes)".into())
        })?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The key from `RELAY_MASTER_KEY` or the file named by `RELAY_MASTER_KEY_FILE`;
    /// otherwise from `default_file`, created with a random key (mode 0600) when missing,
    /// so the embedded default needs no set-up. Blocking: call at start-up.
    pub fn load(default_file: Option<&Path>) -> Result<Self, StoreError> {
        if let Ok(hex) = std::env::var(MASTER_KEY_ENV) {
            return Self::from_hex(&hex);
        }
        let file = match std::env::var(MASTER_KEY_FILE_ENV) {
            Ok(f) => Some(std::path::PathBuf::from(f)),
            Err(_) => default_file.map(Path::to_path_buf),
        };
        let Some(file) = file else {
            return Err(StoreError::Crypto(format!(
                "no master key: set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV}"
            )));
        };
        match std::fs::read_to_string(&file) {
            Ok(text) => Self::from_hex(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = rand::random();
                write_private(&file, &hex::encode(bytes))?;
                tracing::info!(file = %file.display(), "created a new master key for credentials");
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) => Err(StoreError::Crypto(format!(
                "cannot read the master key file {}: {e}",
                file.display()
            ))),
        }
    }

    /// Encrypt: nonce (12 bytes) followed by ciphertext and tag.
    pub fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = Nonce::from_slice(&nonce_bytes);
        let sealed = self
            .cipher
            .encrypt(nonce, plain)
            .map_err(|_| StoreError::Crypto("encryption failed".into()))?;
        let mut out = Vec::with_capacity(12 + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decrypt what [`MasterKey::encrypt`] produced.
    pub fn decrypt(&self, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        if sealed.len() < 12 + 16 {
            return Err(StoreError::Crypto("sealed value too short".into()));
        }
        let (nonce, body) = sealed.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| {
                StoreError::Crypto(
                    "cannot decrypt a stored credential: wrong master key or corrupt value".into(),
                )
            })
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(StoreError::Io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(StoreError::Io)?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(StoreError::Io)
}

/// Show the first and last two characters of a secret at most: `sk…yz` (`****` when
/// short).
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "****".into();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let k = MasterKey::from_bytes(&[7; 32]);
        let sealed = k.encrypt(b"sk-secret").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"sk-secret"));
        assert_eq!(k.decrypt(&sealed).unwrap(), b"sk-secret");
        let other = MasterKey::from_bytes(&[8; 32]);
        assert!(other.decrypt(&sealed).is_err());
        assert_eq!(format!("{k:?}"), "MasterKey(****)");
        assert_eq!(mask("sk-abcdefghijklmnop"), "sk-****op");
        assert_eq!(mask("short"), "****");
    }
}
