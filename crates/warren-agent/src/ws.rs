//! The runtime WebSocket, `GET /ws`: terminal I/O and events, multiplexed.
//!
//! As the official client speaks it (`dist/runtime/ws.js`):
//! * binary frames are `[terminal id byte][raw bytes]` both ways (input to, output
//!   from a terminal);
//! * text frames are JSON with a `channel`: `{"channel":"terminal","type":"resize",
//!   "id","cols","rows"}` from the client, `{"channel":"terminal","type":"exit","id",
//!   "code"}` from us; watcher events use `"channel":"watcher"`.
//!
//! One connection is active at a time: a new one replaces (closes) the previous one.
//! Every connection first gets each terminal's scrollback, then its live output, so a
//! client that reconnects sees what it missed (as far as the scrollback reaches).

use crate::api::AppState;
use crate::term::Session;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// Largest binary frame we send (terminal output is split).
const MAX_FRAME: usize = 32 << 10;

/// Events for the open connection from other parts of the agent (watchers).
pub type Broadcast = tokio::sync::broadcast::Sender<Value>;

/// Which connection is the current one.
#[derive(Clone)]
pub struct Connections {
    current: Arc<watch::Sender<u64>>,
    /// Text events for whichever connection is open.
    pub events: Broadcast,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            current: Arc::new(watch::Sender::new(0)),
            events: tokio::sync::broadcast::channel(1024).0,
        }
    }
}

pub async fn upgrade(State(st): State<AppState>, ws: WebSocketUpgrade) -> Response {
    // Take the connection's number now, before the 101 goes out: numbered in the
    // upgrade callback (which runs once the 101 is flushed), a client's second
    // connection could be numbered before its first and be the one replaced.
    let conn = st.conns.current.send_modify_return(|n| {
        *n += 1;
        *n
    });
    ws.on_upgrade(move |socket| serve(st, socket, conn).instrument(tracing::info_span!("ws", conn)))
}

trait SendModifyReturn {
    fn send_modify_return(&self, f: impl FnOnce(&mut u64) -> u64) -> u64;
}

impl SendModifyReturn for watch::Sender<u64> {
    fn send_modify_return(&self, f: impl FnOnce(&mut u64) -> u64) -> u64 {
        let mut out = 0;
        self.send_modify(|v| out = f(v));
        out
    }
}

/// Forward one terminal's scrollback and live output, then its exit.
async fn forward_terminal(s: Arc<Session>, out: mpsc::Sender<Message>) {
    let mut pos = 0u64;
    loop {
        let chunks = tokio::select! {
            c = s.output.next(&mut pos) => c,
            _ = out.closed() => return,
        };
        let Some(chunks) = chunks else { break };
        for chunk in chunks {
            for part in chunk.chunks(MAX_FRAME) {
                let mut frame = Vec::with_capacity(part.len() + 1);
                frame.push(s.id);
                frame.extend_from_slice(part);
                if out.send(Message::Binary(frame.into())).await.is_err() {
                    return;
                }
            }
        }
    }
    if let Some(code) = s.exit_code() {
        let msg =
            json!({"channel": "terminal", "type": "exit", "id": s.id.to_string(), "code": code});
        let _ = out.send(Message::Text(msg.to_string().into())).await;
    }
}

/// A terminal id from JSON: a number or a numeric string.
fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn error_msg(message: String) -> Message {
    Message::Text(
        json!({"channel": "error", "type": "error", "message": message})
            .to_string()
            .into(),
    )
}

/// Handle one text frame from the client; an answer to send back, if any.
async fn on_text(st: &AppState, text: &str) -> Option<Message> {
    let Ok(msg) = serde_json::from_str::<Value>(text) else {
        return Some(error_msg("text frames must be JSON".into()));
    };
    let channel = msg
        .get("channel")
        .and_then(Value::as_str)
        .unwrap_or("terminal");
    let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
    match (channel, kind) {
        ("terminal", "resize") => {
            let id = msg.get("id").and_then(id_of).unwrap_or_default();
            let dim = |k: &str| {
                msg.get(k)
                    .and_then(Value::as_u64)
                    .and_then(|v| u16::try_from(v).ok())
            };
            let (Some(cols), Some(rows)) = (dim("cols"), dim("rows")) else {
                return Some(error_msg("resize needs numeric cols and rows".into()));
            };
            match st.terminals.get(&id).and_then(|s| s.resize(cols, rows)) {
                Ok(()) => None,
                Err(e) => Some(error_msg(e.to_string())),
            }
        }
        ("terminal", "input") => {
            let id = msg.get("id").and_then(id_of).unwrap_or_default();
            let data = msg.get("data").and_then(Value::as_str).unwrap_or("");
            match st.terminals.get(&id) {
                Ok(s) => s
                    .write(data.as_bytes())
                    .await
                    .err()
                    .map(|e| error_msg(e.to_string())),
                Err(e) => Some(error_msg(e.to_string())),
            }
        }
        ("ping", _) | (_, "ping") => Some(Message::Text(
            json!({"channel": "ping", "type": "pong"})
                .to_string()
                .into(),
        )),
        _ => Some(error_msg(format!(
            "unknown message: channel {channel:?} type {kind:?}"
        ))),
    }
}

async fn serve(st: AppState, socket: WebSocket, conn: u64) {
    tracing::info!("connected");
    let (mut sink, mut stream) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut added = st.terminals.subscribe();
    for s in st.terminals.list() {
        tokio::spawn(forward_terminal(s, out.clone()));
    }
    let mut events = st.conns.events.subscribe();
    let mut current = st.conns.current.subscribe();
    let replaced = async move {
        loop {
            if *current.borrow_and_update() != conn {
                return;
            }
            if current.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    tokio::pin!(replaced);
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Binary(b))) => {
                    let Some((&id, data)) = b.split_first() else { continue };
                    let r = match st.terminals.get(&id.to_string()) {
                        Ok(s) => s.write(data).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = r {
                        let _ = out.send(error_msg(e.to_string())).await;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if let Some(answer) = on_text(&st, t.as_str()).await {
                        let _ = out.send(answer).await;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            },
            s = added.recv() => match s {
                Ok(s) => { tokio::spawn(forward_terminal(s, out.clone())); }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => {}
            },
            ev = events.recv() => match ev {
                Ok(v) => { let _ = out.send(Message::Text(v.to_string().into())).await; }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let msg = json!({"channel": "watcher", "type": "overflow", "watcher_id": "",
                        "message": format!("{n} events were dropped: the connection was too slow")});
                    let _ = out.send(Message::Text(msg.to_string().into())).await;
                }
                Err(_) => {}
            },
            _ = &mut replaced => {
                tracing::info!("replaced by a newer connection");
                break;
            }
        }
    }
    // The writer ends with the close frame; its receiver goes with it, which ends
    // this connection's terminal forwarders too.
    let _ = out.try_send(Message::Close(None));
    drop(out);
    let abort = writer.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
    tracing::info!("disconnected");
}
