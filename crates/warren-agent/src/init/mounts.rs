//! Mounting: the API file systems, the workspace disks and overlay, and the switch from
//! the initramfs into the workspace root.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use warren_protocol::control::{DataDisk, DATA_DISK_SERIAL, IMAGE_DISK_SERIAL};

pub const IMAGE_DIR: &str = "/mnt/image";
pub const DATA_DIR: &str = "/mnt/data";
pub const ROOT_DIR: &str = "/mnt/root";

const RAMFS_MAGIC: i64 = 0x858458f6;
const TMPFS_MAGIC: i64 = 0x01021994;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount {what} on {target}: {err}")]
    Mount {
        what: String,
        target: String,
        err: nix::Error,
    },
    #[error("no virtio disk with serial {0:?} under /sys/block")]
    NoDisk(String),
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: String,
        err: std::io::Error,
    },
    #[error("switch_root: {0}")]
    Switch(String),
    #[error("encrypted data disk: {0}")]
    Crypt(#[from] super::dm::DmError),
}

fn do_mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    let _ = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(target);
    mount(Some(src), target, Some(fstype), flags, data).map_err(|err| MountError::Mount {
        what: format!("{fstype} ({src})"),
        target: target.to_string(),
        err,
    })
}

/// True when `path` is the root of a mount (its device differs from its parent's).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(md) = fs::metadata(path) else {
        return false;
    };
    let Some(parent) = path.parent() else {
        return true;
    };
    match fs::metadata(parent) {
        Ok(p) => p.dev() != md.dev() || p.ino() == md.ino(),
        Err(_) => false,
    }
}

/// Mount /proc, /sys, /dev, /dev/pts, /dev/shm and /run. Returns what went wrong (the
/// rest is still attempted): logging is not up yet when this runs.
pub fn mount_api_filesystems() -> Vec<String> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 6] = [
        ("proc", "/proc", "proc", nosuid_nodev_noexec, None),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ];
    let mut problems = Vec::new();
    for (src, target, fstype, flags, data) in table {
        if is_mountpoint(Path::new(target)) {
            continue;
        }
        if let Err(e) = do_mount(src, target, fstype, flags, data) {
            problems.push(e.to_string());
        }
    }
    // What containers get and scripts expect.
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(to, link);
        }
    }
    problems
}

/// The `/sys/block` name of the disk whose `serial` is `serial`.
pub fn find_disk_in(sys_block: &Path, serial: &str) -> Option<String> {
    fs::read_dir(sys_block).ok()?.flatten().find_map(|de| {
        let s = fs::read_to_string(de.path().join("serial")).ok()?;
        (s.trim() == serial).then(|| de.file_name().to_string_lossy().into_owned())
    })
}

fn wait_for_disk(serial: &str, wait: Duration) -> Result<PathBuf, MountError> {
    let start = Instant::now();
    loop {
        if let Some(name) = find_disk_in(Path::new("/sys/block"), serial) {
            let dev = PathBuf::from("/dev").join(name);
            if dev.exists() {
                return Ok(dev);
            }
        }
        if start.elapsed() >= wait {
            return Err(MountError::NoDisk(serial.to_string()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mkdir(path: &str) -> Result<(), MountError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|err| MountError::Io {
            what: "mkdir",
            path: path.to_string(),
            err,
        })
}

/// The mounted workspace root, before switching into it.
pub struct PreparedRoot {
    /// An `O_PATH` handle on the writable layer's mount, to remount it read-only at
    /// power-off once it is no longer reachable by path.
    pub data: Option<OwnedFd>,
    pub summary: String,
}

/// Files of an image that a first command is likely to run or load (its shell, busybox,
/// `true`, the dynamic loader and libc), relative to the image's root.
const WARM_FILES: &[&str] = &[
    "bin/sh",
    "bin/busybox",
    "bin/true",
    "usr/bin/true",
    "bin/bash",
    "usr/bin/env",
    "lib64/ld-linux-x86-64.so.2",
    "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "lib/x86_64-linux-gnu/libc.so.6",
    "usr/lib/x86_64-linux-gnu/libc.so.6",
    "lib/ld-musl-x86_64.so.1",
];
/// Largest file read to warm the page cache.
const WARM_MAX_BYTES: u64 = 16 << 20;

/// `rel` (a path in the image) with its symlinks followed inside the image: an
/// absolute link names a path of the image, not of the initramfs.
fn resolve_in_image(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut p = root.join(rel);
    for _ in 0..8 {
        let md = fs::symlink_metadata(&p).ok()?;
        if !md.file_type().is_symlink() {
            return md.is_file().then_some(p);
        }
        let target = fs::read_link(&p).ok()?;
        p = if target.is_absolute() {
            root.join(target.strip_prefix("/").ok()?)
        } else {
            p.parent()?.join(target)
        };
    }
    None
}

/// Read the image's likely first binaries into the page cache: in a template (saved
/// right after this) every clone then starts with them in memory.
fn warm_image(root: &Path) -> (usize, u64) {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut bytes = 0;
    for rel in WARM_FILES {
        let Some(p) = resolve_in_image(root, rel) else {
            continue;
        };
        if seen.contains(&p) {
            continue;
        }
        if let Ok(mut f) = fs::File::open(&p) {
            let n = std::io::copy(
                &mut std::io::Read::take(&mut f, WARM_MAX_BYTES),
                &mut std::io::sink(),
            )
            .unwrap_or(0);
            bytes += n;
            seen.push(p);
        }
    }
    (seen.len(), bytes)
}

/// The image disk's device node, if it is there now.
pub fn image_device() -> Option<PathBuf> {
    find_disk_in(Path::new("/sys/block"), IMAGE_DISK_SERIAL).map(|n| PathBuf::from("/dev").join(n))
}

/// Mount the image read-only at [`IMAGE_DIR`] and warm its first binaries, before the
/// agent says `Hello`: nothing in it is a workspace's secret, so a template is saved
/// with it mounted and a clone's `Boot` only opens the writable disk.
pub fn premount_image(wait: Duration) -> Result<String, MountError> {
    let image = wait_for_disk(IMAGE_DISK_SERIAL, wait)?;
    let image_s = image.to_string_lossy().into_owned();
    if !is_mountpoint(Path::new(IMAGE_DIR)) {
        do_mount(&image_s, IMAGE_DIR, "ext4", MsFlags::MS_RDONLY, None)?;
    }
    let (files, bytes) = warm_image(Path::new(IMAGE_DIR));
    Ok(format!(
        "image {image_s} mounted read-only; {files} files ({} KiB) read ahead",
        bytes >> 10
    ))
}

/// Mount the image read-only (unless [`premount_image`] did), the writable layer, and
/// the overlay of both at [`ROOT_DIR`].
///
/// The writable ext4 is mounted with `noinit_itable`: the host formats it with lazy
/// inode-table init, and the kernel thread that would zero those tables after mount
/// competes for the vCPU and the disk with the workspace's first commands (uninitialised
/// tables stay flagged as such, which ext4 and e2fsck handle).
pub fn prepare_root(data_disk: &DataDisk, wait: Duration) -> Result<PreparedRoot, MountError> {
    let image = wait_for_disk(IMAGE_DISK_SERIAL, wait)?;
    let image_s = image.to_string_lossy().into_owned();
    if !is_mountpoint(Path::new(IMAGE_DIR)) {
        do_mount(&image_s, IMAGE_DIR, "ext4", MsFlags::MS_RDONLY, None)?;
    }
    let data_opts = Some("noinit_itable");
    let data_desc = match data_disk {
        DataDisk::Ext4 => {
            let data = wait_for_disk(DATA_DISK_SERIAL, wait)?;
            let data_s = data.to_string_lossy().into_owned();
            do_mount(&data_s, DATA_DIR, "ext4", MsFlags::MS_NOATIME, data_opts)?;
            format!("{data_s} (ext4)")
        }
        DataDisk::Encrypted(enc) => {
            let raw = wait_for_disk(DATA_DISK_SERIAL, wait)?;
            let t = Instant::now();
            let mapped =
                super::dm::open_crypt(&raw, &enc.cipher, enc.key_hex.expose(), enc.sector_size)?;
            let crypt_ms = t.elapsed().as_millis();
            let mapped_s = mapped.to_string_lossy().into_owned();
            let t = Instant::now();
            do_mount(&mapped_s, DATA_DIR, "ext4", MsFlags::MS_NOATIME, data_opts)?;
            let mount_ms = t.elapsed().as_millis();
            let grown = match super::dm::grow_fs(&mapped, Path::new(DATA_DIR)) {
                Ok(Some(blocks)) => format!(", grown to {blocks} blocks"),
                Ok(None) => String::new(),
                Err(e) => {
                    tracing::warn!("growing the data file system: {e}");
                    String::new()
                }
            };
            format!(
                "{} ({}, {mapped_s}, ext4{grown}; dm-crypt {crypt_ms} ms, mount {mount_ms} ms)",
                raw.display(),
                enc.cipher
            )
        }
        DataDisk::Tmpfs => {
            do_mount(
                "tmpfs",
                DATA_DIR,
                "tmpfs",
                MsFlags::empty(),
                Some("mode=0755"),
            )?;
            "tmpfs".to_string()
        }
    };
    let t = Instant::now();
    let upper = format!("{DATA_DIR}/upper");
    let work = format!("{DATA_DIR}/work");
    mkdir(&upper)?;
    mkdir(&work)?;
    let opts = format!("lowerdir={IMAGE_DIR},upperdir={upper},workdir={work}");
    do_mount(
        "overlay",
        ROOT_DIR,
        "overlay",
        MsFlags::empty(),
        Some(&opts),
    )?;
    let data = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(DATA_DIR)
        .ok()
        .map(OwnedFd::from);
    Ok(PreparedRoot {
        data,
        summary: format!(
            "image {image_s} (ro) + {data_desc} -> {ROOT_DIR} (overlay {} ms)",
            t.elapsed().as_millis()
        ),
    })
}

/// Delete everything under `dir` that lives on device `dev` (not crossing mounts).
fn delete_contents(dir: &Path, dev: u64) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for de in rd.flatten() {
        let path = de.path();
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        if md.dev() != dev {
            continue; // a mount point
        }
        if md.is_dir() {
            delete_contents(&path, dev);
            let _ = fs::remove_dir(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Like busybox/util-linux `switch_root`: move the API mounts into `new_root`, free the
/// initramfs, make `new_root` the `/` of this mount namespace and chroot into it.
pub fn switch_root(new_root: &Path) -> Result<(), MountError> {
    let root_md = fs::metadata("/").map_err(|e| MountError::Switch(format!("stat /: {e}")))?;
    let new_md = fs::metadata(new_root)
        .map_err(|e| MountError::Switch(format!("stat {}: {e}", new_root.display())))?;
    if root_md.dev() == new_md.dev() {
        return Err(MountError::Switch(format!(
            "{} is not a mount point",
            new_root.display()
        )));
    }
    for m in ["/dev", "/proc", "/sys", "/run"] {
        let target = new_root.join(&m[1..]);
        let _ = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&target);
        if let Err(e) = mount(
            Some(m),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        ) {
            tracing::warn!("moving {m} into the new root: {e}; detaching it");
            let _ = umount2(m, MntFlags::MNT_DETACH);
        }
    }
    // Free the initramfs's RAM, but only if / really is one.
    match nix::sys::statfs::statfs("/") {
        Ok(st) => {
            // f_type is a different integer type on different architectures.
            #[allow(clippy::unnecessary_cast)]
            let magic = st.filesystem_type().0 as i64;
            if magic == RAMFS_MAGIC || magic == TMPFS_MAGIC {
                delete_contents(Path::new("/"), root_md.dev());
            } else {
                tracing::warn!("/ is not an initramfs (magic {magic:#x}); not deleting it");
            }
        }
        Err(e) => tracing::warn!("statfs /: {e}"),
    }
    nix::unistd::chdir(new_root)
        .map_err(|e| MountError::Switch(format!("chdir {}: {e}", new_root.display())))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| MountError::Switch(format!("mount --move . /: {e}")))?;
    nix::unistd::chroot(".").map_err(|e| MountError::Switch(format!("chroot .: {e}")))?;
    nix::unistd::chdir("/").map_err(|e| MountError::Switch(format!("chdir /: {e}")))?;
    Ok(())
}

/// Best effort at power-off: remount `/` and the writable layer read-only.
pub fn remount_readonly(data: Option<&OwnedFd>) {
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Err(e) = mount(None::<&str>, "/", None::<&str>, flags, None::<&str>) {
        tracing::warn!("remount / read-only: {e}");
    }
    if let Some(fd) = data {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if let Err(e) = mount(
            None::<&str>,
            path.as_str(),
            None::<&str>,
            flags,
            None::<&str>,
        ) {
            tracing::warn!("remount the data disk read-only: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_disks_by_serial() {
        let d = tempfile::tempdir().unwrap();
        for (n, s) in [("vda", IMAGE_DISK_SERIAL), ("vdb", DATA_DISK_SERIAL)] {
            fs::create_dir(d.path().join(n)).unwrap();
            fs::write(d.path().join(n).join("serial"), format!("{s}\n")).unwrap();
        }
        fs::create_dir(d.path().join("loop0")).unwrap();
        assert_eq!(
            find_disk_in(d.path(), IMAGE_DISK_SERIAL).as_deref(),
            Some("vda")
        );
        assert_eq!(
            find_disk_in(d.path(), DATA_DISK_SERIAL).as_deref(),
            Some("vdb")
        );
        assert_eq!(find_disk_in(d.path(), "nope"), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_image() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("bin/busybox"), b"elf").unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
        // Absolute: the image's /bin/busybox, not the host's.
        std::os::unix::fs::symlink("/bin/busybox", root.join("usr/bin/true")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("bin/loop")).unwrap();
        assert_eq!(
            resolve_in_image(root, "bin/sh"),
            Some(root.join("bin/busybox"))
        );
        assert_eq!(
            resolve_in_image(root, "usr/bin/true"),
            Some(root.join("bin/busybox"))
        );
        assert_eq!(resolve_in_image(root, "bin/loop"), None);
        assert_eq!(resolve_in_image(root, "bin/missing"), None);
        assert_eq!(warm_image(root), (1, 3));
    }

    #[test]
    fn mountpoints() {
        assert!(is_mountpoint(Path::new("/")));
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mountpoint(d.path()));
    }
}
