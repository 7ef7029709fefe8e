//! `sha256:<hex>` digests and a reader that hashes what passes through it.

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::error::{ImageError, IoContext};

/// Returns the 64-character lowercase hex part of a `sha256:<hex>` digest, or `None`.
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    if is_hex64(hex) {
        Some(hex)
    } else {
        None
    }
}

pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256:<hex>` of a byte slice.
pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha256:<hex>` of a file's contents.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let f = std::fs::File::open(path).ctx("open", path)?;
    let mut r = HashingReader::new(f);
    io::copy(&mut r, &mut io::sink()).ctx("read", path)?;
    Ok(r.digest())
}

/// Check that `bytes` hash to `expected` (a `sha256:` digest).
pub(crate) fn verify_bytes(what: &str, bytes: &[u8], expected: &str) -> Result<(), ImageError> {
    if sha256_hex(expected).is_none() {
        return Err(ImageError::corrupt(
            what,
            format!("unsupported or malformed digest '{expected}' (only sha256 is supported)"),
        ));
    }
    let got = sha256_of(bytes);
    if got != expected {
        return Err(ImageError::corrupt(
            what,
            format!("content hashes to {got}, expected {expected}"),
        ));
    }
    Ok(())
}

/// Hashes and counts everything read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Read (and hash) whatever is left.
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    pub(crate) fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_digests() {
        let d = sha256_of(b"hello");
        assert_eq!(
            d,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(sha256_hex(&d).is_some());
        assert!(sha256_hex("sha256:ABC").is_none());
        assert!(sha256_hex(
            "sha512:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        )
        .is_none());
        assert!(verify_bytes("x", b"hello", &d).is_ok());
        assert!(matches!(
            verify_bytes("x", b"hellO", &d),
            Err(ImageError::Corrupt { .. })
        ));
    }
}
