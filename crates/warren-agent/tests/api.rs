//! Drive `warren-agent serve` over HTTP as the official client would.

mod common;

use base64::Engine;
use bytes::Bytes;
use common::{assert_error, Agent, SseReader, TOKEN};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn enc(s: &str) -> String {
    // Minimal percent-encoding for query values in these tests.
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn auth_health_runtime_and_unknown_routes() {
    let a = Agent::start();
    // No token, wrong token, wrong scheme.
    for token in [None, Some("wrong"), Some("")] {
        let resp = a.send(Method::GET, "/health", token, Bytes::new()).await;
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_error(status, &v, 401, "unauthorized");
    }
    // Even unknown routes need the token.
    let resp = a.send(Method::GET, "/nope", None, Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let (s, v) = a.get("/health").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"success": true, "status": "ok"}));

    let (s, v) = a.get("/runtime").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["success"], true);
    assert_eq!(v["os"], "linux");
    assert_eq!(v["arch"], std::env::consts::ARCH);
    assert!(v["cpus"].as_u64().unwrap() >= 1);
    assert_eq!(v["home"], "/root");
    assert!(v["shell"].as_str().unwrap().starts_with("/bin/"));
    assert_eq!(v["protocol_version"], 1);
    assert!(v["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("exec")));

    let (s, v) = a.get("/does/not/exist").await;
    assert_error(s, &v, 404, "not_found");
    assert!(v["message"].as_str().unwrap().contains("/does/not/exist"));
    let (s, v) = a.get("/exec/999999").await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = a.json(Method::DELETE, "/exec/999999", None).await;
    assert_error(s, &v, 404, "not_found");

    // Bad JSON is a validation error with our body, not axum's plain text.
    let (s, body) = a.raw(Method::POST, "/exec", "{not json").await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_error(s, &v, 422, "validation_error");
}

#[tokio::test]
async fn exec_collects_output_exit_code_env_cwd_and_stdin() {
    let a = Agent::start();
    let (s, t) = a
        .post(
            "/exec",
            json!({"cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(t["success"], true);
    assert_eq!(t["status"], "exited");
    assert_eq!(t["exit_code"], 3);
    assert_eq!(t["stdout"], "out\n");
    assert_eq!(t["stderr"], "err\n");
    assert_eq!(
        t["command"],
        json!(["sh", "-c", "echo out; echo err >&2; exit 3"])
    );
    assert!(t["guest_pid"].as_u64().unwrap() > 1);
    for k in ["created_at", "started_at", "exited_at"] {
        let ts = t[k].as_str().unwrap();
        assert!(ts.contains('T') && ts.ends_with('Z'), "{k}: {ts}");
    }

    // Environment: the workspace env (the agent's own under `serve`) plus the request's.
    let sub = a.path("sub");
    std::fs::create_dir(&sub).unwrap();
    let (_, t) = a
        .post(
            "/exec",
            json!({
                "cmd": ["sh", "-c", "printf '%s|%s|%s' \"$FOO\" \"$WARREN_TEST_MARKER\" \"$(pwd)\""],
                "env": {"FOO": "bar baz"},
                "cwd": sub,
            }),
        )
        .await;
    assert_eq!(t["exit_code"], 0, "{t}");
    let canon = std::fs::canonicalize(&sub).unwrap();
    assert_eq!(
        t["stdout"],
        format!("bar baz|from-agent-env|{}", canon.display())
    );

    // Default cwd is --workdir.
    let (_, t) = a.post("/exec", json!({"cmd": ["pwd"]})).await;
    assert_eq!(
        t["stdout"].as_str().unwrap().trim(),
        std::fs::canonicalize(a.dir.path())
            .unwrap()
            .to_str()
            .unwrap()
    );

    // stdin is written then closed; without it stdin is empty.
    let (_, t) = a
        .post("/exec", json!({"cmd": ["cat"], "stdin": "hello\nworld"}))
        .await;
    assert_eq!(t["stdout"], "hello\nworld");
    let (_, t) = a.post("/exec", json!({"cmd": ["cat"]})).await;
    assert_eq!(
        (t["stdout"].as_str(), t["exit_code"].as_i64()),
        (Some(""), Some(0))
    );

    // Modes: auto uses the shell for one element with shell syntax only.
    let (_, t) = a.post("/exec", json!({"cmd": ["echo a | tr a b"]})).await;
    assert_eq!(t["stdout"], "b\n");
    let (_, t) = a
        .post(
            "/exec",
            json!({"cmd": ["echo", "a|b"], "exec_mode": "auto"}),
        )
        .await;
    assert_eq!(t["stdout"], "a|b\n");
    let (_, t) = a
        .post(
            "/exec",
            json!({"cmd": ["echo", "$((1+2))"], "exec_mode": "shell"}),
        )
        .await;
    assert_eq!(t["stdout"], "3\n");
    let (_, t) = a
        .post(
            "/exec",
            json!({"cmd": ["echo $HOME"], "exec_mode": "direct"}),
        )
        .await;
    assert_eq!(t["status"], "failed");
    assert_eq!(t["exit_code"], 127);

    // Children get SIGPIPE back at its default: `yes` dies quietly when `head` exits.
    let (_, t) = a
        .post("/exec", json!({"cmd": ["sh", "-c", "yes | head -n 1"]}))
        .await;
    assert_eq!(
        (t["stdout"].as_str(), t["stderr"].as_str()),
        (Some("y\n"), Some(""))
    );

    // A background child holding the pipes open does not hold the answer hostage.
    let start = Instant::now();
    let (_, t) = a
        .post(
            "/exec",
            json!({"cmd": ["sh", "-c", "sleep 30 & echo started"]}),
        )
        .await;
    assert_eq!(t["stdout"], "started\n");
    assert_eq!(t["exit_code"], 0);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );

    // Non-UTF-8 output is converted lossily.
    let (_, t) = a.post("/exec", json!({"cmd": ["printf", "a\\377b"]})).await;
    assert_eq!(t["stdout"], "a\u{fffd}b");
}

#[tokio::test]
async fn exec_errors_timeouts_and_validation() {
    let a = Agent::start();
    let (s, t) = a
        .post("/exec", json!({"cmd": ["no-such-command-xyz", "arg"]}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(t["status"], "failed");
    assert_eq!(t["exit_code"], 127);
    assert!(t["error"].as_str().unwrap().contains("no-such-command-xyz"));

    let start = Instant::now();
    let (_, t) = a
        .post(
            "/exec",
            json!({"cmd": ["sh", "-c", "echo before; sleep 30; echo after"], "timeout_seconds": 1}),
        )
        .await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "timeout not enforced"
    );
    assert_eq!(t["status"], "failed");
    assert_eq!(t["exit_code"], 124);
    assert_eq!(t["error"], "timed out after 1s");
    assert_eq!(t["stdout"], "before\n");

    let (s, v) = a.post("/exec", json!({"cmd": []})).await;
    assert_error(s, &v, 422, "validation_error");
    let (s, v) = a
        .post(
            "/exec",
            json!({"cmd": ["true"], "cwd": "/no/such/dir/here"}),
        )
        .await;
    assert_error(s, &v, 422, "validation_error");
    assert!(v["message"].as_str().unwrap().contains("/no/such/dir/here"));
    let (s, v) = a.post("/exec", json!({"cmd": "true"})).await;
    assert_error(s, &v, 422, "validation_error");

    // Killed by a signal.
    let (_, t) = a
        .post("/exec", json!({"cmd": ["sh", "-c", "kill -9 $$"]}))
        .await;
    assert_eq!(t["status"], "failed");
    assert_eq!(t["exit_code"], 137);
}

#[tokio::test]
async fn task_registry_list_get_delete_and_ttl() {
    let a = Agent::start();
    let (_, t1) = a.post("/exec", json!({"cmd": ["echo", "one"]})).await;
    let (_, t2) = a
        .post("/exec", json!({"cmd": ["echo", "two"], "ttl_seconds": 1}))
        .await;
    let id1 = t1["id"].as_str().unwrap().to_string();
    let id2 = t2["id"].as_str().unwrap().to_string();
    assert_ne!(id1, id2);

    let (s, v) = a.get("/exec").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["success"], true);
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["id"], id1.as_str());
    assert!(tasks[0].get("stdout").is_none(), "list carries no output");
    assert_eq!(tasks[0]["status"], "exited");

    let (s, v) = a.get(&format!("/exec/{id1}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["stdout"], "one\n");
    assert_eq!(v["success"], true);

    // A finished task can be replayed as a stream.
    let resp = a
        .send(
            Method::GET,
            &format!("/exec/stream?task_id={id1}"),
            Some(TOKEN),
            Bytes::new(),
        )
        .await;
    let events = SseReader::new(resp).all().await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["task_id", "stdout", "exit"]);
    assert_eq!(
        B64.decode(events[1].data["data"].as_str().unwrap())
            .unwrap(),
        b"one\n"
    );
    assert_eq!(events[2].data["exit_code"], 0);

    // TTL 1 s: gone afterwards.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (s, v) = a.get(&format!("/exec/{id2}")).await;
    assert_error(s, &v, 404, "not_found");

    let (s, v) = a.json(Method::DELETE, &format!("/exec/{id1}"), None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"success": true})));
    let (s, _) = a.get(&format!("/exec/{id1}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Deleting a running task kills its whole process group.
    let resp = a
        .send(
            Method::POST,
            "/exec/stream",
            Some(TOKEN),
            Bytes::from(
                json!({"cmd": ["sh", "-c", "sleep 60 & sleep 60; echo never"]}).to_string(),
            ),
        )
        .await;
    let mut sse = SseReader::new(resp);
    let first = sse.next().await.unwrap();
    assert_eq!(first.event, "task_id");
    let id = first.data["task_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, v) = a.get("/exec").await;
    let running = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(running["status"], "running");
    let start = Instant::now();
    let (s, _) = a.json(Method::DELETE, &format!("/exec/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    let rest = tokio::time::timeout(Duration::from_secs(10), sse.all())
        .await
        .expect("stream ends once the task is killed");
    assert!(start.elapsed() < Duration::from_secs(5));
    let exit = rest.last().unwrap();
    assert_eq!(exit.event, "exit");
    assert_eq!(exit.data["status"], "failed");
    assert_eq!(exit.data["exit_code"], 137);
    assert!(rest.iter().all(|e| e.event != "stdout"));

    let (_, _) = a.post("/exec", json!({"cmd": ["true"]})).await;
    let (s, v) = a.json(Method::DELETE, "/exec", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"success": true})));
    let (_, v) = a.get("/exec").await;
    assert_eq!(v["tasks"], json!([]));
}

#[tokio::test]
async fn exec_stream_events_arrive_live_and_in_order() {
    let a = Agent::start();
    let resp = a
        .send(
            Method::POST,
            "/exec/stream",
            Some(TOKEN),
            Bytes::from(
                json!({"cmd": ["sh", "-c", "echo first; echo oops >&2; sleep 2; echo second; exit 5"]})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let events = SseReader::new(resp).all().await;
    assert_eq!(events[0].event, "task_id");
    assert!(events[0].data["task_id"].as_str().is_some());
    let decode = |e: &common::Sse| B64.decode(e.data["data"].as_str().unwrap()).unwrap();
    let first = events.iter().find(|e| e.event == "stdout").unwrap();
    assert_eq!(decode(first), b"first\n");
    // Not buffered until the end: `first` arrived well before the 2 s sleep ended.
    let exit = events.last().unwrap();
    assert!(
        exit.at - first.at >= Duration::from_millis(1500),
        "output was buffered: first at {:?}, exit at {:?}",
        first.at,
        exit.at
    );
    let stderr: Vec<u8> = events
        .iter()
        .filter(|e| e.event == "stderr")
        .flat_map(decode)
        .collect();
    assert_eq!(stderr, b"oops\n");
    let stdout: Vec<u8> = events
        .iter()
        .filter(|e| e.event == "stdout")
        .flat_map(decode)
        .collect();
    assert_eq!(stdout, b"first\nsecond\n");
    assert_eq!(exit.event, "exit");
    assert_eq!(exit.data["exit_code"], 5);
    assert_eq!(exit.data["status"], "exited");
    assert!(exit.data["pid"].as_u64().unwrap() > 1);

    // Validation errors come back before any stream, as JSON.
    let (s, body) = a.raw(Method::POST, "/exec/stream", r#"{"cmd":[]}"#).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_error(s, &v, 422, "validation_error");

    // A command that cannot start still ends with an exit event.
    let resp = a
        .send(
            Method::POST,
            "/exec/stream",
            Some(TOKEN),
            Bytes::from(json!({"cmd": ["no-such-cmd-abc"]}).to_string()),
        )
        .await;
    let events = SseReader::new(resp).all().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].event, "exit");
    assert_eq!(events[1].data["exit_code"], 127);
    assert_eq!(events[1].data["status"], "failed");
}

#[tokio::test]
async fn exec_stream_carries_10_mib_intact() {
    let a = Agent::start();
    let file = a.path("random.bin");
    let script = format!("head -c 10485760 /dev/urandom | tee '{file}'");
    let resp = a
        .send(
            Method::POST,
            "/exec/stream",
            Some(TOKEN),
            Bytes::from(json!({"cmd": ["sh", "-c", script]}).to_string()),
        )
        .await;
    let events = tokio::time::timeout(Duration::from_secs(120), SseReader::new(resp).all())
        .await
        .expect("10 MiB stream finished in time");
    let mut got = Vec::with_capacity(10 << 20);
    for e in events.iter().filter(|e| e.event == "stdout") {
        let chunk = B64.decode(e.data["data"].as_str().unwrap()).unwrap();
        assert!(
            !chunk.is_empty() && chunk.len() <= 64 * 1024,
            "chunk of {}",
            chunk.len()
        );
        got.extend_from_slice(&chunk);
    }
    let exit = events.last().unwrap();
    assert_eq!(exit.event, "exit");
    assert_eq!(exit.data["exit_code"], 0);
    let want = std::fs::read(&file).unwrap();
    assert_eq!(want.len(), 10 << 20);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "streamed bytes differ from the file");
}

#[tokio::test]
async fn files_write_read_stat_list_mkdir_delete() {
    let a = Agent::start();
    let f = a.path("dir/notes.md");

    // Parent missing without create_dirs: 404 naming the path.
    let (s, v) = a
        .post("/files/write", json!({"path": f, "content": "x"}))
        .await;
    assert_error(s, &v, 404, "not_found");

    let (s, v) = a
        .post(
            "/files/write",
            json!({"path": f, "content": "line1\nline2\nline3\n", "create_dirs": true, "mode": "0600"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"success": true, "path": f, "size": 18}));
    let (_, v) = a
        .post(
            "/files/write",
            json!({"path": f, "content": "line4\n", "append": true}),
        )
        .await;
    assert_eq!(v["size"], 24);

    let (s, v) = a.get(&format!("/files/read?path={}", enc(&f))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["content"], "line1\nline2\nline3\nline4\n");
    assert_eq!(v["size"], 24);
    assert_eq!(v["lines"], 4);
    assert_eq!(v["extension"], "md");
    let (_, v) = a
        .get(&format!(
            "/files/read?path={}&start_line=2&end_line=3&with_line_numbers=false",
            enc(&f)
        ))
        .await;
    assert_eq!(v["content"], "line2\nline3\n");
    assert_eq!(
        (v["start_line"].as_u64(), v["end_line"].as_u64()),
        (Some(2), Some(3))
    );
    let (_, v) = a
        .get(&format!(
            "/files/read?path={}&start_line=4&with_line_numbers=true",
            enc(&f)
        ))
        .await;
    assert_eq!(v["content"], "     4\tline4\n");
    let (s, v) = a
        .get(&format!(
            "/files/read?path={}&start_line=3&end_line=1",
            enc(&f)
        ))
        .await;
    assert_error(s, &v, 422, "validation_error");

    let (s, v) = a.get(&format!("/files/stat?path={}", enc(&f))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["type"], "file");
    assert_eq!(v["name"], "notes.md");
    assert_eq!(v["permissions"], "0600");
    assert_eq!(v["size"], 24);
    assert_eq!(v["is_code"], true);
    assert!(v["modified"].as_str().unwrap().ends_with('Z'));

    // Binary content: 422 binary_file unless asked for base64.
    let bin = a.path("dir/blob.bin");
    let (s, _) = a
        .post(
            "/files/write",
            json!({"path": bin, "content": B64.encode([0u8, 159, 146, 150, 255]), "encoding": "base64"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(std::fs::read(&bin).unwrap(), [0u8, 159, 146, 150, 255]);
    let (s, v) = a.get(&format!("/files/read?path={}", enc(&bin))).await;
    assert_error(s, &v, 422, "binary_file");
    assert!(v["message"].as_str().unwrap().contains("base64"));
    let (_, v) = a
        .get(&format!("/files/read?path={}&encoding=base64", enc(&bin)))
        .await;
    assert_eq!(
        B64.decode(v["content"].as_str().unwrap()).unwrap(),
        [0u8, 159, 146, 150, 255]
    );
    assert_eq!(v["encoding"], "base64");

    let (s, v) = a
        .post(
            "/files/mkdir",
            json!({"path": a.path("dir/a/b/c"), "mode": "0750"}),
        )
        .await;
    assert_eq!((s, v["success"].clone()), (StatusCode::OK, json!(true)));
    let (_, v) = a
        .get(&format!("/files/stat?path={}", enc(&a.path("dir/a/b/c"))))
        .await;
    assert_eq!(v["type"], "directory");
    assert_eq!(v["permissions"], "0750");
    std::os::unix::fs::symlink("notes.md", a.path("dir/link")).unwrap();

    let dir = a.path("dir");
    let (s, v) = a.get(&format!("/files?path={}", enc(&dir))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["path"], dir);
    let names: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "blob.bin", "link", "notes.md"]);
    assert_eq!(v["count"], 4);
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries[0]["type"], "directory");
    assert_eq!(entries[2]["type"], "symlink");
    assert_eq!(entries[3]["size"], 24);
    assert_eq!(entries[3]["path"], f);
    assert!(entries[0].get("children").is_none());

    let (_, v) = a
        .get(&format!(
            "/files?path={}&nested=true&max_depth=2",
            enc(&dir)
        ))
        .await;
    let a_entry = &v["entries"][0];
    assert_eq!(a_entry["children"][0]["name"], "b");
    assert!(
        a_entry["children"][0].get("children").is_none(),
        "max_depth=2"
    );
    assert_eq!(v["count"], 5);

    let (s, v) = a
        .get(&format!("/files/stat?path={}", enc(&a.path("dir/link"))))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["type"], "symlink");
    assert_eq!(v["symlink_target"], "notes.md");

    // Errors.
    let (s, v) = a.get("/files/read?path=relative/x").await;
    assert_error(s, &v, 422, "validation_error");
    let (s, v) = a.get("/files/read").await;
    assert_error(s, &v, 422, "validation_error");
    let missing = a.path("missing.txt");
    let (s, v) = a.get(&format!("/files/read?path={}", enc(&missing))).await;
    assert_error(s, &v, 404, "not_found");
    assert!(v["message"].as_str().unwrap().contains(&missing));
    let (s, v) = a.get(&format!("/files/read?path={}", enc(&dir))).await;
    assert_error(s, &v, 409, "conflict");
    let (s, v) = a.get(&format!("/files?path={}", enc(&f))).await;
    assert_error(s, &v, 409, "conflict");
    let (s, v) = a.post("/files/mkdir", json!({"path": f})).await;
    assert_error(s, &v, 409, "conflict");
    let (s, v) = a
        .post("/files/write", json!({"path": dir, "content": "x"}))
        .await;
    assert_error(s, &v, 409, "conflict");
    let (s, v) = a
        .post(
            "/files/write",
            json!({"path": f, "content": "x", "mode": "rwx"}),
        )
        .await;
    assert_error(s, &v, 422, "validation_error");
    let (s, v) = a.get(&format!("/files/stat?path={}", enc(&missing))).await;
    assert_error(s, &v, 404, "not_found");

    // Delete: a file by JSON body, a tree recursively, and by query parameter.
    let (s, v) = a.post("/files/delete", json!({"path": f})).await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, json!({"success": true, "path": f}))
    );
    assert!(!std::path::Path::new(&f).exists());
    let (s, v) = a.post("/files/delete", json!({"path": f})).await;
    assert_error(s, &v, 404, "not_found");
    let (s, _) = a
        .post("/files/delete", json!({"path": a.path("dir/a")}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!std::path::Path::new(&a.path("dir/a")).exists());
    let (s, v) = a
        .json(
            Method::POST,
            &format!("/files/delete?path={}", enc(&bin)),
            None,
        )
        .await;
    assert_eq!(
        (s, v["path"].as_str()),
        (StatusCode::OK, Some(bin.as_str()))
    );
    assert!(!std::path::Path::new(&bin).exists());
    let (s, v) = a.post("/files/delete", json!({"path": "/"})).await;
    assert_error(s, &v, 422, "validation_error");
}

#[tokio::test]
async fn binary_upload_download_round_trip() {
    let a = Agent::start();
    // 3 MiB + a bit of every byte value, pseudo-random.
    let mut data = Vec::with_capacity(3 << 20);
    let mut x: u32 = 0x1234_5678;
    while data.len() < (3 << 20) + 12345 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let target = a.path("up/nested/data.bin");
    let url = format!(
        "/files/upload?path={}&create_dirs=true&mode=0640",
        enc(&target)
    );
    let (s, body) = a.raw(Method::PUT, &url, data.clone()).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"success": true, "path": target, "size": data.len()})
    );
    assert_eq!(std::fs::read(&target).unwrap(), data);
    let (_, v) = a.get(&format!("/files/stat?path={}", enc(&target))).await;
    assert_eq!(v["permissions"], "0640");
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(a.path("up/nested"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1);

    let resp = a
        .send(
            Method::GET,
            &format!("/files/download?path={}", enc(&target)),
            Some(TOKEN),
            Bytes::new(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/octet-stream"
    );
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        data.len().to_string()
    );
    let got = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(got == data, "downloaded bytes differ");

    // Pseudo files have no reliable size: streamed without Content-Length, not cut off.
    let resp = a
        .send(
            Method::GET,
            "/files/download?path=/proc/self/status",
            Some(TOKEN),
            Bytes::new(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("content-length").is_none());
    let got = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&got).contains("Pid:"));

    // Upload without create_dirs into a missing directory, and download errors.
    let (s, body) = a
        .raw(
            Method::PUT,
            &format!("/files/upload?path={}", enc(&a.path("nope/x.bin"))),
            vec![1u8, 2, 3],
        )
        .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_error(s, &v, 404, "not_found");
    let (s, body) = a
        .raw(
            Method::GET,
            &format!("/files/download?path={}", enc(&a.path("nope.bin"))),
            Bytes::new(),
        )
        .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_error(s, &v, 404, "not_found");
    let (s, body) = a
        .raw(
            Method::GET,
            &format!("/files/download?path={}", enc(&a.path("up"))),
            Bytes::new(),
        )
        .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_error(s, &v, 409, "conflict");
    // Replacing keeps working (rename over the old file).
    let (s, _) = a.raw(Method::PUT, &url, vec![9u8; 10]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(std::fs::read(&target).unwrap(), vec![9u8; 10]);
}
