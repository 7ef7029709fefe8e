//! `/proxy` to loopback apps: HTTP with the credentials stripped, streaming, WebSocket.

mod common;

use bytes::Bytes;
use common::{assert_error, Agent, TOKEN};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A one-request-per-connection app: answers with the request head it saw; `/slow`
/// sends two chunks 700 ms apart.
async fn app() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                if head.starts_with("GET /slow") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: one\n\n")
                        .await;
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    let _ = s.write_all(b"data: two\n\n").await;
                } else {
                    let body = head.to_ascii_lowercase();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                }
            });
        }
    });
    port
}

async fn ws_echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn http_streams_and_websockets_reach_loopback_apps_without_our_token() {
    let a = Agent::start();
    let port = app().await;

    // Header target, as rt.proxy(port).fetch() sends it.
    let stream = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("/proxy/api/users?limit=10&token=leak")
        .header("host", "gateway.example")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("x-oblien-proxy-target", port.to_string())
        .header("x-custom", "kept")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        seen.starts_with("get /api/users?limit=10 http/1.1"),
        "{seen}"
    );
    assert!(seen.contains("x-custom: kept"));
    assert!(seen.contains(&format!("host: localhost:{port}")));
    assert!(
        !seen.contains(&TOKEN.to_ascii_lowercase()),
        "token leaked: {seen}"
    );
    assert!(!seen.contains("authorization") && !seen.contains("x-oblien-proxy-target"));
    assert!(!seen.contains("leak"));

    // Path form, streamed as it comes.
    let start = Instant::now();
    let resp = a
        .send(
            Method::GET,
            &format!("/proxy/{port}/slow"),
            Some(TOKEN),
            Bytes::new(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: one\n\n");
    assert!(
        start.elapsed() < Duration::from_millis(600),
        "first chunk was held back"
    );
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"data: two\n\n");

    // WebSocket with the query forms, as rt.proxy(port).ws() connects.
    let echo = ws_echo().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/proxy/socket?token={TOKEN}&x_oblien_target={echo}",
        a.addr
    ))
    .await
    .expect("upgrade through the proxy");
    ws.send(Message::Text("hello".into())).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back, Message::Text("hello".into()));

    // Nothing listening; not loopback; no target.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap().port();
    drop(closed);
    let (s, v) = a.get(&format!("/proxy/{dead}/")).await;
    assert_error(s, &v, 502, "bad_gateway");
    let (s, v) = a.get("/proxy/x?x_oblien_target=10.1.2.3:80").await;
    assert_error(s, &v, 403, "forbidden");
    let (s, v) = a.get("/proxy/app").await;
    assert_error(s, &v, 422, "validation_error");
}
