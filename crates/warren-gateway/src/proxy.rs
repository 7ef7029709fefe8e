//! Forwarding runtime API requests to the workspace's agent.

use crate::tokens::{GatewayKeys, TokenError};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::TryStreamExt;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use warren_protocol::runtime::{ErrorBody, API_PORT};
use warren_state::{ObservedState, Store};

#[derive(Clone)]
pub struct GatewayState {
    pub keys: GatewayKeys,
    pub store: Store,
    http: reqwest::Client,
}

impl GatewayState {
    pub fn new(keys: GatewayKeys, store: Store) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            // No idle connections: a workspace's address outlives its VM (stop/start,
            // restart), and a pooled connection to the previous VM fails the next
            // request. Connecting to a guest on the same host costs little.
            .pool_max_idle_per_host(0)
            .build()?;
        Ok(GatewayState { keys, store, http })
    }
}

/// Every path goes to [`forward`].
pub fn router(state: GatewayState) -> Router {
    Router::new().fallback(forward).with_state(Arc::new(state))
}

struct GwError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl GwError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        GwError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for GwError {
    fn into_response(self) -> Response {
        let mut body =
            serde_json::to_value(ErrorBody::new(self.code, self.message)).unwrap_or_default();
        body["request_id"] = serde_json::Value::String(request_id());
        (self.status, axum::Json(body)).into_response()
    }
}

fn request_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("req_{}", hex::encode(b))
}

/// Bodies up to this size are buffered so a refused connection can be retried.
const MAX_RETRY_BODY: usize = 1 << 20;

/// Hop-by-hop headers (RFC 9110 7.6.1) and the ones we replace.
fn skip_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "authorization"
    )
}

/// The token from `Authorization: Bearer` or the `token` query parameter.
fn bearer(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(t.trim().to_string());
        }
    }
    let raw = query?.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    Some(percent_decode(raw))
}

/// `%XX` escapes decoded (a JWT needs none, but clients may escape anyway).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string without the gateway's own `token` parameter.
fn upstream_query(query: Option<&str>) -> String {
    let Some(q) = query else {
        return String::new();
    };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("token="))
        .collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    }
}

async fn forward(State(st): State<Arc<GatewayState>>, req: Request) -> Response {
    match forward_inner(&st, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Does the workspace's config turn sleeping on idle on (`idle.suspend_after` > 0)?
fn sleeps_on_idle(config: &serde_json::Value) -> bool {
    config
        .get("idle")
        .and_then(|i| i.get("suspend_after"))
        .and_then(serde_json::Value::as_u64)
        .is_some_and(|s| s > 0)
}

/// Ask for the workspace to run again (the control plane's idle loop thaws it) and
/// wait until it does.
async fn wake(st: &GatewayState, id: &str) -> Result<warren_state::Workspace, GwError> {
    let err = |e: warren_state::StateError| {
        GwError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            e.to_string(),
        )
    };
    st.store
        .set_desired(id, warren_state::DesiredState::Running, false)
        .await
        .map_err(err)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(w) = st.store.workspace(id).await.map_err(err)? {
            if w.observed_state == ObservedState::Running && w.agent_token.is_some() {
                return Ok(w);
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(GwError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "waking",
                format!("workspace {id} is waking from sleep; retry shortly"),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn forward_inner(st: &GatewayState, req: Request) -> Result<Response, GwError> {
    let query = req.uri().query().map(str::to_string);
    let token = bearer(req.headers(), query.as_deref()).ok_or_else(|| {
        GwError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing gateway token: send Authorization: Bearer <token> from runtime-api-access",
        )
    })?;
    let claims = st.keys.verify(&token).map_err(|e| match e {
        TokenError::Expired => GwError::new(
            StatusCode::UNAUTHORIZED,
            "token_expired",
            "the gateway token has expired: fetch a new one from runtime-api-access/token",
        ),
        other => GwError::new(StatusCode::UNAUTHORIZED, "unauthorized", other.to_string()),
    })?;
    let span = tracing::info_span!("gateway", workspace_id = %claims.sub);
    async move {
        let ws = st
            .store
            .workspace(&claims.sub)
            .await
            .map_err(|e| GwError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))?
            .ok_or_else(|| {
                GwError::new(StatusCode::NOT_FOUND, "not_found", format!("workspace {} does not exist", claims.sub))
            })?;
        if !ws.api_access_enabled || ws.gateway_token_gen != claims.gen {
            return Err(GwError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this gateway token was revoked (runtime API access disabled or token rotated)",
            ));
        }
        // Asleep on idle (frozen to disk by its policy): this request wakes it.
        let ws = if ws.observed_state == ObservedState::Paused && sleeps_on_idle(&ws.config) {
            wake(st, &ws.id).await?
        } else {
            ws
        };
        let (Some(ip), Some(agent_token)) = (ws.internal_ip.as_deref(), ws.agent_token.as_deref())
        else {
            return Err(not_running(&ws.id, ws.observed_state));
        };
        if ws.observed_state != ObservedState::Running {
            return Err(not_running(&ws.id, ws.observed_state));
        }
        let url = format!(
            "http://{ip}:{API_PORT}{}{}",
            req.uri().path(),
            upstream_query(req.uri().query())
        );
        if crate::tunnel::is_upgrade(&req) {
            let pq = format!("{}{}", req.uri().path(), upstream_query(req.uri().query()));
            return crate::tunnel::tunnel(req, ip, API_PORT, agent_token, &pq)
                .await
                .map_err(|e| GwError::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", e.to_string()));
        }
        let (parts, body) = req.into_parts();
        let request = |body: reqwest::Body| {
            let mut out = st
                .http
                .request(parts.method.clone(), &url)
                .bearer_auth(agent_token);
            for (k, v) in parts.headers.iter() {
                if !skip_header(k) {
                    out = out.header(k, v);
                }
            }
            out.body(body)
        };
        // Small bodies (JSON calls) are kept so a connection the guest refused can be
        // tried again: right after a start the first connection to a fresh tap can
        // fail. Nothing of the request reached the agent then, so a retry is safe.
        // Large or unsized bodies (uploads) stream through once.
        let small = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n <= MAX_RETRY_BODY)
            || (parts.headers.get(header::CONTENT_LENGTH).is_none()
                && parts.headers.get(header::TRANSFER_ENCODING).is_none());
        let sent = if small {
            let bytes = axum::body::to_bytes(body, MAX_RETRY_BODY).await.map_err(|e| {
                GwError::new(StatusCode::BAD_REQUEST, "bad_request", format!("reading the body: {e}"))
            })?;
            let mut attempt = 0;
            loop {
                match request(reqwest::Body::from(bytes.clone())).send().await {
                    Err(e) if e.is_connect() && attempt < 10 => {
                        attempt += 1;
                        tracing::debug!(attempt, error = %e, "agent refused the connection; retrying");
                        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    }
                    other => break other,
                }
            }
        } else {
            request(reqwest::Body::wrap_stream(body.into_data_stream()))
                .send()
                .await
        };
        let resp = sent.map_err(|e| {
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why.push_str(&format!(": {s}"));
                src = s.source();
            }
            tracing::warn!(error = %why, "upstream request failed");
            GwError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                format!("the workspace's runtime API did not answer: {why}"),
            )
        })?;
        tracing::debug!(method = %parts.method, path = parts.uri.path(), status = %resp.status(), "forwarded");
        let mut builder = Response::builder().status(resp.status().as_u16());
        for (k, v) in resp.headers().iter() {
            if !skip_header(k) {
                builder = builder.header(k, v);
            }
        }
        // SSE through proxies in front of us must not be buffered either.
        if resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
        {
            builder = builder.header("x-accel-buffering", HeaderValue::from_static("no"));
        }
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        builder
            .body(Body::from_stream(stream))
            .map_err(|e| GwError::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", e.to_string()))
    }
    .instrument(span)
    .await
}

fn not_running(id: &str, state: ObservedState) -> GwError {
    GwError::new(
        StatusCode::CONFLICT,
        "workspace_not_running",
        format!("workspace {id} is {state}: start it first"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_header_or_query_and_query_is_cleaned() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h, Some("a=1&token=abc")), Some("abc".into()));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(bearer(&h, Some("token=abc")), Some("xyz".into()));
        assert_eq!(bearer(&HeaderMap::new(), Some("a=1")), None);
        assert_eq!(
            bearer(&HeaderMap::new(), Some("token=a%2Eb")),
            Some("a.b".into())
        );
        assert_eq!(
            upstream_query(Some("path=%2Fa&token=abc&x=1")),
            "?path=%2Fa&x=1"
        );
        assert_eq!(upstream_query(Some("token=abc")), "");
        assert_eq!(upstream_query(None), "");
    }
}
