//! Local port forwarding (`ssh -L LOCAL:HOST:PORT`): each `direct-tcpip` channel
//! becomes a TCP connection made by the agent inside the workspace (`GET /tunnel`, a
//! WebSocket carrying the bytes). Only the workspace itself is a destination:
//! `localhost`, a loopback address or its own internal IP; anything else is refused
//! before the channel opens.

use super::Agent;
use futures_util::{SinkExt, StreamExt};
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use std::net::IpAddr;
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
    let (mut from_client, to_client) = channel.split();
    // Client -> workspace. Ends when the channel is closed (or the whole SSH
    // connection goes), which closes the WebSocket and so the agent's connection.
    let up = async move {
        loop {
            match from_client.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    if sink
                        .send(Message::Binary(data.to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                // The client's end of input: half-close inside the workspace, and
                // keep the answer coming until the channel closes.
                Some(ChannelMsg::Eof) => {
                    let _ = sink.send(Message::Text("eof".into())).await;
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            }
        }
        let _ = sink.close().await;
    };
    // Workspace -> client. Ends when the workspace side closes: EOF and close to the
    // client.
    let down = async move {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Binary(b) if to_client.data(&b[..]).await.is_err() => return,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_client.eof().await;
        let _ = to_client.close().await;
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
