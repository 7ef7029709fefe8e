//! Shared by the VM tests: where the agent and caches are, and checks that a
//! workspace left nothing behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The statically linked agent. Tests fail (not skip) without it: build it with
/// scripts/build.sh.
pub fn agent() -> PathBuf {
    let p = std::env::var_os("WARREN_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/x86_64-unknown-linux-gnu/agent/warren-agent"));
    assert!(
        p.is_file(),
        "guest agent not found at {}: run scripts/build.sh first (or set WARREN_AGENT)",
        p.display()
    );
    p
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("WARREN_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/warren".into())
}

/// A `warren` command with a private data dir and the shared cache.
pub fn warren(data_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.env("WARREN_DATA_DIR", data_dir)
        .env("WARREN_CACHE_DIR", cache_dir())
        .env("WARREN_AGENT", agent())
        .env_remove("RUST_LOG");
    c
}

pub fn node_config(data_dir: &Path) -> warren_node::NodeConfig {
    warren_node::NodeConfig {
        data_dir: data_dir.to_path_buf(),
        cache_dir: cache_dir(),
        agent_binary: agent(),
        ..warren_node::NodeConfig::default()
    }
}

/// Nothing of any workspace is left under `data_dir`: no run directory, no VMM
/// process naming it, no lease or tap owned by it.
pub fn assert_nothing_left(data_dir: &Path, ids: &[String]) {
    let ws = data_dir.join("workspaces");
    let left: Vec<_> = std::fs::read_dir(&ws)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "run directories left in {}: {left:?}",
        ws.display()
    );
    let marker = ws.to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c);
            assert!(
                !(c.contains("qemu-system") && c.contains(&marker)),
                "a VMM of this test is still running: pid {:?}",
                e.file_name()
            );
        }
    }
    let leases = Path::new("/run/warren/net/leases");
    for e in std::fs::read_dir(leases)
        .map(|r| r.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let body = std::fs::read_to_string(e.path()).unwrap_or_default();
        for id in ids {
            assert!(!body.contains(id.as_str()), "lease left for {id}: {body}");
        }
    }
}

/// A file tree as tar bytes: `(path, mode, contents)`; a `None` content is a directory;
/// contents starting with "->" make a symlink.
pub fn tar_layer(entries: &[(&str, u32, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match content {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).expect("dir");
            }
            Some(c) if c.starts_with(b"->") => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                let target = std::str::from_utf8(&c[2..]).expect("utf8");
                b.append_link(&mut h, path, target).expect("link");
            }
            Some(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(c.len() as u64);
                b.append_data(&mut h, path, *c).expect("file");
            }
        }
    }
    b.into_inner().expect("tar")
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Write an OCI image layout with the given layers (uncompressed tars) and config.
pub fn write_oci_layout(dir: &Path, layers: &[Vec<u8>], config: serde_json::Value) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let put = |data: &[u8]| -> (String, usize) {
        let h = sha256_hex(data);
        std::fs::write(blobs.join(&h), data).expect("blob");
        (format!("sha256:{h}"), data.len())
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let (d, n) = put(l);
        diff_ids.push(serde_json::Value::String(d.clone()));
        layer_descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n
        }));
    }
    let mut config = config;
    config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
    config["architecture"] = "amd64".into();
    config["os"] = "linux".into();
    let (cd, cn) = put(&serde_json::to_vec(&config).expect("config"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": layer_descs,
    });
    let (md, mn) = put(&serde_json::to_vec(&manifest).expect("manifest"));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("index"),
    )
    .expect("index");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
}

/// Decrypt the parts of the disk file that hold data (not all-zero ciphertext) and
/// say whether `needle` is in the plaintext: the positive control of the search.
pub fn decrypted_disk_contains(disk: &Path, key: &warren_kms::DataKey, needle: &[u8]) -> bool {
    use std::io::Read;
    let cipher = warren_node::disk::DiskCipher::new(key);
    let mut f = std::fs::File::open(disk).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return false;
        }
        let chunk = &mut buf[..n];
        if chunk.iter().any(|b| *b != 0) {
            cipher.decrypt(chunk, off);
            if chunk.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
        off += n as u64;
    }
}

/// Workspace `id`'s wrapped key `file` (`data.key`, `overlay.key`), unwrapped under
/// the node's master key in `data`, bound to `context`.
pub fn unwrapped_key(data: &Path, id: &str, file: &str, context: &str) -> warren_kms::DataKey {
    use warren_kms::KeyManager;
    let km = warren_kms::LocalKeyManager::open(&data.join("master.key")).unwrap();
    let w = warren_kms::read_wrapped(&data.join("workspaces").join(id).join(file)).unwrap();
    km.unwrap(&w, context).unwrap()
}

/// Options every OpenSSH client here gets (ssh, scp and sftp share them).
pub fn opts(key: &Path) -> Vec<String> {
    let mut v = loud_opts(key);
    v.extend(["-o".into(), "LogLevel=ERROR".into()]);
    v
}

/// The same, with OpenSSH's default log level (it reports refused forwards).
pub fn loud_opts(key: &Path) -> Vec<String> {
    let mut v = vec!["-i".to_string(), key.display().to_string()];
    for o in [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "ConnectTimeout=20",
    ] {
        v.push("-o".into());
        v.push(o.into());
    }
    v
}

/// A new ed25519 key pair `dir/name` (no passphrase): (private key path, public key line).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .expect("run ssh-keygen");
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}
