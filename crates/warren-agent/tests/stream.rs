//! The SSH gateway's private streams: `/terminals/:id/stream` (one terminal's output,
//! input and resizes, its exit) and `/tunnel` (a raw TCP connection to a port of the
//! workspace, with a half-close), against a real agent process.

mod common;

use common::{assert_error, Agent, TOKEN};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

async fn ws(
    a: &Agent,
    path_and_query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let sep = if path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("ws://{}{path_and_query}{sep}token={TOKEN}", a.addr);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect")
        .0
}

/// A WebSocket handshake the agent refuses: its status and error body.
async fn refused(a: &Agent, path_and_query: &str) -> (hyper::StatusCode, Value) {
    let sep = if path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("ws://{}{path_and_query}{sep}token={TOKEN}", a.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (
                hyper::StatusCode::from_u16(resp.status().as_u16()).unwrap(),
                serde_json::from_slice(&body).unwrap_or_default(),
            )
        }
        Err(e) => panic!("{path_and_query}: {e}"),
        Ok(_) => panic!("{path_and_query}: upgraded"),
    }
}

#[tokio::test]
async fn terminal_stream_carries_output_input_resize_and_exit() {
    let a = Agent::start();
    let (st, t) = a
        .post(
            "/terminals",
            json!({"cmd": ["/bin/sh", "-c", "stty size; read x; stty size; echo got-$x; exit 7"],
                   "cols": 100, "rows": 30}),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    let mut s = ws(&a, &format!("/terminals/{id}/stream")).await;
    let mut out = String::new();
    let mut exit = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut sent = false;
    while exit.is_none() {
        let m = tokio::time::timeout_at(deadline, s.next())
            .await
            .unwrap_or_else(|_| panic!("no exit in time; output {out:?}"))
            .expect("open")
            .expect("frame");
        match m {
            Message::Binary(b) => out.push_str(&String::from_utf8_lossy(&b)),
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["type"], "exit", "{v}");
                exit = v["code"].as_i64();
            }
            _ => {}
        }
        if !sent && out.contains("30 100") {
            sent = true;
            let resize = json!({"type": "resize", "cols": 120, "rows": 40}).to_string();
            s.send(Message::Text(resize.into())).await.unwrap();
            s.send(Message::Binary(b"abc\n".to_vec().into()))
                .await
                .unwrap();
        }
    }
    assert_eq!(exit, Some(7), "{out}");
    assert!(out.contains("40 120"), "{out}");
    assert!(out.contains("got-abc"), "{out}");
    let (st, b) = refused(&a, "/terminals/99/stream").await;
    assert_error(st, &b, 404, "not_found");
}

#[tokio::test]
async fn tunnel_reaches_loopback_ports_only() {
    let a = Agent::start();
    // An echo server that answers once its client half-closes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut c, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        c.write_all(b"echo:").await.unwrap();
        c.write_all(&got).await.unwrap();
    });
    let mut s = ws(&a, &format!("/tunnel?port={port}")).await;
    s.send(Message::Binary(b"ping".to_vec().into()))
        .await
        .unwrap();
    s.send(Message::Text("eof".into())).await.unwrap();
    let mut back = Vec::new();
    while let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("answer in time")
    {
        match m {
            Message::Binary(b) => back.extend_from_slice(&b),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(back, b"echo:ping");

    // Not the workspace: refused before any connection; a closed port is an error
    // before the upgrade.
    let (st, b) = refused(&a, "/tunnel?host=198.51.100.7&port=80").await;
    assert_error(st, &b, 403, "forbidden");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (st, b) = refused(&a, &format!("/tunnel?port={closed}")).await;
    assert_error(st, &b, 422, "connect_failed");
    let (st, b) = refused(&a, "/tunnel?port=0").await;
    assert_error(st, &b, 422, "validation_error");
}
