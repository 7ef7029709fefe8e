//! Addresses and tap devices.
//!
//! Each workspace gets a /30 out of the node's pool: the host end of its tap is `.1`,
//! the guest `.2`. There is no bridge: workspaces share no L2 segment, so by default
//! nothing but the host can reach a guest, and any path between workspaces is a routed
//! one the host's firewall decides on.
//!
//! A lease is a file created with O_EXCL in a host-wide directory on tmpfs
//! (`run_dir/net/leases/<index>.json`), so concurrent processes (a server, several
//! `warren run`s, parallel tests) never hand out one address twice, and a host reboot
//! clears leases together with the taps they describe. The file names its owner
//! process, which is how [`crate::reconcile`] finds leases whose owner died.

use crate::{io_err, NodeError, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use warren_netpolicy::{Attachment, Firewall};

/// The persisted part of a lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseRecord {
    pub index: u32,
    pub workspace_id: String,
    pub owner_pid: u32,
    pub tap: String,
    /// Held across stops by a permanent workspace; only its server releases it.
    #[serde(default)]
    pub persistent: bool,
    /// The data directory of the node that leased it: a persistent lease whose owner
    /// is gone and whose workspace directory is no longer there is nobody's (see
    /// [`LeaseRecord::abandoned`]). `None` in leases written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl LeaseRecord {
    /// No workspace can ever use this lease again: its node recorded a data directory
    /// and the workspace's directory is not in it (deleted, or the whole data
    /// directory removed while the owner was down).
    pub fn abandoned(&self) -> bool {
        self.data_dir
            .as_ref()
            .is_some_and(|d| !d.join("workspaces").join(&self.workspace_id).exists())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub record: LeaseRecord,
    pub host_ip: Ipv4Addr,
    pub guest_ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: String,
}

#[derive(Debug, Clone)]
pub struct NetPool {
    base: u32,
    blocks: u32,
    dir: PathBuf,
    cidr: String,
    firewall: Firewall,
    /// Recorded in the leases this pool makes (`LeaseRecord::data_dir`).
    data_dir: Option<PathBuf>,
}

pub fn parse_cidr(cidr: &str) -> std::result::Result<(Ipv4Addr, u8), String> {
    let (ip, len) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not a CIDR like 10.88.0.0/16"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{len:?} is not a prefix length 0-32"))?;
    Ok((ip, len))
}

impl NetPool {
    pub fn new(cidr: &str, run_dir: &Path) -> Result<Self> {
        let (ip, len) = parse_cidr(cidr).map_err(|reason| NodeError::Invalid {
            field: "network_cidr",
            reason,
        })?;
        if len > 29 {
            return Err(NodeError::Invalid {
                field: "network_cidr",
                reason: format!("{cidr} is too small: it needs room for at least two /30s"),
            });
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let base = u32::from(ip) & mask;
        let blocks = 1u32 << (30 - len);
        let dir = run_dir.join("net").join("leases");
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let firewall = Firewall::new(run_dir, None)?;
        Ok(NetPool {
            base,
            blocks,
            dir,
            cidr: format!("{}/{}", Ipv4Addr::from(base), len),
            firewall,
            data_dir: None,
        })
    }

    /// Record `data_dir` (the node's) in the leases this pool makes.
    pub fn set_data_dir(&mut self, data_dir: &Path) {
        self.data_dir = Some(data_dir.to_path_buf());
    }

    /// Masquerade only out of `uplink` (default: any interface but the taps).
    pub fn set_uplink(&mut self, uplink: Option<String>) -> Result<()> {
        let run_dir = self
            .dir
            .parent()
            .and_then(|p| p.parent())
            .unwrap_or(&self.dir)
            .to_path_buf();
        self.firewall = Firewall::new(&run_dir, uplink)?;
        Ok(())
    }

    /// The host's firewall (one nftables table shared by every Warren process).
    pub fn firewall(&self) -> &Firewall {
        &self.firewall
    }

    /// Where a lease is attached, for its firewall rules.
    pub fn attachment(&self, lease: &Lease) -> Attachment {
        Attachment {
            index: lease.record.index,
            tap: lease.record.tap.clone(),
            host_ip: lease.host_ip,
            guest_ip: lease.guest_ip,
            pool: self.cidr.clone(),
        }
    }

    /// Remove the firewall rules of lease index `index`, logging a failure (there is
    /// nothing better to do on a teardown path; reconcile retries).
    pub fn remove_rules(&self, index: u32) {
        if let Err(e) = self.firewall.remove(index) {
            tracing::warn!(index, error = %e, "cannot remove firewall rules");
        }
    }

    /// Rebuild the firewall from the policy records of live leases; remove the rules
    /// of any other index.
    pub fn reconcile_firewall(&self) -> Vec<u32> {
        let leases = self.leases();
        let live = |r: &warren_netpolicy::Record| {
            leases
                .iter()
                .any(|l| l.index == r.attachment.index && l.workspace_id == r.workspace_id)
        };
        match self.firewall.reconcile(&live) {
            Ok(removed) => removed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot rebuild the firewall");
                Vec::new()
            }
        }
    }

    fn lease_for(&self, record: LeaseRecord) -> Lease {
        let net = self.base + record.index * 4;
        let i = record.index;
        Lease {
            host_ip: Ipv4Addr::from(net + 1),
            guest_ip: Ipv4Addr::from(net + 2),
            prefix_len: 30,
            mac: format!(
                "02:57:52:{:02x}:{:02x}:{:02x}",
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            ),
            record,
        }
    }

    /// Serialises changes to leases and taps across processes: without it, two
    /// processes reaping the same dead lease could delete a tap that a third had just
    /// created under the freed index.
    pub fn lock(&self) -> Result<warren_guest::FileLock> {
        warren_guest::FileLock::acquire(&self.dir.join(".lock"))
            .map_err(|e| NodeError::Network(format!("cannot lock the address pool: {e}")))
    }

    fn path(&self, index: u32) -> PathBuf {
        self.dir.join(format!("{index}.json"))
    }

    /// Reserve a /30 for `workspace_id`: `preferred` if it is free (a permanent
    /// workspace keeps its address across stop/start), else the first free one.
    /// The tap is created separately, while the VM runs.
    pub fn reserve(
        &self,
        workspace_id: &str,
        preferred: Option<u32>,
        persistent: bool,
    ) -> Result<Lease> {
        let _lock = self.lock()?;
        if let Some(p) = preferred.filter(|p| *p > 0 && *p < self.blocks) {
            if let Some(existing) = self.read(p) {
                if existing.workspace_id == workspace_id {
                    // Ours already (a restart): take it over.
                    let record = LeaseRecord {
                        owner_pid: std::process::id(),
                        persistent,
                        data_dir: self.data_dir.clone(),
                        ..existing
                    };
                    self.write(&record)?;
                    return Ok(self.lease_for(record));
                }
            } else if let Some(l) = self.try_create(workspace_id, p, persistent)? {
                return Ok(l);
            }
            tracing::warn!(
                workspace_id,
                index = p,
                "previous address taken; leasing another"
            );
        }
        // Block 0 would make the host end the network's first address; skip it so the
        // pool's .1 stays free for a gateway the operator may want.
        for index in 1..self.blocks {
            if let Some(l) = self.try_create(workspace_id, index, persistent)? {
                return Ok(l);
            }
        }
        Err(NodeError::AddressesExhausted(format!(
            "{}/{}",
            Ipv4Addr::from(self.base),
            30 - self.blocks.trailing_zeros()
        )))
    }

    /// Reserve an address and create its tap.
    pub fn allocate(
        &self,
        workspace_id: &str,
        preferred: Option<u32>,
        persistent: bool,
    ) -> Result<Lease> {
        let lease = self.reserve(workspace_id, preferred, persistent)?;
        if let Err(e) = self.create_tap(&lease) {
            self.release(&lease.record);
            return Err(e);
        }
        Ok(lease)
    }

    fn try_create(
        &self,
        workspace_id: &str,
        index: u32,
        persistent: bool,
    ) -> Result<Option<Lease>> {
        let record = LeaseRecord {
            index,
            workspace_id: workspace_id.to_string(),
            owner_pid: std::process::id(),
            tap: format!("wt{index}"),
            persistent,
            data_dir: self.data_dir.clone(),
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path(index))
        {
            Ok(mut f) => {
                let body = serde_json::to_vec(&record).unwrap_or_default();
                f.write_all(&body).map_err(io_err("write lease"))?;
                Ok(Some(self.lease_for(record)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(io_err("create lease")(e)),
        }
    }

    fn read(&self, index: u32) -> Option<LeaseRecord> {
        std::fs::read(self.path(index))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    fn write(&self, record: &LeaseRecord) -> Result<()> {
        let tmp = self.dir.join(format!(".{}.tmp", record.index));
        std::fs::write(&tmp, serde_json::to_vec(record).unwrap_or_default())
            .map_err(io_err("write lease"))?;
        std::fs::rename(&tmp, self.path(record.index)).map_err(io_err("write lease"))
    }

    /// The lease `workspace_id` holds at `index`, if it does.
    pub fn held(&self, workspace_id: &str, index: u32) -> Option<Lease> {
        self.read(index)
            .filter(|r| r.workspace_id == workspace_id)
            .map(|r| self.lease_for(r))
    }

    /// Make this process the owner of a lease (after adopting a running workspace).
    pub fn claim(&self, record: &LeaseRecord) -> Result<()> {
        self.write(&LeaseRecord {
            owner_pid: std::process::id(),
            ..record.clone()
        })
    }

    /// Create the lease's tap (replacing a stale one of the same name).
    pub fn create_tap(&self, lease: &Lease) -> Result<()> {
        let _lock = self.lock()?;
        create_tap(lease)
    }

    /// Remove the tap and the lease, if the lease is still the one described by
    /// `record` (another process may have reaped and re-leased the index meanwhile).
    pub fn release(&self, record: &LeaseRecord) {
        let Ok(_lock) = self.lock() else {
            return;
        };
        let current = self.read(record.index);
        if current.as_ref().is_some_and(|c| {
            c.workspace_id == record.workspace_id && c.owner_pid == record.owner_pid
        }) {
            delete_tap(&record.tap);
            self.remove_rules(record.index);
            let _ = std::fs::remove_file(self.path(record.index));
        }
    }

    /// Delete taps of ours (`wt<N>`) that no lease names.
    pub fn remove_unleased_taps(&self) -> Vec<String> {
        let Ok(_lock) = self.lock() else {
            return Vec::new();
        };
        let leased: Vec<String> = self.leases().into_iter().map(|l| l.tap).collect();
        let mut removed = Vec::new();
        for e in std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().to_string();
            let ours = n
                .strip_prefix("wt")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            if ours && !leased.contains(&n) {
                delete_tap(&n);
                removed.push(n);
            }
        }
        removed
    }

    /// Every lease on this host.
    pub fn leases(&self) -> Vec<LeaseRecord> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| std::fs::read(p).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NodeError::Network(format!("cannot run `ip` (install iproute2): {e}")))?;
    if !out.status.success() {
        return Err(NodeError::Network(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn create_tap(lease: &Lease) -> Result<()> {
    let tap = lease.record.tap.as_str();
    if Path::new("/sys/class/net").join(tap).exists() {
        delete_tap(tap);
    }
    ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
    let addr = format!("{}/{}", lease.host_ip, lease.prefix_len);
    // A permanent neighbour entry for the guest: the host never has to ARP for it, so
    // the first connection cannot fail with EHOSTUNREACH while a busy (TCG) guest is
    // slow to answer, and nothing else on the tap can claim the guest's address.
    let guest = lease.guest_ip.to_string();
    let r = ip(&["addr", "add", &addr, "dev", tap])
        .and_then(|_| ip(&["link", "set", tap, "up"]))
        .and_then(|_| {
            ip(&[
                "neigh",
                "replace",
                &guest,
                "lladdr",
                &lease.mac,
                "dev",
                tap,
                "nud",
                "permanent",
            ])
        });
    if r.is_err() {
        delete_tap(tap);
    }
    r
}

pub fn delete_tap(tap: &str) {
    if Path::new("/sys/class/net").join(tap).exists() {
        let _ = ip(&["link", "del", "dev", tap]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            parse_cidr("10.88.0.0/16").unwrap(),
            ("10.88.0.0".parse().unwrap(), 16)
        );
        assert!(parse_cidr("10.88.0.0").is_err());
        assert!(parse_cidr("10.888.0.0/16").is_err());
        assert!(parse_cidr("10.88.0.0/33").is_err());
    }

    #[test]
    fn a_lease_is_abandoned_once_its_workspace_directory_is_gone() {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(data.path().join("workspaces/ws_here")).unwrap();
        let lease = |id: &str, data_dir: Option<PathBuf>| LeaseRecord {
            index: 1,
            workspace_id: id.into(),
            owner_pid: 1,
            tap: "wt1".into(),
            persistent: true,
            data_dir,
        };
        let d = Some(data.path().to_path_buf());
        assert!(!lease("ws_here", d.clone()).abandoned());
        assert!(lease("ws_gone", d).abandoned());
        // Written before the data directory was recorded: nobody can tell.
        assert!(!lease("ws_gone", None).abandoned());
        let old: LeaseRecord = serde_json::from_str(
            r#"{"index":1,"workspace_id":"ws_x","owner_pid":5,"tap":"wt1","persistent":true}"#,
        )
        .unwrap();
        assert_eq!(old.data_dir, None);
        // And the whole data directory removed (a test's, a wiped node).
        let gone = data.path().to_path_buf();
        drop(data);
        assert!(lease("ws_here", Some(gone)).abandoned());
    }

    #[test]
    fn addresses_follow_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let pool = NetPool::new("10.88.0.0/16", dir.path()).unwrap();
        let l = pool.lease_for(LeaseRecord {
            index: 3,
            workspace_id: "ws".into(),
            owner_pid: 1,
            tap: "wt3".into(),
            persistent: false,
            data_dir: None,
        });
        assert_eq!(l.host_ip, "10.88.0.13".parse::<Ipv4Addr>().unwrap());
        assert_eq!(l.guest_ip, "10.88.0.14".parse::<Ipv4Addr>().unwrap());
        assert_eq!(l.mac, "02:57:52:00:00:03");
        assert!(NetPool::new("10.88.0.0/30", dir.path()).is_err());
    }
}
