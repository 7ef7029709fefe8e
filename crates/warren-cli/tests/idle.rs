//! Sleep on idle through `warren server` (the binary), a real VM and the edge: a
//! policy given at create (`config.idle`) is checked like `lifecycle/idle` (bad values
//! answer 422 naming the field and create nothing); a workspace with no traffic is
//! frozen to disk, and an HTTPS request to its public URL (curl with `--resolve` and
//! the local CA) wakes it and gets the answer from the process that was running;
//! asleep for `stop_after` it is stopped, and a public request boots it again. An
//! SSH session through the gateway (OpenSSH's `ssh`) wakes it too.
//! `--idle-min-secs 1` makes the smallest allowed times 1 s (suspend) and 30 s (stop).

mod common;
#[path = "support/server.rs"]
mod server;

use serde_json::{json, Value};
use server::*;
use std::process::Command;
use std::time::{Duration, Instant};

const PREVIEW: &str = "idle.test";

/// `curl` over HTTPS to `host` at the edge, trusting only our CA: (status, body).
fn curl(s: &Server, host: &str) -> (u16, String) {
    let (edge, ca) = s.edge.clone().expect("the server announced no edge");
    let port = edge.port();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "90", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

async fn status(s: &Server, id: &str) -> Value {
    s.call("GET", &format!("/workspace/{id}"), None).await.1["workspace"].clone()
}

/// Wait until `id`'s status is `want` (at most `secs`).
async fn wait_status(s: &Server, id: &str, want: &str, secs: u64) {
    let t0 = Instant::now();
    loop {
        let w = status(s, id).await;
        if w["status"] == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{id} never became {want}: {w}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_workspace_sleeps_and_its_public_url_wakes_it() {
    let data = tempfile::tempdir().unwrap();
    let args = [
        "--idle-min-secs",
        "1",
        "--edge-addr",
        "127.0.0.1:0",
        "--preview-domain",
        PREVIEW,
        "--ssh-addr",
        "127.0.0.1:0",
    ];
    let s = Server::start_with(data.path(), &args);
    let count = |b: &Value| b["workspaces"].as_array().map(|a| a.len());
    let (_, before) = s.call("GET", "/workspace", None).await;

    // Bad policies at create: 422 naming the field, nothing created.
    for (idle, field) in [
        (json!("15m"), "config.idle"),
        (json!({}), "config.idle.suspend_after"),
        (
            json!({"suspend_after": "soon"}),
            "config.idle.suspend_after",
        ),
        (json!({"suspend_after": -5}), "config.idle.suspend_after"),
        (
            json!({"suspend_after": 2, "stop_after": 5}),
            "config.idle.stop_after",
        ),
    ] {
        let (st, b) = s
            .call(
                "POST",
                "/workspace",
                Some(json!({"image": "busybox", "config": {"idle": idle}})),
            )
            .await;
        assert_eq!(
            (st, b["code"].as_str(), b["details"]["field"].as_str()),
            (422, Some("validation_error"), Some(field)),
            "{idle}: {b}"
        );
    }
    let (_, after) = s.call("GET", "/workspace", None).await;
    assert_eq!(count(&after), count(&before), "{after}");

    // A web server, asleep after 2 s without traffic, stopped after 30 s asleep.
    let (st, w) = s
        .call(
            "POST",
            "/workspace",
            Some(json!({
                "image": "busybox", "memory_mb": 256, "disk_size_mb": 128,
                "config": {
                    "cmd": "mkdir -p /www; echo \"hello $(cat /proc/sys/kernel/random/boot_id)\" > /www/index.html; httpd -f -p 8080 -h /www",
                    "idle": {"suspend_after": "2s", "stop_after": 30}
                }
            })),
        )
        .await;
    assert_eq!(st, 201, "{w}");
    let id = w["workspace"]["id"].as_str().unwrap().to_string();
    s.ready(&id, 180).await;
    let (_, lc) = s
        .call("GET", &format!("/workspace/{id}/lifecycle"), None)
        .await;
    assert_eq!(
        (&lc["idle"]["suspend_after"], &lc["idle"]["stop_after"]),
        (&json!(2), &json!(30)),
        "stored in seconds: {lc}"
    );
    let (st, p) = s
        .call(
            "POST",
            &format!("/workspace/{id}/public-access"),
            Some(json!({"port": 8080, "slug": "sleepy"})),
        )
        .await;
    assert_eq!(st, 201, "{p}");
    let host = format!("sleepy.{PREVIEW}");
    // httpd may take a moment to listen.
    let t0 = Instant::now();
    let first = loop {
        let (code, body) = curl(&s, &host);
        if code == 200 {
            break body;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{code} {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(first.starts_with("hello "), "{first}");
    let (key, public) = common::keygen(data.path(), "k");
    for (path, body) in [
        ("ssh/key", Some(json!({ "public_key": public }))),
        ("ssh/enable", None),
    ] {
        let (st, b) = s
            .call("POST", &format!("/workspace/{id}/{path}"), body)
            .await;
        assert_eq!(st, 200, "{path}: {b}");
    }

    // No traffic: frozen to disk, its VMM gone.
    wait_status(&s, &id, "paused", 60).await;
    assert!(!vmm_running(&id), "asleep, yet its VMM runs");

    // The public URL wakes it; the answer comes from the same boot (same boot_id:
    // the process that was running, not a new one).
    let t = Instant::now();
    let (code, body) = curl(&s, &host);
    assert_eq!((code, body.as_str()), (200, first.as_str()), "{}", s.log());
    eprintln!(
        "woken from disk through the edge in {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(status(&s, &id).await["status"], "running");

    // Asleep again: an SSH command through the gateway wakes it, and runs in the
    // same boot.
    wait_status(&s, &id, "paused", 60).await;
    let ssh_port = s.ssh.expect("the server announced no SSH gateway").port();
    let out = Command::new("ssh")
        .args(["-p", &ssh_port.to_string()])
        .args(common::opts(&key))
        .arg(format!("{id}@127.0.0.1"))
        .arg("cat /www/index.html")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ssh");
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), first.as_str()),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    assert_eq!(status(&s, &id).await["status"], "running");

    // Asleep again, then for longer than stop_after: stopped (saved memory dropped),
    // counted from the freeze even across a server restart.
    wait_status(&s, &id, "paused", 60).await;
    let asleep = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    s.shutdown();
    let s = Server::start_with(data.path(), &args);
    assert_eq!(status(&s, &id).await["status"], "paused");
    wait_status(&s, &id, "stopped", 90).await;
    // stop_after is 30 s: a count started again at the restart would end 50 s after
    // the freeze at the earliest.
    assert!(
        asleep.elapsed() < Duration::from_secs(45),
        "stopped {:?} after the freeze: the restart reset the count",
        asleep.elapsed()
    );
    assert!(!vmm_running(&id));
    // A public request boots it again: a new boot, the files kept.
    let (code, body) = curl(&s, &host);
    assert_eq!(code, 200, "{body}\n{}", s.log());
    assert!(
        body.starts_with("hello ") && body != first,
        "expected a new boot: {body} vs {first}"
    );
    assert_eq!(status(&s, &id).await["status"], "running");

    // A workspace its user stopped is not started by a public request.
    let (st, b) = s.call("POST", &format!("/workspace/{id}/stop"), None).await;
    assert!(st < 300, "{st} {b}");
    wait_status(&s, &id, "stopped", 60).await;
    let (code, body) = curl(&s, &host);
    assert_eq!(code, 503, "{body}");
    assert_eq!(status(&s, &id).await["status"], "stopped");

    let (st, _) = s.call("DELETE", &format!("/workspace/{id}"), None).await;
    assert_eq!(st, 202);
    let dir = data.path().join("workspaces").join(&id);
    let t0 = Instant::now();
    while dir.exists() && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!dir.exists(), "the workspace was not deleted");
}

/// Is a VMM for workspace `id` running?
fn vmm_running(id: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("qemu") && c.contains(id)
                })
                .unwrap_or(false)
        })
}
