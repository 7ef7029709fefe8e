//! Extracting the uncompressed `vmlinux` ELF from a Debian x86 bzImage.
//!
//! Debian's cloud kernel compresses its payload with LZ4 in the "legacy" frame format:
//! the magic `02 21 4C 18`, then blocks of `u32 little-endian compressed length` +
//! LZ4 block, each decoding to at most 8 MiB. The kernel build appends the total
//! uncompressed size as a `u32` right after the last block, which is how we know where
//! the payload ends. QEMU boots the resulting ELF through its PVH note directly.

use crate::{io_err, GuestError};
use std::path::Path;

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
const LEGACY_BLOCK_MAX: usize = 8 << 20;

/// Decompress the payload of `bzimage` into `out` (written atomically).
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<u64, GuestError> {
    let data = std::fs::read(bzimage).map_err(io_err(format!("read {}", bzimage.display())))?;
    let elf = decompress_payload(&data).map_err(|e| match e {
        PayloadError::NoMagic => GuestError::NoPayload(bzimage.to_path_buf()),
        PayloadError::Corrupt(reason) => GuestError::CorruptPayload {
            path: bzimage.to_path_buf(),
            reason,
        },
    })?;
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, &elf).map_err(io_err(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, out).map_err(io_err(format!("rename to {}", out.display())))?;
    Ok(elf.len() as u64)
}

#[derive(Debug)]
pub(crate) enum PayloadError {
    NoMagic,
    Corrupt(String),
}

pub(crate) fn decompress_payload(data: &[u8]) -> Result<Vec<u8>, PayloadError> {
    let start = data
        .windows(4)
        .position(|w| w == LZ4_LEGACY_MAGIC)
        .ok_or(PayloadError::NoMagic)?;
    let mut pos = start + 4;
    let mut out: Vec<u8> = Vec::with_capacity(64 << 20);
    let mut block = vec![0u8; LEGACY_BLOCK_MAX];
    while let Some(len_bytes) = data.get(pos..pos + 4) {
        let len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        if !out.is_empty() && len as usize == out.len() {
            // The appended uncompressed size: the payload ended where it should.
            break;
        }
        if len_bytes == LZ4_LEGACY_MAGIC {
            // A concatenated stream: keep going.
            pos += 4;
            continue;
        }
        let len = len as usize;
        let Some(compressed) = data.get(pos + 4..pos + 4 + len) else {
            return Err(PayloadError::Corrupt(format!(
                "block at offset {pos} claims {len} bytes past the end of the file"
            )));
        };
        let n = lz4_flex::block::decompress_into(compressed, &mut block).map_err(|e| {
            PayloadError::Corrupt(format!("LZ4 block at offset {pos} does not decode: {e}"))
        })?;
        out.extend_from_slice(&block[..n]);
        pos += 4 + len;
    }
    if out.get(..4) != Some(b"\x7fELF") {
        return Err(PayloadError::Corrupt(
            "decompressed payload is not an ELF image".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy_frame(payload: &[u8]) -> Vec<u8> {
        let mut v = b"setup-code-before".to_vec();
        v.extend_from_slice(&LZ4_LEGACY_MAGIC);
        for chunk in payload.chunks(LEGACY_BLOCK_MAX) {
            let c = lz4_flex::block::compress(chunk);
            v.extend_from_slice(&(c.len() as u32).to_le_bytes());
            v.extend_from_slice(&c);
        }
        v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        v.extend_from_slice(b"trailing bzImage bytes");
        v
    }

    #[test]
    fn round_trips_a_multi_block_payload() {
        let mut payload = b"\x7fELF".to_vec();
        payload.extend((0..(9 << 20)).map(|i: u32| (i % 251) as u8));
        let got = decompress_payload(&legacy_frame(&payload)).expect("decodes");
        assert_eq!(got, payload);
    }

    #[test]
    fn rejects_non_elf_and_missing_magic() {
        assert!(matches!(
            decompress_payload(b"no magic here"),
            Err(PayloadError::NoMagic)
        ));
        assert!(matches!(
            decompress_payload(&legacy_frame(b"not an elf file at all")),
            Err(PayloadError::Corrupt(_))
        ));
    }

    #[test]
    fn truncated_block_is_corrupt() {
        let mut payload = b"\x7fELF".to_vec();
        payload.extend(std::iter::repeat_n(7u8, 100_000));
        let mut f = legacy_frame(&payload);
        let cut = f.len() - 40;
        f.truncate(cut);
        assert!(matches!(
            decompress_payload(&f),
            Err(PayloadError::Corrupt(_))
        ));
    }
}
