//! Removing what belongs to no live owner: VMM processes, taps, leases, firewall rules
//! and run directories left by a process that crashed or was killed.

use crate::net::NetPool;
use crate::workspace::{OwnerRecord, OWNER_FILE};
use std::path::Path;

/// What a reconcile pass removed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reconciled {
    pub vms_killed: Vec<String>,
    pub leases_released: Vec<String>,
    pub dirs_removed: Vec<String>,
    /// Lease indices whose firewall rules were removed.
    pub firewall_removed: Vec<u32>,
}

/// Is `pid` a live process (a zombie is not: it has exited and waits to be reaped)?
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Who is reconciling.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scope {
    /// A standalone `warren run`: only temporary workspaces are its business; permanent
    /// ones belong to a server, even one that is down right now.
    Temporary,
    /// A server, which knows (through `keep`) every workspace it wants kept.
    All,
}

/// Remove workspaces under `data_dir` whose owner process is gone, unless `keep`
/// says the caller (a server that adopts its workspaces) still wants them, and
/// release host-wide leases whose owner is gone.
pub fn reconcile(
    data_dir: &Path,
    pool: &NetPool,
    scope: Scope,
    keep: &dyn Fn(&str) -> bool,
) -> Reconciled {
    let mut out = Reconciled::default();
    let ws_dir = data_dir.join("workspaces");
    let mut warm_removed = std::collections::HashSet::new();
    if let Ok(rd) = std::fs::read_dir(&ws_dir) {
        for e in rd.flatten() {
            let dir = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            let owner: Option<OwnerRecord> = std::fs::read(dir.join(OWNER_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let persistent = std::fs::read(dir.join(crate::workspace::RECORD_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<crate::workspace::WorkspaceRecord>(&b).ok())
                .is_some_and(|r| r.persistent);
            if persistent && scope == Scope::Temporary {
                continue;
            }
            // A warm VM (crate::warm) lives only as long as the process that booted it,
            // even if a caller already meant to create a workspace with its id.
            let warm = dir.join(crate::warm::WARM_FILE).exists();
            let orphan = match &owner {
                Some(o) => !pid_alive(o.owner_pid) && (warm || !keep(&o.workspace_id)),
                // Run directories are created with their owner record inside (see
                // workspace::create_run_dir), so one without is not from a live boot.
                None => warm || !keep(&name),
            };
            if !orphan {
                continue;
            }
            if warm {
                warm_removed.insert(name.clone());
            }
            if let Some(pid) = owner.as_ref().and_then(|o| o.vmm_pid) {
                if is_our_vmm(pid, &name) {
                    // SAFETY: killing a process whose cmdline names this workspace.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    out.vms_killed.push(name.clone());
                }
            }
            // Crypto-erasure first: the disk is unreadable even if removing it fails.
            let _ = crate::keys::destroy_keys(&dir);
            if std::fs::remove_dir_all(&dir).is_ok() {
                out.dirs_removed.push(name);
            }
        }
    }
    for l in pool.leases() {
        if pid_alive(l.owner_pid) {
            continue;
        }
        // A permanent workspace's lease outlives its server, but not its directory:
        // whoever reconciles (another data directory's server, a `warren run`)
        // releases a lease no workspace can come back to.
        if l.abandoned() {
            pool.release(&l);
            out.leases_released.push(l.workspace_id);
            continue;
        }
        if l.persistent && scope == Scope::Temporary {
            continue;
        }
        if !keep(&l.workspace_id) || warm_removed.contains(&l.workspace_id) {
            pool.release(&l);
            out.leases_released.push(l.workspace_id);
        }
    }
    // Taps with no lease (the pool lock keeps this from racing with allocations).
    out.leases_released.extend(pool.remove_unleased_taps());
    // Firewall rules: rebuilt for live leases, removed for every other index.
    out.firewall_removed = pool.reconcile_firewall();
    let marker = format!("{}/", ws_dir.display());
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd);
            let Some(rest) = cmd.split(&marker).nth(1) else {
                continue;
            };
            let id = rest.split('/').next().unwrap_or("");
            if id.is_empty() || !cmd.contains(&format!("warren-{id},")) {
                continue;
            }
            if !ws_dir.join(id).exists() && !keep(id) {
                // SAFETY: a VMM whose command line names a run directory of ours that
                // no longer exists.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                out.vms_killed.push(id.to_string());
            }
        }
    }
    if out != Reconciled::default() {
        tracing::info!(?out, "reconciled leftovers of dead owners");
    }
    out
}

/// Is `pid` a VMM started for workspace `id` (not an unrelated process that reused the
/// pid)?
pub fn is_our_vmm(pid: u32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&format!("warren-{id},")))
        .unwrap_or(false)
}
