//! Terminals over `/terminals` REST and the runtime WebSocket `/ws`, framed as the
//! official client frames them.

mod common;

use base64::Engine;
use common::{assert_error, Agent, TOKEN};
use futures_util::{SinkExt, StreamExt};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(a: &Agent) -> Ws {
    let url = format!("ws://{}/ws?token={TOKEN}", a.addr);
    let (ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect");
    assert_eq!(resp.status(), 101);
    ws
}

/// Read frames until terminal `id`'s output contains `want`; returns that output.
async fn output_until(ws: &mut Ws, id: u8, want: &str) -> String {
    let mut out = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !out.contains(want) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in time; got {out:?}"))
            .expect("socket open")
            .expect("frame");
        if let Message::Binary(b) = msg {
            assert_eq!(b[0], id, "frame for another terminal");
            out.push_str(&String::from_utf8_lossy(&b[1..]));
        }
    }
    out
}

/// The next text frame, as JSON.
async fn next_text(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a text frame in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("JSON text frame");
        }
    }
}

fn frame(id: u8, data: &str) -> Message {
    let mut f = vec![id];
    f.extend_from_slice(data.as_bytes());
    Message::Binary(f.into())
}

#[tokio::test]
async fn session_survives_reconnect_with_scrollback() {
    let a = Agent::start();
    let (s, t) = a
        .post(
            "/terminals",
            json!({"cmd": ["sh"], "cols": 100, "rows": 30}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["success"], true);
    assert_eq!(t["id"], "1");
    assert_eq!(t["cols"], 100);
    assert_eq!(t["alive"], true);
    assert_eq!(t["command"], json!(["sh"]));

    // Wrong token: refused before the upgrade.
    let bad = tokio_tungstenite::connect_async(format!("ws://{}/ws?token=nope", a.addr)).await;
    assert!(bad.is_err());

    let mut ws = connect(&a).await;
    ws.send(frame(1, "echo mark-$((40+2))\n")).await.unwrap();
    output_until(&mut ws, 1, "mark-42").await;
    // The pty has the size we asked for.
    ws.send(frame(1, "stty size\n")).await.unwrap();
    output_until(&mut ws, 1, "30 100").await;
    drop(ws);

    // While nobody is connected the session goes on.
    let (s, v) = a
        .raw(Method::POST, "/terminals/1/input", "echo after-$((1+1))\n")
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&v));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Reconnect: the scrollback comes first, then live output.
    let mut ws = connect(&a).await;
    let replay = output_until(&mut ws, 1, "after-2").await;
    assert!(replay.contains("mark-42"), "replay: {replay:?}");

    // Resize over the socket, as the client's resizeTerminal sends it.
    ws.send(Message::Text(
        json!({"channel": "terminal", "type": "resize", "id": "1", "cols": 120, "rows": 40})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    ws.send(frame(1, "stty size\n")).await.unwrap();
    output_until(&mut ws, 1, "40 120").await;
    let (_, info) = a.get("/terminals/1").await;
    assert_eq!(
        (info["cols"].clone(), info["rows"].clone()),
        (json!(120), json!(40))
    );

    // 0x0 is refused and changes nothing.
    let (s, v) = a
        .post("/terminals/1/resize", json!({"cols": 0, "rows": 0}))
        .await;
    assert_error(s, &v, 422, "validation_error");
    let (_, info) = a.get("/terminals/1").await;
    assert_eq!(info["cols"], 120);

    let (s, sb) = a.get("/terminals/1/scrollback").await;
    assert_eq!(s, StatusCode::OK);
    let text = base64::engine::general_purpose::STANDARD
        .decode(sb["scrollback"].as_str().unwrap())
        .unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("mark-42") && text.contains("after-2"));
    assert_eq!(sb["alive"], true);
    assert_eq!(sb["size"].as_u64().unwrap() as usize, text.len());
    let (_, tail) = a.get("/terminals/1/scrollback?bytes=5").await;
    assert_eq!(tail["size"], 5);

    // A second terminal's output carries its own id.
    let (_, t2) = a.post("/terminals", json!({"cmd": ["sh"]})).await;
    assert_eq!(t2["id"], "2");
    let (_, list) = a.get("/terminals").await;
    assert_eq!(list["terminals"].as_array().unwrap().len(), 2);
    let (s, _) = a.json(Method::DELETE, "/terminals/2", None).await;
    assert_eq!(s, StatusCode::OK);

    // Exit: an exit message, and the session reports it.
    ws.send(frame(1, "exit 3\n")).await.unwrap();
    let exit = loop {
        let m = next_text(&mut ws).await;
        // (Terminal 2, closed above, may report its own end first.)
        if m["type"] == "exit" && m["id"] == "1" {
            break m;
        }
    };
    assert_eq!(
        exit,
        json!({"channel": "terminal", "type": "exit", "id": "1", "code": 3})
    );
    let (_, info) = a.get("/terminals/1").await;
    assert_eq!(info["alive"], false);
    assert_eq!(info["exit_code"], 3);

    let (s, _) = a.json(Method::DELETE, "/terminals/1", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = a.get("/terminals/1").await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = a.raw(Method::POST, "/terminals/9/input", "x").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&v));
}

#[tokio::test]
async fn a_new_connection_replaces_the_old_one_and_bad_input_is_refused() {
    let a = Agent::start();
    let mut first = connect(&a).await;
    let _second = connect(&a).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match first.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the first connection was not closed");

    let (s, v) = a
        .post("/terminals", json!({"cmd": ["sh"], "cols": 0, "rows": 0}))
        .await;
    assert_error(s, &v, 422, "validation_error");
    let (s, v) = a
        .post("/terminals", json!({"cmd": ["/no/such/shell"]}))
        .await;
    assert_eq!(s.as_u16(), 422, "{v}");
    let (_, list) = a.get("/terminals").await;
    assert_eq!(list["terminals"], json!([]));
}
