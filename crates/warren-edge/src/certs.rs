//! Certificates: the local Warren CA and the store of leaf certificates.
//!
//! The CA's key is generated once (`DATA/edge/ca.key.sealed`, sealed under the master
//! key); its certificate `DATA/edge/ca.pem` is what users download and trust. Leaf
//! certificates (the preview domain's wildcard, each custom domain) live in the state
//! database with their private keys sealed, are issued when first needed and renewed
//! when less than [`RENEW_BEFORE_DAYS`] remain.

use crate::seal::{MasterKey, SealError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use warren_state::{EdgeCert, Store};

/// Leaf certificates are valid this long.
pub const LEAF_DAYS: i64 = 90;
/// ... and renewed when fewer days than this remain.
pub const RENEW_BEFORE_DAYS: i64 = 30;
const CA_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("state: {0}")]
    State(#[from] warren_state::StateError),
    #[error("tls: {0}")]
    Tls(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn days_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

/// The CA's fixed identity: a leaf's issuer is matched by this name and the key.
fn ca_params() -> Result<CertificateParams, CertError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Warren local CA");
    dn.push(DnType::OrganizationName, "Warren");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    p.not_after = days_from_now(CA_DAYS);
    Ok(p)
}

/// The local CA.
pub struct LocalCa {
    key: KeyPair,
    cert: rcgen::Certificate,
    pem_path: PathBuf,
}

impl LocalCa {
    /// Load the CA of `dir` (creating it the first time).
    pub fn load_or_create(dir: &Path, master: &MasterKey) -> Result<Self, CertError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_path = dir.join("ca.key.sealed");
        let pem_path = dir.join("ca.pem");
        let key = match std::fs::read(&key_path) {
            Ok(sealed) => {
                let pem = master.open(&sealed)?;
                KeyPair::from_pem(&String::from_utf8_lossy(&pem))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate()?;
                let sealed = master.seal(key.serialize_pem().as_bytes());
                write_new(&key_path, &sealed)?;
                // Another process may have won the race: use what is on disk.
                let on_disk = std::fs::read(&key_path).map_err(io(&key_path))?;
                let pem = master.open(&on_disk)?;
                KeyPair::from_pem(&String::from_utf8_lossy(&pem))?
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let cert = ca_params()?.self_signed(&key)?;
        if !pem_path.exists() {
            write_new(&pem_path, cert.pem().as_bytes())?;
        }
        Ok(LocalCa {
            key,
            cert,
            pem_path,
        })
    }

    /// The root certificate users trust (PEM).
    pub fn pem(&self) -> Result<String, CertError> {
        std::fs::read_to_string(&self.pem_path).map_err(io(&self.pem_path))
    }

    pub fn pem_path(&self) -> &Path {
        &self.pem_path
    }

    /// A leaf for `names`: (chain PEM, key PEM, not_after).
    pub fn issue(
        &self,
        names: &[String],
    ) -> Result<(String, String, chrono::DateTime<chrono::Utc>), CertError> {
        let mut p = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        p.distinguished_name = dn;
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        let not_after = days_from_now(LEAF_DAYS);
        p.not_after = not_after;
        p.use_authority_key_identifier_extension = true;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        let chain = format!("{}{}", cert.pem(), self.pem()?);
        let na = chrono::DateTime::from_timestamp(not_after.unix_timestamp(), 0)
            .unwrap_or_else(chrono::Utc::now);
        Ok((chain, key.serialize_pem(), na))
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    match std::fs::hard_link(&tmp, path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(path)(e)),
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// A usable certificate: chain and key.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    pub record: EdgeCert,
}

/// Leaf certificates in the state database, keys sealed.
#[derive(Clone)]
pub struct CertStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    master: MasterKey,
    ca: LocalCa,
    /// One issuance at a time (two handshakes for a new name issue once).
    issuing: tokio::sync::Mutex<()>,
}

impl CertStore {
    /// The store of `DATA/edge` (master key and CA created the first time).
    pub fn open(data_dir: &Path, store: Store) -> Result<Self, CertError> {
        let dir = data_dir.join("edge");
        let master = MasterKey::load_or_create(&dir.join("master.key"))?;
        let ca = LocalCa::load_or_create(&dir, &master)?;
        Ok(CertStore {
            inner: Arc::new(Inner {
                store,
                master,
                ca,
                issuing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn ca(&self) -> &LocalCa {
        &self.inner.ca
    }

    /// The key private keys are sealed under (also the SSH host key's).
    pub fn master(&self) -> &MasterKey {
        &self.inner.master
    }

    /// The stored certificate for `key` (a domain, or `*.preview`) if still valid for
    /// more than the renewal margin, else a new one from the local CA for `names`.
    pub async fn ensure(&self, key: &str, names: &[String]) -> Result<Issued, CertError> {
        if let Some(c) = self.inner.store.edge_cert(key).await? {
            if !needs_renewal(&c) {
                return self.unseal(c);
            }
        }
        let _g = self.inner.issuing.lock().await;
        if let Some(c) = self.inner.store.edge_cert(key).await? {
            if !needs_renewal(&c) {
                return self.unseal(c);
            }
        }
        self.issue(key, names).await
    }

    /// A new certificate from the local CA, replacing the stored one.
    pub async fn issue(&self, key: &str, names: &[String]) -> Result<Issued, CertError> {
        let (chain, key_pem, not_after) = self.inner.ca.issue(names)?;
        let rec = EdgeCert {
            domain: key.to_string(),
            cert_pem: chain.clone(),
            key_sealed: self.inner.master.seal(key_pem.as_bytes()),
            source: "warren-local-ca".into(),
            not_after: warren_state::fmt_time(not_after),
            created_at: warren_state::now(),
        };
        self.inner.store.put_edge_cert(&rec).await?;
        tracing::info!(domain = key, not_after = %rec.not_after, "certificate issued by the local CA");
        Ok(Issued {
            chain_pem: chain,
            key_pem,
            record: rec,
        })
    }

    pub async fn get(&self, key: &str) -> Result<Option<EdgeCert>, CertError> {
        Ok(self.inner.store.edge_cert(key).await?)
    }

    fn unseal(&self, c: EdgeCert) -> Result<Issued, CertError> {
        let key = self.inner.master.open(&c.key_sealed)?;
        Ok(Issued {
            chain_pem: c.cert_pem.clone(),
            key_pem: String::from_utf8_lossy(&key).into_owned(),
            record: c,
        })
    }
}

/// Fewer than [`RENEW_BEFORE_DAYS`] left (or an unreadable date)?
pub fn needs_renewal(c: &EdgeCert) -> bool {
    match warren_state::parse_time(&c.not_after) {
        Some(t) => t - chrono::Utc::now() < chrono::Duration::days(RENEW_BEFORE_DAYS),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn issues_seals_and_reuses() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open_in_memory().await.unwrap();
        let cs = CertStore::open(d.path(), store.clone()).unwrap();
        let names = vec!["app.example.test".to_string()];
        let a = cs.ensure("app.example.test", &names).await.unwrap();
        assert!(a.chain_pem.contains("BEGIN CERTIFICATE"));
        assert!(a.key_pem.contains("PRIVATE KEY"));
        let row = store.edge_cert("app.example.test").await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&row.key_sealed).contains("PRIVATE KEY"));
        let b = cs.ensure("app.example.test", &names).await.unwrap();
        assert_eq!(a.chain_pem, b.chain_pem);
        // A second open of the same directory keeps the same CA.
        let pem = cs.ca().pem().unwrap();
        let cs2 = CertStore::open(d.path(), store).unwrap();
        assert_eq!(cs2.ca().pem().unwrap(), pem);
    }
}
