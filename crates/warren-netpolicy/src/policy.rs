//! What a workspace may send and receive, as the user states it ([`NetworkPolicy`]),
//! and its checked form ([`Compiled`]) the firewall and the resolver work from.
//!
//! Semantics:
//! * **Ingress** is deny by default: only sources in `ingress` (IPs or CIDRs) reach the
//!   workspace, on `ingress_ports` when that list is not empty (all ports otherwise).
//!   The host always reaches the agent port.
//! * **Egress**: an empty `egress` list means "anything allowed by `allow_internet`":
//!   other workspaces of the pool (whose own ingress decides) and, when
//!   `allow_internet` is true, every non-private address (masqueraded out of the host).
//!   A non-empty list restricts outbound traffic to exactly its entries (IPs, CIDRs,
//!   and hostnames resolved through Warren's resolver), whatever `allow_internet` says.
//! * **Air-gapped**: no egress, no ingress but the agent port from the host, no DNS.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;

/// Upper bound on each rule list, so one request cannot make the firewall huge.
pub const MAX_RULES: usize = 256;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct NetworkPolicy {
    pub allow_internet: bool,
    pub air_gapped: bool,
    /// Sources admitted: IPs or CIDRs.
    pub ingress: Vec<String>,
    /// Ports the admitted sources may reach (TCP and UDP); empty: all.
    pub ingress_ports: Vec<u16>,
    /// Destinations allowed: IPs, CIDRs or hostnames (`api.example.com`,
    /// `*.example.com`); empty: see the module documentation.
    pub egress: Vec<String>,
    /// Source address for traffic leaving the host (an address of this host);
    /// `None`: the outgoing interface's address (masquerade).
    pub outbound_ip: Option<Ipv4Addr>,
    /// Bandwidth limits in kilobits per second (forwarded traffic; not the host's
    /// management path to the agent).
    pub ingress_kbps: Option<u64>,
    pub egress_kbps: Option<u64>,
    /// Ports published through the edge (`/workspace/:id/public-access`): the host
    /// (where the edge proxy runs) may open TCP connections to them. Set by the API
    /// from the exposed ports, not by users; ignored when air-gapped.
    pub edge_ports: Vec<u16>,
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        NetworkPolicy {
            allow_internet: true,
            air_gapped: false,
            ingress: Vec::new(),
            ingress_ports: Vec::new(),
            egress: Vec::new(),
            outbound_ip: None,
            ingress_kbps: None,
            egress_kbps: None,
            edge_ports: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct PolicyError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        field,
        reason: reason.into(),
    }
}

/// An IPv4 network (an address is a /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Net {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = mask(self.prefix);
        u32::from(ip) & m == u32::from(self.addr) & m
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == 32 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// `10.0.0.1` or `10.0.0.0/8` (host bits are cleared: `10.1.2.3/8` is `10.0.0.0/8`).
pub fn parse_net(s: &str) -> Result<Net, String> {
    let s = s.trim();
    if s.contains(':') {
        return Err(format!("{s:?}: IPv6 is not supported (IPv4 only)"));
    }
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => {
            let p: u8 = p
                .parse()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0-32"))?;
            (ip, p)
        }
        None => (s, 32),
    };
    let addr: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address or CIDR"))?;
    Ok(Net {
        addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
        prefix,
    })
}

/// A hostname pattern: `api.example.com`, or `*.example.com` for its subdomains.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    pub wildcard: bool,
    /// Lower case, no trailing dot; for a wildcard, the part after `*.`.
    pub name: String,
}

impl HostPattern {
    pub fn matches(&self, qname: &str) -> bool {
        let q = qname.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            q.len() > self.name.len()
                && q.ends_with(&self.name)
                && q.as_bytes()[q.len() - self.name.len() - 1] == b'.'
        } else {
            q == self.name
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// RFC 1123 hostname (letters, digits, inner hyphens; labels of 1-63; at most 253),
/// optionally `*.` in front.
pub fn parse_host(s: &str) -> Result<HostPattern, String> {
    let t = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let (wildcard, name) = match t.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, t.clone()),
    };
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is not an IPv4 address, a CIDR or a hostname"
        ));
    }
    // An all-numeric name would be an address: `10.0.0` is a typo, not a host.
    if name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{s:?} is not a valid IPv4 address"));
    }
    Ok(HostPattern { wildcard, name })
}

/// One egress entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    Net(Net),
    Host(HostPattern),
}

/// A checked policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Compiled {
    pub allow_internet: bool,
    pub air_gapped: bool,
    pub ingress: Vec<Net>,
    pub ingress_ports: Vec<u16>,
    pub egress_nets: Vec<Net>,
    pub egress_hosts: Vec<HostPattern>,
    pub outbound_ip: Option<Ipv4Addr>,
    pub ingress_kbps: Option<u64>,
    pub egress_kbps: Option<u64>,
    pub edge_ports: Vec<u16>,
}

impl Compiled {
    /// Is egress restricted to the listed entries?
    pub fn egress_restricted(&self) -> bool {
        !self.egress_nets.is_empty() || !self.egress_hosts.is_empty()
    }

    /// May the resolver answer `qname` for this workspace?
    pub fn may_resolve(&self, qname: &str) -> bool {
        if self.air_gapped {
            return false;
        }
        if self.egress_restricted() {
            return self.egress_hosts.iter().any(|h| h.matches(qname));
        }
        self.allow_internet
    }
}

/// Lowest and highest bandwidth limit accepted (kbit/s).
pub const MIN_KBPS: u64 = 8;
pub const MAX_KBPS: u64 = 100_000_000;

impl NetworkPolicy {
    /// Check every field; the first bad one is named.
    pub fn compile(&self) -> Result<Compiled, PolicyError> {
        if self.ingress.len() > MAX_RULES {
            return Err(bad(
                "ingress",
                format!("{} rules; at most {MAX_RULES}", self.ingress.len()),
            ));
        }
        if self.egress.len() > MAX_RULES {
            return Err(bad(
                "egress",
                format!("{} rules; at most {MAX_RULES}", self.egress.len()),
            ));
        }
        if self.ingress_ports.len() > MAX_RULES {
            return Err(bad(
                "ingress_ports",
                format!("{} ports; at most {MAX_RULES}", self.ingress_ports.len()),
            ));
        }
        if self.ingress_ports.contains(&0) {
            return Err(bad("ingress_ports", "ports are 1-65535"));
        }
        let mut ingress = Vec::new();
        for s in &self.ingress {
            ingress.push(parse_net(s).map_err(|r| bad("ingress", r))?);
        }
        let mut egress_nets = Vec::new();
        let mut egress_hosts = Vec::new();
        for s in &self.egress {
            match parse_egress(s).map_err(|r| bad("egress", r))? {
                Egress::Net(n) => egress_nets.push(n),
                Egress::Host(h) => egress_hosts.push(h),
            }
        }
        for (field, v) in [
            ("ingress_kbps", self.ingress_kbps),
            ("egress_kbps", self.egress_kbps),
        ] {
            if let Some(k) = v {
                if !(MIN_KBPS..=MAX_KBPS).contains(&k) {
                    return Err(bad(
                        field,
                        format!("{k} is out of range {MIN_KBPS}-{MAX_KBPS} (kbit/s)"),
                    ));
                }
            }
        }
        if let Some(ip) = self.outbound_ip {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                return Err(bad("outbound_ip", format!("{ip} is not a host address")));
            }
        }
        let mut ports = self.ingress_ports.clone();
        ports.sort_unstable();
        ports.dedup();
        if self.edge_ports.len() > MAX_RULES || self.edge_ports.contains(&0) {
            return Err(bad("edge_ports", "at most 256 ports, each 1-65535"));
        }
        let mut edge_ports = self.edge_ports.clone();
        edge_ports.sort_unstable();
        edge_ports.dedup();
        Ok(Compiled {
            allow_internet: self.allow_internet,
            air_gapped: self.air_gapped,
            ingress,
            ingress_ports: ports,
            egress_nets,
            egress_hosts,
            outbound_ip: self.outbound_ip,
            ingress_kbps: self.ingress_kbps,
            egress_kbps: self.egress_kbps,
            edge_ports,
        })
    }
}

/// An egress entry: an address or CIDR if it looks like one, else a hostname.
pub fn parse_egress(s: &str) -> Result<Egress, String> {
    let t = s.trim();
    let looks_numeric = t
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/');
    if looks_numeric || t.contains(':') {
        return parse_net(t).map(Egress::Net);
    }
    parse_host(t).map(Egress::Host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets() {
        assert_eq!(parse_net("10.0.0.1").unwrap().to_string(), "10.0.0.1");
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("10.0.0.256").is_err());
        assert!(parse_net("fd00::1").unwrap_err().contains("IPv6"));
        assert!(parse_net("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn hosts() {
        let h = parse_host("API.Example.test.").unwrap();
        assert!(h.matches("api.example.test"));
        assert!(!h.matches("other.example.test"));
        let w = parse_host("*.example.test").unwrap();
        assert!(w.matches("a.example.test"));
        assert!(!w.matches("example.test"));
        assert!(!w.matches("badexample.test"));
        for bad in [
            "",
            "-a.com",
            "a..b",
            "a_b.com",
            "10.0.0",
            "exa mple.com",
            "*",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn compile_names_the_bad_field() {
        let p = NetworkPolicy {
            egress: vec!["10.0.0.0/8".into(), "api.example.test".into()],
            ingress: vec!["10.88.0.2".into()],
            ..Default::default()
        };
        let c = p.compile().unwrap();
        assert_eq!(c.egress_nets.len(), 1);
        assert!(c.may_resolve("api.example.test"));
        assert!(!c.may_resolve("other.example.test"));
        let err = |p: NetworkPolicy| p.compile().unwrap_err().field;
        assert_eq!(
            err(NetworkPolicy {
                egress: vec!["10.0.0.300".into()],
                ..Default::default()
            }),
            "egress"
        );
        assert_eq!(
            err(NetworkPolicy {
                ingress: vec!["example.com".into()],
                ..Default::default()
            }),
            "ingress"
        );
        assert_eq!(
            err(NetworkPolicy {
                ingress: vec!["10.0.0.1".into(); MAX_RULES + 1],
                ..Default::default()
            }),
            "ingress"
        );
        assert_eq!(
            err(NetworkPolicy {
                egress_kbps: Some(1),
                ..Default::default()
            }),
            "egress_kbps"
        );
        // Defaults: everything but private ranges resolves; air-gapped resolves nothing.
        assert!(NetworkPolicy::default()
            .compile()
            .unwrap()
            .may_resolve("x.y"));
        let gapped = NetworkPolicy {
            air_gapped: true,
            ..Default::default()
        };
        assert!(!gapped.compile().unwrap().may_resolve("x.y"));
    }
}
