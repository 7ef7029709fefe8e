//! Test helpers: building layers, OCI layouts and `docker save` archives in memory, and
//! reading the resulting ext4 images with debugfs (no mounting).

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::json;
use sha2::{Digest, Sha256};
use warren_images::Progress;

pub fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

/// One tar entry of a test layer.
pub enum E {
    Dir(&'static str, u32),
    File(&'static str, &'static str, u32),
    /// path, content, mode, uid, gid, mtime
    FileOwned(&'static str, &'static str, u32, u64, u64, u64),
    Symlink(&'static str, &'static str),
    HardLink(&'static str, &'static str),
    /// Written verbatim into the header (bypassing the tar crate's path checks).
    RawName(&'static str, &'static str),
    /// A file preceded by a PAX header carrying one `SCHILY.xattr.` attribute.
    XattrFile(&'static str, &'static str, &'static str, &'static [u8]),
}

/// One PAX record: "LEN key=value\n", LEN counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len = len.to_string().len() + body_len;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

pub fn tar_layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_path(p).expect("path");
                h.set_mode(*mode);
                h.set_size(0);
                h.set_cksum();
                b.append(&h, &[][..]).expect("append");
            }
            E::File(p, content, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_path(p).expect("path");
                h.set_mode(*mode);
                h.set_size(content.len() as u64);
                h.set_cksum();
                b.append(&h, content.as_bytes()).expect("append");
            }
            E::FileOwned(p, content, mode, uid, gid, mtime) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_path(p).expect("path");
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_mtime(*mtime);
                h.set_size(content.len() as u64);
                h.set_cksum();
                b.append(&h, content.as_bytes()).expect("append");
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_path(p).expect("path");
                h.set_link_name(target).expect("link");
                h.set_mode(0o777);
                h.set_size(0);
                h.set_cksum();
                b.append(&h, &[][..]).expect("append");
            }
            E::HardLink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_path(p).expect("path");
                h.set_link_name(target).expect("link");
                h.set_mode(0o644);
                h.set_size(0);
                h.set_cksum();
                b.append(&h, &[][..]).expect("append");
            }
            E::XattrFile(p, content, key, value) => {
                let rec = pax_record(&format!("SCHILY.xattr.{key}"), value);
                let mut x = tar::Header::new_ustar();
                x.set_entry_type(tar::EntryType::XHeader);
                x.set_path("PaxHeaders/x").expect("path");
                x.set_mode(0o644);
                x.set_size(rec.len() as u64);
                x.set_cksum();
                b.append(&x, &rec[..]).expect("append pax");
                h.set_entry_type(tar::EntryType::Regular);
                h.set_path(p).expect("path");
                h.set_mode(0o755);
                h.set_size(content.len() as u64);
                h.set_cksum();
                b.append(&h, content.as_bytes()).expect("append");
            }
            E::RawName(p, content) => {
                h.set_entry_type(tar::EntryType::Regular);
                let name = &mut h.as_old_mut().name;
                name[..p.len()].copy_from_slice(p.as_bytes());
                h.set_mode(0o644);
                h.set_size(content.len() as u64);
                h.set_cksum();
                b.append(&h, content.as_bytes()).expect("append");
            }
        }
    }
    b.into_inner().expect("finish tar")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// A layer as stored (possibly compressed) plus its uncompressed tar.
pub struct Layer {
    pub stored: Vec<u8>,
    pub tar: Vec<u8>,
    pub media_type: &'static str,
}

pub fn plain(tar: Vec<u8>) -> Layer {
    Layer {
        stored: tar.clone(),
        tar,
        media_type: "application/vnd.oci.image.layer.v1.tar",
    }
}

pub fn gzipped(tar: Vec<u8>) -> Layer {
    Layer {
        stored: gzip(&tar),
        tar,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
    }
}

pub fn zstded(tar: Vec<u8>) -> Layer {
    Layer {
        stored: zstd(&tar),
        tar,
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// An image's blobs, keyed by digest.
pub struct TestImage {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

pub fn make_image(
    layers: Vec<Layer>,
    container_config: serde_json::Value,
    arch: &str,
) -> TestImage {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(&l.tar)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("json");
    let config_digest = sha(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": sha(&l.stored),
            "size": l.stored.len(),
        })).collect::<Vec<_>>(),
    }))
    .expect("json");
    let manifest_digest = sha(&manifest);
    TestImage {
        layers,
        config,
        config_digest,
        manifest,
        manifest_digest,
    }
}

/// The standard test image: three layers (plain, gzip, zstd) exercising whiteouts, an opaque
/// directory, a symlink, a hard link, ownership, setuid and a runtime config.
pub fn standard_image() -> TestImage {
    let l1 = tar_layer(&[
        E::Dir("etc", 0o755),
        E::FileOwned("etc/hello.txt", "hello\n", 0o640, 1000, 1001, 1_234_567_890),
        E::File("etc/deleted.txt", "bye\n", 0o644),
        E::Dir("opaque", 0o755),
        E::File("opaque/lower1.txt", "lower\n", 0o644),
        E::Dir("opaque/sub", 0o755),
        E::File("opaque/sub/lower2.txt", "lower\n", 0o644),
        E::Dir("bin", 0o755),
        E::File("bin/tool", "#!/bin/sh\necho tool\n", 0o755),
        E::HardLink("bin/tool-hardlink", "bin/tool"),
        E::Symlink("bin/tool-symlink", "tool"),
        E::File("bin/suid", "x", 0o4755),
        E::XattrFile("bin/captool", "cap", "user.warren", b"kept"),
        E::Dir("srv", 0o755),
    ]);
    let l2 = tar_layer(&[
        E::Dir("etc", 0o755),
        E::File("etc/.wh.deleted.txt", "", 0o644),
        E::File("etc/new.txt", "new\n", 0o644),
        E::Dir("opaque", 0o755),
        E::File("opaque/upper.txt", "upper\n", 0o644),
        E::File("opaque/.wh..wh..opq", "", 0o644),
    ]);
    let l3 = tar_layer(&[
        E::Dir("usr", 0o755),
        E::Dir("usr/share", 0o755),
        E::File("usr/share/zstd.txt", "from a zstd layer\n", 0o644),
    ]);
    make_image(
        vec![plain(l1), gzipped(l2), zstded(l3)],
        json!({
            "Env": ["PATH=/usr/bin:/bin", "FOO=bar=baz"],
            "Entrypoint": ["/bin/tool"],
            "Cmd": ["--serve"],
            "WorkingDir": "/srv",
            "User": "1000:1001",
        }),
        "amd64",
    )
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(path, bytes).expect("write");
}

/// Write `img` as an OCI image layout at `dir`, tagged `tag`.
pub fn write_layout(dir: &Path, img: &TestImage, tag: &str) {
    write(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    let blob = |d: &str| dir.join("blobs/sha256").join(hex_of(d));
    for l in &img.layers {
        write(&blob(&sha(&l.stored)), &l.stored);
    }
    write(&blob(&img.config_digest), &img.config);
    write(&blob(&img.manifest_digest), &img.manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": img.manifest_digest,
            "size": img.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    write(
        &dir.join("index.json"),
        &serde_json::to_vec(&index).expect("json"),
    );
}

/// Tar up a directory (an OCI layout) as an OCI archive.
pub fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).expect("tar dir");
    write(out, &b.into_inner().expect("tar"));
}

/// Write `img` as a legacy `docker save` tarball (uncompressed `<id>/layer.tar`s).
pub fn write_docker_archive(path: &Path, img: &TestImage, repo_tag: &str) {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).expect("path");
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, data).expect("append");
    };
    let config_name = format!("{}.json", hex_of(&img.config_digest));
    add(&config_name, &img.config);
    let mut layer_names = Vec::new();
    for (i, l) in img.layers.iter().enumerate() {
        let id = hex_of(&sha(format!("layer-{i}").as_bytes())).to_string();
        let name = format!("{id}/layer.tar");
        add(&name, &l.tar);
        add(&format!("{id}/VERSION"), b"1.0");
        layer_names.push(name);
    }
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": layer_names,
    }]);
    add(
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
    add("repositories", b"{}");
    write(path, &b.into_inner().expect("tar"));
}

/// Run a debugfs request against an ext4 image (read-only).
pub fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .expect("run debugfs (install e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// One `ls -p` row: inode, mode (octal), uid, gid, name, size.
#[derive(Debug, Clone)]
pub struct Ent {
    pub inode: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub size: u64,
}

pub fn ls(image: &Path, dir: &str) -> Vec<Ent> {
    debugfs(image, &format!("ls -p {dir}"))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            if f.len() < 7 {
                return None;
            }
            Some(Ent {
                inode: f[1].parse().ok()?,
                mode: u32::from_str_radix(f[2], 8).ok()?,
                uid: f[3].parse().ok()?,
                gid: f[4].parse().ok()?,
                name: f[5].to_string(),
                size: f[6].parse().unwrap_or(0),
            })
        })
        .filter(|e| e.name != "." && e.name != "..")
        .collect()
}

pub fn names(image: &Path, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = ls(image, dir).into_iter().map(|e| e.name).collect();
    v.sort();
    v
}

pub fn entry(image: &Path, dir: &str, name: &str) -> Ent {
    ls(image, dir)
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{dir}/{name} missing from {}", image.display()))
}

pub fn cat(image: &Path, path: &str) -> String {
    debugfs(image, &format!("cat {path}"))
}

/// Records progress so tests can count builds.
#[derive(Default)]
pub struct Recorder {
    pub phases: Mutex<Vec<String>>,
    pub bytes_events: Mutex<u64>,
}

impl Progress for Recorder {
    fn phase(&self, msg: &str) {
        self.phases.lock().expect("lock").push(msg.to_string());
    }
    fn bytes(&self, _done: u64, _total: Option<u64>) {
        *self.bytes_events.lock().expect("lock") += 1;
    }
}

impl Recorder {
    pub fn mkfs_runs(&self) -> usize {
        self.phases
            .lock()
            .expect("lock")
            .iter()
            .filter(|p| p.starts_with("mkfs.ext4"))
            .count()
    }
}

/// Everything in `cache/images` except the refs directory, plus everything in `cache/tmp`.
pub fn cache_leftovers(cache: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for sub in ["images", "tmp"] {
        if let Ok(rd) = std::fs::read_dir(cache.join(sub)) {
            for e in rd.flatten() {
                if e.file_name() != "refs" {
                    v.push(e.path());
                }
            }
        }
    }
    v
}
