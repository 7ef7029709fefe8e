//! Key management for workspace disks.
//!
//! Every workspace's writable disk is encrypted (AES-256-XTS, in the guest) under a
//! *data key* generated for that workspace. The host keeps a data key only *wrapped*:
//! encrypted under a *master key* by a [`KeyManager`]. Unwrapped keys live in memory
//! only ([`DataKey`] wipes itself when dropped) and travel to the guest over the
//! control channel.
//!
//! * [`LocalKeyManager`]: the master key is a local file (64 hex digits, mode 0600).
//!   Wrapping is AES-256-GCM with a random 96-bit nonce and the key's *context* (the
//!   workspace id) as associated data, so a wrapped key copied to another workspace
//!   does not unwrap. An external KMS (Vault Transit's `encrypt`/`decrypt`, a cloud
//!   KMS) implements the same trait.
//! * Rotation re-wraps every data key under a new master key ([`rotate_local`]); disks
//!   are not re-encrypted (their data keys do not change).
//! * Crypto-erasure: [`destroy_wrapped`] overwrites and removes a wrapped key; without
//!   it the disk is ciphertext nobody can read.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, Zeroizing};

/// Bytes of a data key: AES-256-XTS takes two 256-bit keys (data and tweak).
pub const DATA_KEY_LEN: usize = 64;
/// Bytes of a local master key (AES-256).
pub const MASTER_KEY_LEN: usize = 32;
/// Format version of [`WrappedKey`].
pub const WRAP_VERSION: u32 = 1;
pub const WRAP_ALG: &str = "A256GCM";

#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("the master key file {0} does not exist; restore it (workspace disks cannot be read without it) or point --master-key-file at it")]
    MasterKeyMissing(PathBuf),
    #[error("the master key file {path} has mode {mode:o}: it must be a regular file readable by its owner only (chmod 600)")]
    MasterKeyPermissions { path: PathBuf, mode: u32 },
    #[error("the master key file {path} is malformed: {reason}")]
    MasterKeyMalformed { path: PathBuf, reason: String },
    #[error("a data key is wrapped under master key {kek_id}, but the master key in use is {have}: wrong master key file?")]
    UnknownMasterKey { kek_id: String, have: String },
    #[error("cannot unwrap the data key of {context}: the master key does not match or the wrapped key was altered")]
    Unwrap { context: String },
    #[error("wrapped key {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, KmsError>;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KmsError {
    let context = context.into();
    move |source| KmsError::Io { context, source }
}

/// A workspace's data key in clear. Wiped from memory on drop; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// A fresh key from the OS's CSPRNG.
    pub fn generate() -> DataKey {
        let mut k = Zeroizing::new([0u8; DATA_KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut k[..]);
        DataKey(k)
    }

    pub fn from_bytes(b: &[u8]) -> Option<DataKey> {
        let mut k = Zeroizing::new([0u8; DATA_KEY_LEN]);
        (b.len() == DATA_KEY_LEN).then(|| {
            k.copy_from_slice(b);
            DataKey(k)
        })
    }

    pub fn as_bytes(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }

    /// Lower-case hex (what dm-crypt's table takes); wiped when dropped.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(&self.0[..]))
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// A data key encrypted under a master key, as stored on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub version: u32,
    /// Which [`KeyManager`] key wrapped it (for the local one: a fingerprint).
    pub kek_id: String,
    pub alg: String,
    /// Hex.
    pub nonce: String,
    /// Hex: the encrypted key and its tag.
    pub ciphertext: String,
}

/// Wraps and unwraps data keys under master keys it holds (or that an external KMS
/// holds for it).
pub trait KeyManager: Send + Sync {
    /// A short name for logs (`local`, `vault-transit`, ...).
    fn kind(&self) -> &'static str;
    /// The key new data keys are wrapped under.
    fn current_key_id(&self) -> String;
    /// Can [`KeyManager::unwrap`] handle keys wrapped under `kek_id`?
    fn has_key(&self, kek_id: &str) -> bool;
    /// Encrypt `key` under the current master key; `context` (the workspace id) is
    /// bound to the result.
    fn wrap(&self, key: &DataKey, context: &str) -> Result<WrappedKey>;
    fn unwrap(&self, wrapped: &WrappedKey, context: &str) -> Result<DataKey>;
}

/// Master keys in local files (see the crate docs).
pub struct LocalKeyManager {
    path: PathBuf,
    /// `(fingerprint, key)`; the first one wraps.
    keys: Vec<(String, Zeroizing<[u8; MASTER_KEY_LEN]>)>,
}

impl std::fmt::Debug for LocalKeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyManager")
            .field("path", &self.path)
            .field("keys", &self.keys.iter().map(|k| &k.0).collect::<Vec<_>>())
            .finish()
    }
}

/// The file a rotation writes the next master key to before it replaces the current
/// one; loaded as an extra key so an interrupted rotation loses nothing.
pub fn next_key_path(master: &Path) -> PathBuf {
    let mut s = master.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}

fn fingerprint(key: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"warren-master-key-id:v1:");
    h.update(key);
    format!("local:{}", &hex::encode(h.finalize())[..16])
}

fn context_aad(context: &str) -> Vec<u8> {
    format!("warren-data-key:v{WRAP_VERSION}:{context}").into_bytes()
}

fn read_master(path: &Path) -> Result<Zeroizing<[u8; MASTER_KEY_LEN]>> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KmsError::MasterKeyMissing(path.to_path_buf()))
        }
        Err(e) => return Err(io_err(format!("stat {}", path.display()))(e)),
    };
    let mode = md.permissions().mode() & 0o7777;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !md.file_type().is_file() || mode & 0o077 != 0 || md.uid() != euid {
        return Err(KmsError::MasterKeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(io_err(format!("read {}", path.display())))?,
    );
    let hex_part = text.trim();
    let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    hex::decode_to_slice(hex_part, &mut key[..]).map_err(|e| KmsError::MasterKeyMalformed {
        path: path.to_path_buf(),
        reason: format!("expected {} hex digits: {e}", MASTER_KEY_LEN * 2),
    })?;
    Ok(key)
}

/// Write `bytes` to `path` (mode 0600) atomically: a temporary file, fsync, rename,
/// fsync of the directory.
fn write_private(path: &Path, bytes: &[u8], exclusive: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(format!("create {}", tmp.display())))?;
    let done = f
        .write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("write {}", tmp.display())));
    drop(f);
    let done = done.and_then(|_| {
        if exclusive {
            // link(2) fails if `path` exists: never overwrite a master key.
            std::fs::hard_link(&tmp, path).map_err(io_err(format!("create {}", path.display())))
        } else {
            std::fs::rename(&tmp, path).map_err(io_err(format!("replace {}", path.display())))
        }
    });
    let _ = std::fs::remove_file(&tmp);
    done?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl LocalKeyManager {
    /// Load the master key at `path` (and the next one of an interrupted rotation).
    /// The file must exist, belong to this user, be mode 0600 (or stricter) and hold
    /// 64 hex digits.
    pub fn open(path: &Path) -> Result<LocalKeyManager> {
        let key = read_master(path)?;
        let mut keys = vec![(fingerprint(&key[..]), key)];
        let next = next_key_path(path);
        if next.exists() {
            let k = read_master(&next)?;
            keys.push((fingerprint(&k[..]), k));
        }
        Ok(LocalKeyManager {
            path: path.to_path_buf(),
            keys,
        })
    }

    /// Create a fresh master key at `path` (never overwriting one) and load it.
    pub fn create(path: &Path) -> Result<LocalKeyManager> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
        }
        let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        let text = Zeroizing::new(format!("{}\n", hex::encode(&key[..])));
        write_private(path, text.as_bytes(), true)?;
        tracing::info!(path = %path.display(), key_id = %fingerprint(&key[..]), "created a master key");
        Self::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn key(&self, kek_id: &str) -> Option<&[u8; MASTER_KEY_LEN]> {
        self.keys
            .iter()
            .find(|(id, _)| id == kek_id)
            .map(|(_, k)| &**k)
    }
}

impl KeyManager for LocalKeyManager {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn current_key_id(&self) -> String {
        self.keys[0].0.clone()
    }

    fn has_key(&self, kek_id: &str) -> bool {
        self.key(kek_id).is_some()
    }

    fn wrap(&self, key: &DataKey, context: &str) -> Result<WrappedKey> {
        let (kek_id, kek) = &self.keys[0];
        let cipher = Aes256Gcm::new_from_slice(&kek[..]).map_err(|e| KmsError::Io {
            context: "AES-256-GCM key".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = context_aad(context);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &key.as_bytes()[..],
                    aad: &aad,
                },
            )
            .map_err(|_| KmsError::Unwrap {
                context: context.to_string(),
            })?;
        Ok(WrappedKey {
            version: WRAP_VERSION,
            kek_id: kek_id.clone(),
            alg: WRAP_ALG.into(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ct),
        })
    }

    fn unwrap(&self, wrapped: &WrappedKey, context: &str) -> Result<DataKey> {
        let kek = self
            .key(&wrapped.kek_id)
            .ok_or_else(|| KmsError::UnknownMasterKey {
                kek_id: wrapped.kek_id.clone(),
                have: self.current_key_id(),
            })?;
        let bad = || KmsError::Unwrap {
            context: context.to_string(),
        };
        if wrapped.version != WRAP_VERSION || wrapped.alg != WRAP_ALG {
            return Err(bad());
        }
        let nonce = hex::decode(&wrapped.nonce).map_err(|_| bad())?;
        let ct = hex::decode(&wrapped.ciphertext).map_err(|_| bad())?;
        if nonce.len() != 12 {
            return Err(bad());
        }
        let cipher = Aes256Gcm::new_from_slice(&kek[..]).map_err(|_| bad())?;
        let aad = context_aad(context);
        let mut pt = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &ct,
                        aad: &aad,
                    },
                )
                .map_err(|_| bad())?,
        );
        let key = DataKey::from_bytes(&pt).ok_or_else(bad);
        pt.zeroize();
        key
    }
}

/// Store a wrapped key (mode 0600, atomically).
pub fn write_wrapped(path: &Path, w: &WrappedKey) -> Result<()> {
    let body = serde_json::to_vec_pretty(w).map_err(|e| KmsError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_private(path, &body, false)
}

pub fn read_wrapped(path: &Path) -> Result<WrappedKey> {
    let b = std::fs::read(path).map_err(io_err(format!("read {}", path.display())))?;
    serde_json::from_slice(&b).map_err(|e| KmsError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Crypto-erasure of one data key: overwrite the wrapped key in place with random
/// bytes, flush, unlink, flush the directory. Returns whether there was one.
///
/// Overwriting in place defeats recovery from the file system's own free blocks on a
/// plain ext4/xfs; copy-on-write file systems, SSD wear levelling and backups can
/// still hold old copies of the *wrapped* key, which is why the master key matters
/// (see docs/security.md).
pub fn destroy_wrapped(path: &Path) -> Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len() as usize,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(format!("stat {}", path.display()))(e)),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    let mut noise = vec![0u8; len.max(1)];
    rand::rngs::OsRng.fill_bytes(&mut noise);
    f.write_all(&noise)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("overwrite {}", path.display())))?;
    drop(f);
    std::fs::remove_file(path).map_err(io_err(format!("remove {}", path.display())))?;
    if let Some(d) = path.parent() {
        sync_dir(d);
    }
    Ok(true)
}

/// Re-wrap one stored key under `to`'s current key (no-op if it already is).
/// `context` must be the one it was wrapped with.
pub fn rewrap_file(
    path: &Path,
    context: &str,
    from: &dyn KeyManager,
    to: &dyn KeyManager,
) -> Result<bool> {
    let w = read_wrapped(path)?;
    if w.kek_id == to.current_key_id() {
        return Ok(false);
    }
    let key = if from.has_key(&w.kek_id) {
        from.unwrap(&w, context)?
    } else {
        to.unwrap(&w, context)?
    };
    write_wrapped(path, &to.wrap(&key, context)?)?;
    Ok(true)
}

/// Rotate the local master key at `master`: create the next key (or reuse the one of
/// an interrupted rotation), re-wrap every `(wrapped key file, context)` under it,
/// then make it the master key and destroy the old one. Safe to run again after a
/// crash at any point. Run it while no server uses `master`. Returns how many keys
/// were re-wrapped.
pub fn rotate_local(master: &Path, wrapped: &[(PathBuf, String)]) -> Result<usize> {
    let from = LocalKeyManager::open(master)?;
    let next = next_key_path(master);
    let to = if next.exists() {
        LocalKeyManager::open(&next)?
    } else {
        LocalKeyManager::create(&next)?
    };
    let mut n = 0;
    for (path, context) in wrapped {
        if rewrap_file(path, context, &from, &to)? {
            n += 1;
        }
    }
    // The new key takes the old one's place *in place*: the file's blocks that held
    // the old key are overwritten (a rename would only unlink them). Both texts have
    // the same length (64 hex digits and a newline), so this is one sector's write.
    let next_text =
        Zeroizing::new(std::fs::read(&next).map_err(io_err(format!("read {}", next.display())))?);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(master)
            .map_err(io_err(format!("open {}", master.display())))?;
        f.write_all(&next_text)
            .and_then(|_| f.set_len(next_text.len() as u64))
            .and_then(|_| f.sync_all())
            .map_err(io_err(format!("write {}", master.display())))?;
    }
    destroy_wrapped(&next)?;
    tracing::info!(rewrapped = n, key_id = %to.current_key_id(), "master key rotated");
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_is_bound_to_key_and_context() {
        let d = tempfile::tempdir().unwrap();
        let m = LocalKeyManager::create(&d.path().join("master.key")).unwrap();
        let k = DataKey::generate();
        let w = m.wrap(&k, "ws_a").unwrap();
        assert!(!w.ciphertext.contains(&*k.to_hex()));
        assert_eq!(m.unwrap(&w, "ws_a").unwrap(), k);
        assert!(matches!(m.unwrap(&w, "ws_b"), Err(KmsError::Unwrap { .. })));
        let mut tampered = w.clone();
        tampered.ciphertext.replace_range(0..2, "00");
        if tampered.ciphertext == w.ciphertext {
            tampered.ciphertext.replace_range(0..2, "ff");
        }
        assert!(m.unwrap(&tampered, "ws_a").is_err());

        let other = LocalKeyManager::create(&d.path().join("other.key")).unwrap();
        assert!(matches!(
            other.unwrap(&w, "ws_a"),
            Err(KmsError::UnknownMasterKey { .. })
        ));
        assert_eq!(format!("{k:?}"), "DataKey(<redacted>)");
    }

    #[test]
    fn master_key_file_rules() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("master.key");
        assert!(matches!(
            LocalKeyManager::open(&p),
            Err(KmsError::MasterKeyMissing(_))
        ));
        LocalKeyManager::create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Never overwritten.
        assert!(LocalKeyManager::create(&p).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            LocalKeyManager::open(&p),
            Err(KmsError::MasterKeyPermissions { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "not hex\n").unwrap();
        assert!(matches!(
            LocalKeyManager::open(&p),
            Err(KmsError::MasterKeyMalformed { .. })
        ));
    }

    #[test]
    fn rotation_rewraps_everything_and_survives_a_rerun() {
        let d = tempfile::tempdir().unwrap();
        let master = d.path().join("master.key");
        let m = LocalKeyManager::create(&master).unwrap();
        let old_id = m.current_key_id();
        let mut files = Vec::new();
        let mut keys = Vec::new();
        for i in 0..3 {
            let k = DataKey::generate();
            let p = d.path().join(format!("k{i}.json"));
            let ctx = format!("ws_{i}");
            write_wrapped(&p, &m.wrap(&k, &ctx).unwrap()).unwrap();
            files.push((p, ctx));
            keys.push(k);
        }
        // An interrupted rotation: the next key exists and one file is re-wrapped.
        let next = LocalKeyManager::create(&next_key_path(&master)).unwrap();
        rewrap_file(&files[0].0, &files[0].1, &m, &next).unwrap();
        // Both keys are loaded meanwhile, so nothing is unreadable.
        let both = LocalKeyManager::open(&master).unwrap();
        for ((p, ctx), k) in files.iter().zip(&keys) {
            assert_eq!(&both.unwrap(&read_wrapped(p).unwrap(), ctx).unwrap(), k);
        }
        let ino = std::fs::metadata(&master).unwrap().ino();
        assert_eq!(rotate_local(&master, &files).unwrap(), 2);
        // Overwritten in place, not replaced by a rename.
        assert_eq!(std::fs::metadata(&master).unwrap().ino(), ino);
        assert!(!next_key_path(&master).exists());
        let m2 = LocalKeyManager::open(&master).unwrap();
        assert_ne!(m2.current_key_id(), old_id);
        assert_eq!(m2.current_key_id(), next.current_key_id());
        for ((p, ctx), k) in files.iter().zip(&keys) {
            let w = read_wrapped(p).unwrap();
            assert_eq!(w.kek_id, m2.current_key_id());
            assert_eq!(&m2.unwrap(&w, ctx).unwrap(), k);
            assert!(m.unwrap(&w, ctx).is_err(), "the old key must not unwrap it");
        }
    }

    #[test]
    fn destroy_removes_the_key() {
        let d = tempfile::tempdir().unwrap();
        let m = LocalKeyManager::create(&d.path().join("master.key")).unwrap();
        let p = d.path().join("data.key");
        write_wrapped(&p, &m.wrap(&DataKey::generate(), "ws").unwrap()).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(destroy_wrapped(&p).unwrap());
        assert!(!p.exists());
        assert!(!destroy_wrapped(&p).unwrap());
    }
}
