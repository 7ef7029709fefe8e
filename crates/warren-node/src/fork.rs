//! Fork: N new workspaces from one running workspace, each a copy of it at one
//! instant (memory, processes, disk), each with its own identity.
//!
//! How ([`Node::fork`]):
//! 1. The children's host resources are made first (run directory, address and tap,
//!    firewall and resolver, API token, a KMS record of their own): a failure there
//!    leaves the parent untouched.
//! 2. The parent's vCPUs stop (QEMU flushes its disks on stop). Its writable disk is
//!    copied to `forks/<fork>/base.img` (read-only from then on), and each child gets
//!    a qcow2 overlay over it as its `data.ext4` (marked by `data.format`): children
//!    share every unchanged block of the base and write only to their overlay.
//! 3. Memory. A parent whose RAM is a file mapping (started from a template) is
//!    saved once to tmpfs, loaded by a *loader* VM into a shared tmpfs file
//!    (`/dev/shm/warren-forks/<fork>/memory`) whose vCPUs never run, and that VM's
//!    device state is saved (`x-ignore-shared`, tens of KiB). Every child maps the
//!    file private (copy-on-write, as template clones do): the pages nobody writes
//!    are in host memory once. A parent with anonymous RAM (booted cold, or thawed)
//!    has a balloon with free page reporting, which a file-backed VM cannot have (see
//!    `warren_vmm::qemu`), so its children load the saved state into memory of their
//!    own: correct, but no pages are shared.
//! 4. The parent runs on (whatever happened). Each child is restored and sent
//!    `HostMessage::Fork`: hostname, address and MAC, API token, clock, entropy,
//!    boot id. The tmpfs files are unlinked once every child runs (a private mapping
//!    keeps its pages until the last child ends).
//!
//! Keys: a child's memory is a copy of the parent's, so it holds the parent's disk
//! key whatever Warren does; the base is encrypted under that key and so are the
//! child's own writes (dm-crypt maps the whole overlay). Each child gets its own KMS
//! record (the same data key wrapped under its own id), so deleting the parent or a
//! sibling never breaks it, and deleting it destroys only its record and overlay.
//! The base is removed once no child that uses it exists ([`Node::collect_forks`]).

use crate::workspace::{
    create_run_dir, random_hex, tail, write_owner, write_record, Cleanup, KillOnDrop, Node,
    RunningWorkspace, WorkspaceRecord, WorkspaceSpec,
};
use crate::{io_err, NodeError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tracing::Instrument;
use warren_protocol::control::{
    ForkIdentity, GuestMessage, HostMessage, NetworkConfig, Secret, DATA_DISK_SERIAL,
};
use warren_vmm::{DiskSpec, MemoryFile, NetSpec, VmSpec};

/// Most children one fork makes.
pub const MAX_FORK_COUNT: u32 = 20;
/// Marker in a workspace directory: the format of its `data.ext4` when not raw.
pub const DISK_FORMAT_FILE: &str = "data.format";
/// Names the fork a child came from (`ChildRecord`).
const CHILD_FILE: &str = "fork.json";
const FORKS_DIR: &str = "forks";
const SHM_DIR: &str = "/dev/shm/warren-forks";

/// The format QEMU must open workspace directory `dir`'s `data.ext4` with. Recorded
/// by Warren, never guessed from the contents (a guest could write a qcow2 header).
pub fn data_disk_format(dir: &Path) -> String {
    match std::fs::read_to_string(dir.join(DISK_FORMAT_FILE)) {
        Ok(s) if s.trim() == "qcow2" => "qcow2".into(),
        _ => "raw".into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChildRecord {
    fork_id: String,
    parent_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ForkRecord {
    parent_id: String,
    children: Vec<String>,
    created_at_unix_ms: u64,
}

/// How a fork went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ForkReport {
    pub fork_id: String,
    /// Children map one copy of the parent's memory copy-on-write.
    pub shared_memory: bool,
    /// The parent's vCPUs were stopped this long.
    pub parent_paused_ms: f64,
    /// Copying the parent's disk to the base.
    pub disk_copy_ms: f64,
    /// Saving the parent's memory (and loading it into the shared file).
    pub memory_ms: f64,
    /// Each child: restore until its agent applied the new identity.
    pub child_ms: Vec<f64>,
    pub total_ms: f64,
}

/// A child's host side, made before the parent is touched.
struct Prepared<'a> {
    id: String,
    spec: WorkspaceSpec,
    dir: PathBuf,
    lease: crate::net::Lease,
    net: crate::workspace::WorkspaceNet,
    token: String,
    /// The passphrase of its overlay (`None` with disk encryption off).
    overlay_key: Option<Secret>,
    cleanup: Cleanup<'a>,
}

/// Removes a directory when dropped (tmpfs copies of memory).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn uuid_v4() -> String {
    let h = random_hex(16);
    let mut b: Vec<u8> = h.into_bytes();
    // Version 4, variant 10xx.
    b[12] = b'4';
    b[16] = b"89ab"[(b[16] as usize) % 4];
    let s = String::from_utf8_lossy(&b).into_owned();
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

fn run(cmd: &mut std::process::Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(io_err(format!("run {what}")))?;
    if !out.status.success() {
        return Err(NodeError::Disk(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The VMM's command line, split.
fn vmm_args(pid: Option<u32>) -> Vec<String> {
    pid.and_then(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|raw| {
            raw.split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn arg_after(args: &[String], flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).cloned()
}

impl Node {
    fn forks_dir(&self) -> PathBuf {
        self.config.data_dir.join(FORKS_DIR)
    }

    /// Make `children` (ids set, shape of the parent) from the running `parent`. The
    /// parent runs on afterwards, also when this fails; on failure every child made
    /// so far is removed and nothing else changed.
    pub async fn fork(
        &self,
        parent: &RunningWorkspace,
        children: &[WorkspaceSpec],
    ) -> Result<(Vec<RunningWorkspace>, ForkReport)> {
        let span = tracing::info_span!("workspace", workspace_id = %parent.id);
        self.fork_inner(parent, children).instrument(span).await
    }

    async fn fork_inner(
        &self,
        parent: &RunningWorkspace,
        children: &[WorkspaceSpec],
    ) -> Result<(Vec<RunningWorkspace>, ForkReport)> {
        let t0 = Instant::now();
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
        let n = children.len() as u32;
        if !(1..=MAX_FORK_COUNT).contains(&n) {
            return Err(NodeError::Invalid {
                field: "count",
                reason: format!("{n}: a fork makes 1 to {MAX_FORK_COUNT} workspaces"),
            });
        }
        let fork_id = format!("f{}", random_hex(8));
        let mut report = ForkReport {
            fork_id: fork_id.clone(),
            ..Default::default()
        };
        let args = vmm_args(parent.vm.pid());
        if args.is_empty() {
            return Err(NodeError::Invalid {
                field: "id",
                reason: format!("the VM of {} is not running", parent.id),
            });
        }
        let shared_memory = args.iter().any(|a| a.contains("memory-backend-file"));
        let cpus: u32 = arg_after(&args, "-smp")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let memory_mb: u32 = arg_after(&args, "-m")
            .and_then(|s| s.parse().ok())
            .unwrap_or(256);
        // 1. The children's host side.
        let mut prepared: Vec<Prepared> = Vec::with_capacity(children.len());
        for spec in children {
            let id = spec.id.clone().ok_or(NodeError::Invalid {
                field: "id",
                reason: "a fork child needs its id".into(),
            })?;
            let spec = WorkspaceSpec {
                cpus,
                memory_mb,
                ..spec.clone()
            };
            self.validate(&spec)?;
            let dir = self.workspace_dir(&id);
            if dir.exists() {
                return Err(NodeError::Invalid {
                    field: "id",
                    reason: format!("a workspace named {id} already exists on this node"),
                });
            }
            let mut cleanup = Cleanup {
                pool: self.pool(),
                run_dir: None,
                lease: None,
                tap: None,
                rules: None,
            };
            create_run_dir(&dir, &id)?;
            cleanup.run_dir = Some(dir.clone());
            // Its own KMS record of the parent's key, and a key of its own for what
            // it writes (see the module docs).
            self.share_key(&parent.id, &id)?;
            let overlay_key = self.new_overlay_key(&id)?;
            let lease = self.pool().reserve(&id, None, spec.persistent)?;
            cleanup.lease = Some(lease.record.clone());
            self.pool().create_tap(&lease)?;
            cleanup.tap = Some(lease.record.tap.clone());
            cleanup.rules = Some(lease.record.index);
            let net = self.attach_network(&id, &lease, &spec.network)?;
            let token = random_hex(32);
            write_record(
                &dir,
                &WorkspaceRecord {
                    id: id.clone(),
                    lease_index: lease.record.index,
                    api_token: token.clone(),
                    persistent: spec.persistent,
                },
            )?;
            write_owner(&dir, &id, None, lease.record.index)?;
            std::fs::write(
                dir.join(CHILD_FILE),
                serde_json::to_vec_pretty(&ChildRecord {
                    fork_id: fork_id.clone(),
                    parent_id: parent.id.clone(),
                })
                .unwrap_or_default(),
            )
            .map_err(io_err("write fork.json"))?;
            prepared.push(Prepared {
                id,
                spec,
                dir,
                lease,
                net,
                token,
                overlay_key,
                cleanup,
            });
        }
        let fdir = self.forks_dir().join(&fork_id);
        std::fs::create_dir_all(&fdir).map_err(io_err(format!("create {}", fdir.display())))?;
        let fork_guard = RemoveDir(fdir.clone());
        std::fs::write(
            fdir.join("fork.json"),
            serde_json::to_vec_pretty(&ForkRecord {
                parent_id: parent.id.clone(),
                children: prepared.iter().map(|p| p.id.clone()).collect(),
                created_at_unix_ms: now_unix_ns() / 1_000_000,
            })
            .unwrap_or_default(),
        )
        .map_err(io_err("write the fork record"))?;
        let shm = PathBuf::from(SHM_DIR).join(&fork_id);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&shm)
                .map_err(io_err(format!("create {}", shm.display())))?;
        }
        let _shm_guard = RemoveDir(shm.clone());

        // 2 and 3, with the parent stopped.
        let parent_spec = self.vm_spec(
            &parent.id,
            &WorkspaceSpec {
                id: Some(parent.id.clone()),
                cpus,
                memory_mb,
                ..WorkspaceSpec::default()
            },
            &parent.image,
            &self.guest_assets().await?.clone(),
            &parent.lease,
        )?;
        let t_pause = Instant::now();
        parent.vm.pause().await?;
        let frozen = self
            .freeze_copy(
                parent,
                &parent_spec,
                &prepared,
                &fdir,
                &shm,
                shared_memory,
                &mut report,
            )
            .await;
        let resumed = parent.vm.resume().await;
        report.parent_paused_ms = ms(t_pause);
        let (state, memory_file) = frozen?;
        resumed?;

        // 4. The children.
        let mut made: Vec<RunningWorkspace> = Vec::with_capacity(prepared.len());
        let mut cleanups = Vec::new();
        let mut failure = None;
        for p in prepared {
            let t = Instant::now();
            let Prepared {
                id,
                spec,
                dir,
                lease,
                net,
                token,
                overlay_key,
                cleanup,
            } = p;
            cleanups.push(cleanup);
            let vm_spec = VmSpec {
                id: id.clone(),
                run_dir: dir.clone(),
                disks: child_disks(&parent_spec.disks, &dir, overlay_key),
                net: Some(NetSpec {
                    tap: lease.record.tap.clone(),
                    mac: lease.mac.clone(),
                }),
                control_socket: dir.join("agent.sock"),
                console_log: dir.join("console.log"),
                die_with_parent: spec.die_with_owner,
                memory_file: memory_file.clone(),
                ..parent_spec.clone()
            };
            match self
                .start_child(&id, &vm_spec, &state, lease, net, &token, parent)
                .await
            {
                Ok(ws) => {
                    report.child_ms.push(ms(t));
                    made.push(ws);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for ws in made {
                let _ = ws.vm.kill().await;
            }
            drop(cleanups);
            drop(fork_guard);
            return Err(e);
        }
        for mut c in cleanups {
            c.disarm();
        }
        std::mem::forget(fork_guard);
        report.total_ms = ms(t0);
        tracing::info!(?report, "forked");
        Ok((made, report))
    }

    /// With the parent stopped: the disk base and overlays, then the memory. Returns
    /// the state file children restore from and the memory file they map.
    #[allow(clippy::too_many_arguments)]
    async fn freeze_copy(
        &self,
        parent: &RunningWorkspace,
        parent_spec: &VmSpec,
        prepared: &[Prepared<'_>],
        fdir: &Path,
        shm: &Path,
        shared_memory: bool,
        report: &mut ForkReport,
    ) -> Result<(PathBuf, Option<MemoryFile>)> {
        let t = Instant::now();
        let base = fdir.join("base.img");
        let pdisk = parent.run_dir.join("data.ext4");
        if data_disk_format(&parent.run_dir) == "qcow2" {
            // A fork of a fork: flatten, so a base never depends on another fork's.
            // The parent's VMM holds the image's write lock; its vCPUs are stopped
            // and its disk flushed, so reading it now is consistent.
            let key = self.overlay_key(&parent.id)?;
            crate::overlay::flatten(&pdisk, key.as_ref().map(|k| k.expose().as_bytes()), &base)?;
        } else {
            run(
                std::process::Command::new("cp")
                    .args(["--sparse=always", "--reflink=auto"])
                    .arg(&pdisk)
                    .arg(&base),
                "copy the parent's disk",
            )?;
        }
        let _ =
            std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o400));
        let size = std::fs::metadata(&base)
            .map_err(io_err(format!("stat {}", base.display())))?
            .len();
        for p in prepared {
            let overlay = p.dir.join("data.ext4");
            match &p.overlay_key {
                Some(key) => {
                    crate::overlay::create(&overlay, &base, "raw", size, key.expose().as_bytes())?
                }
                None => run(
                    std::process::Command::new("qemu-img")
                        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                        .arg(&base)
                        .arg(&overlay),
                    "qemu-img create",
                )?,
            }
            std::fs::write(p.dir.join(DISK_FORMAT_FILE), "qcow2\n")
                .map_err(io_err("write data.format"))?;
        }
        report.disk_copy_ms = t.elapsed().as_secs_f64() * 1000.0;

        let t = Instant::now();
        let full = shm.join("full.state");
        create_private(&full)?;
        parent.vm.snapshot(&full).await?;
        let r = if !shared_memory {
            Ok((full, None))
        } else {
            // The loader: the parent's shape on the first child's disk and tap; its
            // vCPUs never run (see warren_vmm::qemu::loads_into_shared_file).
            let first = &prepared[0];
            let mem = shm.join("memory");
            let ldir = fdir.join("loader");
            let loader_spec = VmSpec {
                id: format!("{}-fork-loader", first.id),
                run_dir: ldir.clone(),
                disks: child_disks(&parent_spec.disks, &first.dir, first.overlay_key.clone()),
                net: Some(NetSpec {
                    tap: first.lease.record.tap.clone(),
                    mac: first.lease.mac.clone(),
                }),
                control_socket: ldir.join("agent.sock"),
                console_log: ldir.join("console.log"),
                die_with_parent: true,
                memory_file: Some(MemoryFile {
                    path: mem.clone(),
                    shared: true,
                }),
                ..parent_spec.clone()
            };
            let loaded = async {
                let vm = self.engine().restore(&loader_spec, &full).await?;
                let _ = std::fs::remove_file(&full);
                let state = shm.join("device.state");
                let saved = vm.snapshot(&state).await;
                let _ = vm.kill().await;
                saved?;
                Ok::<_, NodeError>((
                    state,
                    Some(MemoryFile {
                        path: mem.clone(),
                        shared: false,
                    }),
                ))
            }
            .await;
            let _ = std::fs::remove_dir_all(&ldir);
            loaded
        };
        report.memory_ms = t.elapsed().as_secs_f64() * 1000.0;
        report.shared_memory = shared_memory;
        r
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_child(
        &self,
        id: &str,
        vm_spec: &VmSpec,
        state: &Path,
        lease: crate::net::Lease,
        net: crate::workspace::WorkspaceNet,
        token: &str,
        parent: &RunningWorkspace,
    ) -> Result<RunningWorkspace> {
        let t0 = Instant::now();
        let vm = self.engine().restore(vm_spec, state).await?;
        let restore_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let mut killer = KillOnDrop(Some(&*vm));
        write_owner(&vm_spec.run_dir, id, vm.pid(), lease.record.index)?;
        let (control, mut events) =
            crate::control::ControlChannel::connect(&vm_spec.control_socket, id, vm.pid()).await?;
        let t = Instant::now();
        control
            .send(&HostMessage::Fork {
                identity: Box::new(ForkIdentity {
                    workspace_id: id.to_string(),
                    hostname: id.replace('_', "-"),
                    network: NetworkConfig {
                        mac: lease.mac.clone(),
                        address: lease.guest_ip.to_string(),
                        prefix_len: lease.prefix_len,
                        gateway: lease.host_ip.to_string(),
                        dns: vec![lease.host_ip.to_string()],
                        mtu: 1500,
                        set_mac: true,
                    },
                    api_token: Secret::new(token.to_string()),
                    clock_unix_ns: now_unix_ns(),
                    entropy_hex: random_hex(64),
                    boot_id: uuid_v4(),
                }),
            })
            .await?;
        control.send(&HostMessage::Ping { id: 1 }).await?;
        let timeout = Duration::from_secs(self.config.boot_timeout_secs);
        let answer = tokio::time::timeout(timeout, async {
            while let Some(m) = events.recv().await {
                match m {
                    GuestMessage::Pong { id: 1 } => return Ok(()),
                    GuestMessage::BootFailed { error } => return Err(error),
                    _ => {}
                }
            }
            Err("the control channel closed".to_string())
        })
        .await;
        match answer {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(NodeError::Boot(format!(
                    "the fork did not take its identity: {e}; boot log: {}",
                    tail(&vm_spec.console_log)
                )))
            }
            Err(_) => return Err(NodeError::BootTimeout(timeout, tail(&vm_spec.console_log))),
        }
        let agent_ms = t.elapsed().as_secs_f64() * 1000.0;
        killer.0 = None;
        drop(killer);
        tracing::info!(child = %id, restore_ms, agent_ms, ip = %lease.guest_ip, "fork child running");
        Ok(RunningWorkspace {
            id: id.to_string(),
            image: parent.image.clone(),
            guest_ip: lease.guest_ip,
            api_token: token.to_string(),
            run_dir: vm_spec.run_dir.clone(),
            report: crate::workspace::BootReport {
                accel: self.accel().0.to_string(),
                engine: format!("{} (fork of {})", self.engine().name(), parent.id),
                vmm_start_ms: restore_ms,
                guest_boot_ms: agent_ms,
                total_ms: t0.elapsed().as_secs_f64() * 1000.0,
                ..Default::default()
            },
            vm,
            control,
            events: Mutex::new(events),
            lease,
            net,
        })
    }

    /// Remove what forks left in /dev/shm. A fork removes its own when it ends
    /// (children keep their mappings of the memory file), so what is there when the
    /// server starts, before any fork can run, was left by one that died: the parent's
    /// whole memory in the clear, which must not stay. Only forks of this node's data
    /// dir are touched (/dev/shm is host-wide). Call it before `collect_forks`, which
    /// may remove the fork record. Returns the fork ids removed.
    pub fn remove_fork_scratch(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(rd) = std::fs::read_dir(SHM_DIR) else {
            return removed;
        };
        for e in rd.flatten() {
            let ours = self
                .forks_dir()
                .join(e.file_name())
                .join("fork.json")
                .exists();
            if ours && std::fs::remove_dir_all(e.path()).is_ok() {
                removed.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        if !removed.is_empty() {
            tracing::info!(?removed, "removed memory a dead fork left in {SHM_DIR}");
        }
        removed
    }

    /// Remove fork bases that no existing child uses any more (after a child was
    /// deleted). Returns the fork ids removed.
    pub fn collect_forks(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.forks_dir()) else {
            return removed;
        };
        for e in rd.flatten() {
            let fid = e.file_name().to_string_lossy().into_owned();
            let Some(rec) = std::fs::read(e.path().join("fork.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<ForkRecord>(&b).ok())
            else {
                continue;
            };
            let used = rec.children.iter().any(|c| {
                std::fs::read(self.workspace_dir(c).join(CHILD_FILE))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<ChildRecord>(&b).ok())
                    .is_some_and(|r| r.fork_id == fid)
            });
            if !used && std::fs::remove_dir_all(e.path()).is_ok() {
                tracing::info!(fork_id = %fid, "fork base removed: no child uses it");
                removed.push(fid);
            }
        }
        removed
    }
}

/// A child's disks: the parent's, but for the data disk, which is the child's own
/// qcow2 overlay (over the fork's base) in `dir`, encrypted under `key`.
fn child_disks(parent: &[DiskSpec], dir: &Path, key: Option<Secret>) -> Vec<DiskSpec> {
    parent
        .iter()
        .map(|d| {
            if d.serial == DATA_DISK_SERIAL {
                DiskSpec {
                    path: dir.join("data.ext4"),
                    read_only: false,
                    serial: d.serial.clone(),
                    format: "qcow2".into(),
                    key: key.clone(),
                }
            } else {
                d.clone()
            }
        })
        .collect()
}

/// Create `path` empty, mode 0600 (memory states hold secrets).
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map(|_| ())
        .map_err(io_err(format!("create {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_look_like_uuids() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
        assert_ne!(u, uuid_v4());
    }

    #[test]
    fn disk_format_is_recorded_not_sniffed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("data.ext4"), b"QFI\xfb").unwrap();
        assert_eq!(data_disk_format(d.path()), "raw");
        std::fs::write(d.path().join(DISK_FORMAT_FILE), "qcow2\n").unwrap();
        assert_eq!(data_disk_format(d.path()), "qcow2");
    }
}
