//! Local port forwarding (`ssh -L LOCAL:HOST:PORT`): each `direct-tcpip` channel
//! becomes a TCP connection made by the agent inside the workspace (`GET /tunnel`, a
//! WebSocket carrying the bytes). Only the workspace itself is a destination:
//! `localhost`, a loopback address or its own internal IP; anything else is refused
//! before the channel opens.

use super::Agent;
use futures_util::{SinkExt, StreamExt};
use russh::server::Msg;
use russh::Channel;
use std::net::IpAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Where the agent should connect for a `direct-tcpip` request to `host:port`, or None
/// when that is not the workspace.
pub fn target(agent: &Agent, host: &str, port: u32) -> Option<(String, u16)> {
    let port = u16::try_from(port).ok().filter(|p| *p > 0)?;
    let host = host.trim().trim_matches(['[', ']']);
    if host.eq_ignore_ascii_case("localhost") {
        return Some(("127.0.0.1".into(), port));
    }
    let ip: IpAddr = host.parse().ok()?;
    if ip.is_loopback() || host == agent.ip {
        return Some((ip.to_string(), port));
    }
    None
}

/// Carry one forwarded connection until both sides are done.
pub async fn tunnel(agent: Agent, host: String, port: u16, channel: Channel<Msg>) {
    let ws = match agent
        .websocket(&format!("/tunnel?host={host}&port={port}"))
        .await
    {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!(host, port, "port forward: {e}");
            let _ = channel.close().await;
            return;
        }
    };
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(channel.into_stream());
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => {
                    // The client's end of input: half-close inside the workspace.
                    let _ = sink.send(Message::Text("eof".into())).await;
                    // Keep the sink (and so the WebSocket) open for the answer.
                    return std::future::pending::<()>().await;
                }
                Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    while let Some(Ok(m)) = stream.next().await {
        match m {
            Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
            Message::Binary(_) => {}
            Message::Close(_) => break,
            _ => {}
        }
    }
    // The workspace side is done: EOF to the client, then the channel closes (the
    // stream's halves close it when dropped) and the client side stops too.
    let _ = wr.shutdown().await;
    up.abort();
}
