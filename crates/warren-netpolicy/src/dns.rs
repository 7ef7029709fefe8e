//! Warren's DNS resolver: one UDP socket per workspace on the host end of its tap
//! (`host_ip:53`, the only name server the guest is given).
//!
//! A name the workspace's policy allows is forwarded to the configured upstream
//! servers; when the workspace's egress is restricted, the A records of the answer are
//! pinned into its firewall set for their TTL before the answer is passed on, so the
//! connection that follows is allowed. Other names get NXDOMAIN; AAAA questions an
//! empty answer (workspaces have no IPv6 path). An air-gapped workspace's packets never
//! reach the socket (the firewall drops them) and would be refused if they did.

use crate::nft::Firewall;
use crate::policy::Compiled;
use crate::{NetError, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::UdpSocket;
use tracing::Instrument;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_REFUSED: u8 = 5;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// One question out of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    /// Lower case, dot separated, no trailing dot.
    pub qname: String,
    pub qtype: u16,
    /// The question section's bytes, echoed in replies we build.
    pub question: Vec<u8>,
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Read a (possibly compressed) name at `pos`; returns it and the position after it
/// in the original sequence.
fn read_name(b: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *b.get(pos)? as usize;
        if len & 0xC0 == 0xC0 {
            let ptr = (u16_at(b, pos)? & 0x3FFF) as usize;
            end.get_or_insert(pos + 2);
            pos = ptr;
            continue;
        }
        if len == 0 {
            return Some((labels.join("."), end.unwrap_or(pos + 1)));
        }
        let label = b.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += 1 + len;
    }
    None
}

/// Parse a standard query with exactly one question.
pub fn parse_query(b: &[u8]) -> Option<Query> {
    let id = u16_at(b, 0)?;
    let flags = u16_at(b, 2)?;
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xF;
    if is_response || opcode != 0 || u16_at(b, 4)? != 1 {
        return None;
    }
    let (qname, after) = read_name(b, 12)?;
    let qtype = u16_at(b, after)?;
    u16_at(b, after + 2)?;
    Some(Query {
        id,
        flags,
        qname,
        qtype,
        question: b.get(12..after + 4)?.to_vec(),
    })
}

/// A reply with no records and `rcode`.
pub fn empty_reply(q: &Query, rcode: u8) -> Vec<u8> {
    let rd = q.flags & 0x0100;
    let flags: u16 = 0x8000 | rd | 0x0080 | u16::from(rcode & 0xF);
    let mut v = Vec::with_capacity(12 + q.question.len());
    v.extend_from_slice(&q.id.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&q.question);
    v
}

/// The A records (address, TTL) in a response's answer section.
pub fn a_records(b: &[u8]) -> Vec<(Ipv4Addr, u32)> {
    let mut out = Vec::new();
    let (Some(qd), Some(an)) = (u16_at(b, 4), u16_at(b, 6)) else {
        return out;
    };
    let mut pos = 12;
    for _ in 0..qd {
        let Some((_, after)) = read_name(b, pos) else {
            return out;
        };
        pos = after + 4;
    }
    for _ in 0..an {
        let Some((_, after)) = read_name(b, pos) else {
            break;
        };
        let (Some(ty), Some(rdlen)) = (u16_at(b, after), u16_at(b, after + 8)) else {
            break;
        };
        let ttl = b
            .get(after + 4..after + 8)
            .map(|t| u32::from_be_bytes([t[0], t[1], t[2], t[3]]))
            .unwrap_or(0);
        let rdata = after + 10;
        if ty == TYPE_A && rdlen == 4 {
            if let Some(a) = b.get(rdata..rdata + 4) {
                out.push((Ipv4Addr::new(a[0], a[1], a[2], a[3]), ttl));
            }
        }
        pos = rdata + rdlen as usize;
    }
    out
}

/// Upstream servers: `ip` or `ip:port`; empty: the host's /etc/resolv.conf.
pub fn upstreams(configured: &[String]) -> Result<Vec<SocketAddr>> {
    let mut list: Vec<String> = configured.to_vec();
    if list.is_empty() {
        list = std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.contains(':'))
            .collect();
    }
    list.iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<Ipv4Addr>().map(|ip| SocketAddr::from((ip, 53))))
                .map_err(|_| NetError::Config(format!("DNS upstream {s:?} is not ip or ip:port")))
        })
        .collect()
}

/// The resolver task of one workspace; stops when dropped.
pub struct Resolver {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a resolver serves.
pub struct ResolverSpec {
    pub workspace_id: String,
    pub index: u32,
    pub listen: Ipv4Addr,
    pub policy: Arc<RwLock<Compiled>>,
    pub upstreams: Vec<SocketAddr>,
    pub firewall: Firewall,
}

impl Resolver {
    /// Bind `listen:53` and serve in the background (needs a tokio runtime).
    pub fn spawn(spec: ResolverSpec) -> Result<Resolver> {
        let addr = SocketAddr::from((spec.listen, 53));
        // A resolver of this address that is being stopped (a restart) may hold it for
        // a moment more.
        let mut tries = 0;
        let std_sock = loop {
            match std::net::UdpSocket::bind(addr) {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(NetError::Io(format!("bind the DNS resolver on {addr}"), e)),
            }
        };
        std_sock
            .set_nonblocking(true)
            .map_err(|e| NetError::Io("resolver socket".into(), e))?;
        let sock =
            UdpSocket::from_std(std_sock).map_err(|e| NetError::Io("resolver socket".into(), e))?;
        let span = tracing::info_span!("resolver", workspace_id = %spec.workspace_id);
        let task = tokio::spawn(serve(Arc::new(sock), Arc::new(spec)).instrument(span));
        Ok(Resolver { task })
    }
}

async fn serve(sock: Arc<UdpSocket>, spec: Arc<ResolverSpec>) {
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "resolver receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let (sock, spec) = (sock.clone(), spec.clone());
        tokio::spawn(
            async move {
                if let Some(reply) = answer(&packet, &spec).await {
                    let _ = sock.send_to(&reply, peer).await;
                }
            }
            .in_current_span(),
        );
    }
}

fn policy(spec: &ResolverSpec) -> Compiled {
    spec.policy
        .read()
        .map(|p| p.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

async fn answer(packet: &[u8], spec: &ResolverSpec) -> Option<Vec<u8>> {
    let q = parse_query(packet)?;
    let p = policy(spec);
    if p.air_gapped {
        return Some(empty_reply(&q, RCODE_REFUSED));
    }
    if !p.may_resolve(&q.qname) {
        tracing::info!(qname = %q.qname, "name not allowed: NXDOMAIN");
        return Some(empty_reply(&q, RCODE_NXDOMAIN));
    }
    if q.qtype == TYPE_AAAA {
        return Some(empty_reply(&q, 0));
    }
    let Some(resp) = forward(packet, q.id, &spec.upstreams).await else {
        return Some(empty_reply(&q, RCODE_SERVFAIL));
    };
    tracing::debug!(qname = %q.qname, qtype = q.qtype, answers = ?a_records(&resp), "upstream answered");
    if p.egress_restricted() {
        let pins = a_records(&resp);
        let fw = spec.firewall.clone();
        let index = spec.index;
        let pinned = tokio::task::spawn_blocking(move || fw.pin(index, &pins)).await;
        match pinned {
            Ok(Ok(())) => tracing::debug!(qname = %q.qname, "answer pinned"),
            Ok(Err(e)) => {
                tracing::warn!(qname = %q.qname, error = %e, "cannot pin the answer");
                return Some(empty_reply(&q, RCODE_SERVFAIL));
            }
            Err(_) => return Some(empty_reply(&q, RCODE_SERVFAIL)),
        }
    }
    Some(resp)
}

async fn forward(packet: &[u8], id: u16, upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let Ok(sock) = UdpSocket::bind(("0.0.0.0", 0)).await else {
            continue;
        };
        if sock.send_to(packet, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                let (n, from) = sock.recv_from(&mut buf).await.ok()?;
                if from == *up && u16_at(&buf[..n], 0) == Some(id) {
                    return Some(buf[..n].to_vec());
                }
            }
        })
        .await;
        match got {
            Ok(Some(r)) => return Some(r),
            _ => tracing::warn!(upstream = %up, "upstream DNS server did not answer"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut v = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v.extend_from_slice(&qtype.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v
    }

    #[test]
    fn parses_and_answers() {
        let q = parse_query(&query("API.example.test", TYPE_A)).unwrap();
        assert_eq!(q.qname, "api.example.test");
        assert_eq!(q.qtype, TYPE_A);
        let r = empty_reply(&q, RCODE_NXDOMAIN);
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0xF, 3);
        assert_eq!(r[2] & 0x80, 0x80);
        assert!(a_records(&r).is_empty());
    }

    #[test]
    fn reads_compressed_a_records() {
        let mut r = query("api.example.test", TYPE_A);
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 2; // two answers
        for (ip, ttl) in [([198, 51, 100, 2], 60u32), ([198, 51, 100, 3], 5)] {
            r.extend_from_slice(&[0xC0, 12]); // pointer to the question's name
            r.extend_from_slice(&TYPE_A.to_be_bytes());
            r.extend_from_slice(&1u16.to_be_bytes());
            r.extend_from_slice(&ttl.to_be_bytes());
            r.extend_from_slice(&4u16.to_be_bytes());
            r.extend_from_slice(&ip);
        }
        assert_eq!(
            a_records(&r),
            vec![
                ("198.51.100.2".parse().unwrap(), 60),
                ("198.51.100.3".parse().unwrap(), 5)
            ]
        );
        // Truncated input is not a panic.
        assert!(a_records(&r[..r.len() - 3]).len() <= 1);
        assert!(parse_query(&r).is_none(), "a response is not a query");
    }

    #[test]
    fn upstream_forms() {
        let u = upstreams(&["198.51.100.2".into(), "127.0.0.1:5353".into()]).unwrap();
        assert_eq!(u[0].to_string(), "198.51.100.2:53");
        assert_eq!(u[1].port(), 5353);
        assert!(upstreams(&["nope".into()]).is_err());
    }

    /// A real round trip: a query to the resolver is forwarded upstream and the answer
    /// comes back; a name the policy does not allow gets NXDOMAIN.
    #[tokio::test]
    async fn forwards_allowed_names_only() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: binding port 53 needs root");
            return;
        }
        let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let up_addr = upstream.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = upstream.recv_from(&mut buf) {
                let q = parse_query(&buf[..n]).unwrap();
                let mut r = empty_reply(&q, 0);
                r[7] = 1;
                r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, 2]);
                upstream.send_to(&r, peer).unwrap();
            }
        });
        let policy = crate::NetworkPolicy::default().compile().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let listen: Ipv4Addr = "127.83.0.53".parse().unwrap();
        let policy_handle = Arc::new(RwLock::new(policy));
        let _r = Resolver::spawn(ResolverSpec {
            workspace_id: "ws_test".into(),
            index: 65000,
            listen,
            policy: policy_handle.clone(),
            upstreams: vec![up_addr],
            firewall: Firewall::new(dir.path(), None).unwrap(),
        })
        .unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ask = |name: &'static str| {
            let c = &c;
            async move {
                c.send_to(&query(name, TYPE_A), (listen, 53)).await.unwrap();
                let mut buf = [0u8; 1500];
                let (n, _) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                buf[..n].to_vec()
            }
        };
        let r = ask("api.example.test").await;
        assert_eq!(a_records(&r), vec![("198.51.100.2".parse().unwrap(), 60)]);
        let restricted = crate::NetworkPolicy {
            egress: vec!["api.example.test".into()],
            ..Default::default()
        };
        *policy_handle.write().unwrap() = restricted.compile().unwrap();
        let r = ask("other.example.test").await;
        assert_eq!(r[3] & 0xF, RCODE_NXDOMAIN);
        // Pinning into a set that does not exist (no firewall here) fails: the
        // resolver says so rather than answer with an address that would be dropped.
        let r = ask("api.example.test").await;
        assert_eq!(r[3] & 0xF, RCODE_SERVFAIL);
    }
}
