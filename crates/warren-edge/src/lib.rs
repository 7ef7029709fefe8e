//! The edge: public HTTPS in front of workspaces.
//!
//! A workspace never gets a public address. When a port is exposed, the edge receives
//! `https://<slug>.<preview domain>` (or the workspace's custom domain), terminates TLS
//! (rustls; ALPN h2 and http/1.1), and proxies the request to the workspace's internal
//! address and port over HTTP/1.1, streaming bodies (SSE passes unbuffered) and splicing
//! upgrades (WebSocket). Routes are read from the state database per request, so a
//! revoke answers 404 at once. The data-plane gateway is reachable through the same
//! listener at its own host name. Certificates come from [`certs`] (the local Warren
//! CA, or an ACME directory for custom domains: [`acme`]), chosen per connection by
//! the client's SNI; [`dns`] checks that a custom domain points here.

pub mod acme;
pub mod certs;
pub mod dns;
pub mod names;
pub mod proxy;
pub mod seal;
pub mod ssh;
pub mod wake;

use std::net::SocketAddr;

pub use certs::{CertError, CertStore};
pub use proxy::{serve, Edge};

/// Most ports one workspace may expose.
pub const MAX_PORTS: usize = 20;

/// The edge's part of the server configuration.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Where the HTTPS listener binds.
    pub https_addr: SocketAddr,
    /// Ports are published at `https://<slug>.<preview_domain>`.
    pub preview_domain: String,
    /// The port in published URLs (the listener's, unless something forwards 443 to it).
    pub public_https_port: u16,
    /// Host name (under the preview domain) that reaches the data-plane gateway.
    pub gateway_host: String,
    /// The SSH gateway's port (None: no SSH gateway).
    pub ssh_port: Option<u16>,
    /// The host name users connect to (shown in SSH commands).
    pub public_host: String,
    /// The ACME directory custom domains get certificates from (None: the local CA).
    pub acme: Option<acme::AcmeConfig>,
    /// Certificates are renewed when fewer days than this remain.
    pub renew_before_days: i64,
    /// How often the renewal sweep runs (the first one a minute after start, or sooner
    /// when this is shorter).
    pub renew_check_interval: std::time::Duration,
    /// The custom-domain DNS check: name server and the edge's public addresses.
    pub dns: dns::DnsConfig,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            https_addr: SocketAddr::from(([127, 0, 0, 1], 8443)),
            preview_domain: "warren.localhost".into(),
            public_https_port: 8443,
            gateway_host: "gateway.warren.localhost".into(),
            ssh_port: None,
            public_host: "127.0.0.1".into(),
            acme: None,
            renew_before_days: certs::RENEW_BEFORE_DAYS,
            renew_check_interval: std::time::Duration::from_secs(3600),
            dns: dns::DnsConfig::default(),
        }
    }
}

impl EdgeConfig {
    /// `https://<host>` with the port when it is not 443.
    pub fn url_for(&self, host: &str) -> String {
        if self.public_https_port == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{}", self.public_https_port)
        }
    }

    /// The published URL of a slug.
    pub fn preview_url(&self, slug: &str) -> String {
        self.url_for(&format!("{slug}.{}", self.preview_domain))
    }
}
