//! WebSocket (and any HTTP/1.1 upgrade) through the gateway: the upgrade request is
//! sent to the agent with the agent's token; when the agent switches protocols, the
//! client's and the agent's connections are spliced together.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most a response head from the agent may take.
const MAX_HEAD: usize = 32 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("the workspace's runtime API did not answer: {0}")]
    Connect(String),
    #[error("the workspace's runtime API sent a bad response: {0}")]
    BadResponse(String),
}

/// Is this an upgrade request (`Connection: upgrade` + `Upgrade: ...`)?
pub fn is_upgrade(req: &Request) -> bool {
    let has = |name: &str, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has("connection", "upgrade") && req.headers().contains_key("upgrade")
}

/// Forward an upgrade request to `ip:port` and, on 101, splice the connections.
pub async fn tunnel(
    mut req: Request,
    ip: &str,
    port: u16,
    agent_token: &str,
    path_and_query: &str,
) -> Result<Response, TunnelError> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut upstream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect((ip, port)))
        .await
        .map_err(|_| TunnelError::Connect("connect timed out".into()))?
        .map_err(|e| TunnelError::Connect(e.to_string()))?;
    let mut head = format!(
        "{} {path_and_query} HTTP/1.1\r\nhost: {ip}:{port}\r\nauthorization: Bearer {agent_token}\r\n",
        req.method()
    );
    for (k, v) in req.headers() {
        if matches!(
            k.as_str(),
            "host" | "authorization" | "content-length" | "transfer-encoding"
        ) {
            continue;
        }
        if let Ok(v) = v.to_str() {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    upstream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| TunnelError::Connect(e.to_string()))?;

    // The response head, and whatever came after it in the same reads.
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(TunnelError::BadResponse("response head too large".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), upstream.read(&mut chunk))
            .await
            .map_err(|_| TunnelError::BadResponse("no answer to the upgrade".into()))?
            .map_err(|e| TunnelError::BadResponse(e.to_string()))?;
        if n == 0 {
            return Err(TunnelError::BadResponse("connection closed".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = buf[end..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| TunnelError::BadResponse("no status line".into()))?;
    let mut resp = Response::builder().status(status);
    let mut content_length = None;
    for l in lines.filter(|l| !l.is_empty()) {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse::<usize>().ok();
        }
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            resp = resp.header(k, v);
        }
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // The agent refused (e.g. 401/404): pass its answer on.
        let mut body = rest;
        if let Some(n) = content_length {
            while body.len() < n {
                let mut chunk = vec![0u8; n - body.len()];
                match upstream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => body.extend_from_slice(&chunk[..k]),
                }
            }
            body.truncate(n);
        }
        return resp
            .body(Body::from(body))
            .map_err(|e| TunnelError::BadResponse(e.to_string()));
    }
    tokio::spawn(async move {
        let client = match on_upgrade.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "the client did not complete the upgrade");
                return;
            }
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        if !rest.is_empty() && client.write_all(&rest).await.is_err() {
            return;
        }
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %e, "tunnel ended"),
        }
    });
    resp.body(Body::empty())
        .map_err(|e| TunnelError::BadResponse(e.to_string()))
}
