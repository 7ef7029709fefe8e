//! Fork (`POST /workspace/:id/fork`), driven through `warren server` (the binary) over
//! HTTP with real VMs: children start as copies of the running parent (its files
//! and its processes), then diverge; each has its own address, token and boot id.

mod common;
#[path = "support/server.rs"]
mod server;

use common::{decrypted_disk_contains, unwrapped_key};
use serde_json::{json, Value};
use server::*;
use std::path::Path;
use warren_protocol::runtime::ExecRequest;
use warren_sdk::RuntimeClient;

/// Servers share the host's address pool and taps: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The agent's own token, as the node recorded it (the host reaches port 9990).
fn agent_token(data: &Path, id: &str) -> String {
    let b = std::fs::read(data.join("workspaces").join(id).join("workspace.json")).unwrap();
    let v: Value = serde_json::from_slice(&b).unwrap();
    v["api_token"].as_str().unwrap().to_string()
}

/// A direct runtime client to `ip`'s agent with `token`.
fn direct(ip: &str, token: &str) -> RuntimeClient {
    RuntimeClient::new(&format!("http://{ip}:9990"), token).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_start_as_the_parent_then_diverge_with_their_own_identity() {
    let _g = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();
    let guard = KillVmsOnPanic::new(data.path(), |_| {});
    let s = Server::start(data.path());
    guard.track(&s);
    let r = s
        .sdk()
        .create(&small(json!({"wait_ready": true, "name": "par"})))
        .await
        .unwrap();
    let pid_ws = r["workspace"]["id"].as_str().unwrap().to_string();
    let parent_ip = r["workspace"]["internal_ip"].as_str().unwrap().to_string();
    let prt = s.sdk().runtime(&pid_ws).await.unwrap();
    // A file on the disk and a process that counts in memory (tmpfs).
    let (code, out) = sh(
        &prt,
        "echo base > /root/base.txt; \
         setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/ticks; sleep 0.2; done' \
           </dev/null >/dev/null 2>&1 & echo $!; cat /proc/sys/kernel/random/boot_id",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let mut lines = out.lines();
    let counter: u32 = lines.next().unwrap().trim().parse().expect("a pid");
    let parent_boot_id = lines.next().unwrap().trim().to_string();
    let parent_token = agent_token(data.path(), &pid_ws);

    // Bad input changes nothing.
    let before = run_dirs(data.path());
    for bad in [
        json!({"count": 0}),
        json!({"count": 21}),
        json!({"count": "2"}),
    ] {
        let (st, b) = s
            .call(
                "POST",
                &format!("/workspace/{pid_ws}/fork"),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(
            (st, b["code"].as_str()),
            (422, Some("validation_error")),
            "{bad}: {b}"
        );
    }
    let (st, _) = s
        .call("POST", "/workspace/ws_nonexistent0/fork", Some(json!({})))
        .await;
    assert_eq!(st, 404);
    assert_eq!(run_dirs(data.path()), before);

    // Two children.
    let (st, b) = s
        .call(
            "POST",
            &format!("/workspace/{pid_ws}/fork"),
            Some(json!({"count": 2, "name": "kid"})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let kids: Vec<Value> = b["workspaces"].as_array().unwrap().clone();
    assert_eq!(kids.len(), 2, "{b}");
    let ids: Vec<String> = kids
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    let ips: Vec<String> = kids
        .iter()
        .map(|k| k["internal_ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kids[0]["name"], "kid-1");
    assert_eq!(kids[1]["status"], "running", "{b}");
    assert!(
        ips[0] != ips[1] && !ips.contains(&parent_ip),
        "{ips:?} vs {parent_ip}"
    );
    eprintln!("fork report: {}", b["fork"]);
    // Started from a template, the parent's RAM is a file mapping: shared.
    assert_eq!(b["fork"]["shared_memory"], true, "{b}");

    let mut boot_ids = vec![parent_boot_id.clone()];
    let mut rts = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let rt = s.sdk().runtime(id).await.unwrap();
        // The parent's file and its process, still counting.
        let (code, out) = sh(
            &rt,
            &format!(
                "cat /root/base.txt; kill -0 {counter} && echo alive; a=$(cat /tmp/ticks); \
                 sleep 0.6; b=$(cat /tmp/ticks); [ $b -gt $a ] && echo counting; \
                 cat /proc/sys/kernel/random/boot_id; hostname; echo \"$HOSTNAME\"; \
                 ip -4 addr show"
            ),
        )
        .await;
        assert_eq!(code, 0, "child {i}: {out}");
        let l: Vec<&str> = out.lines().collect();
        assert_eq!(&l[..3], &["base", "alive", "counting"], "child {i}: {out}");
        boot_ids.push(l[3].trim().to_string());
        assert_eq!(l[4], id.replace('_', "-"), "child {i}: {out}");
        // A new process's HOSTNAME is the child's too, not the parent's at boot.
        assert_eq!(l[5], l[4], "child {i}: {out}");
        assert!(
            out.contains(&format!("inet {}/", ips[i]))
                && !out.contains(&format!("inet {parent_ip}/")),
            "child {i} has not its own address: {out}"
        );
        // Its own token: the parent's no longer opens it, its own does.
        let own = agent_token(data.path(), id);
        assert_ne!(own, parent_token);
        assert!(
            direct(&ips[i], &parent_token)
                .exec(&ExecRequest {
                    cmd: vec!["true".into()],
                    ..ExecRequest::default()
                })
                .await
                .is_err(),
            "child {i} still takes the parent's token"
        );
        let (code, _) = sh(&direct(&ips[i], &own), "true").await;
        assert_eq!(code, 0);
        rts.push(rt);
    }
    assert_ne!(
        agent_token(data.path(), &ids[0]),
        agent_token(data.path(), &ids[1]),
        "two children share a token"
    );
    let mut uniq = boot_ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(
        uniq.len(),
        3,
        "boot ids are not all different: {boot_ids:?}"
    );
    // The parent is unchanged by all this: same boot id, still counting.
    let (code, out) = sh(
        &prt,
        &format!("kill -0 {counter} && cat /proc/sys/kernel/random/boot_id"),
    )
    .await;
    assert_eq!((code, out.trim()), (0, parent_boot_id.as_str()));

    // Writes diverge: each sees only its own (and the parent only its own).
    sh(&prt, "echo p > /root/p.txt; sync").await;
    sh(&rts[0], "echo one > /root/c.txt; sync").await;
    sh(
        &rts[1],
        "echo two > /root/c.txt; echo x > /root/only2.txt; sync",
    )
    .await;
    let (_, out) = sh(&prt, "ls /root; cat /root/c.txt 2>/dev/null; true").await;
    assert_eq!(out, "base.txt\np.txt\n", "the parent sees a child's writes");
    let (_, out) = sh(&rts[0], "ls /root; cat /root/c.txt").await;
    assert_eq!(out, "base.txt\nc.txt\none\n");
    let (_, out) = sh(&rts[1], "ls /root; cat /root/c.txt").await;
    assert_eq!(out, "base.txt\nc.txt\nonly2.txt\ntwo\n");

    // Keys: each child's own writes are under a key of its own. Its overlay opens
    // to nobody without that key: not as a plain qcow2, not with its sibling's
    // key. With it (the control), what it wrote is there, under its data key.
    let marker = format!("fork-own-key-{}", &agent_token(data.path(), &ids[0])[..12]);
    let (code, out) = sh(
        &rts[0],
        &format!("for i in $(seq 64); do echo {marker}; done > /root/m.txt; sync"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let overlay_keys: Vec<_> = ids
        .iter()
        .map(|id| {
            let ctx = format!("{id}/overlay");
            unwrapped_key(data.path(), id, "overlay.key", &ctx)
        })
        .collect();
    assert_ne!(
        overlay_keys[0].as_bytes(),
        overlay_keys[1].as_bytes(),
        "two children share an overlay key"
    );
    let overlay = data
        .path()
        .join("workspaces")
        .join(&ids[0])
        .join("data.ext4");
    let plain_view = data.path().join("child0-flat.img");
    let sibling = warren_node::overlay::passphrase(&overlay_keys[1]);
    for key in [None, Some(sibling.as_bytes())] {
        let r = warren_node::overlay::flatten(&overlay, key, &plain_view);
        assert!(r.is_err(), "the child's overlay opened without its key");
        let _ = std::fs::remove_file(&plain_view);
    }
    let pass = warren_node::overlay::passphrase(&overlay_keys[0]);
    warren_node::overlay::flatten(&overlay, Some(pass.as_bytes()), &plain_view).unwrap();
    let data_key = unwrapped_key(data.path(), &ids[0], "data.key", &ids[0]);
    assert!(
        decrypted_disk_contains(&plain_view, &data_key, marker.as_bytes()),
        "what the child wrote is not on its disk"
    );
    std::fs::remove_file(&plain_view).unwrap();

    // A fork of a fork (the child's disk is an overlay: flattened into a new base),
    // through the CLI.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["workspace", "fork", &ids[0], "--name", "grand", "--json"])
        .env("WARREN_URL", &s.url)
        .env("WARREN_DATA_DIR", &s.data)
        .env_remove("WARREN_CLIENT_ID")
        .env_remove("WARREN_CLIENT_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["workspaces"][0]["name"], "grand-1", "{b}");
    let gid = b["workspaces"][0]["id"].as_str().unwrap().to_string();
    let grt = s.sdk().runtime(&gid).await.unwrap();
    let (code, out) = sh(&grt, "cat /root/base.txt /root/c.txt; echo g > /root/g.txt").await;
    assert_eq!((code, out.as_str()), (0, "base\none\n"));
    let (_, out) = sh(&rts[0], "ls /root").await;
    assert_eq!(
        out, "base.txt\nc.txt\nm.txt\n",
        "a grandchild's write reached its parent"
    );
    s.sdk().delete(&gid).await.unwrap();
    wait_for(&s, &gid, 60, |w| w.is_none()).await;

    // A parent thawed from disk has RAM of its own (no template file): its child
    // gets a full copy of the memory instead of a shared mapping, and is as whole.
    let (st, b) = s
        .call("POST", &format!("/workspace/{pid_ws}/pause"), None)
        .await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = s
        .call("POST", &format!("/workspace/{pid_ws}/resume"), None)
        .await;
    assert_eq!((st, b["status"].as_str()), (200, Some("running")), "{b}");
    let (st, b) = s
        .call("POST", &format!("/workspace/{pid_ws}/fork"), None)
        .await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["fork"]["shared_memory"], false, "{b}");
    let tid = b["workspaces"][0]["id"].as_str().unwrap().to_string();
    let trt = s.sdk().runtime(&tid).await.unwrap();
    let (code, out) = sh(
        &trt,
        &format!("cat /root/p.txt; kill -0 {counter} && echo alive"),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "p\nalive\n"));
    s.sdk().delete(&tid).await.unwrap();
    wait_for(&s, &tid, 60, |w| w.is_none()).await;

    // Deleting the parent leaves the children whole (read from disk, not the cache).
    s.sdk().delete(&pid_ws).await.unwrap();
    wait_for(&s, &pid_ws, 60, |w| w.is_none()).await;
    let (code, out) = sh(
        &rts[0],
        "sync; echo 3 > /proc/sys/vm/drop_caches; cat /root/base.txt /root/c.txt",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "base\none\n"));
    // Deleting one child leaves its sibling whole; the last one takes the base along.
    s.sdk().delete(&ids[0]).await.unwrap();
    wait_for(&s, &ids[0], 60, |w| w.is_none()).await;
    let (code, out) = sh(
        &rts[1],
        "echo 3 > /proc/sys/vm/drop_caches; cat /root/base.txt /root/c.txt",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "base\ntwo\n"));
    assert_eq!(
        std::fs::read_dir(data.path().join("forks"))
            .unwrap()
            .count(),
        1
    );

    // A child frozen to disk and thawed (its VMM restarted: the overlay key is
    // handed over again) is whole.
    for action in ["pause", "resume"] {
        let (st, b) = s
            .call("POST", &format!("/workspace/{}/{action}", ids[1]), None)
            .await;
        assert_eq!(st, 200, "{action}: {b}");
    }
    let (code, out) = sh(
        &rts[1],
        "cat /root/c.txt; echo after > /root/after.txt; sync",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "two\n"));

    // A child's snapshot and restore (its VMM started again on its encrypted
    // overlay), and its archive: its whole disk flattened, still under its data key,
    // not an overlay over a base it may outlive.
    let (code, _) = sh(&rts[1], "echo warren-child-5e1d > /root/am.txt; sync").await;
    assert_eq!(code, 0);
    let (st, b) = s
        .call("POST", &format!("/workspace/{}/snapshot", ids[1]), None)
        .await;
    assert_eq!(st, 200, "{b}");
    sh(&rts[1], "echo later > /root/later.txt; sync").await;
    let (st, b) = s
        .call("POST", &format!("/workspace/{}/restore", ids[1]), None)
        .await;
    assert_eq!(st, 200, "{b}");
    let (_, out) = sh(&rts[1], "cat /root/am.txt; ls /root").await;
    assert_eq!(
        out, "warren-child-5e1d\nafter.txt\nam.txt\nbase.txt\nc.txt\nonly2.txt\n",
        "the restore did not bring back the disk at the snapshot"
    );
    let (st, b) = s
        .call(
            "POST",
            &format!("/workspace/{}/archives", ids[1]),
            Some(json!({})),
        )
        .await;
    assert_eq!((st, b["format"].as_str()), (200, Some("raw")), "{b}");
    let archive = data
        .path()
        .join("workspaces")
        .join(&ids[1])
        .join("archives/v1/data.img");
    let key = unwrapped_key(data.path(), &ids[1], "data.key", &ids[1]);
    assert!(
        decrypted_disk_contains(&archive, &key, b"warren-child-5e1d"),
        "the child's archive does not hold its disk"
    );

    // A stopped workspace cannot be forked: 409, nothing made.
    s.sdk()
        .power(&ids[1], warren_sdk::Power::Stop)
        .await
        .unwrap();
    wait_for(&s, &ids[1], 60, |w| {
        w.is_some_and(|w| w["status"] == "stopped")
    })
    .await;
    let before = run_dirs(data.path());
    let (st, b) = s
        .call(
            "POST",
            &format!("/workspace/{}/fork", ids[1]),
            Some(json!({"count": 1})),
        )
        .await;
    assert_eq!(
        (st, b["code"].as_str()),
        (409, Some("workspace_not_running")),
        "{b}"
    );
    assert_eq!(run_dirs(data.path()), before);
    let list = s.sdk().list(1, 100, None).await.unwrap();
    assert_eq!(
        list["workspaces"].as_array().map(|a| a.len()),
        Some(1),
        "{list}"
    );
    // Started again (cold, from its overlay), it still has its own files.
    s.sdk()
        .power(&ids[1], warren_sdk::Power::Start)
        .await
        .unwrap();
    s.ready(&ids[1], 120).await;
    let rt = s.sdk().runtime(&ids[1]).await.unwrap();
    let (code, out) = sh(&rt, "cat /root/base.txt /root/c.txt /root/after.txt").await;
    assert_eq!((code, out.as_str()), (0, "base\ntwo\nafter\n"));
    s.sdk().delete(&ids[1]).await.unwrap();
    wait_for(&s, &ids[1], 60, |w| w.is_none()).await;
    assert_eq!(
        std::fs::read_dir(data.path().join("forks"))
            .unwrap()
            .count(),
        0,
        "the fork base outlived its last child"
    );
    s.shutdown();
}
