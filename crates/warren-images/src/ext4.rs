//! Turning a staging directory into a read-only ext4 image with `mkfs.ext4 -d`.
//!
//! No journal (the image is never written), 4 KiB blocks, no reserved blocks, and a size of
//! content * 1.15 + 32 MiB (rounded up to 1 MiB) with file count * 1.3 + 1024 inodes. If that
//! estimate proves too small, mkfs is retried with more room.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::error::{ImageError, IoContext};
use crate::progress::Progress;

const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 4096;

/// Space and inode needs of a tree.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TreeStats {
    /// Bytes of data rounded up to whole blocks (hard links counted once).
    pub bytes: u64,
    /// Inodes needed.
    pub files: u64,
}

fn round_block(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Walk `root` without following symlinks.
pub(crate) fn measure(root: &Path) -> Result<TreeStats, ImageError> {
    let mut stats = TreeStats::default();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        stats.files += 1;
        stats.bytes += BLOCK;
        for ent in fs::read_dir(&dir).ctx("list", &dir)? {
            let ent = ent.ctx("list", &dir)?;
            let path = ent.path();
            let m = fs::symlink_metadata(&path).ctx("stat", &path)?;
            if m.is_dir() {
                stack.push(path);
                continue;
            }
            if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            stats.files += 1;
            if m.file_type().is_symlink() {
                // Targets under 60 bytes live in the inode itself.
                if m.len() >= 60 {
                    stats.bytes += BLOCK;
                }
            } else if m.is_file() {
                stats.bytes += round_block(m.len());
            }
        }
    }
    Ok(stats)
}

/// The image size and inode count for `stats`, per the sizing rule above.
pub(crate) fn geometry(stats: TreeStats) -> (u64, u64) {
    let size = stats.bytes + stats.bytes * 15 / 100 + 32 * MIB;
    let size = size.div_ceil(MIB) * MIB;
    let inodes = stats.files + stats.files * 3 / 10 + 1024;
    (size, inodes)
}

/// Build `out` (which must not exist) from `staging`. Returns its size in bytes.
pub(crate) fn make_ext4(
    staging: &Path,
    out: &Path,
    progress: &dyn Progress,
) -> Result<u64, ImageError> {
    progress.phase("measuring the root file system");
    let stats = measure(staging)?;
    let (mut size, mut inodes) = geometry(stats);
    let mut attempt = 0;
    loop {
        attempt += 1;
        progress.phase(&format!(
            "mkfs.ext4: {} MiB, {} inodes for {} files",
            size / MIB,
            inodes,
            stats.files
        ));
        let _ = fs::remove_file(out);
        let f = fs::File::create(out).ctx("create", out)?;
        f.set_len(size).ctx("resize", out)?;
        drop(f);
        let output = Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                "warren-root",
                "-O",
                "^has_journal",
                "-b",
                "4096",
                "-m",
                "0",
            ])
            .arg("-N")
            .arg(inodes.to_string())
            .arg("-E")
            .arg("root_owner=0:0")
            .arg("-d")
            .arg(staging)
            .arg(out)
            .arg(format!("{}k", size / 1024))
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| {
                ImageError::build(
                    "the ext4 root file system",
                    format!(
                        "cannot run mkfs.ext4 ({e}); install e2fsprogs (apt-get install e2fsprogs)"
                    ),
                )
            })?;
        if output.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        let out_of_room = ["space", "allocate", "inode", "too small", "Could not"]
            .iter()
            .any(|k| stderr.contains(k));
        if out_of_room && attempt < 3 {
            tracing::warn!(%stderr, size, inodes, "mkfs.ext4 ran out of room; retrying bigger");
            size = (size * 3 / 2).div_ceil(MIB) * MIB;
            inodes = inodes * 3 / 2;
            continue;
        }
        let _ = fs::remove_file(out);
        return Err(ImageError::build(
            "the ext4 root file system",
            format!(
                "mkfs.ext4 failed ({}): {}; check free space in the cache directory and that \
                 e2fsprogs >= 1.43 is installed",
                output.status,
                stderr.trim()
            ),
        ));
    }
    fs::set_permissions(out, fs::Permissions::from_mode(0o444)).ctx("chmod", out)?;
    fs::File::open(out)
        .and_then(|f| f.sync_all())
        .ctx("sync", out)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rule() {
        let (size, inodes) = geometry(TreeStats {
            bytes: 100 * MIB,
            files: 1000,
        });
        assert_eq!(size, 147 * MIB); // 100 * 1.15 + 32 = 147
        assert_eq!(inodes, 2324);
        let (size, _) = geometry(TreeStats { bytes: 1, files: 1 });
        assert_eq!(size, 33 * MIB);
    }
}
