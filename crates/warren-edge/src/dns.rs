//! The DNS check of a custom domain: does it point at this edge?
//!
//! A domain points here when it is a CNAME to one of the workspace's preview host names
//! (or the preview domain itself), or when its A/AAAA records are among the edge's
//! public addresses ([`DnsConfig::public_ips`]). Resolution uses hickory-resolver with
//! the configured name server (tests point it at a DNS server they run), or the
//! system's resolv.conf.

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The DNS side of the edge's configuration.
#[derive(Debug, Clone, Default)]
pub struct DnsConfig {
    /// The name server the check asks (UDP and TCP); None: the system's resolv.conf.
    pub nameserver: Option<SocketAddr>,
    /// The edge's public addresses: A/AAAA records a custom domain may point at.
    pub public_ips: Vec<IpAddr>,
}

/// What the check found (the fields of the client's `CheckDNSResponse`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DnsReport {
    /// The domain points at this edge (by CNAME or by address).
    pub verified: bool,
    /// Its CNAME names one of the accepted targets.
    pub cname: bool,
    /// Records seen, by type ("CNAME", "A", "AAAA").
    pub records: BTreeMap<String, Vec<String>>,
    /// Why it does not point here (empty when verified).
    pub errors: Vec<String>,
}

/// The whole check's time limit.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

fn resolver(cfg: &DnsConfig) -> Result<TokioResolver, ResolveError> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    // A check must see the current records, not a cached answer from minutes ago.
    opts.cache_size = 0;
    let mut b = match cfg.nameserver {
        Some(ns) => {
            let mut rc = ResolverConfig::new();
            rc.add_name_server(NameServerConfig::new(ns, Protocol::Udp));
            rc.add_name_server(NameServerConfig::new(ns, Protocol::Tcp));
            TokioResolver::builder_with_config(rc, TokioConnectionProvider::default())
        }
        None => TokioResolver::builder_tokio()?,
    };
    *b.options_mut() = opts;
    Ok(b.build())
}

fn host(n: &str) -> String {
    n.trim_end_matches('.').to_ascii_lowercase()
}

/// Check `domain`: a CNAME to one of `targets`, or addresses among the public IPs.
pub async fn check(cfg: &DnsConfig, domain: &str, targets: &[String]) -> DnsReport {
    let mut r = DnsReport::default();
    let res = match resolver(cfg) {
        Ok(r) => r,
        Err(e) => {
            r.errors.push(format!("no DNS resolver: {e}"));
            return r;
        }
    };
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    // The three lookups at once, and never longer than CHECK_TIMEOUT in all (a connect
    // reports the check, so a dead name server must not hold it up).
    let all = async {
        tokio::join!(
            res.lookup(fqdn.as_str(), RecordType::CNAME),
            res.lookup(fqdn.as_str(), RecordType::A),
            res.lookup(fqdn.as_str(), RecordType::AAAA),
        )
    };
    let Ok((cname, a, aaaa)) = tokio::time::timeout(CHECK_TIMEOUT, all).await else {
        r.errors.push(format!(
            "resolving {domain} took longer than {CHECK_TIMEOUT:?}"
        ));
        return r;
    };
    let mut cnames = Vec::new();
    if let Ok(l) = cname {
        for rec in l.record_iter() {
            if let RData::CNAME(c) = rec.data() {
                cnames.push(host(&c.0.to_utf8()));
            }
        }
    }
    let mut addrs: Vec<IpAddr> = Vec::new();
    let mut failures = Vec::new();
    for (t, answer) in [(RecordType::A, a), (RecordType::AAAA, aaaa)] {
        match answer {
            Ok(l) => {
                let mut seen = Vec::new();
                for rec in l.record_iter() {
                    match rec.data() {
                        RData::A(a) => addrs.push(IpAddr::V4(a.0)),
                        RData::AAAA(a) => addrs.push(IpAddr::V6(a.0)),
                        RData::CNAME(c) => {
                            cnames.push(host(&c.0.to_utf8()));
                            continue;
                        }
                        _ => continue,
                    }
                    seen.push(rec.data().to_string());
                }
                if !seen.is_empty() {
                    r.records.insert(t.to_string(), seen);
                }
            }
            Err(e) if e.is_no_records_found() => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    cnames.sort();
    cnames.dedup();
    if !cnames.is_empty() {
        r.records.insert("CNAME".into(), cnames.clone());
    }
    let targets: Vec<String> = targets.iter().map(|t| host(t)).collect();
    r.cname = cnames.iter().any(|c| targets.contains(c));
    let addr_ok = addrs.iter().any(|a| cfg.public_ips.contains(a));
    r.verified = r.cname || addr_ok;
    if !r.verified {
        if cnames.is_empty() && addrs.is_empty() {
            match failures.first() {
                Some(f) => r
                    .errors
                    .push(format!("{domain} could not be resolved: {f}")),
                None => r
                    .errors
                    .push(format!("{domain} has no CNAME, A or AAAA record")),
            }
        }
        if !cnames.is_empty() {
            r.errors.push(format!(
                "{domain} is a CNAME to {} and not to {}",
                cnames.join(", "),
                targets.join(" or ")
            ));
        }
        if !addrs.is_empty() {
            let ips: Vec<String> = cfg.public_ips.iter().map(|i| i.to_string()).collect();
            let got: Vec<String> = addrs.iter().map(|i| i.to_string()).collect();
            r.errors.push(format!(
                "{domain} resolves to {} and not to this edge ({})",
                got.join(", "),
                if ips.is_empty() {
                    "no public address configured".to_string()
                } else {
                    ips.join(", ")
                }
            ));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name server that never answers: the check ends within its limit, unverified,
    /// saying why.
    #[tokio::test]
    async fn a_silent_name_server_fails_the_check_in_time() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let cfg = DnsConfig {
            nameserver: Some(silent.local_addr().unwrap()),
            public_ips: vec!["127.0.0.1".parse().unwrap()],
        };
        let t = std::time::Instant::now();
        let r = check(&cfg, "app.example.test", &["x.warren.test".into()]).await;
        assert!(t.elapsed() < CHECK_TIMEOUT + Duration::from_secs(1));
        assert!(!r.verified && !r.cname, "{r:?}");
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(r.records.is_empty(), "{r:?}");
    }
}
