//! PTY sessions: `pty-req` + `shell` (a login shell) or `exec` (a command), bridged to
//! an agent terminal.
//!
//! The gateway creates a terminal (`POST /terminals` with the PTY's size), then opens
//! its private stream (`GET /terminals/:id/stream`, a WebSocket: output as binary
//! frames, keys back as binary frames, resizes as text). The terminal's exit code
//! becomes the channel's exit status; when the SSH channel goes away first, the
//! terminal is closed (`DELETE /terminals/:id`, which ends its processes).

use super::Agent;
use futures_util::{SinkExt, StreamExt};
use russh::{ChannelId, CryptoVec};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::Message;

/// The shell a login runs: bash where the image has it, else sh; both as login shells
/// (profile files read).
pub const LOGIN_SHELL: &str = "if [ -x /bin/bash ]; then exec /bin/bash -l; fi; exec /bin/sh -l";

/// What the client asked for in `pty-req`.
#[derive(Debug, Clone)]
pub struct Pty {
    /// `TERM`, restricted to characters a terminal name has.
    pub term: String,
    pub cols: u16,
    pub rows: u16,
}

impl Pty {
    pub fn new(term: &str, cols: u32, rows: u32) -> Pty {
        let term: String = term
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
            .take(64)
            .collect();
        let (cols, rows) = dims(cols, rows);
        Pty {
            term: if term.is_empty() {
                "xterm".into()
            } else {
                term
            },
            cols,
            rows,
        }
    }
}

/// A size from the client: 0 (unknown) becomes 80x24, huge values are capped.
pub fn dims(cols: u32, rows: u32) -> (u16, u16) {
    let fit = |v: u32, default: u16| match v {
        0 => default,
        v => u16::try_from(v.min(1000)).unwrap_or(default),
    };
    (fit(cols, 80), fit(rows, 24))
}

/// Input for a running PTY session.
pub enum Input {
    Data(Vec<u8>),
    Resize(u16, u16),
}

/// The argv of a PTY session: a login shell, or `command` run by sh; with `TERM` set.
pub fn argv(pty: &Pty, command: Option<&str>) -> Vec<String> {
    let body = match command {
        Some(c) => c.to_string(),
        None => LOGIN_SHELL.to_string(),
    };
    vec![
        "/bin/sh".into(),
        "-c".into(),
        // `pty.term` holds only [A-Za-z0-9._+-]: safe unquoted.
        format!("export TERM={}; {body}", pty.term),
    ]
}

/// Run a PTY session; the exit status to report (None: the client left first).
pub async fn run(
    agent: &Agent,
    pty: &Pty,
    command: Option<String>,
    handle: &russh::server::Handle,
    channel: ChannelId,
    mut input: UnboundedReceiver<Input>,
) -> Option<u32> {
    let say = |msg: String| async move {
        let _ = handle
            .extended_data(
                channel,
                1,
                CryptoVec::from(format!("warren: {msg}\r\n").into_bytes()),
            )
            .await;
    };
    let body = json!({
        "cmd": argv(pty, command.as_deref()),
        "cols": pty.cols,
        "rows": pty.rows,
    });
    let created: Result<Value, String> = async {
        let r = agent
            .req(reqwest::Method::POST, "/terminals")
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("the agent is unreachable: {e}"))?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "the agent refused the terminal: {}",
                v["message"].as_str().unwrap_or("")
            ));
        }
        Ok(v)
    }
    .await;
    let id = match created.as_ref().map(|v| v["id"].as_str()) {
        Ok(Some(id)) => id.to_string(),
        Ok(None) => {
            say("the agent answered no terminal id".into()).await;
            return Some(255);
        }
        Err(e) => {
            say(e.clone()).await;
            return Some(255);
        }
    };
    tracing::debug!(terminal = %id, "pty session");
    let code = match agent.websocket(&format!("/terminals/{id}/stream")).await {
        Ok(ws) => bridge(ws, handle, channel, &mut input).await,
        Err(e) => {
            say(e).await;
            Some(255)
        }
    };
    // Done either way: closing ends what still runs on it and frees its id.
    let _ = agent
        .req(reqwest::Method::DELETE, &format!("/terminals/{id}"))
        .send()
        .await;
    code
}

async fn bridge(
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    handle: &russh::server::Handle,
    channel: ChannelId,
    input: &mut UnboundedReceiver<Input>,
) -> Option<u32> {
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if handle.data(channel, CryptoVec::from(b.to_vec())).await.is_err() {
                        return None;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v["type"] == "exit" {
                        let code = v["code"].as_i64().unwrap_or(255);
                        return Some(u32::try_from(code).unwrap_or(255));
                    }
                }
                Some(Ok(_)) => {}
                // The stream ended without an exit: the agent went away.
                Some(Err(_)) | None => return Some(255),
            },
            i = input.recv() => match i {
                Some(Input::Data(d)) => {
                    if sink.send(Message::Binary(d.into())).await.is_err() {
                        return Some(255);
                    }
                }
                Some(Input::Resize(cols, rows)) => {
                    let msg = json!({"type": "resize", "cols": cols, "rows": rows}).to_string();
                    let _ = sink.send(Message::Text(msg.into())).await;
                }
                None => {
                    let _ = sink.close().await;
                    return None;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_requests() {
        let p = Pty::new("xterm-256color; rm -rf /", 0, 100_000);
        assert_eq!(p.term, "xterm-256colorrm-rf");
        assert_eq!((p.cols, p.rows), (80, 1000));
        assert_eq!(Pty::new("", 120, 40).term, "xterm");
        let a = argv(&Pty::new("vt100", 80, 24), Some("echo hi"));
        assert_eq!(a[2], "export TERM=vt100; echo hi");
        assert!(argv(&p, None)[2].ends_with(LOGIN_SHELL));
    }
}
