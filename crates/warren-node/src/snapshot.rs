//! User snapshots: the memory, device state and writable disk of a running workspace
//! at one instant, restored in place later.
//!
//! `workspaces/<id>/snapshots/latest/` holds `memory` (the migration stream, sealed
//! under a per-file key derived from the workspace's data key, see
//! [`crate::sealed`]), `data.ext4` (a sparse copy of the writable disk, taken while the
//! vCPUs are stopped, so memory and disk agree; an encrypted disk stays encrypted) and
//! `snapshot.json` (the VM's shape, as for a freeze to disk). It is built under a
//! temporary name and renamed into place, so a crash leaves the previous snapshot.
//! Restoring puts the disk copy in place of the live disk and thaws the saved VM
//! through the freeze-to-disk path ([`crate::suspend`]).

use crate::suspend::{write_suspend, SuspendRecord, STATE_FILE};
use crate::workspace::{Node, RunningWorkspace, WorkspaceSpec};
use crate::{io_err, NodeError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

const SNAPSHOT_DIR: &str = "snapshots";
const LATEST: &str = "latest";

/// What a snapshot holds, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub created_at_unix_ms: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub save_ms: f64,
    pub total_ms: f64,
    /// The memory file is sealed (the workspace has a data key).
    #[serde(default)]
    pub encrypted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotFile {
    info: SnapshotInfo,
    vm: SuspendRecord,
}

/// Copy `from` to `to` keeping holes (the disk is a sparse file).
fn sparse_copy(from: &Path, to: &Path) -> Result<()> {
    let out = std::process::Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(io_err("run cp"))?;
    if !out.status.success() {
        return Err(NodeError::Disk(format!(
            "copy {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Node {
    fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.workspace_dir(id).join(SNAPSHOT_DIR).join(LATEST)
    }

    /// The workspace's snapshot, if it has one.
    pub fn snapshot_info(&self, id: &str) -> Option<SnapshotInfo> {
        let b = std::fs::read(self.snapshot_dir(id).join("snapshot.json")).ok()?;
        serde_json::from_slice::<SnapshotFile>(&b)
            .ok()
            .map(|f| f.info)
    }

    /// Delete the workspace's snapshot (not an error if there is none).
    pub fn delete_snapshot(&self, id: &str) -> Result<bool> {
        let d = self.snapshot_dir(id);
        match std::fs::remove_dir_all(&d) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(format!("remove {}", d.display()))(e)),
        }
    }

    /// Capture memory, device state and disk of a running workspace, replacing its
    /// previous snapshot. The vCPUs are stopped meanwhile and stay stopped: the
    /// caller resumes (`ws.vm.resume()`), pauses or stops it. On failure nothing
    /// changes and the guest runs on.
    pub async fn snapshot(&self, ws: &RunningWorkspace) -> Result<SnapshotInfo> {
        let t0 = Instant::now();
        let parent = ws.run_dir.join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&parent).map_err(io_err(format!("create {}", parent.display())))?;
        let tmp = parent.join(".new");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let r = async {
            let vm = self.capture(ws, &tmp.join("memory")).await?;
            // The vCPUs are stopped and QEMU has flushed the disk: copy it now.
            let disk = ws.run_dir.join("data.ext4");
            if let Err(e) = sparse_copy(&disk, &tmp.join("data.ext4")) {
                let _ = ws.vm.resume().await;
                return Err(e);
            }
            let info = SnapshotInfo {
                created_at_unix_ms: vm.saved_at_unix_ms,
                memory_bytes: vm.state_bytes,
                disk_bytes: std::fs::metadata(&disk).map(|m| m.len()).unwrap_or(0),
                save_ms: vm.save_ms,
                total_ms: t0.elapsed().as_secs_f64() * 1000.0,
                encrypted: crate::sealed::is_sealed(&tmp.join("memory")),
            };
            std::fs::write(
                tmp.join("snapshot.json"),
                serde_json::to_vec_pretty(&SnapshotFile {
                    info: info.clone(),
                    vm,
                })
                .unwrap_or_default(),
            )
            .map_err(io_err("write snapshot.json"))?;
            Ok(info)
        }
        .await;
        match r {
            Ok(info) => {
                let latest = parent.join(LATEST);
                let old = parent.join(".old");
                let _ = std::fs::remove_dir_all(&old);
                let _ = std::fs::rename(&latest, &old);
                std::fs::rename(&tmp, &latest).map_err(io_err("keep the snapshot"))?;
                let _ = std::fs::remove_dir_all(&old);
                tracing::info!(workspace_id = %ws.id, ?info, "snapshot taken");
                Ok(info)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    /// Check workspace `id`'s snapshot end to end without loading it: its memory
    /// file must authenticate to its last chunk (see [`crate::sealed`]). Callers run
    /// it before [`Node::restore_snapshot`] ends the running VM, so a tampered or
    /// truncated snapshot changes nothing.
    pub async fn verify_snapshot(&self, id: &str) -> Result<()> {
        let snap = self.snapshot_dir(id);
        if !snap.join("snapshot.json").is_file() {
            return Err(NodeError::Invalid {
                field: "snapshot",
                reason: format!("workspace {id} has no snapshot"),
            });
        }
        self.verify_vm_state(id, &snap.join("memory")).await
    }

    /// Put a workspace back to its snapshot: its VM (if `ws` is given, it is ended
    /// first), memory and disk as they were. Fails before touching anything when there
    /// is no snapshot; call [`Node::verify_snapshot`] first to also refuse a memory
    /// file that does not check out before `ws` is ended.
    pub async fn restore_snapshot(
        &self,
        ws: Option<RunningWorkspace>,
        spec: &WorkspaceSpec,
    ) -> Result<RunningWorkspace> {
        let id = spec.id.clone().ok_or(NodeError::Invalid {
            field: "id",
            reason: "restore needs the workspace id".into(),
        })?;
        let snap = self.snapshot_dir(&id);
        let file: SnapshotFile = std::fs::read(snap.join("snapshot.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(NodeError::Invalid {
                field: "snapshot",
                reason: format!("workspace {id} has no snapshot"),
            })?;
        if let Some(ws) = ws {
            // The snapshot's memory replaces this run: what its command did goes too.
            self.release_frozen(ws).await?;
        }
        self.discard_suspended(&id);
        let dir = self.workspace_dir(&id);
        // The disk copy goes in place of the live disk, then the saved VM is thawed
        // (the snapshot's memory is hard-linked, as resuming consumes its state file).
        let disk_tmp = dir.join(".data.ext4.restore");
        sparse_copy(&snap.join("data.ext4"), &disk_tmp)?;
        std::fs::rename(&disk_tmp, dir.join("data.ext4")).map_err(io_err("restore the disk"))?;
        let state = dir.join(STATE_FILE);
        let _ = std::fs::remove_file(&state);
        std::fs::hard_link(snap.join("memory"), &state)
            .or_else(|_| std::fs::copy(snap.join("memory"), &state).map(|_| ()))
            .map_err(io_err("restore the memory state"))?;
        write_suspend(&dir, &file.vm)?;
        let (ws, _) = self.resume_suspended(spec).await?;
        Ok(ws)
    }
}

/// A versioned copy of a workspace's writable disk (`workspaces/<id>/archives/<version>/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveInfo {
    pub version: String,
    pub created_at_unix_ms: u64,
    /// Apparent size of the disk image.
    pub size_bytes: u64,
    /// Bytes it occupies on the host (sparse).
    pub stored_bytes: u64,
    pub format: String,
}

/// A version name: 1-64 of `A-Za-z0-9._-`, not starting with a dot.
pub fn valid_version(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Node {
    fn archives_dir(&self, id: &str) -> PathBuf {
        self.workspace_dir(id).join("archives")
    }

    /// The workspace's archives, oldest first.
    pub fn archives(&self, id: &str) -> Vec<ArchiveInfo> {
        let mut v: Vec<ArchiveInfo> = std::fs::read_dir(self.archives_dir(id))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let b = std::fs::read(e.path().join("archive.json")).ok()?;
                serde_json::from_slice(&b).ok()
            })
            .collect();
        v.sort_by_key(|a| a.created_at_unix_ms);
        v
    }

    pub fn archive(&self, id: &str, version: &str) -> Option<ArchiveInfo> {
        if !valid_version(version) {
            return None;
        }
        let b = std::fs::read(self.archives_dir(id).join(version).join("archive.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Delete one archive; `false`: there was none of that version.
    pub fn delete_archive(&self, id: &str, version: &str) -> Result<bool> {
        if self.archive(id, version).is_none() {
            return Ok(false);
        }
        let d = self.archives_dir(id).join(version);
        std::fs::remove_dir_all(&d).map_err(io_err(format!("remove {}", d.display())))?;
        Ok(true)
    }

    /// Copy the writable disk of a workspace that is not running (or whose vCPUs the
    /// caller has stopped after flushing the guest) as archive `version`. An
    /// encrypted disk stays encrypted.
    pub fn create_archive(&self, id: &str, version: &str) -> Result<ArchiveInfo> {
        if !valid_version(version) {
            return Err(NodeError::Invalid {
                field: "version",
                reason: format!(
                    "{version:?}: use 1-64 of A-Z a-z 0-9 . _ - (not starting with a dot)"
                ),
            });
        }
        let parent = self.archives_dir(id);
        let dir = parent.join(version);
        if dir.exists() {
            return Err(NodeError::Invalid {
                field: "version",
                reason: format!("archive {version} of {id} already exists"),
            });
        }
        std::fs::create_dir_all(&parent).map_err(io_err(format!("create {}", parent.display())))?;
        let tmp = parent.join(format!(".new-{version}"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let r = (|| {
            let disk = tmp.join("data.img");
            let wdir = self.workspace_dir(id);
            if crate::fork::data_disk_format(&wdir) == "qcow2" {
                // A fork child's overlay: the archive is its whole disk, raw (still
                // under its data key), not an overlay over a base it may outlive.
                let key = self.overlay_key(id)?;
                crate::overlay::flatten(
                    &wdir.join("data.ext4"),
                    key.as_ref().map(|k| k.expose().as_bytes()),
                    &disk,
                )?;
            } else {
                sparse_copy(&wdir.join("data.ext4"), &disk)?;
            }
            let meta = std::fs::metadata(&disk).map_err(io_err("stat the archive"))?;
            use std::os::unix::fs::MetadataExt;
            let info = ArchiveInfo {
                version: version.to_string(),
                created_at_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                size_bytes: meta.len(),
                stored_bytes: meta.blocks() * 512,
                format: "raw".into(),
            };
            std::fs::write(
                tmp.join("archive.json"),
                serde_json::to_vec_pretty(&info).unwrap_or_default(),
            )
            .map_err(io_err("write archive.json"))?;
            std::fs::rename(&tmp, &dir).map_err(io_err("keep the archive"))?;
            Ok(info)
        })();
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        r
    }
}
