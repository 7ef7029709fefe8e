//! Building the guest initramfs: our agent as `/init`, the modules the guest loads, and
//! the module list the agent reads. The archive is uncompressed newc (the kernel unpacks
//! it without a decompressor, which is the cheaper path under TCG), deterministic
//! (mtime 0, fixed inode numbers) and cached by the sha256 of its inputs.

use crate::kernel::GuestKernel;
use crate::modules::MODULE_LIST_PATH;
use crate::{io_err, GuestError};
use cpio::newc::{Builder, ModeFileType};
use sha2::{Digest, Sha256};
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Bumped whenever the archive's layout changes.
const LAYOUT_VERSION: u32 = 1;

const DIRS: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "mnt",
    "etc",
    "etc/warren",
    "lib",
    "lib/modules",
];

/// Build (or reuse) the initramfs for `kernel` with `agent` as /init, under
/// `cache_dir/initramfs/`. Returns the archive's path.
pub fn build_initramfs(
    kernel: &GuestKernel,
    agent: &Path,
    cache_dir: &Path,
) -> Result<PathBuf, GuestError> {
    if !agent.is_file() {
        return Err(GuestError::AgentMissing(agent.to_path_buf()));
    }
    let module_list = kernel
        .modules
        .iter()
        .map(|(inner, _)| format!("/{inner}\n"))
        .collect::<String>();

    // Keyed by the inputs' identity (path, size, mtime, inode), not their contents:
    // this runs on every workspace boot and hashing megabytes each time would cost
    // more than the lookup is worth. A rebuilt agent or module gets a new mtime.
    let mut h = Sha256::new();
    h.update(LAYOUT_VERSION.to_le_bytes());
    h.update(module_list.as_bytes());
    for p in std::iter::once(agent).chain(kernel.modules.iter().map(|(_, host)| host.as_path())) {
        h.update(file_identity(p)?.as_bytes());
    }
    let key = hex::encode(h.finalize());
    let dir = cache_dir.join("initramfs");
    std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let out = dir.join(format!("{}-{}.cpio", kernel.release, &key[..16]));
    if out.exists() {
        return Ok(out);
    }

    let agent_bytes =
        std::fs::read(agent).map_err(io_err(format!("read agent {}", agent.display())))?;
    if !is_static_elf(&agent_bytes) {
        return Err(GuestError::AgentNotStatic(agent.to_path_buf()));
    }
    let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io_err("create temp initramfs"))?;
    let mut w = BufWriter::new(tmp.as_file());
    let mut ino = 1u32;
    let mut dirs: Vec<String> = DIRS.iter().map(|s| s.to_string()).collect();
    for (inner, _) in &kernel.modules {
        let mut p = Path::new(inner).parent();
        while let Some(d) = p {
            let s = d.to_string_lossy().to_string();
            if !s.is_empty() && !dirs.contains(&s) {
                dirs.push(s);
            }
            p = d.parent();
        }
    }
    dirs.sort();
    for d in &dirs {
        w = entry(w, d, ModeFileType::Directory, 0o755, &[], &mut ino)?;
    }
    w = entry(
        w,
        "init",
        ModeFileType::Regular,
        0o755,
        &agent_bytes,
        &mut ino,
    )?;
    w = entry(
        w,
        MODULE_LIST_PATH,
        ModeFileType::Regular,
        0o644,
        module_list.as_bytes(),
        &mut ino,
    )?;
    for (inner, host) in &kernel.modules {
        let bytes = std::fs::read(host).map_err(io_err(format!("read {}", host.display())))?;
        w = entry(w, inner, ModeFileType::Regular, 0o644, &bytes, &mut ino)?;
    }
    let mut w = cpio::newc::trailer(w).map_err(io_err("write cpio trailer"))?;
    w.flush().map_err(io_err("flush initramfs"))?;
    drop(w);
    tmp.persist(&out).map_err(|e| GuestError::Io {
        context: format!("install {}", out.display()),
        source: e.error,
    })?;
    Ok(out)
}

fn entry<W: Write>(
    w: W,
    name: &str,
    kind: ModeFileType,
    perm: u32,
    data: &[u8],
    ino: &mut u32,
) -> Result<W, GuestError> {
    *ino += 1;
    let nlink = if matches!(kind, ModeFileType::Directory) {
        2
    } else {
        1
    };
    let mut writer = Builder::new(name)
        .ino(*ino)
        .mode(perm)
        .set_mode_file_type(kind)
        .nlink(nlink)
        .write(w, data.len() as u32);
    writer
        .write_all(data)
        .map_err(io_err(format!("write {name} into initramfs")))?;
    writer.finish().map_err(io_err(format!("finish {name}")))
}

/// A 64-bit little-endian ELF executable with no program interpreter (PT_INTERP),
/// i.e. one the kernel can run with nothing else in the initramfs.
pub fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8).map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        })
    };
    if b.get(..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let off = phoff as usize + i * phentsize as usize;
        u32_at(off).is_some_and(|p_type| p_type != 3)
    })
}

fn file_identity(p: &Path) -> Result<String, GuestError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).map_err(io_err(format!("stat {}", p.display())))?;
    Ok(format!(
        "{}:{}:{}.{}:{}:{}\n",
        p.display(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino(),
        m.dev()
    ))
}

/// An exclusive `flock` held until dropped.
pub struct FileLock {
    file: std::fs::File,
}

impl FileLock {
    pub fn acquire(path: &Path) -> Result<Self, GuestError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(format!("open lock {}", path.display())))?;
        // SAFETY: flock on an fd we own; blocking until the lock is ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(GuestError::Io {
                context: format!("lock {}", path.display()),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(FileLock { file })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking an fd we own.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_holds_init_modules_and_list() {
        let tmp = tempfile::tempdir().expect("tmp");
        let agent = tmp.path().join("agent");
        std::fs::write(&agent, fake_static_elf()).expect("write");
        let m = tmp.path().join("virtio.ko");
        std::fs::write(&m, b"module bytes").expect("write");
        let k = GuestKernel {
            release: "6.1.0-test".into(),
            vmlinux: tmp.path().join("vmlinux"),
            modules: vec![("lib/modules/6.1.0-test/kernel/virtio.ko".into(), m)],
            needs_acpi: true,
        };
        let out = build_initramfs(&k, &agent, tmp.path()).expect("build");
        let again = build_initramfs(&k, &agent, tmp.path()).expect("cached");
        assert_eq!(out, again);

        let mut names = Vec::new();
        let mut contents = std::collections::HashMap::new();
        let mut f = std::fs::File::open(&out).expect("open");
        loop {
            let r = cpio::newc::Reader::new(f).expect("entry");
            if r.entry().is_trailer() {
                break;
            }
            let name = r.entry().name().to_string();
            let mut r = r;
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut r, &mut buf).expect("read");
            names.push(name.clone());
            contents.insert(name, buf);
            f = r.finish().expect("finish");
        }
        assert!(names.contains(&"init".to_string()));
        assert_eq!(contents["init"], fake_static_elf());
        assert_eq!(
            String::from_utf8_lossy(&contents["etc/warren/modules"]),
            "/lib/modules/6.1.0-test/kernel/virtio.ko\n"
        );
        assert!(names.contains(&"lib/modules/6.1.0-test/kernel".to_string()));
        assert!(
            names
                .iter()
                .position(|n| n == "lib/modules/6.1.0-test/kernel")
                < names.iter().position(|n| n.ends_with("virtio.ko"))
        );
    }

    /// An ELF header with one PT_LOAD program header.
    fn fake_static_elf() -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&1u32.to_le_bytes());
        b
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        assert!(is_static_elf(&fake_static_elf()));
        let mut dynamic = fake_static_elf();
        dynamic[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert!(!is_static_elf(&dynamic));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        // This test binary itself is dynamically linked.
        let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        assert!(!is_static_elf(&me));
    }

    #[test]
    fn missing_agent_is_a_clear_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        let k = GuestKernel::custom("x", tmp.path().join("vmlinux"));
        let err = build_initramfs(&k, &tmp.path().join("nope"), tmp.path()).unwrap_err();
        assert!(err.to_string().contains("guest agent binary not found"));
    }
}
