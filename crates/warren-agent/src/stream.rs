//! Private byte streams for the host's SSH gateway (crates/warren-edge/src/ssh), both
//! WebSockets:
//!
//! * `GET /terminals/:id/stream`: one terminal's output (everything since it started,
//!   then live) as binary frames, binary frames back as its input, text
//!   `{"type":"resize","cols","rows"}` to resize it; when it exits, a text
//!   `{"type":"exit","code"}` and a close. Unlike `/ws` (one client connection at a
//!   time, all terminals multiplexed), any number of these run side by side, so SSH
//!   sessions neither replace nor are replaced by the SDK's connection.
//! * `GET /tunnel?port=N[&host=H]`: a raw TCP connection to a port inside the
//!   workspace (`ssh -L`), binary frames both ways; a text frame `eof` from the client
//!   half-closes the connection (its end of input), a close frame from either side
//!   ends it. Only the loopback and the
//!   workspace's own addresses are reachable (checked by binding to the address: only a
//!   local address binds), so the tunnel cannot be used to reach other hosts.

use crate::api::{ApiQuery, AppState};
use crate::error::{ApiError, ApiResult};
use crate::term::Session;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest binary frame sent.
const MAX_FRAME: usize = 32 << 10;

pub async fn terminal(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let s = st.terminals.get(&id)?;
    Ok(ws.on_upgrade(move |socket| serve_terminal(s, socket)))
}

async fn serve_terminal(s: Arc<Session>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let out = s.clone();
    let writer = async move {
        let mut pos = 0u64;
        while let Some(chunks) = out.output.next(&mut pos).await {
            for chunk in chunks {
                for part in chunk.chunks(MAX_FRAME) {
                    if sink
                        .send(Message::Binary(part.to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let code = out.exit_code().unwrap_or(-1);
        let msg = json!({"type": "exit", "code": code}).to_string();
        let _ = sink.send(Message::Text(msg.into())).await;
        let _ = sink.close().await;
    };
    let reader = async move {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Binary(b) if s.write(&b).await.is_err() => break,
                Message::Binary(_) => {}
                Message::Text(t) => {
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                        continue;
                    };
                    let dim = |k: &str| {
                        v.get(k)
                            .and_then(Value::as_u64)
                            .and_then(|n| u16::try_from(n).ok())
                    };
                    if v.get("type").and_then(Value::as_str) == Some("resize") {
                        if let (Some(c), Some(r)) = (dim("cols"), dim("rows")) {
                            let _ = s.resize(c, r);
                        }
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        // The client went away: keep sending nothing more, but let the output side
        // finish on its own when the terminal exits.
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
}

#[derive(Debug, Deserialize)]
pub struct TunnelQuery {
    pub port: Option<String>,
    pub host: Option<String>,
}

/// The address a tunnel may connect to: loopback, or one of the workspace's own.
pub fn tunnel_target(host: Option<&str>, port: Option<&str>) -> ApiResult<(IpAddr, u16)> {
    let port = port
        .and_then(|p| p.trim().parse::<u16>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::validation("port must be 1-65535"))?;
    let ip = match host.map(str::trim).filter(|h| !h.is_empty()) {
        None | Some("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(h) => h
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .map_err(|_| ApiError::validation(format!("host {h:?} is not an IP address")))?,
    };
    let own = ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok();
    if !own || ip.is_unspecified() {
        return Err(ApiError::Forbidden(format!(
            "tunnel target {ip}: only the workspace's own addresses are reachable"
        )));
    }
    Ok((ip, port))
}

pub async fn tunnel(
    ApiQuery(q): ApiQuery<TunnelQuery>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let (ip, port) = tunnel_target(q.host.as_deref(), q.port.as_deref())?;
    // Connect before the upgrade, so a closed port is an HTTP error the caller can
    // report, not a WebSocket that closes at once.
    let tcp = tokio::net::TcpStream::connect((ip, port))
        .await
        .map_err(|e| ApiError::Unprocessable {
            code: "connect_failed",
            message: format!("connect to {ip}:{port} in the workspace: {e}"),
        })?;
    Ok(ws.on_upgrade(move |socket| splice(tcp, socket)))
}

async fn splice(tcp: tokio::net::TcpStream, socket: WebSocket) {
    let (mut rd, mut wr) = tcp.into_split();
    let (mut sink, mut stream) = socket.split();
    let up = async move {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    let down = async move {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => return,
                Message::Binary(_) => {}
                // The client finished sending (a WebSocket has no half-close): shut
                // down our write side and keep the answer coming.
                Message::Text(t) if t.as_str() == "eof" => {
                    let _ = wr.shutdown().await;
                }
                Message::Close(_) => return,
                _ => {}
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_own_addresses() {
        assert!(tunnel_target(None, Some("80")).is_ok());
        assert!(tunnel_target(Some("localhost"), Some("80")).is_ok());
        assert!(tunnel_target(Some("::1"), Some("80")).is_ok());
        assert!(tunnel_target(Some("127.0.0.1"), Some("0")).is_err());
        assert!(tunnel_target(Some("127.0.0.1"), None).is_err());
        assert!(tunnel_target(Some("0.0.0.0"), Some("80")).is_err());
        // TEST-NET-2 is never one of this machine's addresses.
        assert!(matches!(
            tunnel_target(Some("198.51.100.7"), Some("80")),
            Err(ApiError::Forbidden(_))
        ));
        assert!(tunnel_target(Some("example.org"), Some("80")).is_err());
    }
}
