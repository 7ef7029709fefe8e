//! Storage against real VMs through `warren server`: each workspace's disk is
//! encrypted under its own key, the host holds the key only wrapped and never the
//! plaintext, data survives stop/start, a server restart and a master key rotation,
//! a missing or wrong master key stops the server before it touches anything, and
//! delete destroys the key.

mod common;
#[path = "support/server.rs"]
mod server;

use common::*;
use serde_json::{json, Value};
use server::*;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use warren_kms::KeyManager;
use warren_protocol::runtime::ExecRequest;

/// Servers share the host's address pool and taps: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn sh(s: &Server, id: &str, script: &str) -> (i32, String, String) {
    let rt = s.sdk().runtime(id).await.unwrap();
    let out = rt
        .exec(&ExecRequest {
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    (
        out.exit_code.unwrap_or(-1),
        out.stdout.unwrap_or_default(),
        out.stderr.unwrap_or_default(),
    )
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Files under `dir` containing any of `needles` (read in chunks, with overlap).
fn files_containing(dir: &Path, needles: &[&[u8]]) -> Vec<String> {
    let longest = needles.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut hits = Vec::new();
    for p in files_under(dir) {
        let Ok(mut f) = std::fs::File::open(&p) else {
            continue;
        };
        let mut carry: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = f.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            carry.extend_from_slice(&buf[..n]);
            if needles
                .iter()
                .any(|nd| carry.windows(nd.len()).any(|w| w == *nd))
            {
                hits.push(p.display().to_string());
                break;
            }
            let keep = carry.len().saturating_sub(longest);
            carry.drain(..keep);
        }
    }
    hits
}

/// `(path -> (size, mtime, sha256))` of the workspaces' files: to show nothing changed.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, i64, String)> {
    use std::os::unix::fs::MetadataExt;
    files_under(&dir.join("workspaces"))
        .into_iter()
        .map(|p| {
            let md = std::fs::metadata(&p).unwrap();
            let sum = if md.len() < (1 << 20) {
                sha256_hex(&std::fs::read(&p).unwrap())
            } else {
                String::new()
            };
            (p.display().to_string(), (md.len(), md.mtime(), sum))
        })
        .collect()
}

/// Start a server that must refuse to start; returns its stderr.
fn refused_start(data: &Path) -> String {
    let out = Server::command(data, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "the server started: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_disk_is_never_plaintext_survives_restarts_and_is_erased() {
    let _g = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    let master = data.path().join("master.key");
    let mode = std::fs::metadata(&master).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "master key mode");

    let created = s
        .sdk()
        .create(&json!({"image": "busybox", "memory_mb": 256, "disk_size_mb": 128}))
        .await
        .unwrap();
    let id = created["workspace"]["id"].as_str().unwrap().to_string();
    wait_for(&s, &id, 120, |w| w.is_some_and(|w| w["ready"] == true)).await;
    let dir = data.path().join("workspaces").join(&id);
    let key_file = dir.join("data.key");
    let wrapped = std::fs::read(&key_file).unwrap();
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // In the guest: the writable layer is a dm-crypt mapping over the virtio disk.
    let (code, out, err) = sh(
        &s,
        &id,
        "cat /sys/block/dm-0/dm/name; ls /sys/block/dm-0/slaves",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "warren-data", "{out}");
    assert!(lines[1].starts_with("vd"), "{out}");

    // A marker written in the guest. The command line never holds it whole, so it
    // can only reach the host through the disk.
    let (code, out, err) = sh(
        &s,
        &id,
        "i=0; while [ $i -lt 200 ]; do printf 'warren-%s-%s\\n' plain text-marker-7f3a; \
         i=$((i+1)); done > /root/marker.txt && sync && wc -l < /root/marker.txt",
    )
    .await;
    assert_eq!((code, out.trim()), (0, "200"), "{err}");
    let marker: &[u8] = b"warren-plain-text-marker-7f3a";

    // The host holds only ciphertext and the wrapped key.
    let km = warren_kms::LocalKeyManager::open(&master).unwrap();
    let key = km
        .unwrap(&warren_kms::read_wrapped(&key_file).unwrap(), &id)
        .unwrap();
    let key_hex = key.to_hex();
    let hits = files_containing(
        data.path(),
        &[marker, &key.as_bytes()[..], key_hex.as_bytes()],
    );
    assert!(
        hits.is_empty(),
        "plaintext or the unwrapped key on the host: {hits:?}"
    );
    // ... and the marker is really on that disk, under the workspace's key.
    assert!(
        decrypted_disk_contains(&dir.join("data.ext4"), &key, marker),
        "the marker is not on the encrypted disk"
    );

    // Stop and start: the data is there.
    let (st, b) = s.call("POST", &format!("/workspace/{id}/stop"), None).await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/start"), None)
        .await;
    assert_eq!((st, b["status"].clone()), (200, json!("running")), "{b}");
    let (_, out, _) = sh(&s, &id, "head -1 /root/marker.txt").await;
    assert_eq!(out.as_bytes().strip_suffix(b"\n"), Some(marker));
    let (st, b) = s.call("POST", &format!("/workspace/{id}/stop"), None).await;
    assert_eq!(st, 200, "{b}");
    s.shutdown();

    // A missing, wrong or exposed master key: a clear error, nothing touched.
    let before = snapshot(data.path());
    let saved = data.path().join("master.key.saved");
    std::fs::rename(&master, &saved).unwrap();
    let err = refused_start(data.path());
    assert!(
        err.contains("master key file") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!master.exists(), "a missing key must not be replaced");
    warren_kms::LocalKeyManager::create(&master).unwrap();
    let err = refused_start(data.path());
    assert!(
        err.contains("wrapped under master key") && err.contains(&id),
        "{err}"
    );
    std::fs::remove_file(&master).unwrap();
    std::fs::rename(&saved, &master).unwrap();
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused_start(data.path());
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        snapshot(data.path()),
        before,
        "a refused start changed files"
    );

    // Rotation: the data key is re-wrapped under a new master key.
    let old_master = std::fs::read(&master).unwrap();
    let out = warren(data.path())
        .arg("rotate-master-key")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(std::fs::read(&master).unwrap(), old_master);
    let rewrapped = warren_kms::read_wrapped(&key_file).unwrap();
    assert_ne!(std::fs::read(&key_file).unwrap(), wrapped);
    assert!(!km.has_key(&rewrapped.kek_id), "still under the old key");
    assert!(km.unwrap(&rewrapped, &id).is_err());

    // A server restart, under the rotated key: the data is there.
    let s = Server::start(data.path());
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/start"), None)
        .await;
    assert_eq!(
        (st, b["status"].clone()),
        (200, json!("running")),
        "{b}\n{}",
        s.log()
    );
    let (_, out, _) = sh(
        &s,
        &id,
        "wc -l < /root/marker.txt; head -1 /root/marker.txt",
    )
    .await;
    assert_eq!(out, format!("200\n{}\n", String::from_utf8_lossy(marker)));

    // Delete: the VM stops and the key is destroyed with the disk.
    let wrapped_now = std::fs::read(&key_file).unwrap();
    let (st, _) = s.call("DELETE", &format!("/workspace/{id}"), None).await;
    assert_eq!(st, 202);
    wait_for(&s, &id, 60, |w| w.is_none()).await;
    assert!(!key_file.exists(), "the wrapped key outlived its workspace");
    assert!(!dir.exists());
    let rw = serde_json::from_slice::<Value>(&wrapped_now).unwrap();
    let ct = rw["ciphertext"].as_str().unwrap();
    assert!(
        files_containing(data.path(), &[ct.as_bytes()]).is_empty(),
        "a copy of the wrapped key is left"
    );
    assert_nothing_left(data.path(), &[id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_are_checked_first_then_applied_and_the_disk_only_grows() {
    let _g = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    let created = s
        .sdk()
        .create(&json!({"image": "busybox", "memory_mb": 256, "disk_size_mb": 64}))
        .await
        .unwrap();
    let id = created["workspace"]["id"].as_str().unwrap().to_string();
    wait_for(&s, &id, 120, |w| w.is_some_and(|w| w["ready"] == true)).await;
    let path = format!("/workspace/{id}/resources");
    let (st, b) = s.call("GET", &path, None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b["resources"],
        json!({"cpus": 1, "memory_mb": 256, "disk_size_mb": 64})
    );
    let (code, out, _) = sh(&s, &id, "echo kept > /root/kept.txt && sync").await;
    assert_eq!(code, 0, "{out}");

    // Bad input: a 422 naming the field, and nothing changes.
    for (body, field) in [
        (json!({"disk_size_mb": 32}), "disk_size_mb"),
        (json!({"disk_size_mb": 96, "cpus": 10_000}), "cpus"),
        (json!({"memory_mb": 16}), "memory_mb"),
        (json!({"memory_mb": "lots"}), "memory_mb"),
        (json!({"cpus": 2, "apply": "yes"}), "apply"),
    ] {
        let (st, b) = s.call("PUT", &path, Some(body.clone())).await;
        assert_eq!(
            (st, b["code"].clone()),
            (422, json!("validation_error")),
            "{body}: {b}"
        );
        assert_eq!(b["details"]["field"], field, "{b}");
    }
    let (_, b) = s.call("GET", &path, None).await;
    assert_eq!(
        b["resources"],
        json!({"cpus": 1, "memory_mb": 256, "disk_size_mb": 64})
    );
    let disk = data.path().join("workspaces").join(&id).join("data.ext4");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 64 << 20);

    // A change without apply waits for the next start.
    let (st, b) = s
        .call("PATCH", &path, Some(json!({"memory_mb": 320})))
        .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["restart_required"], true, "{b}");
    // With apply: the workspace restarts with them.
    let (st, b) = s
        .call(
            "PUT",
            &path,
            Some(json!({"disk_size_mb": 96, "apply": true})),
        )
        .await;
    assert_eq!((st, b["applied"].clone()), (200, json!(true)), "{b}");
    assert_eq!(
        b["resources"],
        json!({"cpus": 1, "memory_mb": 320, "disk_size_mb": 96})
    );
    wait_for(&s, &id, 120, |w| w.is_some_and(|w| w["ready"] == true)).await;
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 96 << 20);
    // The guest sees the bigger disk (its file system grew at boot) and more memory,
    // and kept its data.
    let (code, out, err) = sh(
        &s,
        &id,
        "cat /root/kept.txt; cat /sys/block/dm-0/size; \
         grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2; \
         dd if=/dev/zero of=/root/big bs=1M count=70 2>&1 >/dev/null | tail -1; rm -f /root/big",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "kept");
    assert_eq!(l[1], (96u64 * 2048).to_string(), "dm sectors: {out}");
    let mem_kb: u64 = l[2].parse().unwrap();
    assert!(mem_kb > 256 * 1024, "MemTotal {mem_kb} kB: {out}");
    assert!(
        !out.contains("No space left"),
        "70 MB did not fit on the grown disk: {out}"
    );

    let (st, _) = s.call("DELETE", &format!("/workspace/{id}"), None).await;
    assert_eq!(st, 202);
    wait_for(&s, &id, 60, |w| w.is_none()).await;
    assert_nothing_left(data.path(), &[id]);
}
