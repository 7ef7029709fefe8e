//! Forwarding protocol upgrades (WebSocket: the runtime's `/ws`, and WebSockets of apps
//! behind the agent's `/proxy`).
//!
//! reqwest cannot hand over an upgraded connection, so an upgrade request is written to
//! the agent by hand over a fresh TCP connection; when the agent answers `101`, the
//! client's connection is taken over (`hyper::upgrade::on`) and bytes are copied both
//! ways until either side closes. Anything else the agent answers is passed back as is.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

/// Largest response head accepted from the agent.
const MAX_HEAD: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("connecting to the agent: {0}")]
    Connect(std::io::Error),
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent's answer was not HTTP/1.1: {0}")]
    BadResponse(String),
}

/// True for `Connection: upgrade` + `Upgrade: ...` requests.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    headers.contains_key(header::UPGRADE) && has(header::CONNECTION, "upgrade")
}

/// Headers not copied to the agent: hop-by-hop ones (the upgrade pair is written
/// explicitly), and the client's credentials.
fn skip(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "authorization"
            | "content-length"
    )
}

fn request_head(
    req: &Request,
    host: &str,
    path_and_query: &str,
    agent_token: &str,
) -> Result<Vec<u8>, UpgradeError> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("websocket");
    let mut head = format!(
        "{} {path_and_query} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {agent_token}\r\nconnection: upgrade\r\nupgrade: {upgrade}\r\n",
        req.method()
    )
    .into_bytes();
    for (k, v) in req.headers() {
        if skip(k) {
            continue;
        }
        if v.as_bytes().iter().any(|b| *b == b'\r' || *b == b'\n') {
            return Err(UpgradeError::BadResponse(
                "header value with a line break".into(),
            ));
        }
        head.extend_from_slice(k.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(head)
}

/// Parse a response head: status and headers.
fn parse_head(head: &[u8]) -> Result<(StatusCode, Vec<(HeaderName, HeaderValue)>), UpgradeError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| UpgradeError::BadResponse("response head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let code = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| UpgradeError::BadResponse(format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| UpgradeError::BadResponse(format!("header line {line:?}")))?;
        let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.trim().as_bytes()),
            HeaderValue::from_str(v.trim()),
        ) else {
            return Err(UpgradeError::BadResponse(format!("header line {line:?}")));
        };
        headers.push((k, v));
    }
    Ok((code, headers))
}

/// Forward an upgrade request to `addr` (`ip:port`) and splice the connections.
pub async fn forward(
    mut req: Request,
    addr: &str,
    path_and_query: &str,
    agent_token: &str,
) -> Result<Response, UpgradeError> {
    let head = request_head(&req, addr, path_and_query, agent_token)?;
    let mut upstream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| UpgradeError::Connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(UpgradeError::Connect)?;
    upstream.write_all(&head).await?;

    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Err(UpgradeError::BadResponse("response head too large".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = upstream.read(&mut chunk).await?;
        if n == 0 {
            return Err(UpgradeError::BadResponse(
                "connection closed before the answer".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (status, headers) = parse_head(&buf[..end])?;
    let rest = buf.split_off(end + 4);

    let mut builder = Response::builder().status(status);
    for (k, v) in &headers {
        if !matches!(k.as_str(), "transfer-encoding" | "keep-alive") {
            builder = builder.header(k, v);
        }
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // Not upgraded (an error from the agent, say): pass the answer through. Such
        // answers are small JSON bodies with a length.
        let len = headers
            .iter()
            .find(|(k, _)| *k == header::CONTENT_LENGTH)
            .and_then(|(_, v)| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_HEAD);
        let mut body = rest;
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = upstream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
        return builder
            .body(Body::from(body))
            .map_err(|e| UpgradeError::BadResponse(e.to_string()));
    }

    let on_upgrade = hyper::upgrade::on(&mut req);
    let span = tracing::info_span!("upgraded", path = %path_and_query);
    tokio::spawn(
        async move {
            let client = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!("client upgrade failed: {e}");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            if !rest.is_empty() && client.write_all(&rest).await.is_err() {
                return;
            }
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                Err(e) => tracing::debug!("upgraded connection ended: {e}"),
            }
        }
        .instrument(span),
    );
    builder
        .body(Body::empty())
        .map_err(|e| UpgradeError::BadResponse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_upgrades_and_parses_heads() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(&h));
        let (s, hs) = parse_head(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: abc",
        )
        .unwrap();
        assert_eq!(s, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(hs.len(), 2);
        assert!(parse_head(b"SSH-2.0").is_err());
    }
}
