//! The workspace's writable disk: a sparse raw file formatted ext4 by the host.

use crate::{NodeError, Result};
use std::path::Path;
use std::process::Command;

/// Create `path` as a sparse file of `size_mb` MiB holding an empty ext4.
pub fn create_data_disk(path: &Path, size_mb: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| NodeError::Disk(format!("create {}: {e}", path.display())))?;
    f.set_len(size_mb << 20)
        .map_err(|e| NodeError::Disk(format!("size {}: {e}", path.display())))?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", "warren-data"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(path)
        .output()
        .map_err(|e| NodeError::Disk(format!("cannot run mkfs.ext4 (install e2fsprogs): {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(path);
        return Err(NodeError::Disk(format!(
            "mkfs.ext4 {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
