//! Applying image layers (tar, tar+gzip, tar+zstd) to a staging directory, overlay-style.
//!
//! * `.wh.NAME` deletes NAME as left by lower layers; `.wh..wh..opq` makes its directory
//!   opaque: whatever lower layers put there goes, this layer's entries stay.
//! * Every path is resolved chroot-style under the staging root: entries naming `..` or an
//!   absolute path are rejected, and symlinks met on the way are followed *inside* the root,
//!   so a layer cannot write outside it through `evil -> /etc`.
//! * Ownership, permissions (incl. setuid), mtimes, xattrs (e.g. file capabilities), hard
//!   links, symlinks, device nodes and fifos are preserved.
//! * Both the stored blob digest and the uncompressed digest (diff_id) are verified; any read
//!   or decode failure is [`ImageError::Corrupt`] naming the layer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::digest::HashingReader;
use crate::error::{ImageError, IoContext};
use crate::oci::LayerBlob;
use crate::progress::{ByteCounter, Progress};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const MAX_SYMLINK_HOPS: usize = 64;

/// Apply `layers` in order onto `root` (an existing, empty directory).
pub(crate) fn apply_layers(
    root: &Path,
    layers: &[LayerBlob],
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let mut ctx = Applier::new(root);
    for layer in layers {
        progress.phase(&format!("unpacking {}", layer.name));
        let _span = tracing::info_span!("layer", name = %layer.name).entered();
        ctx.apply_layer(layer, progress)?;
    }
    ctx.finish();
    Ok(())
}

/// Read side failures become `Corrupt`, write side failures `Io`.
enum Fail {
    Read(String),
    Write(ImageError),
}

impl From<ImageError> for Fail {
    fn from(e: ImageError) -> Self {
        Fail::Write(e)
    }
}

struct Applier {
    root: PathBuf,
    /// Directory mtimes, applied at the very end (adding children changes them).
    dir_times: HashMap<PathBuf, (i64, u32)>,
    /// Whether chown is permitted (we are root); warned about once otherwise.
    can_chown: bool,
    warned_chown: bool,
}

/// Per-layer bookkeeping for opaque directories and whiteouts.
#[derive(Default)]
struct LayerState {
    /// Paths (relative, resolved) this layer created.
    written: HashSet<PathBuf>,
    /// Ancestors of `written` entries.
    ancestors: HashSet<PathBuf>,
}

impl LayerState {
    fn record(&mut self, rel: &Path) {
        self.written.insert(rel.to_path_buf());
        let mut p = rel.parent();
        while let Some(a) = p {
            if a.as_os_str().is_empty() || !self.ancestors.insert(a.to_path_buf()) {
                break;
            }
            p = a.parent();
        }
    }
}

#[derive(Clone, Copy)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Counts bytes read for progress.
struct Counting<'a, R> {
    inner: R,
    counter: ByteCounter<'a>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.add(n as u64);
        Ok(n)
    }
}

impl Applier {
    fn new(root: &Path) -> Self {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        Applier {
            root: root.to_path_buf(),
            dir_times: HashMap::new(),
            can_chown: euid == 0,
            warned_chown: false,
        }
    }

    fn apply_layer(
        &mut self,
        layer: &LayerBlob,
        progress: &dyn Progress,
    ) -> Result<(), ImageError> {
        let corrupt = |reason: String| ImageError::corrupt(&layer.name, reason);
        let raw = layer.location.open()?;
        let counted = Counting {
            inner: raw,
            counter: ByteCounter::new(progress, layer.size),
        };
        let mut stored = BufReader::with_capacity(256 * 1024, HashingReader::new(counted));
        let head = stored
            .fill_buf()
            .map_err(|e| corrupt(format!("unreadable: {e}")))?
            .to_vec();
        let mut state = LayerState::default();
        let diff_id = {
            let decoded: Box<dyn Read + '_> = match sniff(&head) {
                Compression::None => Box::new(&mut stored),
                Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut stored)),
                Compression::Zstd => Box::new(ZstdReader::new(&mut stored)),
            };
            let mut tar_stream = HashingReader::new(decoded);
            {
                let mut archive = tar::Archive::new(&mut tar_stream);
                let entries = archive
                    .entries()
                    .map_err(|e| corrupt(format!("not a tar stream: {e}")))?;
                for entry in entries {
                    let mut entry =
                        entry.map_err(|e| corrupt(format!("unreadable tar entry: {e}")))?;
                    match self.apply_entry(&mut entry, &mut state) {
                        Ok(()) => {}
                        Err(Fail::Read(reason)) => return Err(corrupt(reason)),
                        Err(Fail::Write(e)) => return Err(e),
                    }
                }
            }
            // Hash the tar padding after the end-of-archive marker too.
            tar_stream
                .drain()
                .map_err(|e| corrupt(format!("unreadable after the end of the tar stream: {e}")))?;
            tar_stream.digest()
        };
        stored
            .read_to_end(&mut Vec::new())
            .map_err(|e| corrupt(format!("unreadable: {e}")))?;
        let hashing = stored.into_inner();
        let got = hashing.digest();
        let count = hashing.count();
        hashing.into_inner().counter.finish();
        if let Some(size) = layer.size {
            if size != count {
                return Err(corrupt(format!(
                    "{count} bytes, expected {size} (truncated?)"
                )));
            }
        }
        if let Some(want) = &layer.digest {
            if &got != want {
                return Err(corrupt(format!("content hashes to {got}, expected {want}")));
            }
        }
        if let Some(want) = &layer.diff_id {
            if &diff_id != want {
                return Err(corrupt(format!(
                    "uncompressed content hashes to {diff_id}, but the image config's diff_id is {want}"
                )));
            }
        }
        if layer.digest.is_none() && layer.diff_id.is_none() {
            return Err(corrupt("no digest to verify it against".into()));
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        state: &mut LayerState,
    ) -> Result<(), Fail> {
        let raw_path = entry
            .path()
            .map_err(|e| Fail::Read(format!("bad entry name: {e}")))?
            .into_owned();
        let comps = safe_components(&raw_path).map_err(Fail::Read)?;
        let Some((name, parents)) = comps.split_last() else {
            // The root directory itself ("./"): keep ours.
            return Ok(());
        };
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let name_str = name.to_string_lossy();
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if name_str == OPAQUE {
                let dir = self.resolve_dir(parents, true, state)?;
                self.make_opaque(&dir, state)?;
            } else if hidden.starts_with(".wh.") || hidden.is_empty() {
                // Other AUFS metadata (.wh..wh.plnk etc.): nothing to apply.
            } else {
                // A whiteout under a directory lower layers never made hides nothing.
                let parent = match self.resolve_dir(parents, false, state) {
                    Ok(p) => p,
                    Err(Fail::Read(why)) => {
                        tracing::debug!(path = %raw_path.display(), %why, "whiteout of nothing");
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                let victim = parent.join(hidden);
                if !state.written.contains(&victim) {
                    remove_any(&self.root.join(&victim))?;
                }
            }
            return Ok(());
        }

        let parent = self.resolve_dir(parents, true, state)?;
        let rel = parent.join(name);
        let full = self.root.join(&rel);
        let existing = fs::symlink_metadata(&full).ok();
        let header = entry.header().clone();
        let mode = header
            .mode()
            .map_err(|e| Fail::Read(format!("bad mode: {e}")))?
            & 0o7777;

        if kind.is_dir() {
            match &existing {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    remove_any(&full)?;
                    mkdir(&full, mode)?;
                }
                None => mkdir(&full, mode)?,
            }
        } else {
            if existing.is_some() {
                remove_any(&full)?;
            }
            if kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse() {
                self.write_file(entry, &full)?;
            } else if kind.is_symlink() {
                let target = entry
                    .link_name()
                    .map_err(|e| Fail::Read(format!("bad symlink target: {e}")))?
                    .ok_or_else(|| {
                        Fail::Read(format!("symlink {} has no target", raw_path.display()))
                    })?
                    .into_owned();
                std::os::unix::fs::symlink(&target, &full).ctx("create symlink", &full)?;
            } else if kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(|e| Fail::Read(format!("bad hard link target: {e}")))?
                    .ok_or_else(|| {
                        Fail::Read(format!("hard link {} has no target", raw_path.display()))
                    })?
                    .into_owned();
                let tcomps = safe_components(&target).map_err(Fail::Read)?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(Fail::Read(format!(
                        "hard link {} points at the root",
                        raw_path.display()
                    )));
                };
                let tparent = self.resolve_dir(tparents, false, state)?;
                let src = self.root.join(tparent.join(tname));
                match fs::symlink_metadata(&src) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(Fail::Read(format!(
                            "hard link {} points at {}, which is not a file in the image",
                            raw_path.display(),
                            target.display()
                        )))
                    }
                }
                fs::hard_link(&src, &full).ctx("create hard link", &full)?;
                state.record(&rel);
                // The inode's metadata belongs to the link target's entry.
                return Ok(());
            } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let fmt = if kind.is_character_special() {
                    libc::S_IFCHR
                } else if kind.is_block_special() {
                    libc::S_IFBLK
                } else {
                    libc::S_IFIFO
                };
                mknod(&full, fmt | mode, libc::makedev(major, minor))?;
            } else {
                tracing::debug!(path = %raw_path.display(), ?kind, "skipping unsupported tar entry type");
                return Ok(());
            }
        }
        state.record(&rel);
        self.set_metadata(entry, &header, &full, &rel, mode, kind)?;
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        full: &Path,
    ) -> Result<(), Fail> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(full)
            .ctx("create", full)?;
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail::Read(format!("reading {}: {e}", full.display()))),
            };
            f.write_all(&buf[..n]).ctx("write", full)?;
        }
        Ok(())
    }

    fn set_metadata<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        header: &tar::Header,
        full: &Path,
        rel: &Path,
        mode: u32,
        kind: tar::EntryType,
    ) -> Result<(), Fail> {
        let mut uid = header.uid().unwrap_or(0);
        let mut gid = header.gid().unwrap_or(0);
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                let key = ext.key_bytes();
                if key == b"uid" {
                    if let Some(v) = ext.value().ok().and_then(|v| v.parse().ok()) {
                        uid = v;
                    }
                } else if key == b"gid" {
                    if let Some(v) = ext.value().ok().and_then(|v| v.parse().ok()) {
                        gid = v;
                    }
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        if self.can_chown {
            std::os::unix::fs::lchown(full, Some(uid as u32), Some(gid as u32))
                .ctx("chown", full)?;
        } else if !self.warned_chown {
            self.warned_chown = true;
            tracing::warn!("not running as root: file ownership from the image is not preserved");
        }
        if !kind.is_symlink() {
            fs::set_permissions(full, fs::Permissions::from_mode(mode)).ctx("chmod", full)?;
        }
        for (name, value) in xattrs {
            set_xattr(full, &name, &value)?;
        }
        let mtime = header.mtime().unwrap_or(0) as i64;
        if kind.is_dir() {
            self.dir_times.insert(rel.to_path_buf(), (mtime, 0));
        } else {
            set_mtime(full, mtime, 0).ctx("set mtime of", full)?;
        }
        Ok(())
    }

    /// Resolve a directory path under the root, following symlinks inside the root and
    /// (if `create`) creating missing directories. Returns the resolved relative path.
    fn resolve_dir(
        &self,
        comps: &[OsString],
        create: bool,
        state: &mut LayerState,
    ) -> Result<PathBuf, Fail> {
        let mut resolved: Vec<OsString> = Vec::new();
        let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            if c == "." || c.is_empty() {
                continue;
            }
            if c == ".." {
                resolved.pop();
                continue;
            }
            let rel: PathBuf = resolved.iter().chain(std::iter::once(&c)).collect();
            let full = self.root.join(&rel);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(Fail::Read(format!(
                            "too many levels of symlinks at /{}",
                            rel.display()
                        )));
                    }
                    let target = fs::read_link(&full).ctx("read symlink", &full)?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    let mut new: Vec<OsString> = target
                        .components()
                        .filter_map(|c| match c {
                            Component::Normal(s) => Some(s.to_os_string()),
                            Component::ParentDir => Some(OsString::from("..")),
                            _ => None,
                        })
                        .collect();
                    new.extend(queue.drain(..));
                    queue = new.into();
                }
                Ok(m) if m.is_dir() => resolved.push(c),
                Ok(_) => {
                    return Err(Fail::Read(format!(
                        "/{} is used as a directory but the image has a file there",
                        rel.display()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    mkdir(&full, 0o755)?;
                    state.ancestors.insert(rel.clone());
                    resolved.push(c);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Fail::Read(format!("/{} does not exist", rel.display())))
                }
                Err(e) => return Err(Fail::Write(ImageError::io("stat", full, e))),
            }
        }
        Ok(resolved.iter().collect())
    }

    /// Remove everything lower layers left under `dir`, keeping what this layer wrote.
    fn make_opaque(&self, dir: &Path, state: &LayerState) -> Result<(), Fail> {
        let full = self.root.join(dir);
        let rd = match fs::read_dir(&full) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Fail::Write(ImageError::io("list", full, e))),
        };
        for ent in rd {
            let ent = ent.ctx("list", &full)?;
            let rel = dir.join(ent.file_name());
            let is_dir = ent.file_type().ctx("stat", ent.path())?.is_dir();
            let keep = state.written.contains(&rel) || state.ancestors.contains(&rel);
            if !keep {
                remove_any(&ent.path())?;
            } else if is_dir {
                self.make_opaque(&rel, state)?;
            }
        }
        Ok(())
    }

    /// Apply deferred directory mtimes.
    fn finish(&mut self) {
        for (rel, (secs, nanos)) in self.dir_times.drain() {
            let full = self.root.join(&rel);
            if let Err(e) = set_mtime(&full, secs, nanos) {
                tracing::debug!(path = %full.display(), error = %e, "could not set directory mtime");
            }
        }
    }
}

/// Split an entry name into normal components, rejecting `..` and absolute paths.
fn safe_components(p: &Path) -> Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(s) => out.push(s.to_os_string()),
            Component::ParentDir => {
                return Err(format!(
                    "entry '{}' contains '..' and would escape the image root",
                    p.display()
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry '{}' is an absolute path", p.display()))
            }
        }
    }
    Ok(out)
}

fn mkdir(p: &Path, mode: u32) -> Result<(), Fail> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(p)
        .ctx("create directory", p)?;
    // The umask may have narrowed the mode.
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).ctx("chmod", p)?;
    Ok(())
}

fn remove_any(p: &Path) -> Result<(), Fail> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).ctx("remove", p)?,
        Ok(_) => fs::remove_file(p).ctx("remove", p)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Fail::Write(ImageError::io("stat", p, e))),
    }
    Ok(())
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn mknod(p: &Path, mode: u32, dev: libc::dev_t) -> Result<(), Fail> {
    let c = cpath(p).ctx("mknod", p)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev) };
    if rc != 0 {
        return Err(Fail::Write(ImageError::io(
            "mknod",
            p,
            io::Error::last_os_error(),
        )));
    }
    Ok(())
}

fn set_xattr(p: &Path, name: &[u8], value: &[u8]) -> Result<(), Fail> {
    let c = cpath(p).ctx("set xattr on", p)?;
    let Ok(n) = CString::new(name) else {
        return Err(Fail::Read(format!(
            "xattr name on {} contains NUL",
            p.display()
        )));
    };
    // SAFETY: valid NUL-terminated strings and a (ptr, len) pair from a live slice.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // Some staging file systems do not support every namespace; not fatal for a workspace.
        tracing::warn!(path = %p.display(), xattr = %String::from_utf8_lossy(name), error = %e, "could not set xattr");
    }
    Ok(())
}

/// Set atime and mtime of `p` without following a final symlink.
pub(crate) fn set_mtime(p: &Path, secs: i64, nanos: u32) -> io::Result<()> {
    let c = cpath(p)?;
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: valid path and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Decodes a stream of zstd frames (skippable frames are skipped).
struct ZstdReader<R: BufRead> {
    source: R,
    decoder: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdReader<R> {
    fn new(source: R) -> Self {
        ZstdReader {
            source,
            decoder: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        use ruzstd::decoding::BlockDecodingStrategy;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                    let need = buf.len() - self.decoder.can_collect();
                    self.decoder
                        .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(need))
                        .map_err(io::Error::other)?;
                }
                let n = self.decoder.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                if self.decoder.is_finished() {
                    self.in_frame = false;
                    continue;
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "zstd frame ended early",
                ));
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.init(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = io::copy(
                        &mut (&mut self.source).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                    if skipped != u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "truncated zstd skippable frame",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes() {
        assert!(safe_components(Path::new("../etc/passwd")).is_err());
        assert!(safe_components(Path::new("a/../../b")).is_err());
        assert!(safe_components(Path::new("/etc/passwd")).is_err());
        assert_eq!(
            safe_components(Path::new("./a/./b")).ok(),
            Some(vec![OsString::from("a"), OsString::from("b")])
        );
    }

    #[test]
    fn zstd_multi_frame() {
        let mut data = ruzstd::encoding::compress_to_vec(
            &b"hello "[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        // A skippable frame between two data frames.
        data.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        data.extend(ruzstd::encoding::compress_to_vec(
            &b"world"[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        let mut out = String::new();
        ZstdReader::new(io::BufReader::new(&data[..]))
            .read_to_string(&mut out)
            .expect("decodes");
        assert_eq!(out, "hello world");
    }
}
