//! Opening the encrypted writable disk: a dm-crypt mapping set up through the
//! device-mapper ioctls (`/dev/mapper/control`), and growing its ext4 when the host
//! made the disk bigger.
//!
//! Direct ioctls rather than the `devicemapper` crate (Stratis): we need three calls
//! (create, load one `crypt` target, resume), and that crate would pull a dozen
//! dependencies into a static binary that is loaded on every boot. The structures
//! are those of `<linux/dm-ioctl.h>` (interface version 4), checked by the tests.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

const CONTROL: &str = "/dev/mapper/control";
/// The mapped (plaintext) view of the data disk.
pub const MAPPED_NAME: &str = "warren-data";

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;
const DM_IOCTL: u8 = 0xfd;
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_REMOVE: u8 = 4;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;
/// Ask the kernel to wipe the ioctl buffers that held the table (the key).
const DM_SECURE_DATA_FLAG: u32 = 1 << 15;

#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

const HDR: usize = std::mem::size_of::<DmIoctl>();
const SPEC: usize = std::mem::size_of::<DmTargetSpec>();

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("open {CONTROL}: {0} (is dm-mod loaded?)")]
    Control(std::io::Error),
    #[error("device-mapper {op} {name}: {err}")]
    Ioctl {
        op: &'static str,
        name: String,
        err: std::io::Error,
    },
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: String,
        err: std::io::Error,
    },
    #[error("bad encrypted disk parameters: {0}")]
    Params(String),
}

fn request(nr: u8) -> libc::c_ulong {
    // _IOWR(DM_IOCTL, nr, struct dm_ioctl)
    nix::request_code_readwrite!(DM_IOCTL, nr, HDR) as libc::c_ulong
}

/// One device-mapper call: the header for `name`, then `payload` (target specs).
/// Returns the header the kernel wrote back. The buffer is wiped afterwards.
fn dm_call(
    ctl: &File,
    op: &'static str,
    nr: u8,
    name: &str,
    flags: u32,
    target_count: u32,
    payload: &[u8],
) -> Result<DmIoctl, DmError> {
    if name.len() >= DM_NAME_LEN {
        return Err(DmError::Params(format!("mapping name {name:?} too long")));
    }
    // u64 storage keeps the header 8-byte aligned.
    let total = (HDR + payload.len() + 4096).next_multiple_of(8);
    let mut buf = vec![0u64; total / 8];
    // SAFETY: `buf` is `total` bytes, 8-aligned, and lives for the whole function.
    let bytes = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, total) };
    let mut h = DmIoctl {
        version: [4, 0, 0],
        data_size: total as u32,
        data_start: HDR as u32,
        target_count,
        open_count: 0,
        flags,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; DM_NAME_LEN],
        uuid: [0; DM_UUID_LEN],
        data: [0; 7],
    };
    h.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: DmIoctl is plain old data of HDR bytes; `bytes` holds at least HDR.
    unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr() as *mut DmIoctl, h) };
    bytes[HDR..HDR + payload.len()].copy_from_slice(payload);
    // SAFETY: the request code matches the buffer layout (a dm_ioctl header followed
    // by data_size - HDR bytes), which the kernel reads and writes within data_size.
    let r = unsafe { libc::ioctl(ctl.as_raw_fd(), request(nr) as _, bytes.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: as above; the kernel wrote back a header.
    let out = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const DmIoctl) };
    bytes.zeroize();
    if r < 0 {
        return Err(DmError::Ioctl {
            op,
            name: name.to_string(),
            err,
        });
    }
    Ok(out)
}

/// Size of a block device in bytes.
fn device_bytes(dev: &Path) -> Result<u64, DmError> {
    let f = File::open(dev).map_err(|err| DmError::Io {
        what: "open",
        path: dev.display().to_string(),
        err,
    })?;
    let mut size: u64 = 0;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    let req = nix::request_code_read!(0x12, 114, std::mem::size_of::<usize>());
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, &mut size as *mut u64) };
    if r < 0 {
        return Err(DmError::Io {
            what: "BLKGETSIZE64",
            path: dev.display().to_string(),
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(size)
}

/// The `crypt` target's parameters for `dev` (`<cipher> <key> <iv_offset> <dev>
/// <offset> [<#opts> <opts>]`).
fn crypt_params(cipher: &str, key_hex: &str, dev: &Path, sector_size: u32) -> String {
    let mut p = format!("{cipher} {key_hex} 0 {} 0", dev.display());
    if sector_size != 512 {
        p.push_str(&format!(" 1 sector_size:{sector_size}"));
    }
    p
}

/// Map `dev` through dm-crypt under `key_hex` as [`MAPPED_NAME`]; returns the
/// device node of the plaintext view.
pub fn open_crypt(
    dev: &Path,
    cipher: &str,
    key_hex: &str,
    sector_size: u32,
) -> Result<PathBuf, DmError> {
    if cipher.is_empty() || cipher.contains(char::is_whitespace) {
        return Err(DmError::Params(format!("cipher {cipher:?}")));
    }
    if key_hex.is_empty() || !key_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DmError::Params("the key is not hex".into()));
    }
    if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
        return Err(DmError::Params(format!("sector size {sector_size}")));
    }
    let sectors = device_bytes(dev)? / 512;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(DmError::Control)?;
    dm_call(&ctl, "create", DM_DEV_CREATE, MAPPED_NAME, 0, 0, &[])?;

    let mut params = crypt_params(cipher, key_hex, dev, sector_size).into_bytes();
    params.push(0);
    let mut payload = vec![0u8; (SPEC + params.len()).next_multiple_of(8)];
    let mut spec = DmTargetSpec {
        sector_start: 0,
        length: sectors,
        status: 0,
        next: 0,
        target_type: [0; DM_MAX_TYPE_NAME],
    };
    spec.target_type[..5].copy_from_slice(b"crypt");
    // SAFETY: DmTargetSpec is plain old data of SPEC bytes; payload holds more.
    unsafe { std::ptr::write_unaligned(payload.as_mut_ptr() as *mut DmTargetSpec, spec) };
    payload[SPEC..SPEC + params.len()].copy_from_slice(&params);
    params.zeroize();
    let loaded = dm_call(
        &ctl,
        "load table",
        DM_TABLE_LOAD,
        MAPPED_NAME,
        DM_SECURE_DATA_FLAG,
        1,
        &payload,
    );
    payload.zeroize();
    if let Err(e) = loaded {
        let _ = dm_call(&ctl, "remove", DM_DEV_REMOVE, MAPPED_NAME, 0, 0, &[]);
        return Err(e);
    }
    // Resuming a device with a loaded table makes it live.
    let live = match dm_call(&ctl, "resume", DM_DEV_SUSPEND, MAPPED_NAME, 0, 0, &[]) {
        Ok(h) => h,
        Err(e) => {
            let _ = dm_call(&ctl, "remove", DM_DEV_REMOVE, MAPPED_NAME, 0, 0, &[]);
            return Err(e);
        }
    };
    // Our own node: there is no udev to make /dev/mapper/<name>.
    let node = PathBuf::from(format!("/dev/mapper/{MAPPED_NAME}"));
    let _ = std::fs::remove_file(&node);
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        live.dev as libc::dev_t,
    )
    .map_err(|e| DmError::Io {
        what: "mknod",
        path: node.display().to_string(),
        err: e.into(),
    })?;
    Ok(node)
}

/// One target spec of `target_type` over `sectors`, followed by its NUL-terminated
/// parameters, padded to 8 bytes (a `DM_TABLE_LOAD` payload).
fn table_payload(target_type: &str, sectors: u64, params: &str) -> Vec<u8> {
    let mut payload = vec![0u8; (SPEC + params.len() + 1).next_multiple_of(8)];
    let mut spec = DmTargetSpec {
        sector_start: 0,
        length: sectors,
        status: 0,
        next: 0,
        target_type: [0; DM_MAX_TYPE_NAME],
    };
    let n = target_type.len().min(DM_MAX_TYPE_NAME - 1);
    spec.target_type[..n].copy_from_slice(&target_type.as_bytes()[..n]);
    // SAFETY: DmTargetSpec is plain old data of SPEC bytes; payload holds more.
    unsafe { std::ptr::write_unaligned(payload.as_mut_ptr() as *mut DmTargetSpec, spec) };
    payload[SPEC..SPEC + params.len()].copy_from_slice(params.as_bytes());
    payload
}

/// Load (and drop) a throwaway dm-crypt table of `cipher` over `dev` (read-only: the
/// image disk), with a fixed key that protects nothing and no data read. The first
/// mapping of a boot pays for instantiating the cipher (the crypto API builds
/// `xts(aes)` through its manager thread); done before `Hello`, a template is saved
/// with that done, and a clone's real [`open_crypt`] only creates its own mapping.
pub fn warm_crypt(cipher: &str, dev: &Path) -> Result<(), DmError> {
    const WARM: &str = "warren-warm-crypt";
    /// `DM_READONLY_FLAG`: the table opens `dev` read-only.
    const READONLY: u32 = 1;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(DmError::Control)?;
    dm_call(&ctl, "create", DM_DEV_CREATE, WARM, 0, 0, &[])?;
    // Not a secret: 64 bytes 0, 1, 2, ... (the two XTS halves differ).
    let key: String = (0u8..64).map(|b| format!("{b:02x}")).collect();
    let params = format!("{cipher} {key} 0 {} 0", dev.display());
    let crypt = table_payload("crypt", 8, &params);
    // Loading the table runs the target's constructor, which allocates the cipher.
    let r = dm_call(&ctl, "load table", DM_TABLE_LOAD, WARM, READONLY, 1, &crypt);
    let _ = dm_call(&ctl, "remove", DM_DEV_REMOVE, WARM, 0, 0, &[]);
    r.map(|_| ())
}

/// Total blocks and block size of the ext4 on `dev` (from its superblock).
fn ext4_geometry(dev: &Path) -> Result<(u64, u64), DmError> {
    let io = |err| DmError::Io {
        what: "read superblock",
        path: dev.display().to_string(),
        err,
    };
    let f = File::open(dev).map_err(io)?;
    let mut sb = [0u8; 1024];
    f.read_exact_at(&mut sb, 1024).map_err(io)?;
    let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return Err(DmError::Params(format!("{} holds no ext4", dev.display())));
    }
    let block = 1024u64 << u32_at(24);
    let mut blocks = u32_at(4) as u64;
    const INCOMPAT_64BIT: u32 = 0x80;
    if u32_at(0x60) & INCOMPAT_64BIT != 0 {
        blocks |= (u32_at(0x150) as u64) << 32;
    }
    Ok((blocks, block))
}

/// Grow the ext4 mounted at `mountpoint` (on `dev`) to fill `dev` if the host made
/// the disk bigger. Returns the new size in blocks when it grew.
pub fn grow_fs(dev: &Path, mountpoint: &Path) -> Result<Option<u64>, DmError> {
    let (blocks, block) = ext4_geometry(dev)?;
    let want = device_bytes(dev)? / block;
    if want <= blocks {
        return Ok(None);
    }
    let dir = File::open(mountpoint).map_err(|err| DmError::Io {
        what: "open",
        path: mountpoint.display().to_string(),
        err,
    })?;
    // EXT4_IOC_RESIZE_FS = _IOW('f', 16, __u64): online resize, done by the kernel.
    let req = nix::request_code_write!(b'f', 16, 8);
    let n: u64 = want;
    // SAFETY: the ioctl reads one u64 from the pointer.
    let r = unsafe { libc::ioctl(dir.as_raw_fd(), req as _, &n as *const u64) };
    if r < 0 {
        return Err(DmError::Io {
            what: "EXT4_IOC_RESIZE_FS",
            path: mountpoint.display().to_string(),
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(Some(want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_linux_dm_ioctl_h() {
        assert_eq!(HDR, 312);
        assert_eq!(SPEC, 40);
        // _IOWR(0xfd, 9, struct dm_ioctl) as libdevmapper computes it.
        assert_eq!(request(DM_TABLE_LOAD), 0xc138fd09);
        assert_eq!(request(DM_DEV_CREATE), 0xc138fd03);
    }

    #[test]
    fn crypt_table_line() {
        assert_eq!(
            crypt_params("aes-xts-plain64", "00ff", Path::new("/dev/vdb"), 512),
            "aes-xts-plain64 00ff 0 /dev/vdb 0"
        );
        assert_eq!(
            crypt_params("aes-xts-plain64", "00", Path::new("/dev/vdb"), 4096),
            "aes-xts-plain64 00 0 /dev/vdb 0 1 sector_size:4096"
        );
    }

    #[test]
    fn bad_parameters_touch_nothing() {
        assert!(matches!(
            open_crypt(Path::new("/nonexistent"), "aes xts", "00", 512),
            Err(DmError::Params(_))
        ));
        assert!(matches!(
            open_crypt(Path::new("/nonexistent"), "aes-xts-plain64", "zz", 512),
            Err(DmError::Params(_))
        ));
    }
}
