//! `/proxy`: HTTP (streaming, SSE) and WebSocket upgrades to a loopback port inside the
//! workspace, as the official client's `rt.proxy(port)` calls it.
//!
//! The target comes from the `X-Oblien-Proxy-Target` header, the `x_oblien_target`
//! query parameter (WebSockets: browsers cannot set headers), or the path form
//! `/proxy/<port>/<path>`; it is `port` or `host:port` with a loopback host only.
//! The runtime's credentials never reach the app: `Authorization`, the target header
//! and the `token`/`x_oblien_target` query parameters are removed. The upstream
//! connection is hyper's HTTP/1 client (hyper is already in the binary as the server),
//! so bodies stream both ways and an upgrade is spliced byte for byte.

use crate::error::ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpStream;
use tracing::Instrument;

pub const TARGET_HEADER: &str = "x-oblien-proxy-target";
const TARGET_QUERY: &str = "x_oblien_target";

#[derive(Debug, PartialEq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Path and query for the app, without our parameters.
    pub path: String,
}

fn parse_target(t: &str) -> Result<(String, u16), ApiError> {
    let t = t.trim();
    let (host, port) = match t.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (h.trim_matches(['[', ']']), p),
        _ => ("127.0.0.1", t),
    };
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::validation(format!("proxy target {t:?}: the port must be 1-65535"))
    })?;
    let host = match host {
        "127.0.0.1" | "localhost" => "127.0.0.1",
        "::1" => "::1",
        other => {
            return Err(ApiError::Forbidden(format!(
                "proxy target {other:?}: only loopback ports of the workspace are reachable"
            )))
        }
    };
    Ok((host.to_string(), port))
}

/// Where a `/proxy...` request goes.
pub fn resolve(headers: &HeaderMap, uri: &Uri) -> Result<Target, ApiError> {
    let rest = uri.path().strip_prefix("/proxy").unwrap_or("");
    let mut from_query = None;
    let kept: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| {
            if let Some(v) = kv
                .strip_prefix(TARGET_QUERY)
                .and_then(|r| r.strip_prefix('='))
            {
                from_query = Some(v.replace("%3A", ":").replace("%3a", ":"));
                return false;
            }
            !kv.starts_with("token=")
        })
        .collect();
    let explicit = headers
        .get(TARGET_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(from_query);
    let (target, path) = match explicit {
        Some(t) => (parse_target(&t)?, rest.to_string()),
        None => {
            // `/proxy/<port>/<path>`
            let trimmed = rest.strip_prefix('/').unwrap_or(rest);
            let (first, after) = trimmed.split_once('/').unwrap_or((trimmed, ""));
            if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ApiError::validation(
                    "no proxy target: send X-Oblien-Proxy-Target: <port>, ?x_oblien_target=<port>, or use /proxy/<port>/<path>",
                ));
            }
            (parse_target(first)?, format!("/{after}"))
        }
    };
    let mut path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    if !kept.is_empty() {
        path.push('?');
        path.push_str(&kept.join("&"));
    }
    Ok(Target {
        host: target.0,
        port: target.1,
        path,
    })
}

fn hop_by_hop(name: &HeaderName, keep_upgrade: bool) -> bool {
    match name.as_str() {
        "connection" | "upgrade" => !keep_upgrade,
        "keep-alive"
        | "proxy-connection"
        | "proxy-authorization"
        | "te"
        | "trailer"
        | "transfer-encoding" => true,
        _ => false,
    }
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

fn bad_gateway(msg: String) -> ApiError {
    ApiError::BadGateway(msg)
}

pub async fn handle(req: Request) -> Response {
    let t = match resolve(req.headers(), req.uri()) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let span = tracing::info_span!("proxy", port = t.port);
    match forward(req, t).instrument(span).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn forward(mut req: Request, t: Target) -> Result<Response, ApiError> {
    let addr = format!(
        "{}:{}",
        if t.host == "::1" { "[::1]" } else { &t.host },
        t.port
    );
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr))
        .await
        .map_err(|_| bad_gateway(format!("connecting to {addr} timed out")))?
        .map_err(|e| bad_gateway(format!("nothing answers on {addr} in the workspace: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad_gateway(format!("{addr}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream connection: {e}");
        }
    });

    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut out = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(&t.path);
    for (k, v) in &parts.headers {
        if k == header::AUTHORIZATION || k == header::HOST || k.as_str() == TARGET_HEADER {
            continue;
        }
        if hop_by_hop(k, upgrade) {
            continue;
        }
        out = out.header(k, v);
    }
    out = out.header(header::HOST, format!("localhost:{}", t.port));
    let up_req = out
        .body(body)
        .map_err(|e| ApiError::validation(format!("cannot forward this request: {e}")))?;
    let mut resp = sender
        .send_request(up_req)
        .await
        .map_err(|e| bad_gateway(format!("{addr}: {e}")))?;
    tracing::debug!(method = %parts.method, path = %t.path, status = %resp.status(), "proxied");

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(bad_gateway("the app switched protocols unasked".into()));
        };
        let app_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(
            async move {
                let (Ok(client), Ok(app)) = (client_upgrade.await, app_upgrade.await) else {
                    tracing::debug!("upgrade not completed");
                    return;
                };
                let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut app).await {
                    tracing::debug!("upgraded connection ended: {e}");
                }
            }
            .in_current_span(),
        );
        let mut r = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (k, v) in resp.headers() {
            r = r.header(k, v);
        }
        return r
            .body(Body::empty())
            .map_err(|e| bad_gateway(e.to_string()));
    }

    let (mut p, incoming) = resp.into_parts();
    let names: Vec<HeaderName> = p.headers.keys().cloned().collect();
    for k in names {
        if hop_by_hop(&k, false) {
            p.headers.remove(&k);
        }
    }
    if p.headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        p.headers
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    Ok(Response::from_parts(p, Body::new(incoming)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn targets_and_cleaned_paths() {
        let mut h = HeaderMap::new();
        h.insert(TARGET_HEADER, HeaderValue::from_static("3000"));
        let t = resolve(&h, &uri("/proxy/api/users?limit=10&token=secret")).unwrap();
        assert_eq!(
            t,
            Target {
                host: "127.0.0.1".into(),
                port: 3000,
                path: "/api/users?limit=10".into()
            }
        );
        let t = resolve(
            &HeaderMap::new(),
            &uri("/proxy/socket?x_oblien_target=8080&token=x"),
        )
        .unwrap();
        assert_eq!((t.port, t.path.as_str()), (8080, "/socket"));
        let t = resolve(&HeaderMap::new(), &uri("/proxy/5173/src/main.ts?v=1")).unwrap();
        assert_eq!((t.port, t.path.as_str()), (5173, "/src/main.ts?v=1"));
        let t = resolve(&HeaderMap::new(), &uri("/proxy/5173")).unwrap();
        assert_eq!(t.path, "/");
        let t = resolve(
            &HeaderMap::new(),
            &uri("/proxy?x_oblien_target=localhost%3A9000"),
        )
        .unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9000));
        assert_eq!(
            resolve(
                &HeaderMap::new(),
                &uri("/proxy/x?x_oblien_target=10.0.0.1:80")
            )
            .unwrap_err()
            .code(),
            "forbidden"
        );
        assert_eq!(
            resolve(&HeaderMap::new(), &uri("/proxy/app"))
                .unwrap_err()
                .code(),
            "validation_error"
        );
        assert!(resolve(&HeaderMap::new(), &uri("/proxy/70000/")).is_err());
    }
}
