//! Saved guest memory is sealed (issue 8, docs/security.md "Saved memory"): a
//! workspace frozen to disk or snapshotted leaves no plaintext of its RAM under the
//! data directory, a tampered or truncated file is refused with a clear error and
//! changes nothing, and delete leaves neither the file nor its key. Real VMs through
//! `warren server`.

mod common;
#[path = "support/server.rs"]
mod server;

use serde_json::{json, Value};
use server::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Does `file` contain `needle`? (grep: a debug build's byte loop would take
/// minutes over a disk image.)
fn file_contains(file: &Path, needle: &str) -> bool {
    let st = std::process::Command::new("grep")
        .args(["-q", "-a", "-F", "-e", needle])
        .arg(file)
        .status()
        .expect("run grep");
    st.success()
}

/// The files under `dir` that contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let out = std::process::Command::new("grep")
        .args(["-r", "-l", "-a", "-F", "-e", needle])
        .arg(dir)
        .output()
        .expect("run grep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The workspace's data key, unwrapped the way the server does it.
fn data_key(data: &Path, id: &str) -> warren_kms::DataKey {
    use warren_kms::KeyManager;
    let km = warren_kms::LocalKeyManager::open(&data.join("master.key")).unwrap();
    let dir = data.join("workspaces").join(id);
    km.unwrap(
        &warren_kms::read_wrapped(&dir.join("data.key")).unwrap(),
        id,
    )
    .unwrap()
}

/// A sealed file's checks: our header, no marker in the file, the marker in the
/// decrypted stream (what the node feeds QEMU), so the first check can fail.
fn assert_sealed_without(path: &Path, key: &warren_kms::DataKey, id: &str, marker: &str) {
    let mut head = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open(path).unwrap(), &mut head).unwrap();
    assert_eq!(&head, b"WARRENVM", "{} is not sealed", path.display());
    assert!(
        !file_contains(path, marker),
        "the marker is in {} in the clear",
        path.display()
    );
    let plain = path.with_extension("plain-for-test");
    let mut out = std::fs::File::create(&plain).unwrap();
    warren_node::sealed::open(path, key, id)
        .unwrap()
        .unseal(&mut out)
        .unwrap();
    drop(out);
    let found = file_contains(&plain, marker);
    std::fs::remove_file(&plain).unwrap();
    assert!(
        found,
        "the marker is not in the decrypted VM state: the test could not fail"
    );
}

fn flip_byte_at_half(path: &Path) -> Vec<u8> {
    let good = std::fs::read(path).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    std::fs::write(path, &bad).unwrap();
    good
}

async fn status(s: &Server, id: &str) -> String {
    let (st, b) = s.call("GET", &format!("/workspace/{id}"), None).await;
    assert_eq!(st, 200, "{b}");
    b["workspace"]["status"].as_str().unwrap_or("").to_string()
}

fn assert_refused(st: u16, b: &Value, what: &str) {
    let msg = b["message"].as_str().unwrap_or("").to_string() + &b.to_string();
    assert_eq!(st, 422, "{what}: {b}");
    assert!(
        msg.contains("failed authentication")
            || msg.contains("truncated")
            || msg.contains("not a sealed"),
        "{what}: not a clear error: {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_memory_is_sealed_and_a_tampered_file_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    let r = s
        .sdk()
        .create(&small(json!({"wait_ready": true})))
        .await
        .unwrap();
    let id = r["workspace"]["id"].as_str().unwrap().to_string();
    let dir = data.path().join("workspaces").join(&id);
    let key = data_key(data.path(), &id);
    let rt = s.sdk().runtime(&id).await.unwrap();

    // A random marker in guest RAM only (tmpfs), built inside the guest so the exec
    // request does not carry it whole, and a process that must survive.
    let mut rnd = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut rnd))
        .unwrap();
    let half = hex::encode(rnd);
    let marker = format!("{half}{half}-in-ram");
    let (code, out) = sh(
        &rt,
        &format!(
            "h={half}; printf '%s%s-in-ram' $h $h > /dev/shm/marker; \
             setsid sh -c 'while true; do sleep 1; done' </dev/null >/dev/null 2>&1 & echo $!"
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let pid: u32 = out.trim().parse().expect("a pid");

    // Pause to disk: the state file is sealed and holds no plaintext.
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/pause"), None)
        .await;
    assert_eq!((st, b["status"].as_str()), (200, Some("paused")), "{b}");
    assert!(vmm_gone(&id));
    let state = dir.join("memory.state");
    assert_sealed_without(&state, &key, &id, &marker);
    let files = files_containing(data.path(), &marker);
    assert!(files.is_empty(), "the marker is in the clear in {files:?}");

    // A flipped byte: resume fails with a clear error; still paused, file kept.
    let good = flip_byte_at_half(&state);
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/resume"), None)
        .await;
    assert_refused(st, &b, "tampered");
    assert!(vmm_gone(&id), "a VMM runs a tampered state");
    assert_eq!(status(&s, &id).await, "paused");
    // Cut short between chunks: refused too.
    let cut = 64 + 2 * (256 * 1024 + 16);
    std::fs::write(&state, &good[..cut]).unwrap();
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/resume"), None)
        .await;
    assert_refused(st, &b, "truncated");
    assert_eq!(status(&s, &id).await, "paused");
    assert!(vmm_gone(&id));

    // A plain QEMU stream in its place (a downgrade) is refused too.
    let mut plain = good.clone();
    plain[..8].copy_from_slice(b"QEVM\0\0\0\x03");
    std::fs::write(&state, &plain).unwrap();
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/resume"), None)
        .await;
    assert_refused(st, &b, "unsealed");
    assert_eq!(status(&s, &id).await, "paused");

    // The intact file resumes: the RAM file and the process are there.
    std::fs::write(&state, &good).unwrap();
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/resume"), None)
        .await;
    assert_eq!((st, b["status"].as_str()), (200, Some("running")), "{b}");
    let rt = s.sdk().runtime(&id).await.unwrap();
    let (code, out) = sh(&rt, &format!("kill -0 {pid} && cat /dev/shm/marker")).await;
    assert_eq!((code, out.as_str()), (0, marker.as_str()));
    assert!(!state.exists(), "stale state kept after resume");

    // A user snapshot's memory is sealed the same way.
    let (st, b) = s
        .call(
            "POST",
            &format!("/workspace/{id}/snapshot"),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["snapshot"]["encrypted"], true, "{b}");
    let snap_mem = dir.join("snapshots/latest/memory");
    assert_sealed_without(&snap_mem, &key, &id, &marker);
    // Tampered: restore is refused while the workspace runs on, unchanged.
    let rt = s.sdk().runtime(&id).await.unwrap();
    let (code, _) = sh(&rt, "echo after > /root/after.txt; sync").await;
    assert_eq!(code, 0);
    let good = flip_byte_at_half(&snap_mem);
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/restore"), None)
        .await;
    assert_refused(st, &b, "tampered snapshot");
    assert_eq!(status(&s, &id).await, "running");
    let rt = s.sdk().runtime(&id).await.unwrap();
    let (code, out) = sh(&rt, &format!("kill -0 {pid} && cat /root/after.txt")).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "after\n"),
        "the workspace changed"
    );
    // The intact snapshot restores (the file written after it is gone).
    std::fs::write(&snap_mem, &good).unwrap();
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/restore"), None)
        .await;
    assert_eq!((st, b["status"].as_str()), (200, Some("running")), "{b}");
    let rt = s.sdk().runtime(&id).await.unwrap();
    let (code, out) = sh(
        &rt,
        &format!("kill -0 {pid} && cat /dev/shm/marker; test -e /root/after.txt || echo gone"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, format!("{marker}gone\n"));

    // Delete: the saved memory and the key that opens it are gone.
    let (st, _) = s
        .call("POST", &format!("/workspace/{id}/pause"), None)
        .await;
    assert_eq!(st, 200);
    assert!(state.is_file());
    let (st, _) = s.call("DELETE", &format!("/workspace/{id}"), None).await;
    assert_eq!(st, 202);
    let t0 = Instant::now();
    while dir.exists() && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!dir.exists(), "run directory left after delete");
    let left: Vec<_> = walk(data.path())
        .into_iter()
        .filter(|p| {
            let n = p.to_string_lossy();
            n.contains(&id) || n.ends_with("memory.state") || n.ends_with("data.key")
        })
        .collect();
    assert!(left.is_empty(), "left after delete: {left:?}");
    assert!(vmm_gone(&id));
    s.shutdown();
}

/// Every regular file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}
