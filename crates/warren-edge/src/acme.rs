//! Certificates for custom domains from an ACME directory (RFC 8555), with instant-acme.
//!
//! The challenge is TLS-ALPN-01 (RFC 8737): the edge has one listener, the HTTPS one,
//! and the CA validates on it by connecting with ALPN `acme-tls/1` and the domain as
//! SNI; the edge then answers with a self-signed certificate carrying the key
//! authorization's digest ([`challenge_config`], looked up in
//! [`crate::CertStore::alpn_challenge`]). HTTP-01 would need a plain-HTTP listener on
//! port 80, which the edge does not run. Wildcards (the preview domain) need DNS-01 and
//! stay with the local CA.
//!
//! The account (its key inside instant-acme's credentials) is stored sealed under the
//! master key in `DATA/edge/acme-account-<hash of the directory URL>.sealed`.

use crate::seal::MasterKey;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Where certificates for custom domains come from when not the local CA.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The ACME directory URL (e.g. https://acme-v02.api.letsencrypt.org/directory).
    pub directory_url: String,
    /// Contact e-mail for the account (optional).
    pub contact_email: Option<String>,
    /// A root certificate (PEM file) to trust for the directory's HTTPS, for test CAs
    /// such as pebble; None: the system's roots.
    pub directory_root: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("ACME account file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("ACME account: {0}")]
    Account(String),
    #[error("the ACME server offers no TLS-ALPN-01 challenge for {0}")]
    NoChallenge(String),
    #[error("the ACME server refused {what}: {detail}")]
    Refused { what: String, detail: String },
    #[error("challenge certificate: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(String),
}

/// An ACME client for one directory (the account is created or loaded on first use).
pub struct Acme {
    pub config: AcmeConfig,
    account: tokio::sync::OnceCell<Account>,
}

impl Acme {
    pub fn new(config: AcmeConfig) -> Self {
        Acme {
            config,
            account: tokio::sync::OnceCell::new(),
        }
    }

    fn account_path(&self, dir: &Path) -> PathBuf {
        let digest =
            ring::digest::digest(&ring::digest::SHA256, self.config.directory_url.as_bytes());
        dir.join(format!(
            "acme-account-{}.sealed",
            hex::encode(&digest.as_ref()[..8])
        ))
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        // instant-acme's client builds its rustls config with the process default
        // provider; ring is the one this build carries.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(match &self.config.directory_root {
            Some(p) => Account::builder_with_root(p)?,
            None => Account::builder()?,
        })
    }

    /// The account: loaded from `dir` (sealed) or created and stored there.
    pub async fn account(&self, dir: &Path, master: &MasterKey) -> Result<&Account, AcmeError> {
        self.account
            .get_or_try_init(|| async {
                let path = self.account_path(dir);
                let io = |source| AcmeError::Io {
                    path: path.display().to_string(),
                    source,
                };
                match std::fs::read(&path) {
                    Ok(sealed) => {
                        let plain = master
                            .open(&sealed)
                            .map_err(|e| AcmeError::Account(e.to_string()))?;
                        let creds: AccountCredentials = serde_json::from_slice(&plain)
                            .map_err(|e| AcmeError::Account(e.to_string()))?;
                        return Ok(self.builder()?.from_credentials(creds).await?);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(e)),
                }
                let contact = self
                    .config
                    .contact_email
                    .as_ref()
                    .map(|m| format!("mailto:{m}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = self
                    .builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.config.directory_url.clone(),
                        None,
                    )
                    .await?;
                let json =
                    serde_json::to_vec(&creds).map_err(|e| AcmeError::Account(e.to_string()))?;
                crate::certs::write_sealed(&path, &master.seal(&json))
                    .map_err(|e| AcmeError::Account(e.to_string()))?;
                tracing::info!(directory = %self.config.directory_url, id = account.id(), "ACME account created");
                Ok(account)
            })
            .await
    }
}

/// The TLS configuration answering a TLS-ALPN-01 challenge for `name`: a self-signed
/// certificate for `name` with the (critical) acmeIdentifier extension (RFC 8737),
/// ALPN `acme-tls/1` only. rustls' `with_single_cert` parses the certificate and refuses
/// the critical extension it does not know, so the certificate is handed over as is by
/// a resolver.
pub fn challenge_config(name: &str, digest: &[u8]) -> Result<rustls::ServerConfig, AcmeError> {
    use rustls_pki_types::pem::PemObject;
    let mut p = CertificateParams::new(vec![name.to_string()])?;
    p.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
        .map_err(|e| AcmeError::Tls(e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| AcmeError::Tls(e.to_string()))?;
    let certified = Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    ));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(certified)));
    cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(cfg)
}

/// One certificate for every handshake.
#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Where the challenge answers are published while an order is being validated.
pub trait ChallengeSink: Send + Sync {
    fn put(&self, name: &str, cfg: Arc<rustls::ServerConfig>);
    fn remove(&self, name: &str);
}

/// Order a certificate for `names` (all must point at this edge): (chain PEM, key PEM).
pub async fn order(
    account: &Account,
    names: &[String],
    sink: &dyn ChallengeSink,
) -> Result<(String, String), AcmeError> {
    let ids: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut published = Vec::new();
    let result = async {
        let mut auths = order.authorizations();
        while let Some(a) = auths.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                s => {
                    return Err(AcmeError::Refused {
                        what: format!("the authorization of {}", a.identifier()),
                        detail: format!("{s:?}"),
                    })
                }
            }
            let ident = a.identifier().to_string();
            let mut ch = a
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| AcmeError::NoChallenge(ident.clone()))?;
            let cfg = challenge_config(&ident, ch.key_authorization().digest().as_ref())?;
            sink.put(&ident, Arc::new(cfg));
            published.push(ident);
            ch.set_ready().await?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(120));
        let status = order.poll_ready(&retry).await?;
        if status != OrderStatus::Ready {
            let mut detail = format!("order {status:?}");
            let mut auths = order.authorizations();
            while let Some(Ok(a)) = auths.next().await {
                for c in &a.challenges {
                    if let Some(e) = &c.error {
                        detail = format!("{}: {e}", a.identifier());
                    }
                }
            }
            return Err(AcmeError::Refused {
                what: names.join(", "),
                detail,
            });
        }
        let key_pem = order.finalize().await?;
        let chain = order.poll_certificate(&retry).await?;
        Ok((chain, key_pem))
    }
    .await;
    for n in &published {
        sink.remove(n);
    }
    result
}
