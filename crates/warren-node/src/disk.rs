//! The workspace's writable disk: a fixed-size sparse raw file holding an ext4
//! encrypted with AES-256-XTS (dm-crypt's `aes-xts-plain64`, 512-byte sectors) under
//! the workspace's own data key.
//!
//! The host has no dm-crypt, and the guest is the only place the disk is opened. A
//! fresh disk is laid out here without ever writing plaintext to the host's disk:
//! `mkfs.ext4` formats a memfd (RAM) of the disk's size, then every sector it wrote is
//! encrypted in memory and written to the disk file at the same offset. What mkfs did
//! not write stays a hole: in the guest it reads as noise, which ext4 never looks at
//! (lazy inode-table and journal init, exactly as on a fresh LUKS volume).
//! `UNIX_IO_NOZEROOUT` makes mke2fs write the zeros it means (instead of punching
//! holes in a regular file), so every block it relies on being zero is encrypted too.
//!
//! Cost: mkfs of 1 GiB writes ~0.7 MB (1 TiB: ~16 MB) of metadata; the whole
//! format-and-encrypt takes a few tens of milliseconds (the boot report's `disk_ms`).

use crate::{NodeError, Result};
use aes::cipher::KeyInit;
use aes::Aes256;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;
use warren_kms::DataKey;
use xts_mode::{get_tweak_default, Xts128};
use zeroize::Zeroize;

/// dm-crypt's name for what [`create_encrypted_disk`] writes.
pub const CIPHER: &str = "aes-xts-plain64";
pub const SECTOR: usize = 512;

/// The cipher of a data key: `aes-xts-plain64` with 512-byte sectors, sector `n`'s
/// tweak being `n` (little-endian), as dm-crypt does it.
pub struct DiskCipher(Xts128<Aes256>);

impl DiskCipher {
    pub fn new(key: &DataKey) -> DiskCipher {
        let k = key.as_bytes();
        // Both halves are exactly 32 bytes, so these cannot fail.
        let c1 = Aes256::new_from_slice(&k[..32]).expect("32-byte key");
        let c2 = Aes256::new_from_slice(&k[32..]).expect("32-byte key");
        DiskCipher(Xts128::new(c1, c2))
    }

    /// Encrypt `buf` (whole sectors) that starts at byte `offset` of the disk.
    pub fn encrypt(&self, buf: &mut [u8], offset: u64) {
        self.0.encrypt_area(
            buf,
            SECTOR,
            (offset / SECTOR as u64) as u128,
            get_tweak_default,
        );
    }

    pub fn decrypt(&self, buf: &mut [u8], offset: u64) {
        self.0.decrypt_area(
            buf,
            SECTOR,
            (offset / SECTOR as u64) as u128,
            get_tweak_default,
        );
    }
}

fn disk_err(what: impl std::fmt::Display) -> NodeError {
    NodeError::Disk(what.to_string())
}

/// An anonymous RAM file (memfd); gone when the last descriptor closes.
fn memfd(name: &str, size: u64) -> Result<File> {
    let cname = std::ffi::CString::new(name).map_err(disk_err)?;
    // SAFETY: a valid NUL-terminated name; the returned fd is owned by the File.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(disk_err(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size)
        .map_err(|e| disk_err(format!("size the in-memory disk: {e}")))?;
    Ok(f)
}

/// The next data range `[start, end)` of `f` at or after `from`, by SEEK_DATA/HOLE.
fn next_data(f: &File, from: u64) -> Option<(u64, u64)> {
    // SAFETY: lseek on a descriptor we own.
    let start = unsafe { libc::lseek(f.as_raw_fd(), from as i64, libc::SEEK_DATA) };
    if start < 0 {
        return None; // ENXIO: no data after `from`
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(f.as_raw_fd(), start, libc::SEEK_HOLE) };
    (end > start).then_some((start as u64, end as u64))
}

fn run_mkfs(target: &str) -> Result<()> {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", "warren-data"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(target)
        // Write real zeros instead of punching holes (see the module docs).
        .env("UNIX_IO_NOZEROOUT", "1")
        .output()
        .map_err(|e| disk_err(format!("cannot run mkfs.ext4 (install e2fsprogs): {e}")))?;
    if !out.status.success() {
        return Err(disk_err(format!(
            "mkfs.ext4 {target} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Create `path` as a sparse file of `size_mb` MiB holding an empty ext4 encrypted
/// under `key` (see the module docs). Plaintext exists only in RAM.
pub fn create_encrypted_disk(path: &Path, size_mb: u64, key: &DataKey) -> Result<()> {
    let size = size_mb << 20;
    let plain = memfd("warren-disk-layout", size)?;
    run_mkfs(&format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        plain.as_raw_fd()
    ))?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| disk_err(format!("create {}: {e}", path.display())))?;
    let result = (|| {
        out.set_len(size)
            .map_err(|e| disk_err(format!("size {}: {e}", path.display())))?;
        let cipher = DiskCipher::new(key);
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0;
        while let Some((start, end)) = next_data(&plain, pos) {
            let mut off = start - start % SECTOR as u64;
            while off < end {
                let n = ((end - off) as usize).min(buf.len());
                let n = n.next_multiple_of(SECTOR).min((size - off) as usize);
                let chunk = &mut buf[..n];
                plain
                    .read_exact_at(chunk, off)
                    .map_err(|e| disk_err(format!("read the in-memory disk: {e}")))?;
                cipher.encrypt(chunk, off);
                out.write_all_at(chunk, off)
                    .map_err(|e| disk_err(format!("write {}: {e}", path.display())))?;
                off += n as u64;
            }
            pos = end;
        }
        buf.zeroize();
        out.sync_all()
            .map_err(|e| disk_err(format!("sync {}: {e}", path.display())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Create `path` as a sparse file of `size_mb` MiB holding an empty, unencrypted
/// ext4 (`NodeConfig::encrypt_disks = false`).
pub fn create_plain_disk(path: &Path, size_mb: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| disk_err(format!("create {}: {e}", path.display())))?;
    f.set_len(size_mb << 20)
        .map_err(|e| disk_err(format!("size {}: {e}", path.display())))?;
    drop(f);
    if let Err(e) = run_mkfs(&path.to_string_lossy()) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Make a stopped workspace's disk `size_mb` MiB; it never shrinks. The guest grows
/// its file system to fill it at the next boot.
pub fn grow_disk(path: &Path, size_mb: u64) -> Result<bool> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| disk_err(format!("open {}: {e}", path.display())))?;
    let now = f
        .metadata()
        .map_err(|e| disk_err(format!("stat {}: {e}", path.display())))?
        .len();
    let want = size_mb << 20;
    if want < now {
        return Err(NodeError::Invalid {
            field: "disk_size_mb",
            reason: format!(
                "{size_mb} is smaller than the disk ({} MiB): disks only grow",
                now >> 20
            ),
        });
    }
    if want == now {
        return Ok(false);
    }
    f.set_len(want)
        .map_err(|e| disk_err(format!("grow {}: {e}", path.display())))?;
    Ok(true)
}

/// Grow the disk at `path` to `size_mb` MiB if it is smaller; a bigger disk stays.
pub fn grow_at_least(path: &Path, size_mb: u64) -> Result<bool> {
    match disk_size_mb(path) {
        Some(now) if now < size_mb => grow_disk(path, size_mb),
        _ => Ok(false),
    }
}

/// Size of a disk file in MiB.
pub fn disk_size_mb(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len() >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Decrypt a whole disk file into memory (tests only).
    fn decrypt_file(path: &Path, key: &DataKey) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(path).unwrap().read_to_end(&mut v).unwrap();
        DiskCipher::new(key).decrypt(&mut v, 0);
        v
    }

    #[test]
    fn xts_matches_ieee_1619_vector() {
        // IEEE 1619-2007 XTS-AES-256 vector 10: keys, data unit 0xff, 512 bytes of
        // 00..ff twice. Our tweak for sector n is n: use offset 0xff * 512.
        let k1 = "2718281828459045235360287471352662497757247093699959574966967627";
        let k2 = "3141592653589793238462643383279502884197169399375105820974944592";
        let key = DataKey::from_bytes(&hex::decode(format!("{k1}{k2}")).unwrap()).unwrap();
        let mut data: Vec<u8> = (0..512).map(|i| (i % 256) as u8).collect();
        DiskCipher::new(&key).encrypt(&mut data, 0xff * 512);
        assert_eq!(
            hex::encode(&data[..32]),
            "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b"
        );
        DiskCipher::new(&key).decrypt(&mut data, 0xff * 512);
        assert_eq!(data[511], 255);
    }

    #[test]
    fn encrypted_disk_holds_an_ext4_only_under_its_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("data.img");
        let key = DataKey::generate();
        create_encrypted_disk(&p, 64, &key).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 64 << 20);
        // Ciphertext: no ext4 magic, no label in the clear.
        let raw = std::fs::read(&p).unwrap();
        assert_ne!(&raw[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        assert!(!raw.windows(11).any(|w| w == b"warren-data"));
        // Under the key: an ext4 that fsck accepts.
        let plain = decrypt_file(&p, &key);
        assert_eq!(&plain[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        let check = d.path().join("plain.img");
        std::fs::write(&check, &plain).unwrap();
        let out = Command::new("e2fsck")
            .args(["-fn"])
            .arg(&check)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Under another key: noise.
        let other = decrypt_file(&p, &DataKey::generate());
        assert_ne!(&other[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        // Existing files are never overwritten.
        assert!(create_encrypted_disk(&p, 64, &key).is_err());
    }

    #[test]
    fn disks_only_grow() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("data.img");
        std::fs::write(&p, b"").unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        assert!(matches!(
            grow_disk(&p, 32),
            Err(NodeError::Invalid {
                field: "disk_size_mb",
                ..
            })
        ));
        assert!(!grow_disk(&p, 64).unwrap());
        assert!(grow_disk(&p, 128).unwrap());
        assert_eq!(disk_size_mb(&p), Some(128));
    }
}
