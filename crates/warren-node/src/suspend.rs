//! Pause to disk ("freeze"): the VM's memory and device state are saved to a file in
//! its run directory, the VMM process ends (its memory goes back to the host), and a
//! later resume starts a new VMM from that file with the same disk, address and tap.
//!
//! Files in `workspaces/<id>/`:
//! * `memory.state`: the saved VM: QEMU's migration stream, which the VMM writes
//!   into a pipe (an fd handed over QMP, so a confined VMM needs no access to the
//!   path) and the node seals on its way to the file ([`crate::sealed`]: AES-256-GCM
//!   under a per-file key derived from the workspace's data key). Only a workspace
//!   without a data key (disk encryption off) has it in the clear, like its disk;
//! * `suspended.json`: what the restore needs to rebuild an identical VM (the same
//!   kernel, initramfs, image file, vCPUs and memory: a migration stream only loads
//!   into the machine it came from) and the tap's MAC address.
//!
//! The record is written after the state file is complete and synced, so a crash in
//! the middle leaves either a full pair or a `*.tmp` that [`clean_partial_saves`]
//! removes; resuming deletes both files once the VM runs again, so stale memory is
//! never restored twice.

use crate::workspace::{
    read_record, tail, write_owner, Cleanup, KillOnDrop, Node, RunningWorkspace, WorkspaceSpec,
};
use crate::{io_err, NodeError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;
use tracing::Instrument;
use warren_protocol::control::{GuestMessage, HostMessage, DATA_DISK_SERIAL};
use warren_vmm::{DiskSpec, NetSpec, VmSpec};

pub const STATE_FILE: &str = "memory.state";
pub const SUSPEND_FILE: &str = "suspended.json";
const STATE_TMP: &str = ".memory.state.tmp";

/// What a frozen VM was, so it can be rebuilt exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuspendRecord {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u32,
    pub memory_mb: u32,
    pub acpi: bool,
    pub disks: Vec<SavedDisk>,
    pub mac: String,
    /// The host end's MAC: the guest's ARP cache still holds it after the restore.
    pub tap_mac: Option<String>,
    pub saved_at_unix_ms: u64,
    pub state_bytes: u64,
    pub save_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedDisk {
    pub path: PathBuf,
    pub read_only: bool,
    pub serial: String,
    pub format: String,
}

/// How a freeze went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuspendReport {
    pub state_bytes: u64,
    pub save_ms: f64,
    pub total_ms: f64,
    /// `(exit code, report id)` of the workspace's command that the guest reported
    /// while it was being frozen (sent before its vCPUs stopped, read by nobody yet).
    #[serde(default)]
    pub cmd_exits: Vec<(i32, u64)>,
}

/// How a thaw went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeReport {
    /// Spawning the VMM and loading the state until the guest runs.
    pub restore_ms: f64,
    /// Until the agent answered on the control channel.
    pub agent_ms: f64,
    pub total_ms: f64,
}

fn read_suspend(dir: &Path) -> Option<SuspendRecord> {
    std::fs::read(dir.join(SUSPEND_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Write `dir/suspended.json` atomically and durably.
pub(crate) fn write_suspend(dir: &Path, record: &SuspendRecord) -> Result<()> {
    let rtmp = dir.join(".suspended.json.tmp");
    std::fs::write(&rtmp, serde_json::to_vec_pretty(record).unwrap_or_default())
        .map_err(io_err("write the suspend record"))?;
    std::fs::File::open(&rtmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync the suspend record"))?;
    std::fs::rename(&rtmp, dir.join(SUSPEND_FILE)).map_err(io_err("write the suspend record"))
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Remove half-written state files (a crash while saving) under `data_dir`, state
/// files with no record (a crash between the two writes) and template builds of dead
/// processes. Returns what was removed.
pub fn clean_partial_saves(data_dir: &Path) -> Vec<PathBuf> {
    let mut removed: Vec<PathBuf> = crate::template::clean_interrupted_builds()
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let Ok(rd) = std::fs::read_dir(data_dir.join("workspaces")) else {
        return removed;
    };
    for e in rd.flatten() {
        let dir = e.path();
        let tmp = dir.join(STATE_TMP);
        if tmp.exists() && std::fs::remove_file(&tmp).is_ok() {
            removed.push(tmp);
        }
        let state = dir.join(STATE_FILE);
        if state.exists()
            && !dir.join(SUSPEND_FILE).exists()
            && std::fs::remove_file(&state).is_ok()
        {
            removed.push(state);
        }
    }
    removed
}

/// The tap's current MAC address.
fn tap_mac(tap: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{tap}/address"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn set_tap_mac(tap: &str, mac: &str) -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(["link", "set", "dev", tap, "address", mac])
        .output()
        .map_err(io_err("run ip"))?;
    if !out.status.success() {
        return Err(NodeError::Network(format!(
            "ip link set {tap} address {mac}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Node {
    /// Is `id` frozen to disk on this node?
    pub fn is_suspended(&self, id: &str) -> bool {
        let dir = self.workspace_dir(id);
        dir.join(STATE_FILE).is_file() && dir.join(SUSPEND_FILE).is_file()
    }

    /// Since when `id` has been frozen to disk (its suspend record's time), if it is.
    pub fn suspended_since(&self, id: &str) -> Option<std::time::SystemTime> {
        if !self.is_suspended(id) {
            return None;
        }
        std::fs::metadata(self.workspace_dir(id).join(SUSPEND_FILE))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Drop a frozen workspace's saved memory (it will boot cold next time).
    pub fn discard_suspended(&self, id: &str) {
        let dir = self.workspace_dir(id);
        for f in [SUSPEND_FILE, STATE_FILE, STATE_TMP] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }

    /// Freeze a running (or memory-paused) workspace to disk and end its VMM. The disk
    /// and the address stay reserved. On a failed save the VM keeps running and is
    /// handed back with the error.
    pub async fn suspend(
        &self,
        ws: RunningWorkspace,
    ) -> std::result::Result<SuspendReport, (NodeError, RunningWorkspace)> {
        let span = tracing::info_span!("workspace", workspace_id = %ws.id);
        async {
            let t0 = Instant::now();
            let mut report = match self.save_state(&ws).await {
                Ok(r) => r,
                Err(e) => return Err((e, ws)),
            };
            // The state is safe: end the VMM and give its host resources back.
            match self.release_frozen(ws).await {
                Ok(exits) => report.cmd_exits = exits,
                Err(e) => tracing::warn!(error = %e, "releasing the frozen VM"),
            }
            report.total_ms = t0.elapsed().as_secs_f64() * 1000.0;
            tracing::info!(?report, "workspace frozen to disk");
            Ok(report)
        }
        .instrument(span)
        .await
    }

    /// End a frozen VM's VMM and free its tap and rules. Returns the exit codes of
    /// the workspace's command still queued on its control channel: the guest may have
    /// sent one just before its vCPUs stopped, and nobody else will read it.
    pub(crate) async fn release_frozen(&self, ws: RunningWorkspace) -> Result<Vec<(i32, u64)>> {
        ws.vm.kill().await?;
        crate::net::delete_tap(&ws.lease.record.tap);
        self.pool().remove_rules(ws.lease.record.index);
        for f in ["agent.sock", "qmp.sock"] {
            let _ = std::fs::remove_file(ws.run_dir.join(f));
        }
        write_owner(&ws.run_dir, &ws.id, None, ws.lease.record.index)?;
        // The VMM is gone, so the channel ends once what it had sent is read.
        let mut events = ws.events.into_inner();
        let mut exits = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            if let GuestMessage::CmdExited { exit_code, report } = m {
                exits.push((exit_code, report));
            }
        }
        Ok(exits)
    }

    async fn save_state(&self, ws: &RunningWorkspace) -> Result<SuspendReport> {
        let dir = ws.run_dir.clone();
        let tmp = dir.join(STATE_TMP);
        let record = self.capture(ws, &tmp).await?;
        let (state_bytes, save_ms) = (record.state_bytes, record.save_ms);
        std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(io_err("keep the saved state"))?;
        write_suspend(&dir, &record)?;
        Ok(SuspendReport {
            state_bytes,
            save_ms,
            total_ms: 0.0,
            cmd_exits: Vec::new(),
        })
    }

    /// Save `ws`'s memory and device state to `path` and describe the VM it came
    /// from. The vCPUs stay stopped on success; on failure the guest runs on.
    pub(crate) async fn capture(
        &self,
        ws: &RunningWorkspace,
        path: &Path,
    ) -> Result<SuspendRecord> {
        let assets = self.guest_assets().await?.clone();
        let spec = self.vm_spec(
            &ws.id,
            &WorkspaceSpec {
                id: Some(ws.id.clone()),
                ..WorkspaceSpec::default()
            },
            &ws.image,
            &assets,
            &ws.lease,
        )?;
        let tmp = path.to_path_buf();
        let t = Instant::now();
        if let Err(e) = self.save_vm_state(ws, &tmp).await {
            let _ = std::fs::remove_file(&tmp);
            // The save stopped the vCPUs: let the guest go on as it was.
            let _ = ws.vm.resume().await;
            return Err(e);
        }
        let save_ms = t.elapsed().as_secs_f64() * 1000.0;
        let state_bytes = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
        let vm_pid = ws.vm.pid();
        Ok(SuspendRecord {
            kernel: spec.kernel.clone(),
            initramfs: spec.initramfs.clone(),
            cmdline: spec.cmdline.clone(),
            cpus: self.vm_cpus(vm_pid).unwrap_or(1),
            memory_mb: self.vm_memory_mb(vm_pid).unwrap_or(256),
            acpi: spec.acpi,
            disks: spec
                .disks
                .iter()
                .map(|d| SavedDisk {
                    path: d.path.clone(),
                    read_only: d.read_only,
                    serial: d.serial.clone(),
                    format: d.format.clone(),
                })
                .collect(),
            mac: ws.lease.mac.clone(),
            tap_mac: tap_mac(&ws.lease.record.tap),
            saved_at_unix_ms: now_unix_ns() / 1_000_000,
            state_bytes,
            save_ms,
        })
    }

    /// The key that seals workspace `id`'s saved memory: its disk's data key
    /// (unwrapped here, in memory only), `None` for a workspace whose disk is plain.
    pub(crate) fn memory_key(&self, id: &str) -> Result<Option<warren_kms::DataKey>> {
        let key_path = self.workspace_dir(id).join(crate::keys::KEY_FILE);
        if !key_path.exists() {
            return Ok(None);
        }
        let kms = self.kms().ok_or_else(|| {
            NodeError::SavedState(format!(
                "workspace {id} has a wrapped key but no master key is loaded"
            ))
        })?;
        Ok(Some(kms.unwrap(&warren_kms::read_wrapped(&key_path)?, id)?))
    }

    /// Save `ws`'s memory and device state to `path`, sealed (see [`crate::sealed`])
    /// when the workspace has a data key. The VMM writes into a pipe; a blocking
    /// task encrypts what comes out and writes the file, so plaintext never reaches
    /// the disk. The vCPUs are stopped and stay stopped.
    pub(crate) async fn save_vm_state(&self, ws: &RunningWorkspace, path: &Path) -> Result<()> {
        let Some(key) = self.memory_key(&ws.id)? else {
            return Ok(ws.vm.snapshot(path).await?);
        };
        let mut out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(io_err(format!("create {}", path.display())))?
        };
        let (r, w) = crate::sealed::pipe()?;
        let id = ws.id.clone();
        let sealer =
            tokio::task::spawn_blocking(move || crate::sealed::seal(r, &mut out, &key, &id));
        if let Err(e) = ws.vm.snapshot_to(w.into()).await {
            // The VMM has closed its end (or died): the sealer ends. Do not wait
            // forever for it if it does not. If the sealer failed first (e.g. the
            // disk is full), that is why the VMM's write failed: report it.
            return Err(
                match tokio::time::timeout(Duration::from_secs(10), sealer).await {
                    Ok(Ok(Err(sealing))) => sealing,
                    _ => e.into(),
                },
            );
        }
        let stats = sealer
            .await
            .map_err(|e| NodeError::SavedState(format!("the sealing task failed: {e}")))??;
        tracing::debug!(
            plain_bytes = stats.plain_bytes,
            file_bytes = stats.file_bytes,
            "VM state sealed"
        );
        Ok(())
    }

    /// Start a VM for `spec` from the state saved at `path` by [`Node::save_vm_state`].
    /// A sealed file is checked (header, key) before the VMM starts, then decrypted
    /// into a pipe the VMM loads from; a chunk that fails authentication stops the
    /// feed, so the load fails and the VMM is ended, with an error that says so.
    pub(crate) async fn load_vm_state(
        &self,
        id: &str,
        spec: &VmSpec,
        path: &Path,
    ) -> Result<Box<dyn warren_vmm::Vm>> {
        let Some(key) = self.memory_key(id)? else {
            if crate::sealed::is_sealed(path) {
                return Err(NodeError::SavedState(format!(
                    "{} is sealed but workspace {id} has no data key",
                    path.display()
                )));
            }
            return Ok(self.engine().restore(spec, path).await?);
        };
        // Refuses a file that is not sealed: with a data key, memory is never saved
        // in the clear, so such a file was put there by someone else.
        let opened = crate::sealed::open(path, &key, id)?;
        drop(key);
        let (r, w) = crate::sealed::pipe()?;
        let feeder = tokio::task::spawn_blocking(move || opened.unseal(w));
        let what = path.display().to_string();
        let vm = self.engine().restore_from(spec, r.into(), &what).await;
        let fed = feeder
            .await
            .map_err(|e| NodeError::SavedState(format!("the unsealing task failed: {e}")))
            .and_then(|r| r);
        match (vm, fed) {
            (Ok(vm), Ok(_)) => Ok(vm),
            (Ok(vm), Err(e)) => {
                // Loaded, yet the file did not check out to its end (e.g. cut after
                // the VMM's last section): do not run it.
                let _ = vm.kill().await;
                Err(e)
            }
            // A bad chunk stopped the feed, which is why the load failed.
            (Err(_), Err(e @ NodeError::SavedState(_))) => Err(e),
            (Err(e), _) => Err(e.into()),
        }
    }

    /// Check the whole saved state at `path` without loading it (a full
    /// authentication pass for a sealed file), so a caller can refuse a bad file
    /// before it changes anything.
    pub(crate) async fn verify_vm_state(&self, id: &str, path: &Path) -> Result<()> {
        let key = self.memory_key(id)?;
        let (id, path) = (id.to_string(), path.to_path_buf());
        tokio::task::spawn_blocking(move || match key {
            Some(key) => crate::sealed::open(&path, &key, &id)?
                .unseal(std::io::sink())
                .map(|_| ()),
            None if crate::sealed::is_sealed(&path) => Err(NodeError::SavedState(format!(
                "{} is sealed but workspace {id} has no data key",
                path.display()
            ))),
            None => Ok(()),
        })
        .await
        .map_err(|e| NodeError::SavedState(format!("the checking task failed: {e}")))?
    }

    /// vCPUs and memory of the running VMM, from its command line (the spec it was
    /// booted with; the API's row may have been resized since).
    fn vm_cpus(&self, pid: Option<u32>) -> Option<u32> {
        qemu_arg(pid?, "-smp")?.parse().ok()
    }

    fn vm_memory_mb(&self, pid: Option<u32>) -> Option<u32> {
        qemu_arg(pid?, "-m")?.parse().ok()
    }

    /// Thaw a workspace frozen by [`Node::suspend`]: the same VM, every process and
    /// file as it was. `spec` gives the network policy (and the persistence).
    pub async fn resume_suspended(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<(RunningWorkspace, ResumeReport)> {
        let id = spec.id.clone().ok_or(NodeError::Invalid {
            field: "id",
            reason: "resume needs the workspace id".into(),
        })?;
        let span = tracing::info_span!("workspace", workspace_id = %id);
        self.resume_inner(id, spec).instrument(span).await
    }

    async fn resume_inner(
        &self,
        id: String,
        spec: &WorkspaceSpec,
    ) -> Result<(RunningWorkspace, ResumeReport)> {
        let t0 = Instant::now();
        let dir = self.workspace_dir(&id);
        let (Some(rec), Some(saved)) = (read_record(&dir), read_suspend(&dir)) else {
            return Err(NodeError::Invalid {
                field: "id",
                reason: format!("workspace {id} is not frozen on this node"),
            });
        };
        let image = self
            .images()
            .resolve(&spec.image, &warren_images::NoProgress)
            .await?;
        let mut cleanup = Cleanup {
            pool: self.pool(),
            run_dir: None,
            lease: None,
            tap: None,
            rules: None,
        };
        let lease = self
            .pool()
            .reserve(&id, Some(rec.lease_index), spec.persistent)?;
        if lease.record.index != rec.lease_index || lease.mac != saved.mac {
            // The guest's network configuration lives in the saved memory.
            self.pool().release(&lease.record);
            return Err(NodeError::Network(format!(
                "the address of {id} was taken while it was frozen; stop and start it instead"
            )));
        }
        if !spec.persistent {
            cleanup.lease = Some(lease.record.clone());
        }
        self.pool().create_tap(&lease)?;
        cleanup.tap = Some(lease.record.tap.clone());
        cleanup.rules = Some(lease.record.index);
        if let Some(mac) = &saved.tap_mac {
            set_tap_mac(&lease.record.tap, mac)?;
        }
        let net = self.attach_network(&id, &lease, &spec.network)?;

        let overlay_key = self.overlay_key(&id)?;
        let vm_spec = VmSpec {
            id: id.clone(),
            run_dir: dir.clone(),
            kernel: saved.kernel.clone(),
            initramfs: saved.initramfs.clone(),
            cmdline: saved.cmdline.clone(),
            cpus: saved.cpus,
            memory_mb: saved.memory_mb,
            disks: saved
                .disks
                .iter()
                .map(|d| DiskSpec {
                    path: d.path.clone(),
                    read_only: d.read_only,
                    serial: d.serial.clone(),
                    format: d.format.clone(),
                    key: if d.serial == DATA_DISK_SERIAL {
                        overlay_key.clone()
                    } else {
                        None
                    },
                })
                .collect(),
            net: Some(NetSpec {
                tap: lease.record.tap.clone(),
                mac: lease.mac.clone(),
            }),
            control_socket: dir.join("agent.sock"),
            console_log: dir.join("console.log"),
            accel: self.accel().0,
            acpi: saved.acpi,
            die_with_parent: spec.die_with_owner,
            memory_file: None,
            // The host connects while the state loads (see below).
            hold_for_control: true,
        };
        let t = Instant::now();
        // Connected before the restored guest runs: it may send at once what it had
        // queued when it froze (a command's exit), which QEMU drops unless someone
        // listens.
        let pid = std::sync::Arc::new(std::sync::OnceLock::new());
        let state = dir.join(STATE_FILE);
        let (vm, control) = tokio::join!(
            self.load_vm_state(&id, &vm_spec, &state),
            crate::control::ControlChannel::connect_early(
                &vm_spec.control_socket,
                &id,
                pid.clone()
            )
        );
        let vm = vm?;
        if let Some(p) = vm.pid() {
            let _ = pid.set(p);
        }
        let restore_ms = t.elapsed().as_secs_f64() * 1000.0;
        write_owner(&dir, &id, vm.pid(), lease.record.index)?;
        let mut killer = KillOnDrop(Some(&*vm));
        let (control, mut events) = control?;
        let t = Instant::now();
        control
            .send(&HostMessage::Resume {
                clock_unix_ns: now_unix_ns(),
                entropy_hex: crate::workspace::random_hex(64),
            })
            .await?;
        control.send(&HostMessage::Ping { id: 1 }).await?;
        let timeout = Duration::from_secs(self.config.boot_timeout_secs);
        let answered = tokio::time::timeout(timeout, async {
            while let Some(m) = events.recv().await {
                if m == (GuestMessage::Pong { id: 1 }) {
                    return true;
                }
            }
            false
        })
        .await;
        if !matches!(answered, Ok(true)) {
            return Err(NodeError::Boot(format!(
                "the restored agent did not answer; boot log: {}",
                tail(&vm_spec.console_log)
            )));
        }
        let agent_ms = t.elapsed().as_secs_f64() * 1000.0;
        killer.0 = None;
        drop(killer);
        // The VM runs again: its saved memory is stale from now on.
        self.discard_suspended(&id);
        cleanup.disarm();
        let report = ResumeReport {
            restore_ms,
            agent_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1000.0,
        };
        tracing::info!(?report, "workspace thawed from disk");
        let ws = RunningWorkspace {
            id,
            image,
            guest_ip: lease.guest_ip,
            api_token: rec.api_token,
            run_dir: dir,
            report: crate::workspace::BootReport {
                accel: self.accel().0.to_string(),
                engine: self.engine().name().into(),
                vmm_start_ms: restore_ms,
                total_ms: report.total_ms,
                ..Default::default()
            },
            vm,
            control,
            events: Mutex::new(events),
            lease,
            net,
        };
        Ok((ws, report))
    }
}

/// The value after `flag` on a VMM's command line.
fn qemu_arg(pid: u32, flag: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).cloned()
}
