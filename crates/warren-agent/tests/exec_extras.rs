//! Exec extras: stdin to a running task, subscribing to a running task with replay,
//! listing and killing.

mod common;

use base64::Engine;
use bytes::Bytes;
use common::{assert_error, Agent, Sse, SseReader, TOKEN};
use hyper::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Read events until stdout so far contains `want`; returns all stdout seen.
async fn stdout_until(sse: &mut SseReader, out: &mut String, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !out.contains(want) {
        let ev: Sse = tokio::time::timeout_at(deadline, sse.next())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in time; got {out:?}"))
            .unwrap_or_else(|| panic!("stream ended before {want:?}; got {out:?}"));
        if ev.event == "stdout" {
            let d = B64.decode(ev.data["data"].as_str().unwrap()).unwrap();
            out.push_str(&String::from_utf8_lossy(&d));
        }
    }
}

#[tokio::test]
async fn stdin_and_live_subscribe_with_replay() {
    let a = Agent::start();
    let script = "echo ready; while read l; do echo \"got $l\"; done; echo eof; exit 4";
    let resp = a
        .send(
            Method::POST,
            "/exec/stream",
            Some(TOKEN),
            Bytes::from(json!({"cmd": ["sh", "-c", script]}).to_string()),
        )
        .await;
    let mut owner = SseReader::new(resp);
    let first = owner.next().await.unwrap();
    assert_eq!(first.event, "task_id");
    let id = first.data["task_id"].as_str().unwrap().to_string();
    let mut owner_out = String::new();
    stdout_until(&mut owner, &mut owner_out, "ready\n").await;

    // Before: a running task answered 409 here. Now: replay, then live.
    let resp = a
        .send(
            Method::GET,
            &format!("/exec/stream?task_id={id}"),
            Some(TOKEN),
            Bytes::new(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut late = SseReader::new(resp);
    assert_eq!(late.next().await.unwrap().data["task_id"], id.as_str());
    let mut late_out = String::new();
    stdout_until(&mut late, &mut late_out, "ready\n").await;

    let (s, v) = a
        .raw(Method::POST, &format!("/exec/{id}/input"), "hello\n")
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&v));
    let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
    assert_eq!(v["bytes"], 6);
    stdout_until(&mut owner, &mut owner_out, "got hello\n").await;
    stdout_until(&mut late, &mut late_out, "got hello\n").await;

    // The task is listed as running meanwhile.
    let (_, list) = a.get("/exec").await;
    let me = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(me["status"], "running");

    // An empty input closes stdin: the loop ends.
    let (s, v) = a.raw(Method::POST, &format!("/exec/{id}/input"), "").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&v));
    stdout_until(&mut owner, &mut owner_out, "eof\n").await;
    stdout_until(&mut late, &mut late_out, "eof\n").await;
    assert_eq!(owner_out, "ready\ngot hello\neof\n");
    assert_eq!(late_out, owner_out);
    for sse in [&mut owner, &mut late] {
        let rest = tokio::time::timeout(Duration::from_secs(10), sse.all())
            .await
            .expect("stream ends with the task");
        let exit = rest.last().expect("an exit event");
        assert_eq!(exit.event, "exit");
        assert_eq!(exit.data["exit_code"], 4);
    }

    // Input to a finished task, or to an unknown one: clear errors.
    let (s, v) = a
        .json(Method::POST, &format!("/exec/{id}/input"), Some(json!("x")))
        .await;
    assert_error(s, &v, 409, "conflict");
    let (s, v) = a
        .json(Method::POST, "/exec/999999/input", Some(json!("x")))
        .await;
    assert_error(s, &v, 404, "not_found");
}

#[tokio::test]
async fn sync_exec_keeps_stdin_empty_and_running_tasks_can_be_killed() {
    let a = Agent::start();
    // POST /exec waits for the exit: its stdin is empty, so `cat` ends at once.
    let (s, v) = tokio::time::timeout(
        Duration::from_secs(10),
        a.post("/exec", json!({"cmd": ["cat"]})),
    )
    .await
    .expect("cat with empty stdin ends");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["exit_code"], 0);

    // A streamed task with inline stdin gets exactly that, then EOF.
    let resp = a
        .send(
            Method::POST,
            "/exec/stream",
            Some(TOKEN),
            Bytes::from(json!({"cmd": ["cat"], "stdin": "inline"}).to_string()),
        )
        .await;
    let evs = tokio::time::timeout(Duration::from_secs(10), SseReader::new(resp).all())
        .await
        .expect("cat with inline stdin ends");
    let id = evs[0].data["task_id"].as_str().unwrap().to_string();
    assert_eq!(evs.last().unwrap().data["exit_code"], 0);
    let (s, v) = a
        .json(Method::POST, &format!("/exec/{id}/input"), Some(json!("x")))
        .await;
    assert_error(s, &v, 409, "conflict");

    // A subscriber of a task that gets killed sees the kill.
    let resp = a
        .send(
            Method::POST,
            "/exec/stream",
            Some(TOKEN),
            Bytes::from(json!({"cmd": ["sleep", "60"]}).to_string()),
        )
        .await;
    let mut owner = SseReader::new(resp);
    let id = owner.next().await.unwrap().data["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = a
        .send(
            Method::GET,
            &format!("/exec/stream?task_id={id}"),
            Some(TOKEN),
            Bytes::new(),
        )
        .await;
    let mut sub = SseReader::new(resp);
    assert_eq!(sub.next().await.unwrap().event, "task_id");
    let (s, _) = a.json(Method::DELETE, &format!("/exec/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    let rest = tokio::time::timeout(Duration::from_secs(10), sub.all())
        .await
        .expect("subscriber's stream ends with the kill");
    let exit = rest.last().unwrap();
    assert_eq!(exit.event, "exit");
    assert_eq!(exit.data["exit_code"], 137);
    assert_eq!(exit.data["status"], "failed");
}
