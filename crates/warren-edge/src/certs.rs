//! Certificates: the local Warren CA and the store of leaf certificates.
//!
//! The CA's key is generated once (`DATA/edge/ca.key.sealed`, sealed under the master
//! key); its certificate `DATA/edge/ca.pem` is what users download and trust. Leaf
//! certificates (the preview domain's wildcard, each custom domain) live in the state
//! database with their private keys sealed, are issued when first needed and renewed
//! when fewer than the renewal window's days remain ([`RENEW_BEFORE_DAYS`] by default).
//!
//! When an ACME directory is configured ([`CertStore::configure`]), custom domains get
//! their certificates from it ([`crate::acme`]): a domain first gets a local-CA
//! certificate so its route works at once, then an order runs in the background
//! ([`CertStore::request_acme`]); its progress is the domain's `ssl_status`
//! (`pending`, then `active` or `failed` with `ssl_error`), and the ACME certificate
//! replaces the local one when issued.

use crate::acme::{Acme, AcmeConfig, ChallengeSink};
use crate::seal::{MasterKey, SealError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use warren_state::{EdgeCert, Store};

/// Leaf certificates are valid this long.
pub const LEAF_DAYS: i64 = 90;
/// ... and renewed when fewer days than this remain (the default renewal window).
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// `source` of certificates issued by the local CA.
pub const SOURCE_LOCAL: &str = "warren-local-ca";
/// `source` of certificates issued by the ACME directory.
pub const SOURCE_ACME: &str = "acme";
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
    #[error("{0}")]
    Acme(String),
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

/// Write `bytes` to a new file `path` (0600), never replacing one that exists.
pub(crate) fn write_sealed(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    write_new(path, bytes)
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
    dir: PathBuf,
    /// One issuance at a time (two handshakes for a new name issue once).
    issuing: tokio::sync::Mutex<()>,
    /// The ACME directory custom domains get certificates from (None: the local CA).
    acme: OnceLock<Option<Arc<Acme>>>,
    /// Renew when fewer days than this remain.
    renew_before_days: AtomicI64,
    /// TLS-ALPN-01 answers by server name, while an order is being validated.
    alpn: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
    /// Domains with an ACME order running.
    ordering: Mutex<HashSet<String>>,
}

/// Stores by data directory: the API and the edge of one process share one (and so
/// the challenges an order publishes reach the listener).
static OPEN: Mutex<Option<HashMap<PathBuf, CertStore>>> = Mutex::new(None);

impl ChallengeSink for CertStore {
    fn put(&self, name: &str, cfg: Arc<rustls::ServerConfig>) {
        if let Ok(mut m) = self.inner.alpn.lock() {
            m.insert(name.to_ascii_lowercase(), cfg);
        }
    }

    fn remove(&self, name: &str) {
        if let Ok(mut m) = self.inner.alpn.lock() {
            m.remove(&name.to_ascii_lowercase());
        }
    }
}

impl CertStore {
    /// The store of `DATA/edge` (master key and CA created the first time); one per
    /// data directory in a process.
    pub fn open(data_dir: &Path, store: Store) -> Result<Self, CertError> {
        let dir = data_dir.join("edge");
        let mut open = OPEN
            .lock()
            .map_err(|_| CertError::Tls("certificate store lock poisoned".into()))?;
        let map = open.get_or_insert_with(HashMap::new);
        if let Some(c) = map.get(&dir) {
            return Ok(c.clone());
        }
        let master = MasterKey::load_or_create(&dir.join("master.key"))?;
        let ca = LocalCa::load_or_create(&dir, &master)?;
        let c = CertStore {
            inner: Arc::new(Inner {
                store,
                master,
                ca,
                dir: dir.clone(),
                issuing: tokio::sync::Mutex::new(()),
                acme: OnceLock::new(),
                renew_before_days: AtomicI64::new(RENEW_BEFORE_DAYS),
                alpn: Mutex::new(HashMap::new()),
                ordering: Mutex::new(HashSet::new()),
            }),
        };
        map.insert(dir, c.clone());
        Ok(c)
    }

    /// Set where custom domains' certificates come from and the renewal window (the
    /// first configuration of a store wins; later calls only set the window).
    pub fn configure(&self, acme: Option<&AcmeConfig>, renew_before_days: i64) {
        self.inner
            .renew_before_days
            .store(renew_before_days.max(1), Ordering::Relaxed);
        let _ = self
            .inner
            .acme
            .set(acme.map(|c| Arc::new(Acme::new(c.clone()))));
    }

    /// Is an ACME directory configured?
    pub fn acme_enabled(&self) -> bool {
        self.acme().is_some()
    }

    fn acme(&self) -> Option<Arc<Acme>> {
        self.inner.acme.get().cloned().flatten()
    }

    pub fn renew_before_days(&self) -> i64 {
        self.inner.renew_before_days.load(Ordering::Relaxed)
    }

    /// Is `c` within the renewal window (or its date unreadable)?
    pub fn due(&self, c: &EdgeCert) -> bool {
        due_within(c, self.renew_before_days())
    }

    /// The TLS-ALPN-01 answer for `name`, while an order for it is being validated.
    pub fn alpn_challenge(&self, name: &str) -> Option<Arc<rustls::ServerConfig>> {
        self.inner.alpn.lock().ok()?.get(name).cloned()
    }

    /// Start an ACME order for the custom domain `domain` (`names`: it and maybe
    /// www.) in the background, unless one is running. Its progress goes to the
    /// domain's `ssl_status`. False when no ACME directory is configured.
    pub fn request_acme(&self, domain: &str, names: Vec<String>) -> bool {
        let Some(acme) = self.acme() else {
            return false;
        };
        if let Ok(mut o) = self.inner.ordering.lock() {
            if !o.insert(domain.to_string()) {
                return true;
            }
        }
        let this = self.clone();
        let domain = domain.to_string();
        let span = tracing::info_span!("acme", %domain);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let r = this.order(&acme, &domain, &names).await;
                if let Ok(mut o) = this.inner.ordering.lock() {
                    o.remove(&domain);
                }
                match r {
                    Ok(not_after) => {
                        tracing::info!(%not_after, "certificate issued by the ACME directory");
                        this.set_ssl_status(&domain, "active", None).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ACME issuance failed; the local CA's certificate stays");
                        this.set_ssl_status(&domain, "failed", Some(e.to_string()))
                            .await;
                    }
                }
            },
            span,
        ));
        true
    }

    async fn order(
        &self,
        acme: &Acme,
        domain: &str,
        names: &[String],
    ) -> Result<String, CertError> {
        let account = acme
            .account(&self.inner.dir, &self.inner.master)
            .await
            .map_err(|e| CertError::Acme(e.to_string()))?;
        let (chain, key_pem) = crate::acme::order(account, names, self)
            .await
            .map_err(|e| CertError::Acme(e.to_string()))?;
        let not_after = not_after_of(&chain)?;
        // The domain may have been disconnected meanwhile: then nothing is stored.
        if self.inner.store.edge_domain(domain).await?.is_none() {
            return Err(CertError::Acme(format!(
                "{domain} was disconnected while its certificate was issued"
            )));
        }
        let rec = EdgeCert {
            domain: domain.to_string(),
            cert_pem: chain,
            key_sealed: self.inner.master.seal(key_pem.as_bytes()),
            source: SOURCE_ACME.into(),
            not_after: warren_state::fmt_time(not_after),
            created_at: warren_state::now(),
        };
        self.inner.store.put_edge_cert(&rec).await?;
        Ok(rec.not_after)
    }

    /// Set the `ssl_status` (and error) of a connected domain; nothing if it is gone.
    pub async fn set_ssl_status(&self, domain: &str, status: &str, error: Option<String>) {
        match self.inner.store.edge_domain(domain).await {
            Ok(Some(mut d)) => {
                d.ssl_status = status.to_string();
                d.ssl_error = error;
                if let Err(e) = self.inner.store.set_edge_domain(&d).await {
                    tracing::warn!(domain, error = %e, "recording the SSL status");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(domain, error = %e, "reading the domain"),
        }
    }

    /// Renew the certificate of `key` now: custom domains through ACME when it is
    /// configured (in the background; true), else from the local CA (false).
    pub async fn renew(
        &self,
        key: &str,
        names: &[String],
        custom_domain: bool,
    ) -> Result<bool, CertError> {
        if custom_domain && self.acme_enabled() {
            let running = self
                .inner
                .ordering
                .lock()
                .map(|o| o.contains(key))
                .unwrap_or(false);
            if !running {
                self.set_ssl_status(key, "pending", None).await;
            }
            return Ok(self.request_acme(key, names.to_vec()));
        }
        self.issue(key, names).await?;
        Ok(false)
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
            if self.usable(&c) {
                return self.unseal(c);
            }
        }
        let _g = self.inner.issuing.lock().await;
        if let Some(c) = self.inner.store.edge_cert(key).await? {
            if self.usable(&c) {
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
            source: SOURCE_LOCAL.into(),
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

    /// Serve `c` as it is? A local-CA certificate until its renewal window; an ACME
    /// one until it expires (its renewal goes through ACME, in the background).
    fn usable(&self, c: &EdgeCert) -> bool {
        if c.source == SOURCE_ACME {
            return !due_within(c, 0);
        }
        !self.due(c)
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
    due_within(c, RENEW_BEFORE_DAYS)
}

/// Fewer than `days` left (or an unreadable date)?
pub fn due_within(c: &EdgeCert, days: i64) -> bool {
    match warren_state::parse_time(&c.not_after) {
        Some(t) => t - chrono::Utc::now() < chrono::Duration::days(days),
        None => true,
    }
}

/// The notAfter of the first certificate of a PEM chain.
pub fn not_after_of(chain_pem: &str) -> Result<chrono::DateTime<chrono::Utc>, CertError> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| CertError::Tls("no certificate in the chain".into()))?
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| CertError::Tls(format!("unreadable certificate: {e}")))?;
    chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .ok_or_else(|| CertError::Tls("certificate date out of range".into()))
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
