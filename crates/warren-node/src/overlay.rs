//! A fork child's writable disk: a qcow2 overlay over the fork's base, encrypted by
//! QEMU (qcow2's LUKS encryption) under a key of the child's own.
//!
//! Why: a child's memory is a copy of its parent's, so the guest's dm-crypt maps the
//! child's disk with the parent's key whatever Warren does. Its own writes, though,
//! land in its overlay only, and QEMU encrypts them again, under the child's overlay
//! key (wrapped in the child's `overlay.key`). Destroying that key (deleting the
//! child) makes every block the child ever wrote unreadable, even to someone who
//! holds the parent's key; the shared base stays the parent's data, under its key.
//!
//! Why not `qemu-img create -o encrypt.format=luks`: QEMU 7.2 benchmarks PBKDF2 for
//! at least half a second per call, twice per image, whatever `iter-time` says:
//! 2-3 s of CPU per child, 25 s for a fork of 10 on two cores. The passphrase here is
//! 64 random bytes (hex), not something a person chose, so key stretching adds
//! nothing: the LUKS header is written here with the LUKS1 minimum of 1000
//! iterations, in microseconds. The file is a plain qcow2 v3 image (header, one
//! refcount table and block, the L1 table, then the LUKS header area named by the
//! full-disk-encryption header extension), which `qemu-img check` verifies in the
//! tests, and QEMU reads and writes in the VM tests.
//!
//! Formats: qcow2 (QEMU's docs/interop/qcow2.txt) and LUKS1 (cryptsetup's
//! on-disk-format.pdf, version 1.2.1): `aes` `xts-plain64` with a 512-bit master key,
//! `sha256` for PBKDF2 and the anti-forensic splitter, 4000 stripes, keyslot 0 only.

use crate::disk::{DiskCipher, SECTOR};
use crate::{NodeError, Result};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use zeroize::Zeroizing;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;

const LUKS_MAGIC: [u8; 6] = [b'L', b'U', b'K', b'S', 0xba, 0xbe];
const LUKS_HEADER_LEN: usize = 592;
const MASTER_KEY_LEN: usize = 64; // AES-256-XTS: two 256-bit keys
const STRIPES: usize = 4000;
const SLOTS: usize = 8;
const ITERATIONS: u32 = 1000; // LUKS1's minimum; see the module docs
const SLOT_ENABLED: u32 = 0x00ac_71f3;
const SLOT_DISABLED: u32 = 0x0000_dead;
/// Key material starts 4 KiB in, and each slot's area is 4 KiB aligned (as
/// cryptsetup and QEMU lay it out).
const SLOT_ALIGN_SECTORS: u32 = 4096 / SECTOR as u32;

fn err(what: impl std::fmt::Display) -> NodeError {
    NodeError::Disk(what.to_string())
}

/// A child's overlay passphrase: 64 random bytes, hex (LUKS passphrases are C
/// strings, so no NUL).
pub fn passphrase(key: &warren_kms::DataKey) -> Zeroizing<String> {
    key.to_hex()
}

fn pbkdf2(secret: &[u8], salt: &[u8], out: &mut [u8]) {
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(ITERATIONS).unwrap_or(std::num::NonZeroU32::MIN),
        salt,
        secret,
        out,
    );
}

/// LUKS's diffuse function: each hash-sized piece `i` of `block` becomes
/// `SHA256(be32(i) || piece)` (the last piece truncated).
fn diffuse(block: &mut [u8]) {
    for (i, piece) in block.chunks_mut(32).enumerate() {
        let mut h = Sha256::new();
        h.update((i as u32).to_be_bytes());
        h.update(&*piece);
        let d = h.finalize();
        let n = piece.len();
        piece.copy_from_slice(&d[..n]);
    }
}

/// The anti-forensic split of `key` into `STRIPES` stripes.
fn af_split(key: &[u8]) -> Zeroizing<Vec<u8>> {
    let n = key.len();
    let mut out = Zeroizing::new(vec![0u8; n * STRIPES]);
    let mut block = Zeroizing::new(vec![0u8; n]);
    rand::rngs::OsRng.fill_bytes(&mut out[..n * (STRIPES - 1)]);
    for s in 0..STRIPES - 1 {
        for (b, x) in block.iter_mut().zip(&out[s * n..(s + 1) * n]) {
            *b ^= x;
        }
        diffuse(&mut block);
    }
    for (i, (o, k)) in out[(STRIPES - 1) * n..].iter_mut().zip(key).enumerate() {
        *o = block[i] ^ k;
    }
    out
}

/// The inverse of [`af_split`] (tests).
#[cfg(test)]
fn af_merge(split: &[u8], n: usize) -> Vec<u8> {
    let mut block = vec![0u8; n];
    for s in 0..STRIPES - 1 {
        for (b, x) in block.iter_mut().zip(&split[s * n..(s + 1) * n]) {
            *b ^= x;
        }
        diffuse(&mut block);
    }
    block
        .iter()
        .zip(&split[(STRIPES - 1) * n..])
        .map(|(b, x)| b ^ x)
        .collect()
}

fn put_str(buf: &mut [u8], at: usize, len: usize, s: &str) {
    buf[at..at + s.len().min(len - 1)].copy_from_slice(&s.as_bytes()[..s.len().min(len - 1)]);
}

/// Sectors of one keyslot's key material, 4 KiB aligned.
fn slot_sectors() -> u32 {
    ((MASTER_KEY_LEN * STRIPES).div_ceil(SECTOR) as u32).next_multiple_of(SLOT_ALIGN_SECTORS)
}

/// A LUKS1 header area (header, then every keyslot's key material) for a new
/// random master key, with keyslot 0 opened by `passphrase`.
fn luks_area(passphrase: &[u8]) -> Vec<u8> {
    let slot_sectors = slot_sectors();
    let payload_sectors = SLOT_ALIGN_SECTORS + slot_sectors * SLOTS as u32;
    let mut area = vec![0u8; payload_sectors as usize * SECTOR];
    let mut rng = rand::rngs::OsRng;
    let mut master = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    rng.fill_bytes(&mut master[..]);

    let h = &mut area[..LUKS_HEADER_LEN];
    h[0..6].copy_from_slice(&LUKS_MAGIC);
    h[6..8].copy_from_slice(&1u16.to_be_bytes());
    put_str(h, 8, 32, "aes");
    put_str(h, 40, 32, "xts-plain64");
    put_str(h, 72, 32, "sha256");
    h[104..108].copy_from_slice(&payload_sectors.to_be_bytes());
    h[108..112].copy_from_slice(&(MASTER_KEY_LEN as u32).to_be_bytes());
    let mut mk_salt = [0u8; 32];
    rng.fill_bytes(&mut mk_salt);
    let mut digest = [0u8; 20];
    pbkdf2(&master[..], &mk_salt, &mut digest);
    h[112..132].copy_from_slice(&digest);
    h[132..164].copy_from_slice(&mk_salt);
    h[164..168].copy_from_slice(&ITERATIONS.to_be_bytes());
    let uuid = random_uuid();
    put_str(h, 168, 40, &uuid);
    let mut slot_salt = [0u8; 32];
    rng.fill_bytes(&mut slot_salt);
    for i in 0..SLOTS {
        let at = 208 + i * 48;
        let active = if i == 0 { SLOT_ENABLED } else { SLOT_DISABLED };
        h[at..at + 4].copy_from_slice(&active.to_be_bytes());
        if i == 0 {
            h[at + 4..at + 8].copy_from_slice(&ITERATIONS.to_be_bytes());
            h[at + 8..at + 40].copy_from_slice(&slot_salt);
        }
        let offset = SLOT_ALIGN_SECTORS + slot_sectors * i as u32;
        h[at + 40..at + 44].copy_from_slice(&offset.to_be_bytes());
        h[at + 44..at + 48].copy_from_slice(&(STRIPES as u32).to_be_bytes());
    }

    // Keyslot 0: the split master key, encrypted (aes-xts-plain64, sectors counted
    // from the start of the key material) under PBKDF2(passphrase, salt).
    let mut slot_key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    pbkdf2(passphrase, &slot_salt, &mut slot_key[..]);
    let cipher = DiskCipher::new(
        &warren_kms::DataKey::from_bytes(&slot_key[..]).unwrap_or_else(|| unreachable!()),
    );
    let mut split = af_split(&master[..]);
    let len = split.len();
    let padded = len.next_multiple_of(SECTOR);
    split.resize(padded, 0);
    cipher.encrypt(&mut split, 0);
    let start = SLOT_ALIGN_SECTORS as usize * SECTOR;
    area[start..start + padded].copy_from_slice(&split);
    area
}

fn random_uuid() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Create `path` (mode 0600, must not exist): a qcow2 overlay of `size` bytes over
/// `base` (format `base_format`), its clusters encrypted with LUKS keyslot 0 opened
/// by `passphrase`.
pub fn create(
    path: &Path,
    base: &Path,
    base_format: &str,
    size: u64,
    passphrase: &[u8],
) -> Result<()> {
    let backing = base.to_string_lossy();
    if backing.len() > 1023 || base_format.len() > 16 {
        return Err(err(format!("backing file name too long: {backing}")));
    }
    let l2_covers = CLUSTER * (CLUSTER / 8);
    let l1_size = size.div_ceil(l2_covers).max(1);
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER);
    let luks = luks_area(passphrase);
    let luks_clusters = (luks.len() as u64).div_ceil(CLUSTER);
    // Cluster 0: header; 1: refcount table; 2: refcount block; then L1, then LUKS.
    let refcount_table = CLUSTER;
    let refcount_block = 2 * CLUSTER;
    let l1_offset = 3 * CLUSTER;
    let luks_offset = l1_offset + l1_clusters * CLUSTER;
    let clusters = 3 + l1_clusters + luks_clusters;
    if clusters > CLUSTER / 2 {
        return Err(err(format!("overlay of {size} bytes is too large")));
    }

    let mut header = vec![0u8; CLUSTER as usize];
    let h = &mut header;
    let be32 = |h: &mut Vec<u8>, at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let be64 = |h: &mut Vec<u8>, at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_be_bytes());
    be32(h, 0, 0x5146_49fb); // "QFI\xfb"
    be32(h, 4, 3); // version
    be32(h, 20, CLUSTER_BITS);
    be64(h, 24, size);
    be32(h, 32, 2); // crypt_method: LUKS
    be32(h, 36, l1_size as u32);
    be64(h, 40, l1_offset);
    be64(h, 48, refcount_table);
    be32(h, 56, 1); // refcount_table_clusters
    be32(h, 96, 4); // refcount_order: 16-bit refcounts
    be32(h, 100, 104); // header_length
                       // Header extensions: the backing file's format, the LUKS header's place, end.
    let mut at = 104;
    be32(h, at, 0xe279_2aca);
    be32(h, at + 4, base_format.len() as u32);
    h[at + 8..at + 8 + base_format.len()].copy_from_slice(base_format.as_bytes());
    at += 8 + base_format.len().next_multiple_of(8);
    be32(h, at, 0x0537_be77);
    be32(h, at + 4, 16);
    be64(h, at + 8, luks_offset);
    be64(h, at + 16, luks.len() as u64);
    at += 24;
    at += 8; // end of extensions: type 0, length 0
    be64(h, 8, at as u64); // backing_file_offset
    be32(h, 16, backing.len() as u32);
    h[at..at + backing.len()].copy_from_slice(backing.as_bytes());

    let mut table = vec![0u8; CLUSTER as usize];
    table[..8].copy_from_slice(&refcount_block.to_be_bytes());
    let mut block = vec![0u8; CLUSTER as usize];
    for c in 0..clusters as usize {
        block[c * 2..c * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
    }

    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(format!("create {}: {e}", path.display())))?;
    let result = (|| {
        f.write_all_at(&header, 0)?;
        f.write_all_at(&table, refcount_table)?;
        f.write_all_at(&block, refcount_block)?;
        // The L1 table is all zeros (nothing allocated): a hole.
        f.write_all_at(&luks, luks_offset)?;
        f.set_len(clusters * CLUSTER)?;
        f.sync_all()
    })()
    .map_err(|e| err(format!("write {}: {e}", path.display())));
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// `qemu-img` with the overlay's passphrase as secret `key` (on its standard input:
/// never in a file or on a command line) and `args`.
fn qemu_img_keyed(args: &[&str], passphrase: &[u8], what: &str) -> Result<Vec<u8>> {
    let mut child = Command::new("qemu-img")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("run qemu-img ({what}): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(passphrase)
            .map_err(|e| err(format!("qemu-img ({what}): {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("qemu-img ({what}): {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "qemu-img ({what}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// `--image-opts` naming `path`, opened with secret `key`.
fn image_opts(path: &Path) -> String {
    format!(
        "driver=qcow2,file.filename={},encrypt.key-secret=key",
        path.to_string_lossy().replace(',', ",,")
    )
}

const SECRET: &str = "secret,id=key,file=/dev/stdin,format=raw";

/// Write the plain contents of the overlay `path` (its base's blocks and its own,
/// decrypted by QEMU) to `out` as a sparse raw file: a fork of a fork gets a base of
/// its own, not a chain of overlays.
/// An overlay without a passphrase (encryption off, or made before children had
/// keys) is read as plain qcow2. `-U`: a running VM may hold the image's lock; the
/// caller makes sure its writes are flushed.
pub fn flatten(path: &Path, passphrase: Option<&[u8]>, out: &Path) -> Result<()> {
    let opts = image_opts(path);
    let src = path.to_string_lossy();
    let out = out.to_string_lossy();
    let to = ["-O", "raw", "-S", "4k", &out];
    match passphrase {
        Some(p) => qemu_img_keyed(
            &[
                &["convert", "-U", "--object", SECRET, "--image-opts", &opts][..],
                &to,
            ]
            .concat(),
            p,
            "flatten a fork's disk",
        )?,
        None => qemu_img_keyed(
            &[&["convert", "-U", "-f", "qcow2", &src][..], &to].concat(),
            b"",
            "flatten a fork's disk",
        )?,
    };
    Ok(())
}

/// The size the guest sees of the overlay `path`.
pub fn virtual_size(path: &Path) -> Result<u64> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", "-f", "qcow2"])
        .arg(path)
        .output()
        .map_err(|e| err(format!("run qemu-img info: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "qemu-img info {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| err(format!("qemu-img info {}: {e}", path.display())))?;
    v["virtual-size"]
        .as_u64()
        .ok_or_else(|| err(format!("qemu-img info {}: no virtual-size", path.display())))
}

/// Grow the qcow2 overlay `path` (encrypted when it has a passphrase) to `size`
/// bytes: never shrinks; `false`: it was as big.
pub fn grow(path: &Path, passphrase: Option<&[u8]>, size: u64) -> Result<bool> {
    if virtual_size(path)? >= size {
        return Ok(false);
    }
    let size = size.to_string();
    match passphrase {
        Some(p) => {
            let opts = image_opts(path);
            qemu_img_keyed(
                &["resize", "--object", SECRET, "--image-opts", &opts, &size],
                p,
                "grow a fork's disk",
            )?;
        }
        None => {
            let path = path.to_string_lossy();
            qemu_img_keyed(
                &["resize", "-f", "qcow2", &path, &size],
                b"",
                "grow a fork's disk",
            )?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_io(path: &Path, pass: &[u8], cmds: &[&str]) -> Result<Vec<u8>> {
        let opts = image_opts(path);
        let mut args = vec!["--object", SECRET, "--image-opts", &opts];
        for c in cmds {
            args.push("-c");
            args.push(c);
        }
        let mut child = Command::new("qemu-io")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(err)?;
        child.stdin.take().unwrap().write_all(pass).unwrap();
        let out = child.wait_with_output().map_err(err)?;
        let text = [out.stdout.clone(), out.stderr.clone()].concat();
        if !out.status.success() || String::from_utf8_lossy(&text).contains("failed") {
            return Err(err(String::from_utf8_lossy(&text)));
        }
        Ok(text)
    }

    #[test]
    fn af_split_merges_back() {
        let key: Vec<u8> = (0..64).collect();
        let split = af_split(&key);
        assert_eq!(split.len(), 64 * STRIPES);
        assert_eq!(af_merge(&split, 64), key);
        let mut broken = split.to_vec();
        broken[100] ^= 1;
        assert_ne!(af_merge(&broken, 64), key);
    }

    /// QEMU itself opens what `create` writes: `qemu-img check` finds no error, data
    /// written through it reads back (over the base's blocks elsewhere), it is not
    /// in the file in the clear, and a wrong passphrase opens nothing.
    #[test]
    fn qemu_opens_the_overlay_and_encrypts_what_it_writes() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.img");
        let f = std::fs::File::create(&base).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[0x5a; 4096], 1 << 20).unwrap();
        let overlay = d.path().join("child.qcow2");
        let pass = passphrase(&warren_kms::DataKey::generate());
        create(&overlay, &base, "raw", 64 << 20, pass.as_bytes()).unwrap();

        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&overlay)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["encrypted"], true, "{info}");
        assert_eq!(info["virtual-size"], 64u64 << 20);
        assert_eq!(info["backing-filename"], base.to_string_lossy().as_ref());

        qemu_io(
            &overlay,
            pass.as_bytes(),
            &[
                "write -P 0xc3 8M 128k",
                "read -P 0xc3 8M 128k",
                "read -P 0x5a 1M 4k",
            ],
        )
        .unwrap();
        let check = qemu_img_keyed(
            &[
                "check",
                "--object",
                SECRET,
                "--image-opts",
                &image_opts(&overlay),
            ],
            pass.as_bytes(),
            "check",
        )
        .unwrap();
        assert!(
            String::from_utf8_lossy(&check).contains("No errors were found"),
            "{}",
            String::from_utf8_lossy(&check)
        );
        let raw = std::fs::read(&overlay).unwrap();
        assert!(!raw.windows(64).any(|w| w.iter().all(|b| *b == 0xc3)));
        assert_eq!(virtual_size(&overlay).unwrap(), 64 << 20);

        let wrong = passphrase(&warren_kms::DataKey::generate());
        assert!(qemu_io(&overlay, wrong.as_bytes(), &["read -P 0xc3 8M 4k"]).is_err());

        // Grow, then flatten: the plain view has base and overlay blocks.
        assert!(grow(&overlay, Some(pass.as_bytes()), 96 << 20).unwrap());
        assert!(!grow(&overlay, Some(pass.as_bytes()), 80 << 20).unwrap());
        assert_eq!(virtual_size(&overlay).unwrap(), 96 << 20);
        let flat = d.path().join("flat.img");
        flatten(&overlay, Some(pass.as_bytes()), &flat).unwrap();
        let flat = std::fs::read(&flat).unwrap();
        assert_eq!(flat.len(), 96 << 20);
        assert!(flat[8 << 20..(8 << 20) + (128 << 10)]
            .iter()
            .all(|b| *b == 0xc3));
        assert!(flat[1 << 20..(1 << 20) + 4096].iter().all(|b| *b == 0x5a));
    }
}
