//! The warm pool, driven through `warren server` (the binary) over HTTP with real VMs:
//! a create of the pool's shape takes a VM booted ahead of demand and makes it the
//! workspace (its environment, command and name), each such workspace has its own
//! identity, a create of another shape boots as usual, and a server that dies leaves
//! no warm VM, tap or disk behind.

mod common;
#[path = "support/server.rs"]
mod server;

use serde_json::{json, Value};
use server::*;
use std::path::Path;
use std::time::{Duration, Instant};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const POOL: &[&str] = &[
    "--warm-pool",
    "1",
    "--warm-pool-image",
    "busybox",
    "--warm-pool-memory-mb",
    "256",
    "--warm-pool-disk-mb",
    "128",
];

/// Ids of the warm VMs under `data` (run directories carrying the marker).
fn warm_ids(data: &Path) -> Vec<String> {
    run_dirs(data)
        .into_iter()
        .filter(|id| data.join("workspaces").join(id).join("warm").exists())
        .collect()
}

/// Wait until the server has a warm VM ready (its `/metrics` says one is idle) other
/// than those in `not`; returns its id.
async fn next_warm(s: &Server, data: &Path, not: &[String]) -> String {
    let t0 = Instant::now();
    loop {
        let idle = reqwest::get(format!("{}/metrics", s.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("warren_warm_pool_idle 1");
        let fresh: Vec<String> = warm_ids(data)
            .into_iter()
            .filter(|id| !not.contains(id) && vmm_running(id))
            .collect();
        if idle {
            assert_eq!(fresh.len(), 1, "{fresh:?}");
            return fresh[0].clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no warm VM booted; server log:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_of_the_pools_shape_becomes_a_warm_vm_and_each_has_its_own_identity() {
    let _g = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_with(data.path(), POOL);
    let mut seen = Vec::new();
    let mut used = Vec::new();
    for n in 0..2 {
        let warm = next_warm(&s, data.path(), &used).await;
        let r = s
            .sdk()
            .create(&small(json!({
                "wait_ready": true,
                "config": {
                    "env": [{"key": "GREETING", "value": format!("hello-{n}")}],
                    "cmd": "echo ran > /tmp/cmd-ran",
                },
            })))
            .await
            .unwrap();
        assert_eq!(r["workspace"]["ready"], true, "{r}");
        let id = r["workspace"]["id"].as_str().unwrap().to_string();
        assert_eq!(id, warm, "the create did not take the warm VM");
        assert!(
            !data
                .path()
                .join("workspaces")
                .join(&id)
                .join("warm")
                .exists(),
            "an adopted VM still carries the warm marker"
        );
        used.push(id.clone());
        let rt = s.sdk().runtime(&id).await.unwrap();
        let t0 = Instant::now();
        let out = loop {
            let (code, out) = sh(&rt, "echo $GREETING; echo $HOSTNAME; cat /tmp/cmd-ran").await;
            // The command runs in the background: give it a moment.
            if code == 0 || t0.elapsed() > Duration::from_secs(20) {
                break out;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let l: Vec<String> = out.lines().map(str::to_string).collect();
        assert_eq!(l.len(), 3, "{out}");
        assert_eq!(l[0], format!("hello-{n}"), "the create's env: {out}");
        assert_eq!(l[1], id.replace('_', "-"));
        assert_eq!(l[2], "ran", "the create's cmd did not run: {out}");
        let me = Identity::of(&s, &id).await;
        assert!(me.key.is_some(), "no wrapped disk key for {id}");
        seen.push(me);
    }
    Identity::assert_distinct(&used.iter().map(String::as_str).collect::<Vec<_>>(), &seen);

    // Another shape is not taken from the pool: it boots, under a new id.
    let warm = next_warm(&s, data.path(), &used).await;
    let r = s
        .sdk()
        .create(&small(json!({"wait_ready": true, "memory_mb": 320})))
        .await
        .unwrap();
    assert_eq!(r["workspace"]["ready"], true, "{r}");
    let other = r["workspace"]["id"].as_str().unwrap().to_string();
    assert_ne!(other, warm);
    assert!(
        warm_ids(data.path()).contains(&warm),
        "the warm VM was used"
    );

    // A server that dies leaves its warm VM to the next start's reconcile: VMM, tap,
    // lease and disk go; the workspaces stay and are adopted.
    let record: Value = serde_json::from_slice(
        &std::fs::read(
            data.path()
                .join("workspaces")
                .join(&warm)
                .join("workspace.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let tap = format!("/sys/class/net/wt{}", record["lease_index"]);
    assert!(Path::new(&tap).exists(), "{tap}");
    s.kill9();
    let s = Server::start(data.path());
    let t0 = Instant::now();
    while (data.path().join("workspaces").join(&warm).exists() || !vmm_gone(&warm))
        && t0.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !data.path().join("workspaces").join(&warm).exists(),
        "the warm VM's directory outlived its server"
    );
    assert!(vmm_gone(&warm), "the warm VM's VMM outlived its server");
    assert!(warm_ids(data.path()).is_empty());
    assert!(
        !Path::new(&tap).exists(),
        "the warm VM's tap outlived its server"
    );
    let (a, b) = (&used[0], &used[1]);
    for id in [a, b, &other] {
        let rt = s.sdk().runtime(id).await.unwrap();
        let (code, out) = sh(&rt, "echo $GREETING-still-here").await;
        assert_eq!(code, 0, "{id}: {out}");
    }
    for id in [a, b, &other] {
        s.delete_and_wait(id, 60).await;
    }
    assert!(
        run_dirs(data.path()).is_empty(),
        "{:?}",
        run_dirs(data.path())
    );
}
