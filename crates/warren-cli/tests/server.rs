//! `warren server` (the binary) driven over HTTP, booting real VMs: validation changes
//! nothing, one idempotency key never makes two workspaces, files survive stop/start
//! and a server restart, and kill -9 of the server during create, stop or delete loses
//! no workspace and leaves no orphan once it is back.

mod common;
#[path = "support/server.rs"]
mod server;

use common::*;
use serde_json::{json, Value};
use server::*;
use std::process::Command;
use std::time::Duration;

/// Servers share the host's address pool and taps: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `warren <args>` as a client of `s`: (exit code, stdout, stderr).
fn cli(s: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env("WARREN_URL", &s.url)
        .env("WARREN_DATA_DIR", &s.data)
        .env_remove("WARREN_CLIENT_ID")
        .env_remove("WARREN_CLIENT_SECRET")
        .output()
        .expect("run warren");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn delete_all(s: &Server) {
    let (_, b) = s.call("GET", "/workspace?limit=100", None).await;
    let ids: Vec<String> = b["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        let (st, _) = s.call("DELETE", &format!("/workspace/{id}"), None).await;
        assert_eq!(st, 202);
    }
    for id in &ids {
        wait_for(s, id, 60, |w| w.is_none()).await;
        assert!(vmm_gone(id), "the VM of deleted workspace {id} still runs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_idempotency_exec_and_delete() {
    let _g = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_with(data.path(), &["--gateway-token-ttl", "3"]);
    // First start: credentials written 0600, exactly one "listening" line.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.path().join("credentials.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        s.log().matches("warren: api listening on").count(),
        1,
        "{}",
        s.log()
    );

    // Invalid input: 422 naming the field, nothing stored, nothing allocated.
    for (body, field) in [
        (small(json!({"cpus": 0})), "cpus"),
        (small(json!({"memory_mb": 64})), "memory_mb"),
        (small(json!({"disk_size_mb": 1})), "disk_size_mb"),
        (
            small(json!({"config": {"env": [{"key": "A=B", "value": "x"}]}})),
            "config.env",
        ),
        (small(json!({"config": {"ttl": 0}})), "config.ttl"),
    ] {
        let (st, b) = s.call("POST", "/workspace", Some(body)).await;
        assert_eq!(st, 422, "{b}");
        assert_eq!(
            (b["success"].clone(), b["code"].clone()),
            (json!(false), json!("validation_error"))
        );
        assert_eq!(b["details"]["field"], field, "{b}");
    }
    let (_, b) = s.call("GET", "/workspace", None).await;
    assert_eq!(b["total"], 0);
    assert!(run_dirs(data.path()).is_empty());

    // Five concurrent creates with one key: one workspace, one VM.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let sdk = s.sdk();
        tasks.push(tokio::spawn(async move {
            sdk.create(&small(
                json!({"idempotency_key": "same", "wait_ready": true}),
            ))
            .await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        ids.insert(r["workspace"]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids.into_iter().next().unwrap();
    let w = wait_for(&s, &id, 120, |w| w.is_some_and(|w| w["ready"] == true))
        .await
        .unwrap();
    assert_eq!(w["status"], "running");
    let (_, b) = s.call("GET", "/workspace", None).await;
    assert_eq!(b["total"], 1);
    assert_eq!(run_dirs(data.path()), [id.as_str()]);

    // The runtime API through the gateway, and directly with the raw token.
    let rt = s.sdk().runtime(&id).await.unwrap();
    let out = rt
        .exec(&warren_protocol::runtime::ExecRequest {
            cmd: vec!["echo".into(), "through-the-gateway".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(out.stdout.as_deref(), Some("through-the-gateway\n"));
    let raw = s.raw_token(&id).await;
    let direct = warren_sdk::RuntimeClient::new(
        &format!("http://{}:{}", raw["ip"].as_str().unwrap(), raw["port"]),
        raw["token"].as_str().unwrap(),
    )
    .unwrap();
    assert!(direct.health().await.unwrap());
    // An expired or foreign token is refused by the gateway.
    let (_, t) = s
        .call(
            "GET",
            &format!("/workspace/{id}/runtime-api-access/token"),
            None,
        )
        .await;
    let gw = t["gateway_url"].as_str().unwrap();
    let bad = warren_sdk::RuntimeClient::new(gw, "eyJhbGciOiJIUzI1NiJ9.e30.bad").unwrap();
    match bad.health().await {
        Err(warren_sdk::SdkError::Api { status, .. }) => assert_eq!(status, 401),
        other => panic!("{other:?}"),
    }

    // A WebSocket upgrade (`/ws`, the runtime's terminal and event channel) is
    // authorised by the gateway token and spliced through to the agent.
    let (_, t) = s
        .call(
            "GET",
            &format!("/workspace/{id}/runtime-api-access/token"),
            None,
        )
        .await;
    let gw = t["gateway_url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let mut ws = tokio::net::TcpStream::connect(&gw).await.unwrap();
    let hello = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {gw}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        t["token"].as_str().unwrap()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ws.write_all(hello.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            ws.read(&mut b).await.unwrap(),
            1,
            "closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // RFC 6455's example key and its accept value: the agent did the handshake.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // A masked close frame (code 1000) goes through; the agent's close comes back.
    let mask = [1u8, 2, 3, 4];
    let payload = [0x03u8, 0xe8];
    let mut frame = vec![0x88, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    ws.write_all(&frame).await.unwrap();
    let mut first = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), ws.read_exact(&mut first))
        .await
        .expect("no frame back from the agent")
        .unwrap();
    assert_eq!(
        first[0] & 0x0f,
        0x8,
        "expected a close frame, got {:#x}",
        first[0]
    );

    // A gateway token expires on its own.
    let (_, t) = s
        .call(
            "GET",
            &format!("/workspace/{id}/runtime-api-access/token"),
            None,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = reqwest::Client::new()
        .get(format!("{}/health", t["gateway_url"].as_str().unwrap()))
        .bearer_auth(t["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["success"].clone(), b["code"].clone()),
        (json!(false), json!("token_expired"))
    );

    // The CLI: tables, --json, exec's exit code, files.
    let (code, out, err) = cli(&s, &["workspace", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID "), "{out}");
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&id) && l.contains("running")),
        "{out}"
    );
    let (code, out, err) = cli(&s, &["workspace", "get", &id, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["workspace"]["id"], json!(id));
    let (code, out, _) = cli(
        &s,
        &["exec", &id, "--", "sh", "-c", "echo from-cli; exit 3"],
    );
    assert_eq!((code, out.as_str()), (3, "from-cli\n"));
    // Over the gateway's 1 MiB retry buffer: streamed through.
    let blob: Vec<u8> = (0..(3u32 << 20) / 4)
        .flat_map(|i| i.to_le_bytes())
        .collect();
    let local = data.path().join("up.bin");
    std::fs::write(&local, &blob).unwrap();
    let (code, _, err) = cli(
        &s,
        &["files", "put", &id, local.to_str().unwrap(), "/root/up.bin"],
    );
    assert_eq!(code, 0, "{err}");
    let back = data.path().join("down.bin");
    let (code, _, err) = cli(
        &s,
        &[
            "workspace",
            "files",
            "get",
            &id,
            "/root/up.bin",
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read(&back).unwrap() == blob,
        "the file came back different"
    );
    let (code, out, err) = cli(&s, &["files", "ls", &id, "/root"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("file") && l.ends_with("up.bin")),
        "{out}"
    );
    let (code, _, err) = cli(&s, &["workspace", "get", "ws_nothere"]);
    assert_eq!(code, 1);
    assert!(err.contains("404 not_found"), "{err}");

    // Invalid updates change nothing either.
    let (st, _) = s
        .call(
            "PUT",
            &format!("/workspace/{id}"),
            Some(json!({"slug": "No Good"})),
        )
        .await;
    assert_eq!(st, 422);
    let (_, after) = s.call("GET", &format!("/workspace/{id}"), None).await;
    assert_eq!(after["workspace"]["slug"], Value::Null);

    delete_all(&s).await;
    assert_nothing_left(data.path(), &[id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_create_stop_and_delete_loses_nothing_and_leaves_nothing() {
    let _g = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();

    // A running workspace with a file in it.
    let s = Server::start(data.path());
    let r = s
        .sdk()
        .create(&small(json!({"name": "keeper", "wait_ready": true})))
        .await
        .unwrap();
    let keeper = r["workspace"]["id"].as_str().unwrap().to_string();
    assert_eq!(r["workspace"]["ready"], true, "{r}");
    let rt = s.sdk().runtime(&keeper).await.unwrap();
    rt.write(&warren_protocol::runtime::FileWriteRequest {
        path: "/root/kept.txt".into(),
        content: "still here".into(),
        create_dirs: Some(true),
        ..Default::default()
    })
    .await
    .unwrap();

    // kill -9 during a create.
    let (st, b) = s
        .call(
            "POST",
            "/workspace",
            Some(small(json!({"name": "interrupted"}))),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let interrupted = b["workspace"]["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.kill9();
    assert!(
        vmm_running(&keeper),
        "the keeper's VM must outlive the server"
    );

    // Back up: the keeper is adopted with its files, the interrupted create finishes.
    let s = Server::start(data.path());
    let w = wait_for(&s, &keeper, 60, |w| {
        w.is_some_and(|w| w["status"] == "running")
    })
    .await
    .unwrap();
    assert_eq!(w["ready"], true);
    let rt = s.sdk().runtime(&keeper).await.unwrap();
    assert_eq!(
        rt.read("/root/kept.txt").await.unwrap().content,
        "still here"
    );
    let w = wait_for(&s, &interrupted, 120, |w| {
        w.is_some_and(|w| w["ready"] == true)
    })
    .await
    .unwrap();
    assert_eq!(w["name"], "interrupted");
    let (_, b) = s.call("GET", "/workspace", None).await;
    assert_eq!(b["total"], 2, "no workspace lost or duplicated: {b}");
    let mut want = vec![keeper.clone(), interrupted.clone()];
    want.sort();
    assert_eq!(run_dirs(data.path()), want);

    // kill -9 during a stop.
    let url = s.url.clone();
    let (cid, csec) = s.creds();
    let k = keeper.clone();
    let stop = tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(format!("{url}/workspace/{k}/stop"))
            .header("X-Client-ID", cid)
            .header("X-Client-Secret", csec)
            .send()
            .await;
    });
    // Kill it as soon as the stop is recorded: the VM is powering off right then.
    wait_for(&s, &keeper, 30, |w| {
        w.is_some_and(|w| w["desired_status"] == "stopped")
    })
    .await;
    s.kill9();
    let _ = stop.await;

    // kill -9 during a delete.
    let s = Server::start(data.path());
    let w = wait_for(&s, &keeper, 60, |w| {
        w.is_some_and(|w| w["status"] == "stopped")
    })
    .await
    .unwrap();
    assert_eq!(w["ready"], false);
    assert!(vmm_gone(&keeper), "a stopped workspace has no VM");
    wait_for(&s, &interrupted, 60, |w| {
        w.is_some_and(|w| w["ready"] == true)
    })
    .await;
    let (st, _) = s
        .call("DELETE", &format!("/workspace/{interrupted}"), None)
        .await;
    assert_eq!(st, 202);
    s.kill9();

    let s = Server::start(data.path());
    wait_for(&s, &interrupted, 60, |w| w.is_none()).await;
    assert!(vmm_gone(&interrupted), "{}", s.log());
    assert_eq!(run_dirs(data.path()), [keeper.as_str()]);
    let (_, b) = s.call("GET", "/workspace", None).await;
    assert_eq!(b["total"], 1);

    // The stopped keeper starts with its files.
    let (st, b) = s
        .call("POST", &format!("/workspace/{keeper}/start"), None)
        .await;
    assert_eq!((st, b["status"].clone()), (200, json!("running")), "{b}");
    let rt = s.sdk().runtime(&keeper).await.unwrap();
    assert_eq!(
        rt.read("/root/kept.txt").await.unwrap().content,
        "still here"
    );

    delete_all(&s).await;
    assert_nothing_left(data.path(), &[keeper, interrupted]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_remove_on_exit() {
    let _g = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    let stop = s
        .sdk()
        .create(&small(
            json!({"mode": "temporary", "wait_ready": true, "config": {"ttl": "2s"}}),
        ))
        .await
        .unwrap();
    let stop_id = stop["workspace"]["id"].as_str().unwrap().to_string();
    let exits = s
        .sdk()
        .create(&small(
            json!({"config": {"cmd": "sleep 1; exit 7", "remove_on_exit": true}}),
        ))
        .await
        .unwrap();
    let exit_id = exits["workspace"]["id"].as_str().unwrap().to_string();
    let w = wait_for(&s, &stop_id, 60, |w| {
        w.is_some_and(|w| w["status"] == "stopped")
    })
    .await
    .unwrap();
    assert_eq!(w["info"]["user_requested_stop"], false);
    assert!(vmm_gone(&stop_id));
    wait_for(&s, &exit_id, 60, |w| w.is_none()).await;
    assert!(vmm_gone(&exit_id));
    assert_eq!(run_dirs(data.path()), [stop_id.as_str()]);
    delete_all(&s).await;
    assert_nothing_left(data.path(), &[stop_id, exit_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_start_what_belongs_to_no_workspace_is_removed() {
    let _g = SERIAL.lock().await;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    let r = s
        .sdk()
        .create(&small(json!({"wait_ready": true})))
        .await
        .unwrap();
    let id = r["workspace"]["id"].as_str().unwrap().to_string();
    s.kill9();
    assert!(vmm_running(&id));
    // The server's record of it goes (as if lost); a stray directory appears too.
    let store = warren_state::Store::open(&data.path().join("warren.db"))
        .await
        .unwrap();
    assert!(store.delete_workspace(&id).await.unwrap());
    drop(store);
    std::fs::create_dir_all(data.path().join("workspaces/ws_stray")).unwrap();

    let s = Server::start(data.path());
    assert!(vmm_gone(&id), "a VM of no workspace survived the start");
    assert!(
        run_dirs(data.path()).is_empty(),
        "{:?}",
        run_dirs(data.path())
    );
    let (_, b) = s.call("GET", "/workspace", None).await;
    assert_eq!(b["total"], 0);
    assert_nothing_left(data.path(), &[id]);
}
