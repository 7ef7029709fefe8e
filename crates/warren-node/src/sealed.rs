//! Sealed VM state: guest memory saved to disk (pause to disk, user snapshots) is
//! encrypted and authenticated on its way from the VMM to the file, and back.
//!
//! Guest RAM holds the workspace's unwrapped disk key and cached plaintext, so a
//! migration stream written in the clear would defeat disk encryption and
//! crypto-erasure. The VMM writes its stream into a pipe; the node reads it and
//! writes this format; a restore decrypts into a pipe the VMM reads. No plaintext
//! touches the disk.
//!
//! Format (all integers big-endian):
//!
//! ```text
//! header, 64 bytes:
//!   0..8    magic "WARRENVM"
//!   8       format version (1)
//!   9       algorithm (1: HKDF-SHA256 key, AES-256-GCM, STREAM-BE32 chunks)
//!   10..12  reserved (0)
//!   12..16  chunk size: plaintext bytes per chunk
//!   16..48  salt (random per file)
//!   48..55  nonce prefix (random per file)
//!   55..64  reserved (0)
//! then chunks: AES-256-GCM ciphertext + 16-byte tag of `chunk size` plaintext
//! bytes each, the last one shorter (possibly empty) and sealed as the last.
//! ```
//!
//! * **Key**: HKDF-SHA256 with the file's salt over the workspace's data key (the
//!   one that opens its disk, wrapped by `warren-kms`), bound to the workspace id
//!   and the purpose. Each file has its own key; destroying the workspace's
//!   wrapped data key (crypto-erasure) makes every saved memory file of it
//!   unreadable too, even a copy in a backup.
//! * **Chunks**: the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár,
//!   "Online authenticated-encryption and its nonce-reuse misuse-resistance", 2015)
//!   exactly as the `aead` crate's `StreamBE32` lays it out (a unit test decrypts our
//!   files with `aead::stream::DecryptorBE32`): each chunk's nonce is the file's
//!   7-byte prefix, a 32-bit chunk counter and a last-chunk flag. So chunks cannot be
//!   reordered, dropped, duplicated or moved between files, and a file cut at any
//!   point (even between chunks) fails: its final chunk is missing or was not sealed
//!   as the last. The header is the associated data of every chunk, so it cannot be
//!   altered either. Chunking keeps memory use flat (two chunks) and lets the VMM
//!   load while the file is read, instead of authenticating a whole multi-GiB file
//!   before the first byte reaches it.
//! * **Why AES-256-GCM, and `ring`'s**: AES-NI and carry-less multiply make
//!   AES-GCM cost a fraction of the time the VMM takes to produce the stream.
//!   RustCrypto's `aes-gcm` (what `warren-kms` wraps keys with) ran at ~430 MiB/s
//!   here, which added ~0.35 s to freezing 140 MiB; `ring` (already in the tree
//!   through rustls) runs BoringSSL's assembly, at OpenSSL's speed. `ring` has no
//!   STREAM type, hence the few lines of nonce layout below.
//! * Plaintext reaches the VMM only after its chunk's tag checked out; a bad chunk
//!   stops the feed, the VMM's load fails, and the restore reports which chunk.

use crate::{NodeError, Result};
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use std::io::{Read, Write};
use std::path::Path;
use warren_kms::DataKey;
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 8] = b"WARRENVM";
pub const HEADER_LEN: usize = 64;
const VERSION: u8 = 1;
const ALG_HKDF_AES256GCM_STREAM: u8 = 1;
const TAG_LEN: usize = 16;
/// Plaintext bytes per chunk: large enough that tags and per-chunk calls cost
/// nothing measurable, small enough to keep memory use flat.
pub const CHUNK: usize = 256 * 1024;
const NONCE_PREFIX_LEN: usize = 7;

/// What was written or read.
#[derive(Debug, Clone, Copy, Default)]
pub struct SealStats {
    /// Bytes of VM state (plaintext).
    pub plain_bytes: u64,
    /// Bytes of the sealed file.
    pub file_bytes: u64,
}

/// Is the file at `path` sealed (starts with our magic)?
pub fn is_sealed(path: &Path) -> bool {
    let mut m = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok()
        && &m == MAGIC
}

/// The file's AES-256 key: HKDF-SHA256 over the workspace's data key.
fn derive_bytes(key: &DataKey, salt: &[u8], context: &str) -> Zeroizing<[u8; 32]> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), key.as_bytes());
    let mut info = b"warren sealed vm state v1\0".to_vec();
    info.extend_from_slice(context.as_bytes());
    let mut k = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit (255 * 32): this cannot fail.
    let _ = hk.expand(&info, k.as_mut());
    k
}

fn derive(key: &DataKey, salt: &[u8], context: &str) -> Result<LessSafeKey> {
    let k = derive_bytes(key, salt, context);
    UnboundKey::new(&AES_256_GCM, k.as_ref())
        .map(LessSafeKey::new)
        .map_err(|_| NodeError::SavedState("cannot set up AES-256-GCM".into()))
}

/// STREAM-BE32 (the `aead` crate's `StreamBE32`, byte for byte): the file's 7-byte
/// prefix, the chunk's index (32 bits, big-endian) and 1 for the last chunk.
struct Stream {
    key: LessSafeKey,
    prefix: [u8; NONCE_PREFIX_LEN],
    index: u32,
    done: bool,
}

impl Stream {
    fn new(key: LessSafeKey, prefix: &[u8]) -> Stream {
        let mut p = [0u8; NONCE_PREFIX_LEN];
        p.copy_from_slice(&prefix[..NONCE_PREFIX_LEN]);
        Stream {
            key,
            prefix: p,
            index: 0,
            done: false,
        }
    }

    /// The next chunk's nonce; `None` once the last chunk was sealed or opened, or
    /// past 2^32 chunks (1 PiB), so a nonce is never used twice.
    fn next_nonce(&mut self, last: bool) -> Option<Nonce> {
        if self.done {
            return None;
        }
        let mut n = [0u8; 12];
        n[..NONCE_PREFIX_LEN].copy_from_slice(&self.prefix);
        n[7..11].copy_from_slice(&self.index.to_be_bytes());
        n[11] = last as u8;
        if last {
            self.done = true;
        } else {
            self.index = self.index.checked_add(1)?;
        }
        Some(Nonce::assume_unique_for_key(n))
    }
}

fn corrupt(what: &str, reason: impl std::fmt::Display) -> NodeError {
    NodeError::SavedState(format!("{what}: {reason}"))
}

/// Read until `buf` is full or the input ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Read a plaintext stream from `input` until it ends and write it sealed to `out`
/// (synced before returning). `context` is the workspace id: a file opens only for
/// the workspace it was written for.
pub fn seal(
    mut input: impl Read,
    out: &mut std::fs::File,
    key: &DataKey,
    context: &str,
) -> Result<SealStats> {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8] = VERSION;
    header[9] = ALG_HKDF_AES256GCM_STREAM;
    header[12..16].copy_from_slice(&(CHUNK as u32).to_be_bytes());
    rand::thread_rng().fill_bytes(&mut header[16..48 + NONCE_PREFIX_LEN]);
    let mut stream = Stream::new(derive(key, &header[16..48], context)?, &header[48..55]);
    let write = |out: &mut std::fs::File, b: &[u8]| {
        out.write_all(b)
            .map_err(crate::io_err("write the sealed state"))
    };
    write(out, &header)?;
    let mut stats = SealStats {
        plain_bytes: 0,
        file_bytes: HEADER_LEN as u64,
    };
    let mut buf = Zeroizing::new(vec![0u8; CHUNK + TAG_LEN]);
    loop {
        let n =
            read_full(&mut input, &mut buf[..CHUNK]).map_err(crate::io_err("read the VM state"))?;
        stats.plain_bytes += n as u64;
        let last = n < CHUNK;
        let nonce = stream
            .next_nonce(last)
            .ok_or_else(|| corrupt("seal", "the stream is too long"))?;
        let tag = stream
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&header[..]), &mut buf[..n])
            .map_err(|_| corrupt("seal", "encryption failed"))?;
        buf[n..n + TAG_LEN].copy_from_slice(tag.as_ref());
        write(out, &buf[..n + TAG_LEN])?;
        stats.file_bytes += (n + TAG_LEN) as u64;
        if last {
            break;
        }
    }
    out.sync_all()
        .map_err(crate::io_err("sync the sealed state"))?;
    Ok(stats)
}

/// An opened sealed file whose header checked out; [`Opened::unseal`] streams the
/// plaintext.
pub struct Opened {
    file: std::fs::File,
    header: [u8; HEADER_LEN],
    stream: Stream,
    chunk: usize,
    what: String,
}

/// Open `path` and check its header; `context` must be the id it was sealed for.
pub fn open(path: &Path, key: &DataKey, context: &str) -> Result<Opened> {
    let what = path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(crate::io_err(format!("open {what}")))?;
    let mut header = [0u8; HEADER_LEN];
    let n = read_full(&mut file, &mut header).map_err(crate::io_err(format!("read {what}")))?;
    if n < HEADER_LEN || &header[..8] != MAGIC {
        return Err(corrupt(
            &what,
            "not a sealed Warren VM state (bad header): refusing to load it",
        ));
    }
    if header[8] != VERSION || header[9] != ALG_HKDF_AES256GCM_STREAM {
        return Err(corrupt(
            &what,
            format!(
                "unsupported sealed format version {} algorithm {}",
                header[8], header[9]
            ),
        ));
    }
    let chunk = u32::from_be_bytes([header[12], header[13], header[14], header[15]]) as usize;
    if !(4096..=(16 << 20)).contains(&chunk) {
        return Err(corrupt(&what, format!("implausible chunk size {chunk}")));
    }
    let stream = Stream::new(derive(key, &header[16..48], context)?, &header[48..55]);
    Ok(Opened {
        file,
        header,
        stream,
        chunk,
        what,
    })
}

impl Opened {
    /// Decrypt the whole file into `out`, chunk by chunk: a chunk's plaintext is
    /// written only after its tag checked out. Fails on the first bad chunk, on a
    /// missing final chunk (truncation) and on anything after it.
    pub fn unseal(self, mut out: impl Write) -> Result<SealStats> {
        let Opened {
            mut file,
            header,
            mut stream,
            chunk,
            what,
        } = self;
        let mut stats = SealStats {
            plain_bytes: 0,
            file_bytes: HEADER_LEN as u64,
        };
        let mut buf = Zeroizing::new(vec![0u8; chunk + TAG_LEN]);
        let mut index: u64 = 0;
        loop {
            let n =
                read_full(&mut file, &mut buf).map_err(crate::io_err(format!("read {what}")))?;
            stats.file_bytes += n as u64;
            if n < TAG_LEN {
                return Err(corrupt(
                    &what,
                    format!(
                        "truncated: chunk {index} is missing or cut short \
                         (tampered or incomplete file)"
                    ),
                ));
            }
            let last = n < chunk + TAG_LEN;
            let plain = stream
                .next_nonce(last)
                .and_then(|nonce| {
                    stream
                        .key
                        .open_in_place(nonce, Aad::from(&header[..]), &mut buf[..n])
                        .ok()
                })
                .ok_or_else(|| {
                    corrupt(
                        &what,
                        format!(
                            "chunk {index} failed authentication{}: the file was tampered \
                             with, corrupted or cut short, or belongs to another workspace \
                             or key",
                            if last { " as the final chunk" } else { "" }
                        ),
                    )
                })?;
            stats.plain_bytes += plain.len() as u64;
            out.write_all(plain)
                .map_err(crate::io_err("feed the VM state to the VMM"))?;
            if last {
                return Ok(stats);
            }
            index += 1;
        }
    }
}

/// A pipe with both ends close-on-exec, made large so the VMM and the node move
/// data in big steps.
pub fn pipe() -> Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(crate::io_err("create a pipe")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: pipe2 succeeded: both fds are fresh and ours.
    let (r, w) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    // Best effort: the default (64 KiB) works, only in smaller steps.
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 1 << 20) };
    Ok((r, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize) {
        let key = DataKey::generate();
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 3) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let mut f = std::fs::File::create(&p).unwrap();
        let st = seal(&data[..], &mut f, &key, "ws1").unwrap();
        assert_eq!(st.plain_bytes, len as u64);
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(st.file_bytes, raw.len() as u64);
        assert!(is_sealed(&p));
        let mut out = Vec::new();
        open(&p, &key, "ws1").unwrap().unseal(&mut out).unwrap();
        assert_eq!(out, data, "len {len}");
    }

    #[test]
    fn roundtrips_at_chunk_edges() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK] {
            roundtrip(len);
        }
    }

    fn sealed(len: usize) -> (tempfile::TempDir, std::path::PathBuf, DataKey, Vec<u8>) {
        let key = DataKey::generate();
        let data = vec![0x5au8; len];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let mut f = std::fs::File::create(&p).unwrap();
        seal(&data[..], &mut f, &key, "ws1").unwrap();
        (dir, p, key, data)
    }

    #[test]
    fn the_format_is_aead_stream_be32() {
        use aes_gcm::aead::stream::{DecryptorBE32, Nonce as StreamNonce, StreamBE32};
        use aes_gcm::aead::{KeyInit, Payload};
        use aes_gcm::Aes256Gcm;
        let (_d, p, key, data) = sealed(2 * CHUNK + 5);
        let raw = std::fs::read(&p).unwrap();
        let header = &raw[..HEADER_LEN];
        let k = derive_bytes(&key, &header[16..48], "ws1");
        let aead = Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(k.as_ref()));
        let nonce =
            StreamNonce::<Aes256Gcm, StreamBE32<Aes256Gcm>>::clone_from_slice(&header[48..55]);
        let mut dec = DecryptorBE32::from_aead(aead, &nonce);
        let chunks: Vec<&[u8]> = raw[HEADER_LEN..].chunks(CHUNK + TAG_LEN).collect();
        let (last, rest) = chunks.split_last().unwrap();
        let mut out = Vec::new();
        for c in rest {
            let m = Payload {
                msg: c,
                aad: header,
            };
            out.extend(dec.decrypt_next(m).unwrap());
        }
        let m = Payload {
            msg: last,
            aad: header,
        };
        out.extend(dec.decrypt_last(m).unwrap());
        assert_eq!(out, data);
    }

    fn fails(p: &Path, key: &DataKey, id: &str) -> String {
        let mut out = Vec::new();
        match open(p, key, id).and_then(|o| o.unseal(&mut out)) {
            Ok(_) => panic!("a bad file unsealed"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn no_plaintext_and_every_alteration_fails() {
        let len = 2 * CHUNK + 100;
        let (_d, p, key, _) = sealed(len);
        let raw = std::fs::read(&p).unwrap();
        // The plaintext (a run of 0x5a) is nowhere in the file.
        assert!(!raw.windows(64).any(|w| w.iter().all(|b| *b == 0x5a)));
        // A flipped bit anywhere: header, first chunk, last chunk.
        for at in [20, 50, HEADER_LEN + 5, raw.len() - 1] {
            let mut bad = raw.clone();
            bad[at] ^= 1;
            std::fs::write(&p, &bad).unwrap();
            let e = fails(&p, &key, "ws1");
            assert!(e.contains("failed authentication"), "at {at}: {e}");
        }
        // Cut between chunks (the final chunk is missing) and inside one.
        for keep in [HEADER_LEN + CHUNK + TAG_LEN, raw.len() - 7, HEADER_LEN] {
            std::fs::write(&p, &raw[..keep]).unwrap();
            let e = fails(&p, &key, "ws1");
            assert!(
                e.contains("truncated") || e.contains("failed authentication"),
                "keep {keep}: {e}"
            );
        }
        // Bytes appended after the final chunk.
        let mut longer = raw.clone();
        longer.extend_from_slice(&[0u8; 40]);
        std::fs::write(&p, &longer).unwrap();
        fails(&p, &key, "ws1");
        // Another workspace's id or another key.
        std::fs::write(&p, &raw).unwrap();
        fails(&p, &key, "ws2");
        fails(&p, &DataKey::generate(), "ws1");
        // A plain (unsealed) stream is refused.
        std::fs::write(&p, vec![0x5au8; 1000]).unwrap();
        assert!(fails(&p, &key, "ws1").contains("bad header"));
    }
}
