//! `/workspace/:id/workloads...`: managed workloads live in the workspace's agent
//! (which supervises them, keeps their logs and survives server restarts), so these
//! routes forward to the agent's `/workloads...` with the agent's token and stream the
//! answer back (SSE log and stats streams included).

use super::find;
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use std::sync::OnceLock;
use std::time::Duration;
use warren_protocol::runtime::API_PORT;
use warren_state::ObservedState;

/// A client without an overall timeout: log and stats streams last as long as the
/// caller reads them.
fn client() -> &'static reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default()
    })
}

async fn forward(
    st: &AppState,
    client_id: &str,
    id: &str,
    method: Method,
    agent_path: &str,
    query: Option<&str>,
    body: Bytes,
) -> ApiResult<Response> {
    let w = find(st, client_id, id).await?;
    let (Some(ip), Some(token)) = (w.internal_ip.as_deref(), w.agent_token.as_deref()) else {
        return Err(not_running(&w.id, w.observed_state));
    };
    if w.observed_state != ObservedState::Running {
        return Err(not_running(&w.id, w.observed_state));
    }
    let url = match query {
        Some(q) if !q.is_empty() => format!("http://{ip}:{API_PORT}{agent_path}?{q}"),
        _ => format!("http://{ip}:{API_PORT}{agent_path}"),
    };
    let mut req = client().request(method, &url).bearer_auth(token);
    if !body.is_empty() {
        req = req
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let resp = req.send().await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            format!("the workspace's agent did not answer: {e}"),
        )
    })?;
    let mut out = Response::builder().status(resp.status().as_u16());
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(v) = resp.headers().get(&name) {
            out = out.header(name, v);
        }
    }
    if resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        out = out.header("x-accel-buffering", HeaderValue::from_static("no"));
    }
    let stream = resp.bytes_stream();
    out.body(Body::from_stream(stream)).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            e.to_string(),
        )
    })
}

fn not_running(id: &str, state: ObservedState) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "workspace_not_running",
        format!("workspace {id} is {state}: workloads run inside it, start it first"),
    )
}

/// `/workspace/:id/workloads` (list, create, delete all).
pub async fn collection(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> ApiResult<Response> {
    forward(&st, &c.id, &id, method, "/workloads", uri.query(), body).await
}

/// `/workspace/:id/workloads/stats/stream`.
pub async fn all_stats(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    let path = "/workloads/stats/stream";
    forward(
        &st,
        &c.id,
        &id,
        Method::GET,
        path,
        uri.query(),
        Bytes::new(),
    )
    .await
}

/// `/workspace/:id/workloads/:wid[/action]`.
pub async fn item(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(p): Path<Vec<(String, String)>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> ApiResult<Response> {
    let get = |k: &str| {
        p.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (id, wid) = (get("id"), get("wid"));
    if wid.is_empty() || wid.contains('/') {
        return Err(ApiError::invalid(
            "workload",
            "a workload id or name is required",
        ));
    }
    // The action is the rest of the path after the workload id.
    let prefix = format!("/workspace/{id}/workloads/{wid}");
    let action = uri.path().strip_prefix(&prefix).unwrap_or("");
    let agent_path = format!("/workloads/{wid}{action}");
    forward(&st, &c.id, &id, method, &agent_path, uri.query(), body).await
}
