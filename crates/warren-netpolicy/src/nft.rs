//! The `inet warren` nftables table: one per host, shared by every Warren process on
//! it (a server, `warren run`s), changed only by whole `nft -f -` transactions.
//!
//! Layout (`N` is the workspace's lease index, its tap is `wtN`):
//!
//! ```text
//! forward     iifname vmap @fwd_out   -> wN_out   what the workspace may send
//!             oifname vmap @fwd_in    -> wN_in    what may reach the workspace
//! input       iifname vmap @host_in   -> wN_host  workspace -> host: replies, DNS
//! output      oifname vmap @host_out  -> wN_agent host -> workspace: the agent port
//! postrouting iifname "wt*" oifname != "wt*" iifname vmap @nat_out -> wN_nat
//!             (snat to its outbound IP, or masquerade); other taps: masquerade
//! sets        wN_src (ingress sources), wN_dst (egress nets), wN_dns (pinned answers,
//!             with timeouts), private (non-internet ranges)
//! ```
//!
//! Map values never change for a tap (`wtN` always jumps to `wN_...`), so adding an
//! element before deleting it makes the deletion safe whether or not it existed: that
//! is how one transaction replaces or removes a workspace without knowing what the
//! table holds.
//!
//! ```text
//! ```
//!
//! Per-workspace chains end by refusing (TCP reset, else ICMP admin-prohibited: a
//! blocked connection fails at once); an allowed packet `return`s to the base chain so
//! the other side's chain is consulted too (A -> B passes A's `out` and B's `in`). A tap
//! not in the maps is not ours to filter (a process that manages no policy).
//! Records of applied policies live next to the address leases
//! (`run_dir/net/policy/N.json`), so any Warren process can rebuild the table from
//! them and remove what belongs to no lease.

use crate::policy::{Compiled, Net, NetworkPolicy, PolicyError};
use crate::{NetError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const TABLE: &str = "inet warren";
/// The agent's port: always reachable from the host.
pub const AGENT_PORT: u16 = warren_protocol::runtime::API_PORT;

/// Addresses that are not "the internet" for `allow_internet`.
pub const PRIVATE_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// Where a workspace is attached on this host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub index: u32,
    pub tap: String,
    pub host_ip: Ipv4Addr,
    pub guest_ip: Ipv4Addr,
    /// The node's address pool (other workspaces).
    pub pool: String,
}

/// A policy applied to one attachment (persisted host-wide).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub workspace_id: String,
    pub attachment: Attachment,
    pub policy: NetworkPolicy,
}

fn chains(i: u32) -> [String; 5] {
    [
        format!("w{i}_out"),
        format!("w{i}_in"),
        format!("w{i}_host"),
        format!("w{i}_agent"),
        format!("w{i}_nat"),
    ]
}

/// The verdict maps, in the order of [`chains`].
const MAPS: [&str; 5] = ["fwd_out", "fwd_in", "host_in", "host_out", "nat_out"];

fn set_decl(name: &str, timeout: bool) -> String {
    if timeout {
        format!("add set {TABLE} {name} {{ type ipv4_addr; flags timeout; }}\n")
    } else {
        format!("add set {TABLE} {name} {{ type ipv4_addr; flags interval; auto-merge; }}\n")
    }
}

fn elements(nets: &[Net]) -> String {
    // Overlapping entries would make the interval set refuse them: keep the widest.
    let mut sorted: Vec<Net> = nets.to_vec();
    sorted.sort_by_key(|n| n.prefix);
    let mut kept: Vec<Net> = Vec::new();
    for n in sorted {
        if !kept.iter().any(|k| k.contains(n.addr)) {
            kept.push(n);
        }
    }
    kept.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table's shared part: maps, the private set, base chains (flushed and refilled,
/// so applying it again is idempotent).
pub fn skeleton(uplink: Option<&str>) -> String {
    let mut s = String::new();
    let t = TABLE;
    let _ = writeln!(s, "add table {t}");
    for m in MAPS {
        let _ = writeln!(s, "add map {t} {m} {{ type ifname : verdict; }}");
    }
    s.push_str(&set_decl("private", false));
    let _ = writeln!(s, "flush set {t} private");
    let private: Vec<Net> = PRIVATE_RANGES
        .iter()
        .filter_map(|r| crate::policy::parse_net(r).ok())
        .collect();
    let _ = writeln!(s, "add element {t} private {{ {} }}", elements(&private));
    for (chain, hook, prio, rule) in [
        (
            "forward",
            "filter hook forward",
            "0",
            vec!["iifname vmap @fwd_out", "oifname vmap @fwd_in"],
        ),
        (
            "input",
            "filter hook input",
            "0",
            vec!["iifname vmap @host_in"],
        ),
        (
            "output",
            "filter hook output",
            "0",
            vec!["oifname vmap @host_out"],
        ),
    ] {
        let _ = writeln!(
            s,
            "add chain {t} {chain} {{ type {hook} priority {prio}; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain {t} {chain}");
        for r in rule {
            let _ = writeln!(s, "add rule {t} {chain} {r}");
        }
    }
    let out = match uplink {
        Some(u) => format!("oifname \"{u}\""),
        None => "oifname != \"wt*\"".to_string(),
    };
    let _ = writeln!(
        s,
        "add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"
    );
    let _ = writeln!(s, "flush chain {t} postrouting");
    let _ = writeln!(
        s,
        "add rule {t} postrouting iifname \"wt*\" {out} iifname vmap @nat_out"
    );
    let _ = writeln!(
        s,
        "add rule {t} postrouting iifname \"wt*\" {out} masquerade"
    );
    s
}

/// `limit` for a rate in kbit/s: bytes per second with a burst of a tenth of a second
/// (at least 16 KiB, so one TSO segment train fits).
fn limit(kbps: u64) -> String {
    let bytes = kbps.saturating_mul(125).max(1);
    let burst = (bytes / 10).max(16 * 1024);
    format!("limit rate over {bytes} bytes/second burst {burst} bytes drop")
}

/// The commands that create (or replace) one workspace's chains, sets and map entries.
pub fn workspace_script(a: &Attachment, c: &Compiled) -> String {
    let t = TABLE;
    let i = a.index;
    let [out, inn, host, agent, nat] = chains(i);
    let (src, dst, dns) = (
        format!("w{i}_src"),
        format!("w{i}_dst"),
        format!("w{i}_dns"),
    );
    let mut s = String::new();
    for ch in [&out, &inn, &host, &agent, &nat] {
        let _ = writeln!(s, "add chain {t} {ch}");
        let _ = writeln!(s, "flush chain {t} {ch}");
    }
    s.push_str(&set_decl(&src, false));
    s.push_str(&set_decl(&dst, false));
    s.push_str(&set_decl(&dns, true));
    for (set, nets) in [(&src, &c.ingress), (&dst, &c.egress_nets)] {
        let _ = writeln!(s, "flush set {t} {set}");
        if !nets.is_empty() {
            let _ = writeln!(s, "add element {t} {set} {{ {} }}", elements(nets));
        }
    }
    let g = a.guest_ip;
    let h = a.host_ip;
    let r = |s: &mut String, chain: &str, rule: &str| {
        let _ = writeln!(s, "add rule {t} {chain} {rule}");
    };

    // What the workspace sends (forwarded).
    if let Some(k) = c.egress_kbps {
        r(&mut s, &out, &limit(k));
    }
    r(&mut s, &out, "meta nfproto ipv6 drop");
    r(&mut s, &out, &format!("ip saddr != {g} drop"));
    if !c.air_gapped {
        r(&mut s, &out, "ct state established,related return");
        r(&mut s, &out, &format!("ip daddr @{dst} return"));
        r(&mut s, &out, &format!("ip daddr @{dns} return"));
        if !c.egress_restricted() {
            r(&mut s, &out, &format!("ip daddr {} return", a.pool));
            if c.allow_internet {
                r(&mut s, &out, "ip daddr != @private return");
            }
        }
    }
    refuse(&mut s, &out);

    // What reaches the workspace (forwarded).
    if let Some(k) = c.ingress_kbps {
        r(&mut s, &inn, &limit(k));
    }
    r(&mut s, &inn, "meta nfproto ipv6 drop");
    // Air-gapped: not even replies (its own connections are cut, nothing is forwarded).
    if !c.air_gapped {
        r(&mut s, &inn, "ct state established,related return");
        admit_sources(&mut s, &inn, &src, &c.ingress_ports);
    }
    refuse(&mut s, &inn);

    // The workspace talking to the host itself: replies, and DNS to Warren's resolver.
    r(&mut s, &host, "meta nfproto ipv6 drop");
    r(&mut s, &host, &format!("ip saddr != {g} drop"));
    r(&mut s, &host, "ct state established,related return");
    if !c.air_gapped {
        r(&mut s, &host, &format!("ip daddr {h} udp dport 53 return"));
        r(&mut s, &host, &format!("ip daddr {h} tcp dport 53 return"));
    }
    refuse(&mut s, &host);

    // The host talking to the workspace: the agent port always, else as ingress says.
    r(&mut s, &agent, "ct state established,related return");
    r(
        &mut s,
        &agent,
        &format!("ip saddr {h} tcp dport {AGENT_PORT} return"),
    );
    if !c.air_gapped {
        // The edge proxy (on the host) reaches the ports published through it.
        if !c.edge_ports.is_empty() {
            let p = c
                .edge_ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            r(
                &mut s,
                &agent,
                &format!("ip saddr {h} tcp dport {{ {p} }} return"),
            );
        }
        admit_sources(&mut s, &agent, &src, &c.ingress_ports);
    }
    refuse(&mut s, &agent);

    // Leaving the host: from its outbound IP, else the interface's address.
    match c.outbound_ip {
        Some(ip) => r(&mut s, &nat, &format!("snat ip to {ip}")),
        None => r(&mut s, &nat, "masquerade"),
    }

    let tap = &a.tap;
    for (map, chain) in MAPS.iter().zip([&out, &inn, &host, &agent, &nat]) {
        let _ = writeln!(s, "add element {t} {map} {{ \"{tap}\" : jump {chain} }}");
    }
    s
}

/// The end of a workspace chain: refuse what was not allowed, loudly (a TCP reset,
/// else ICMP administratively prohibited), so a blocked connection fails at once
/// instead of hanging until the client's own timeout.
fn refuse(s: &mut String, chain: &str) {
    let t = TABLE;
    let _ = writeln!(
        s,
        "add rule {t} {chain} meta l4proto tcp reject with tcp reset"
    );
    let _ = writeln!(
        s,
        "add rule {t} {chain} reject with icmpx type admin-prohibited"
    );
}

fn admit_sources(s: &mut String, chain: &str, src: &str, ports: &[u16]) {
    let t = TABLE;
    if ports.is_empty() {
        let _ = writeln!(s, "add rule {t} {chain} ip saddr @{src} return");
    } else {
        let p = ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for proto in ["tcp", "udp"] {
            let _ = writeln!(
                s,
                "add rule {t} {chain} ip saddr @{src} {proto} dport {{ {p} }} return"
            );
        }
        let _ = writeln!(
            s,
            "add rule {t} {chain} ip saddr @{src} icmp type echo-request return"
        );
    }
}

/// The commands that remove everything of lease index `i` (whether or not it exists:
/// each object is declared first so its deletion cannot fail).
pub fn removal_script(i: u32) -> String {
    let t = TABLE;
    let tap = format!("wt{i}");
    let ch = chains(i);
    let mut s = String::new();
    for c in &ch {
        let _ = writeln!(s, "add chain {t} {c}");
    }
    for (map, chain) in MAPS.iter().zip(ch.iter()) {
        let _ = writeln!(
            s,
            "add element {t} {map} {{ \"{tap}\" : jump {chain} }}\ndelete element {t} {map} {{ \"{tap}\" }}"
        );
    }
    for c in &ch {
        let _ = writeln!(s, "flush chain {t} {c}\ndelete chain {t} {c}");
    }
    for (name, timeout) in [
        (format!("w{i}_src"), false),
        (format!("w{i}_dst"), false),
        (format!("w{i}_dns"), true),
    ] {
        s.push_str(&set_decl(&name, timeout));
        let _ = writeln!(s, "delete set {t} {name}");
    }
    s
}

/// Pin resolver answers into a workspace's `dns` set for `ttl` seconds each
/// (replacing the timeout of an address already there).
pub fn pin_script(i: u32, answers: &[(Ipv4Addr, u32)]) -> String {
    let t = TABLE;
    let set = format!("w{i}_dns");
    let mut s = String::new();
    for (ip, ttl) in answers {
        let ttl = (*ttl).max(1);
        let _ = writeln!(
            s,
            "add element {t} {set} {{ {ip} timeout {ttl}s }}\ndelete element {t} {set} {{ {ip} }}\nadd element {t} {set} {{ {ip} timeout {ttl}s }}"
        );
    }
    s
}

/// Run one `nft -f -` transaction.
pub fn run_nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Nft(format!("cannot run `nft` (install nftables): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetError::Nft(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Nft(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(NetError::Nft(format!(
            "nft refused the transaction: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Lease indices that have objects in the table (`wN_...` chains or sets).
pub fn indices_in_table() -> BTreeSet<u32> {
    let Ok(out) = Command::new("nft")
        .args(["-j", "list", "table", "inet", "warren"])
        .output()
    else {
        return BTreeSet::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut found = BTreeSet::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for kind in ["chain", "set"] {
            if let Some(name) = item[kind]["name"].as_str() {
                if let Some(i) = name
                    .strip_prefix('w')
                    .and_then(|r| r.split_once('_'))
                    .and_then(|(n, _)| n.parse::<u32>().ok())
                {
                    found.insert(i);
                }
            }
        }
    }
    found
}

/// Applies policies to this host's table and keeps their records.
#[derive(Debug, Clone)]
pub struct Firewall {
    dir: PathBuf,
    uplink: Option<String>,
}

/// An exclusive flock on a file, released on drop.
struct Flock(std::fs::File);

impl Flock {
    fn acquire(path: &Path) -> Result<Flock> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| NetError::Io(format!("open {}", path.display()), e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(NetError::Io(
                format!("lock {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Flock(f))
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking the descriptor we locked.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Firewall {
    /// `run_dir` is the node's host-wide runtime directory (`/run/warren`).
    pub fn new(run_dir: &Path, uplink: Option<String>) -> Result<Self> {
        let dir = run_dir.join("net").join("policy");
        std::fs::create_dir_all(&dir)
            .map_err(|e| NetError::Io(format!("create {}", dir.display()), e))?;
        Ok(Firewall { dir, uplink })
    }

    fn lock(&self) -> Result<Flock> {
        Flock::acquire(&self.dir.join(".lock"))
    }

    fn record_path(&self, index: u32) -> PathBuf {
        self.dir.join(format!("{index}.json"))
    }

    pub fn record(&self, index: u32) -> Option<Record> {
        std::fs::read(self.record_path(index))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn records(&self) -> Vec<Record> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| std::fs::read(p).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    fn write_record(&self, r: &Record) -> Result<()> {
        let path = self.record_path(r.attachment.index);
        let tmp = self.dir.join(format!(".{}.tmp", r.attachment.index));
        let body = serde_json::to_vec_pretty(r).unwrap_or_default();
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| NetError::Io(format!("write {}", path.display()), e))
    }

    /// Apply (or replace) a workspace's policy in one transaction. A bad policy
    /// changes nothing.
    pub fn apply(&self, workspace_id: &str, a: &Attachment, p: &NetworkPolicy) -> Result<()> {
        let c = p.compile()?;
        enable_forwarding()?;
        let _lock = self.lock()?;
        let script = format!(
            "{}{}",
            skeleton(self.uplink.as_deref()),
            workspace_script(a, &c)
        );
        run_nft(&script)?;
        self.write_record(&Record {
            workspace_id: workspace_id.to_string(),
            attachment: a.clone(),
            policy: p.clone(),
        })?;
        tracing::info!(workspace_id, tap = %a.tap, "network policy applied");
        Ok(())
    }

    /// Remove everything of lease index `index` (idempotent).
    pub fn remove(&self, index: u32) -> Result<()> {
        let _lock = self.lock()?;
        run_nft(&format!(
            "{}{}",
            skeleton(self.uplink.as_deref()),
            removal_script(index)
        ))?;
        let _ = std::fs::remove_file(self.record_path(index));
        Ok(())
    }

    /// Pin resolver answers (address, TTL) into index `index`'s egress.
    pub fn pin(&self, index: u32, answers: &[(Ipv4Addr, u32)]) -> Result<()> {
        if answers.is_empty() {
            return Ok(());
        }
        run_nft(&pin_script(index, answers))
    }

    /// Rebuild the table in one transaction: the shared part, the recorded policies
    /// `live` accepts whose rules are missing from the table, and the removal of
    /// everything else (records `live` rejects and objects in the table with no
    /// record). Rules of live workspaces that are in place are left alone, so their
    /// pinned DNS answers and bandwidth buckets carry on. Returns the indices removed.
    pub fn reconcile(&self, live: &dyn Fn(&Record) -> bool) -> Result<Vec<u32>> {
        let _lock = self.lock()?;
        let present = indices_in_table();
        let mut script = skeleton(self.uplink.as_deref());
        let mut keep = BTreeSet::new();
        let mut remove = BTreeSet::new();
        for r in self.records() {
            let i = r.attachment.index;
            match r.policy.compile() {
                Ok(c) if live(&r) => {
                    if !present.contains(&i) {
                        script.push_str(&workspace_script(&r.attachment, &c));
                    }
                    keep.insert(i);
                }
                _ => {
                    remove.insert(i);
                }
            }
        }
        for i in present {
            if !keep.contains(&i) {
                remove.insert(i);
            }
        }
        for i in &remove {
            script.push_str(&removal_script(*i));
        }
        enable_forwarding()?;
        run_nft(&script)?;
        for i in &remove {
            let _ = std::fs::remove_file(self.record_path(*i));
        }
        let removed: Vec<u32> = remove.into_iter().collect();
        if !removed.is_empty() {
            tracing::info!(?removed, "removed firewall rules of gone workspaces");
        }
        Ok(removed)
    }
}

/// Routing between taps and out of the host needs IPv4 forwarding.
fn enable_forwarding() -> Result<()> {
    let p = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(p).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(p, "1").map_err(|e| NetError::Io(format!("enable {p}"), e))
}

impl From<PolicyError> for NetError {
    fn from(e: PolicyError) -> Self {
        NetError::Policy(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att() -> Attachment {
        Attachment {
            index: 3,
            tap: "wt3".into(),
            host_ip: "10.88.0.13".parse().unwrap(),
            guest_ip: "10.88.0.14".parse().unwrap(),
            pool: "10.88.0.0/16".into(),
        }
    }

    #[test]
    fn default_policy_script() {
        let c = NetworkPolicy::default().compile().unwrap();
        let s = workspace_script(&att(), &c);
        assert!(s.contains("add rule inet warren w3_out ip daddr != @private return"));
        assert!(
            s.contains("add rule inet warren w3_agent ip saddr 10.88.0.13 tcp dport 9990 return")
        );
        assert!(s.contains("add rule inet warren w3_host ip daddr 10.88.0.13 udp dport 53 return"));
        assert!(s.contains("add element inet warren fwd_in { \"wt3\" : jump w3_in }"));
        assert!(!s.contains("limit"));
    }

    #[test]
    fn edge_ports_admit_the_host_on_those_ports_only() {
        let p = NetworkPolicy {
            edge_ports: vec![8080, 3000],
            ..Default::default()
        };
        let s = workspace_script(&att(), &p.compile().unwrap());
        assert!(s.contains(
            "add rule inet warren w3_agent ip saddr 10.88.0.13 tcp dport { 3000, 8080 } return"
        ));
        let gapped = NetworkPolicy {
            air_gapped: true,
            ..p
        };
        let s = workspace_script(&att(), &gapped.compile().unwrap());
        assert!(!s.contains("3000"));
    }

    #[test]
    fn air_gapped_script_admits_only_the_agent() {
        let c = NetworkPolicy {
            air_gapped: true,
            ingress: vec!["10.0.0.0/8".into()],
            ..Default::default()
        }
        .compile()
        .unwrap();
        let s = workspace_script(&att(), &c);
        for chain in ["w3_out ", "w3_in "] {
            let rules: Vec<&str> = s.lines().filter(|l| l.contains(chain)).collect();
            assert!(rules.iter().all(|l| !l.ends_with("return")), "{rules:?}");
        }
        assert!(!s.contains("dport 53"));
        assert!(!s.contains("@w3_src return"));
    }

    #[test]
    fn restricted_egress_and_limits() {
        let c = NetworkPolicy {
            egress: vec![
                "10.1.0.0/16".into(),
                "10.1.2.3".into(),
                "api.example.test".into(),
            ],
            egress_kbps: Some(8000),
            ingress_ports: vec![80],
            ingress: vec!["10.88.0.2".into()],
            ..Default::default()
        }
        .compile()
        .unwrap();
        let s = workspace_script(&att(), &c);
        assert!(s.contains("add element inet warren w3_dst { 10.1.0.0/16 }"));
        assert!(!s.contains("@private"));
        assert!(s.contains("limit rate over 1000000 bytes/second"));
        assert!(s.contains("ip saddr @w3_src tcp dport { 80 } return"));
    }

    #[test]
    fn pins_replace_timeouts() {
        let s = pin_script(3, &[("198.51.100.2".parse().unwrap(), 0)]);
        assert!(s.contains("{ 198.51.100.2 timeout 1s }"));
        assert_eq!(s.lines().count(), 3);
    }

    /// The kernel accepts every script we generate (`nft -c`: checked, not committed).
    #[test]
    fn kernel_accepts_the_scripts() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root for nft -c");
            return;
        }
        let c = NetworkPolicy {
            egress: vec![
                "10.1.0.0/16".into(),
                "10.1.2.3".into(),
                "api.example.test".into(),
            ],
            ingress: vec!["10.0.0.0/8".into(), "10.88.0.2".into()],
            ingress_ports: vec![80, 443],
            ingress_kbps: Some(800),
            egress_kbps: Some(800),
            outbound_ip: Some("198.51.100.3".parse().unwrap()),
            ..Default::default()
        }
        .compile()
        .unwrap();
        let script = format!(
            "{}{}{}{}",
            skeleton(None),
            workspace_script(&att(), &c),
            pin_script(3, &[("198.51.100.2".parse().unwrap(), 60)]),
            removal_script(7)
        );
        let out = Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut ch| {
                ch.stdin.take().unwrap().write_all(script.as_bytes())?;
                ch.wait_with_output()
            })
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Replacing a workspace (with another outbound IP) and removing it work on the
    /// real table whatever it held before.
    #[test]
    fn replace_and_remove_for_real() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let a = Attachment {
            index: 65002,
            tap: "wt65002".into(),
            ..att()
        };
        for ip in ["198.51.100.3", "198.51.100.4"] {
            let c = NetworkPolicy {
                outbound_ip: Some(ip.parse().unwrap()),
                ..Default::default()
            }
            .compile()
            .unwrap();
            run_nft(&format!("{}{}", skeleton(None), workspace_script(&a, &c))).unwrap();
        }
        assert!(indices_in_table().contains(&65002));
        run_nft(&format!("{}{}", skeleton(None), removal_script(65002))).unwrap();
        run_nft(&format!("{}{}", skeleton(None), removal_script(65002))).unwrap();
        assert!(!indices_in_table().contains(&65002));
    }
}
