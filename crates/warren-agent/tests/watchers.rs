//! File watchers: inotify events arrive over the runtime WebSocket.

mod common;

use common::{assert_error, Agent, TOKEN};
use futures_util::StreamExt;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Watcher messages until one satisfies `want`.
async fn until(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no matching event; saw {seen:?}"))
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            assert_eq!(v["channel"], "watcher", "{v}");
            let hit = want(&v);
            seen.push(v);
            if hit {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn watcher_sees_files_created_by_exec() {
    let a = Agent::start();
    let root = a.path("proj");
    std::fs::create_dir_all(format!("{root}/node_modules")).unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?token={TOKEN}", a.addr))
        .await
        .unwrap();

    let (s, v) = a
        .post(
            "/watchers",
            json!({"path": root, "excludes": ["node_modules"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = v["watcher"]["id"].as_str().unwrap().to_string();
    let ready = until(&mut ws, |v| v["type"] == "ready").await;
    let ready = ready.last().unwrap();
    assert_eq!(ready["watcher_id"], id.as_str());
    assert_eq!(ready["dirs"], 1, "node_modules is excluded");

    let (s, _) = a
        .post(
            "/exec",
            json!({"cmd": ["sh", "-c", format!("mkdir {root}/src")]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    until(&mut ws, |v| {
        v["path"] == format!("{root}/src") && v["op"] == "create"
    })
    .await;
    // The new directory is watched too; excluded ones are not reported.
    let script = format!(
        "echo x > {root}/node_modules/ignored; echo hi > {root}/src/a.txt; rm {root}/src/a.txt"
    );
    let (s, _) = a.post("/exec", json!({"cmd": ["sh", "-c", script]})).await;
    assert_eq!(s, StatusCode::OK);
    let seen = until(&mut ws, |v| {
        v["path"] == format!("{root}/src/a.txt") && v["op"] == "remove"
    })
    .await;
    let ops: Vec<&str> = seen
        .iter()
        .filter(|v| v["path"] == format!("{root}/src/a.txt"))
        .map(|v| v["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops.first(), Some(&"create"));
    assert!(ops.contains(&"write"));
    assert!(seen
        .iter()
        .all(|v| !v["path"].as_str().unwrap_or("").contains("node_modules")));

    let (_, list) = a.get("/watchers").await;
    assert_eq!(list["watchers"][0]["dir_count"], 2);
    assert_eq!(list["watchers"][0]["active"], true);
    let (s, _) = a
        .json(Method::DELETE, &format!("/watchers/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = a.get(&format!("/watchers/{id}")).await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = a
        .post("/watchers", json!({"path": "/definitely/not/here"}))
        .await;
    assert_error(s, &v, 422, "validation_error");
}
