//! Managed workloads on the agent: supervision, restart policies with backoff and
//! max_restarts, logs (JSON and SSE with tail/follow), stats, bad input.

mod common;

use bytes::Bytes;
use common::{assert_error, Agent, SseReader, TOKEN};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn wait_status(a: &Agent, id: &str, want: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (s, v) = a.get(&format!("/workloads/{id}/status")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["status"] == want {
            return v;
        }
        assert!(Instant::now() < deadline, "status never became {want}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn crashing_workload_restarts_until_max_restarts_and_logs_stream() {
    let a = Agent::start();
    let (s, v) = a
        .post(
            "/workloads",
            json!({"name": "crashy", "cmd": ["sh", "-c", "echo run $$; echo oops >&2; exit 3"],
                   "restart_policy": "on-failure", "max_restarts": 2, "restart_delay": 0.2}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = v["workload"]["id"].as_str().unwrap().to_string();
    assert_eq!(v["workload"]["name"], "crashy");

    // Follow the logs from the start while it crashes.
    let resp = a
        .send(
            Method::GET,
            &format!("/workloads/{id}/logs/stream"),
            Some(TOKEN),
            Bytes::new(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut sse = SseReader::new(resp);

    let started = Instant::now();
    let end = wait_status(&a, &id, "failed", 20).await;
    assert_eq!(end["restarts"], 2);
    assert_eq!(end["exit_code"], 3);
    // Backoff doubles: 0.2 s then 0.4 s between the three runs.
    assert!(started.elapsed() >= Duration::from_millis(550));

    let mut runs = 0;
    let mut errs = 0;
    let mut gave_up = false;
    while !gave_up {
        let ev = tokio::time::timeout(Duration::from_secs(10), sse.next())
            .await
            .expect("log lines in time")
            .expect("stream open");
        assert_eq!(ev.event, "log");
        let data = ev.data["data"].as_str().unwrap();
        match ev.data["stream"].as_str().unwrap() {
            "stdout" if data.starts_with("run ") => runs += 1,
            "stderr" => {
                assert_eq!(data, "oops");
                errs += 1
            }
            "system" if data.contains("max_restarts") => gave_up = true,
            _ => {}
        }
        assert!(ev.data["timestamp"].is_string());
    }
    assert_eq!((runs, errs), (3, 3));

    // The JSON logs with tail.
    let (_, logs) = a.get(&format!("/workloads/{id}/logs?tail=2")).await;
    assert_eq!(logs["logs"].as_array().unwrap().len(), 2);
    // A non-following stream ends after the tail.
    let resp = a
        .send(
            Method::GET,
            &format!("/workloads/{id}/logs/stream?tail=3&follow=false"),
            Some(TOKEN),
            Bytes::new(),
        )
        .await;
    let tail = tokio::time::timeout(Duration::from_secs(5), SseReader::new(resp).all())
        .await
        .expect("ends");
    assert_eq!(tail.len(), 3);

    // Start again: a fresh run with the restart count reset.
    let (s, v) = a.post(&format!("/workloads/{id}/start"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_status(&a, &id, "failed", 20).await;
}

#[tokio::test]
async fn lifecycle_stop_start_update_delete_stats_and_bad_input() {
    let a = Agent::start();
    let (s, v) = a
        .post(
            "/workloads",
            json!({"name": "web", "cmd": ["sh", "-c", "echo $GREETING; exec sleep 60"],
                   "env": ["GREETING=hi"], "restart_policy": "always"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = v["workload"]["id"].as_str().unwrap().to_string();
    let running = wait_status(&a, &id, "running", 10).await;
    let pid = running["pid"].as_u64().unwrap();

    // Duplicate name, bad policy, unknown workload: clear errors, nothing changes.
    let (s, v) = a
        .post("/workloads", json!({"name": "web", "cmd": ["true"]}))
        .await;
    assert_error(s, &v, 409, "conflict");
    let (s, v) = a
        .post(
            "/workloads",
            json!({"name": "x", "cmd": ["true"], "restart_policy": "sometimes"}),
        )
        .await;
    assert_error(s, &v, 422, "validation_error");
    assert!(v["message"].as_str().unwrap().contains("restart_policy"));
    let (s, v) = a.post("/workloads", json!({"name": "y"})).await;
    assert_error(s, &v, 422, "validation_error");
    let (s, v) = a.get("/workloads/nope").await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = a
        .json(
            Method::PUT,
            &format!("/workloads/{id}"),
            Some(json!({"restart_policy": "bogus"})),
        )
        .await;
    assert_error(s, &v, 422, "validation_error");
    let (_, list) = a.get("/workloads").await;
    assert_eq!(list["workloads"].as_array().unwrap().len(), 1);
    assert_eq!(list["workloads"][0]["restart_policy"], "always");

    // By name works too; the output was logged.
    let (_, logs) = a.get("/workloads/web/logs").await;
    assert!(logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["data"] == "hi" && l["stream"] == "stdout"));

    let (s, st) = a.get(&format!("/workloads/{id}/stats")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(st["status"], "running");
    assert!(st["memory_usage"].as_u64().unwrap() > 0);

    // Stop: not restarted although the policy is always.
    let (s, v) = a.post(&format!("/workloads/{id}/stop"), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "stopped");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            // A zombie until reaped: give the reaper a moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wait_status(&a, &id, "stopped", 1).await["restarts"], 0);

    let (s, v) = a
        .json(
            Method::PATCH,
            &format!("/workloads/{id}"),
            Some(json!({"restart_policy": "never", "name": "web2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "web2");
    let (s, _) = a.post(&format!("/workloads/{id}/start"), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    wait_status(&a, &id, "running", 10).await;

    let (s, _) = a
        .json(Method::DELETE, &format!("/workloads/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = a.get(&format!("/workloads/{id}")).await;
    assert_error(s, &v, 404, "not_found");
    let (_, list) = a.get("/workloads").await;
    assert_eq!(list["workloads"], json!([]));
}
