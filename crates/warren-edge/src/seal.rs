//! Private keys at rest: sealed with AES-256-GCM under the edge's master key
//! (`DATA/edge/master.key`, 32 random bytes, mode 0600). A sealed blob is
//! `nonce (12 bytes) || ciphertext+tag`.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("master key {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("master key {0} is not 32 bytes")]
    BadKey(String),
    #[error("a sealed key could not be opened (wrong master key or damaged data)")]
    Open,
}

#[derive(Clone)]
pub struct MasterKey(Aes256Gcm);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Read the key at `path`, creating it (0600) when absent.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let io = |source| SealError::Io {
            path: path.display().to_string(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let mut k = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut k);
                let tmp = path.with_extension("tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                f.write_all(&k).map_err(io)?;
                f.sync_all().map_err(io)?;
                // Never replace a key another process wrote first.
                match std::fs::hard_link(&tmp, path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io(e)),
                }
                let _ = std::fs::remove_file(&tmp);
                std::fs::read(path).map_err(io)?
            }
            Err(e) => return Err(io(e)),
        };
        Self::from_bytes(&bytes).ok_or_else(|| SealError::BadKey(path.display().to_string()))
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Aes256Gcm::new_from_slice(b).ok().map(MasterKey)
    }

    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut n = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut n);
        let mut out = n.to_vec();
        // Encryption with a valid key and nonce cannot fail for in-memory data.
        out.extend(
            self.0
                .encrypt(Nonce::from_slice(&n), plain)
                .unwrap_or_default(),
        );
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 12 + 16 {
            return Err(SealError::Open);
        }
        let (n, ct) = sealed.split_at(12);
        self.0
            .decrypt(Nonce::from_slice(n), ct)
            .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let d = tempfile::tempdir().unwrap();
        let k = MasterKey::load_or_create(&d.path().join("m.key")).unwrap();
        let s = k.seal(b"secret key");
        assert!(!s.windows(10).any(|w| w == b"secret key"));
        assert_eq!(k.open(&s).unwrap(), b"secret key");
        let mut bad = s.clone();
        bad[20] ^= 1;
        assert!(k.open(&bad).is_err());
        let again = MasterKey::load_or_create(&d.path().join("m.key")).unwrap();
        assert_eq!(again.open(&s).unwrap(), b"secret key");
    }
}
