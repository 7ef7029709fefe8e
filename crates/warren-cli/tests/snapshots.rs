//! Fast start and saved state, driven through `warren server` (the binary) over HTTP
//! with real VMs: pause freezes to disk (the VMM process ends) and resume brings back
//! every file and process, across repeated cycles and a server restart.

mod common;
#[path = "support/server.rs"]
mod server;

use serde_json::{json, Value};
use server::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Servers share the host's address pool and taps: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn host_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_processes_survive_five_freezes_to_disk_and_a_server_restart() {
    let _g = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    let r = s
        .sdk()
        .create(&small(json!({"wait_ready": true})))
        .await
        .unwrap();
    let id = r["workspace"]["id"].as_str().unwrap().to_string();
    assert_eq!(r["workspace"]["ready"], true, "{r}");
    let dir = data.path().join("workspaces").join(&id);
    let rt = s.sdk().runtime(&id).await.unwrap();
    // A file on the disk, and a process that counts in memory and on /tmp.
    let (code, out) = sh(
        &rt,
        "echo start > /root/kept.txt; \
         setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/ticks; sleep 0.2; done' \
           </dev/null >/dev/null 2>&1 & echo $!",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let pid: u32 = out.trim().parse().expect("a pid");
    let (code, out) = sh(&rt, &format!("sleep 0.5; kill -0 {pid} && cat /tmp/ticks")).await;
    assert_eq!(code, 0, "the counter did not start: {out}");
    let mut last_ticks = 0u64;

    for cycle in 1..=5 {
        let (st, b) = s
            .call("POST", &format!("/workspace/{id}/pause"), None)
            .await;
        assert_eq!((st, b["status"].as_str()), (200, Some("paused")), "{b}");
        // Frozen to disk: no VMM process, the state in the run directory.
        assert!(
            vmm_gone(&id),
            "cycle {cycle}: the VMM still runs after pause"
        );
        assert!(dir.join("memory.state").is_file(), "cycle {cycle}");
        // The runtime is unreachable meanwhile, with a clear answer.
        let (st, b) = s.call("GET", &format!("/workspace/{id}"), None).await;
        assert_eq!(
            (st, b["workspace"]["status"].as_str()),
            (200, Some("paused"))
        );

        let (st, b) = s
            .call("POST", &format!("/workspace/{id}/resume"), None)
            .await;
        assert_eq!((st, b["status"].as_str()), (200, Some("running")), "{b}");
        assert!(vmm_running(&id));
        assert!(!dir.join("memory.state").exists(), "stale state kept");
        let rt = s.sdk().runtime(&id).await.unwrap();
        let (code, out) = sh(
            &rt,
            &format!(
                "echo {cycle} >> /root/kept.txt; kill -0 {pid} && echo alive; \
                 sleep 0.5; cat /tmp/ticks; date +%s"
            ),
        )
        .await;
        assert_eq!(code, 0, "cycle {cycle}: {out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.first(), Some(&"alive"), "cycle {cycle}: {out}");
        let ticks: u64 = lines[1].parse().unwrap();
        assert!(
            ticks > last_ticks,
            "cycle {cycle}: the counter stopped: {out}"
        );
        last_ticks = ticks;
        // The guest's clock was stepped to the host's on resume.
        let guest_now: i64 = lines[2].parse().unwrap();
        assert!(
            (guest_now - host_now()).abs() <= 3,
            "cycle {cycle}: guest clock {guest_now} vs host {}",
            host_now()
        );
    }
    let (_, out) = sh(&rt, "cat /root/kept.txt").await;
    assert_eq!(out, "start\n1\n2\n3\n4\n5\n");
    // The boot log goes on across restores (the first boot's lines are kept).
    let (st, b) = s
        .call("GET", &format!("/workspace/{id}/logs?source=boot"), None)
        .await;
    assert_eq!(st, 200, "{b}");
    let log = b["logs"].as_str().unwrap_or("");
    assert!(log.contains("boot config received"), "{log}");
    assert!(
        log.matches("restored from saved state").count() >= 5,
        "{log}"
    );

    // Frozen when the server dies: still frozen, and resumable, after a restart.
    let (st, _) = s
        .call("POST", &format!("/workspace/{id}/pause"), None)
        .await;
    assert_eq!(st, 200);
    s.kill9();
    // A half-written save from a crash is an orphan the restart removes.
    std::fs::write(dir.join(".memory.state.tmp"), b"partial").unwrap();
    let s = Server::start(data.path());
    let (st, b) = s.call("GET", &format!("/workspace/{id}"), None).await;
    assert_eq!(
        (st, b["workspace"]["status"].as_str()),
        (200, Some("paused")),
        "{b}"
    );
    assert!(!vmm_running(&id));
    assert!(!dir.join(".memory.state.tmp").exists(), "orphan kept");
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/resume"), None)
        .await;
    assert_eq!((st, b["status"].as_str()), (200, Some("running")), "{b}");
    let rt = s.sdk().runtime(&id).await.unwrap();
    let (code, out) = sh(&rt, &format!("kill -0 {pid} && cat /root/kept.txt")).await;
    assert_eq!((code, out.as_str()), (0, "start\n1\n2\n3\n4\n5\n"));
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("state") || n.contains("suspend"))
        .collect();
    left.sort();
    assert!(left.is_empty(), "saved state left after resume: {left:?}");

    // Stop drops a frozen workspace's memory; start boots it cold with its disk.
    let (st, _) = s
        .call("POST", &format!("/workspace/{id}/pause"), None)
        .await;
    assert_eq!(st, 200);
    let (st, b) = s.call("POST", &format!("/workspace/{id}/stop"), None).await;
    assert_eq!((st, b["status"].as_str()), (200, Some("stopped")), "{b}");
    assert!(!dir.join("memory.state").exists());

    let (st, _) = s.call("DELETE", &format!("/workspace/{id}"), None).await;
    assert_eq!(st, 202);
    let t0 = Instant::now();
    while dir.exists() && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!dir.exists(), "run directory left after delete");
    assert!(vmm_gone(&id));
}

/// The VMM command line of workspace `id`.
fn vmm_cmdline(id: &str) -> Option<String> {
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let c = std::fs::read(e.path().join("cmdline")).ok()?;
        let c = String::from_utf8_lossy(&c).replace('\0', " ");
        (c.contains("qemu-system") && c.contains(&format!("/workspaces/{id}/"))).then_some(c)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_from_one_template_each_get_their_own_identity() {
    let _g = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = s
            .sdk()
            .create(&small(json!({"wait_ready": true})))
            .await
            .unwrap();
        assert_eq!(r["workspace"]["ready"], true, "{r}");
        ids.push(r["workspace"]["id"].as_str().unwrap().to_string());
    }
    // Both VMs run from one template's memory, mapped copy-on-write.
    let mems: Vec<String> = ids
        .iter()
        .map(|id| {
            let c = vmm_cmdline(id).expect("a VMM");
            let m = c
                .split(' ')
                .find(|a| a.starts_with("memory-backend-file,"))
                .unwrap_or_else(|| panic!("{id} was not started from a template: {c}"))
                .to_string();
            assert!(m.contains("share=off"), "{m}");
            m
        })
        .collect();
    assert_eq!(mems[0], mems[1]);
    // The template's memory file never changes under its clones, even when they
    // write and free memory (the guest reports freed pages to the host).
    let mem_path = mems[0]
        .split(',')
        .find_map(|kv| kv.strip_prefix("mem-path="))
        .unwrap()
        .to_string();
    let digest = || {
        let out = Command::new("sha256sum").arg(&mem_path).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    let before = digest();
    for id in &ids {
        let rt = s.sdk().runtime(id).await.unwrap();
        let (code, out) = sh(
            &rt,
            "dd if=/dev/urandom of=/dev/shm/f bs=1M count=64 2>/dev/null; rm /dev/shm/f; sync",
        )
        .await;
        assert_eq!(code, 0, "{out}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(before, digest(), "a clone changed the template's memory");
    let mut seen = Vec::new();
    for id in &ids {
        let me = Identity::of(&s, id).await;
        // The NIC carries the workspace's own MAC (the template's was another).
        assert_ne!(me.mac, "02:57:52:ff:ff:fe");
        seen.push(me);
    }
    Identity::assert_distinct(&ids.iter().map(String::as_str).collect::<Vec<_>>(), &seen);

    // Cold boot is the fallback: a template that does not restore (its saved state
    // damaged here) is dropped, the create boots cold and succeeds, and the next
    // create builds the template again and starts from it.
    let tdir = Path::new(&mem_path).parent().unwrap().to_path_buf();
    std::fs::write(tdir.join("state"), b"not a QEMU migration stream").unwrap();
    for want_template in [false, true] {
        let r = s
            .sdk()
            .create(&small(json!({"wait_ready": true})))
            .await
            .unwrap();
        assert_eq!(r["workspace"]["ready"], true, "{r}");
        let id = r["workspace"]["id"].as_str().unwrap().to_string();
        let c = vmm_cmdline(&id).expect("a VMM");
        assert_eq!(
            c.contains("memory-backend-file,"),
            want_template,
            "from a template: {want_template}? {c}"
        );
        let rt = s.sdk().runtime(&id).await.unwrap();
        let (code, out) = sh(&rt, "echo ok").await;
        assert_eq!((code, out.as_str()), (0, "ok\n"));
        ids.push(id);
    }
    assert!(
        std::fs::metadata(tdir.join("state")).unwrap().len() > 1024,
        "the template was not rebuilt"
    );
    for id in &ids {
        let (st, _) = s.call("DELETE", &format!("/workspace/{id}"), None).await;
        assert_eq!(st, 202);
    }
    for id in &ids {
        let dir = data.path().join("workspaces").join(id);
        let t0 = Instant::now();
        while dir.exists() && t0.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!dir.exists() && vmm_gone(id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_snapshot_has_the_files_before_it_and_not_those_after() {
    let _g = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    let r = s
        .sdk()
        .create(&small(json!({"wait_ready": true})))
        .await
        .unwrap();
    let id = r["workspace"]["id"].as_str().unwrap().to_string();
    let rt = s.sdk().runtime(&id).await.unwrap();
    // Before the snapshot: a file on disk and a value in a process's memory (tmpfs).
    let (code, out) = sh(
        &rt,
        "echo before > /root/a.txt; echo mem-before > /dev/shm/m",
    )
    .await;
    assert_eq!(code, 0, "{out}");

    // Bad input first: no snapshot yet -> 404, nothing changes.
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/restore"), None)
        .await;
    assert_eq!((st, b["code"].as_str()), (404, Some("not_found")), "{b}");
    let (st, b) = s
        .call(
            "POST",
            &format!("/workspace/{id}/snapshot"),
            Some(json!({"after": "later"})),
        )
        .await;
    assert_eq!(
        (st, b["code"].as_str()),
        (422, Some("validation_error")),
        "{b}"
    );

    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/snapshot"), None)
        .await;
    assert_eq!((st, b["status"].as_str()), (200, Some("running")), "{b}");
    assert!(
        b["snapshot"]["memory_bytes"].as_u64().unwrap_or(0) > 0,
        "{b}"
    );

    // After it: changes to disk and memory.
    let rt = s.sdk().runtime(&id).await.unwrap();
    let (code, out) = sh(
        &rt,
        "echo after > /root/a.txt; echo new > /root/b.txt; echo mem-after > /dev/shm/m; sync",
    )
    .await;
    assert_eq!(code, 0, "{out}");

    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/restore"), None)
        .await;
    assert_eq!((st, b["status"].as_str()), (200, Some("running")), "{b}");
    let rt = s.sdk().runtime(&id).await.unwrap();
    let (code, out) = sh(
        &rt,
        "cat /root/a.txt /dev/shm/m; test -e /root/b.txt && echo b-exists; date +%s",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(&l[..2], &["before", "mem-before"], "{out}");
    assert_eq!(
        l.len(),
        3,
        "a file written after the snapshot came back: {out}"
    );
    let guest_now: i64 = l[2].parse().unwrap();
    assert!((guest_now - host_now()).abs() <= 3, "clock {guest_now}");

    // Disk archives: versioned, listed, fetched, deleted; bad input changes nothing.
    let (code, _) = sh(&rt, "echo warren-archive-marker-7f3a > /root/marker; sync").await;
    assert_eq!(code, 0);
    let (st, b) = s
        .call(
            "POST",
            &format!("/workspace/{id}/archives"),
            Some(json!({})),
        )
        .await;
    assert_eq!((st, b["version"].as_str()), (200, Some("v1")), "{b}");
    assert_eq!(b["size_bytes"], 128u64 << 20, "{b}");
    for (body, want) in [
        (json!({"version": "v1"}), 409),
        (json!({"version": "../x"}), 422),
        (json!({"format": "tar.gz"}), 422),
        // The oblien client's path selection is not built: a clear 501.
        (json!({"version": "v9", "vm_paths": ["/root"]}), 501),
    ] {
        let (st, b) = s
            .call("POST", &format!("/workspace/{id}/archives"), Some(body))
            .await;
        assert_eq!(st, want, "{b}");
    }
    let (st, b) = s
        .call("GET", &format!("/workspace/{id}/archives"), None)
        .await;
    assert_eq!(st, 200);
    let versions: Vec<&str> = b["archives"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["version"].as_str())
        .collect();
    assert_eq!(versions, vec!["v1"], "{b}");
    // An encrypted disk's archive is encrypted: the marker is not in it in clear.
    let ws_dir = data.path().join("workspaces").join(&id);
    let image = ws_dir.join("archives/v1/data.img");
    let bytes = std::fs::read(&image).unwrap();
    let found = bytes
        .windows(26)
        .any(|w| w == b"warren-archive-marker-7f3a");
    assert_eq!(
        found,
        !ws_dir.join("data.key").exists(),
        "marker in clear: {found}"
    );
    drop(bytes);
    let (st, b) = s
        .call("GET", &format!("/workspace/{id}/archives/v1"), None)
        .await;
    assert_eq!((st, b["version"].as_str()), (200, Some("v1")), "{b}");
    let (st, _) = s
        .call("DELETE", &format!("/workspace/{id}/archives/v1"), None)
        .await;
    assert_eq!(st, 200);
    for m in ["GET", "DELETE"] {
        let (st, b) = s
            .call(m, &format!("/workspace/{id}/archives/v1"), None)
            .await;
        assert_eq!((st, b["code"].as_str()), (404, Some("not_found")), "{b}");
    }
    assert!(!image.exists());

    // A deleted snapshot cannot be restored: a clear 404, and the workspace is as it was.
    let (code, _) = sh(&rt, "echo kept > /root/c.txt; sync").await;
    assert_eq!(code, 0);
    let (st, _) = s
        .call("DELETE", &format!("/workspace/{id}/snapshot"), None)
        .await;
    assert_eq!(st, 200);
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/restore"), None)
        .await;
    assert_eq!((st, b["code"].as_str()), (404, Some("not_found")), "{b}");
    let (code, out) = sh(&rt, "cat /root/c.txt").await;
    assert_eq!((code, out.as_str()), (0, "kept\n"));

    // A workspace being deleted cannot be snapshotted.
    let (st, _) = s.call("DELETE", &format!("/workspace/{id}"), None).await;
    assert_eq!(st, 202);
    let (st, b) = s
        .call("POST", &format!("/workspace/{id}/snapshot"), None)
        .await;
    // (Or, once the deletion finished, a 404.)
    assert!(
        (st == 409
            && b["code"] == "workspace_deleting"
            && b["message"]
                .as_str()
                .unwrap_or("")
                .contains("being deleted"))
            || st == 404,
        "{st} {b}"
    );
    let dir = data.path().join("workspaces").join(&id);
    let t0 = Instant::now();
    while dir.exists() && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !dir.exists() && vmm_gone(&id),
        "the workspace was not deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_workspace_sleeps_and_a_request_through_the_gateway_wakes_it() {
    let _g = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_with(data.path(), &["--idle-min-secs", "1"]);
    let r = s
        .sdk()
        .create(&small(json!({"wait_ready": true})))
        .await
        .unwrap();
    let id = r["workspace"]["id"].as_str().unwrap().to_string();
    let rt = s.sdk().runtime(&id).await.unwrap();
    let (code, _) = sh(&rt, "echo kept > /root/f; sync").await;
    assert_eq!(code, 0);

    // Bad input changes nothing.
    let (st, b) = s
        .call(
            "PUT",
            &format!("/workspace/{id}/lifecycle/idle"),
            Some(json!({"suspend_after": "soon"})),
        )
        .await;
    assert_eq!(
        (st, b["details"]["field"].as_str()),
        (422, Some("suspend_after")),
        "{b}"
    );
    let (_, lc) = s
        .call("GET", &format!("/workspace/{id}/lifecycle"), None)
        .await;
    assert_eq!(lc["idle"], Value::Null, "{lc}");

    let (st, b) = s
        .call(
            "PUT",
            &format!("/workspace/{id}/lifecycle/idle"),
            Some(json!({"suspend_after": 2})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let (_, lc) = s
        .call("GET", &format!("/workspace/{id}/lifecycle"), None)
        .await;
    assert_eq!(lc["idle"]["suspend_after"], 2, "{lc}");

    // No traffic for 2 s: frozen to disk.
    let t0 = Instant::now();
    loop {
        let (_, b) = s.call("GET", &format!("/workspace/{id}"), None).await;
        if b["workspace"]["status"] == "paused" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "never slept: {b}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(vmm_gone(&id), "asleep, yet its VMM runs");

    // A request through the gateway wakes it and is answered.
    let (code, out) = sh(&rt, "cat /root/f").await;
    assert_eq!((code, out.as_str()), (0, "kept\n"));
    let (_, b) = s.call("GET", &format!("/workspace/{id}"), None).await;
    assert_eq!(b["workspace"]["status"], "running", "{b}");

    // Turned off: it stays awake.
    let (st, _) = s
        .call(
            "PUT",
            &format!("/workspace/{id}/lifecycle/idle"),
            Some(json!({"suspend_after": 0})),
        )
        .await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, b) = s.call("GET", &format!("/workspace/{id}"), None).await;
    assert_eq!(b["workspace"]["status"], "running", "{b}");

    let (st, _) = s.call("DELETE", &format!("/workspace/{id}"), None).await;
    assert_eq!(st, 202);
    let dir = data.path().join("workspaces").join(&id);
    let t0 = Instant::now();
    while dir.exists() && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!dir.exists() && vmm_gone(&id));
}
