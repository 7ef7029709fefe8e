//! The HTTP routes. Paths, methods and bodies follow the `oblien` client (v2.4.0).

mod access;
mod edge;
mod fork;
mod idle;
mod info;
mod lifecycle;
mod log_stream;
mod network;
mod power;
mod resources;
mod snapshots;
mod stats;
pub mod unimplemented;
mod workloads;
mod workspaces;

use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::Bytes;
use axum::routing::{get, post, put};
use axum::Router;
use serde_json::Value;
use warren_state::Workspace;

/// Per-workload actions forwarded to the agent: (method, path after the workload id).
pub const WORKLOAD_ACTIONS: &[(&str, &str)] = &[
    ("POST", "start"),
    ("POST", "stop"),
    ("GET", "status"),
    ("GET", "logs"),
    ("GET", "logs/stream"),
    ("GET", "stats"),
    ("GET", "stats/stream"),
];

pub fn router(state: AppState) -> Router {
    let r = Router::new()
        .route("/health", get(info::health))
        .route("/metrics", get(crate::metrics::handler))
        .route("/openapi.json", get(info::openapi))
        .route("/workspace", get(workspaces::list).post(workspaces::create))
        .route("/workspace/quota", get(info::quota))
        .route("/workspace/images", get(info::images))
        .route(
            "/workspace/{id}",
            get(workspaces::get)
                .put(workspaces::update)
                .delete(workspaces::delete),
        )
        .route(
            "/workspace/{id}/provisioning/retry",
            post(workspaces::retry),
        )
        .route("/workspace/{id}/details", get(info::details))
        .route("/workspace/{id}/info", get(info::info))
        .route("/workspace/{id}/config", get(info::config))
        .route("/workspace/{id}/stats", get(stats::stats))
        .route("/workspace/{id}/stats/stream", get(stats::stream))
        .route("/workspace/{id}/start", post(power::start))
        .route("/workspace/{id}/stop", post(power::stop))
        .route("/workspace/{id}/restart", post(power::restart))
        .route("/workspace/{id}/pause", post(power::pause))
        .route("/workspace/{id}/resume", post(power::resume))
        .route(
            "/workspace/{id}/snapshot",
            post(snapshots::snapshot).delete(snapshots::delete),
        )
        .route("/workspace/{id}/restore", post(snapshots::restore))
        .route("/workspace/{id}/fork", post(fork::fork))
        .route(
            "/workspace/{id}/archives",
            get(snapshots::archive_list)
                .post(snapshots::archive_create)
                .delete(snapshots::archive_delete_all),
        )
        .route(
            "/workspace/{id}/archives/{version}",
            get(snapshots::archive_get).delete(snapshots::archive_delete),
        )
        .route("/workspace/{id}/ping", post(lifecycle::ping))
        .route(
            "/workspace/{id}/lifecycle",
            get(lifecycle::get).delete(workspaces::delete),
        )
        .route(
            "/workspace/{id}/lifecycle/permanent",
            post(lifecycle::permanent),
        )
        .route(
            "/workspace/{id}/lifecycle/temporary",
            post(lifecycle::temporary),
        )
        .route("/workspace/{id}/lifecycle/ttl", put(lifecycle::ttl))
        .route("/workspace/{id}/lifecycle/idle", put(idle::set))
        .route(
            "/workspace/{id}/metadata",
            get(info::metadata_get)
                .put(info::metadata_put)
                .patch(info::metadata_patch),
        )
        .route(
            "/workspace/{id}/network",
            get(network::get).patch(network::update),
        )
        .route("/workspace/{id}/network/ip", post(network::outbound_ip))
        .route(
            "/workspace/{id}/resources",
            get(resources::get)
                .put(resources::update)
                .patch(resources::update),
        )
        .route("/workspace/{id}/logs", get(info::logs))
        .route("/workspace/{id}/logs/list", get(info::logs_list))
        .route("/workspace/{id}/logs/file/{name}", get(info::logs_file))
        .route("/workspace/{id}/logs/stream/boot", get(log_stream::boot))
        .route("/workspace/{id}/logs/stream/cmd", get(log_stream::cmd))
        .route("/workspace/{id}/runtime-api-access", get(access::status))
        .route(
            "/workspace/{id}/runtime-api-access/enable",
            post(access::enable),
        )
        .route(
            "/workspace/{id}/runtime-api-access/disable",
            post(access::disable),
        )
        .route(
            "/workspace/{id}/runtime-api-access/token",
            get(access::get_token).post(access::rotate_token),
        )
        .route(
            "/workspace/{id}/runtime-api-access/token/raw",
            get(access::raw_token),
        );
    let r = r
        .route(
            "/workspace/{id}/workloads",
            get(workloads::collection)
                .post(workloads::collection)
                .delete(workloads::collection),
        )
        .route(
            "/workspace/{id}/workloads/stats/stream",
            get(workloads::all_stats),
        )
        .route(
            "/workspace/{id}/workloads/{wid}",
            get(workloads::item)
                .put(workloads::item)
                .patch(workloads::item)
                .delete(workloads::item),
        );
    let r = WORKLOAD_ACTIONS.iter().fold(r, |r, (m, action)| {
        let path = format!("/workspace/{{id}}/workloads/{{wid}}/{action}");
        let h = if *m == "POST" {
            post(workloads::item)
        } else {
            get(workloads::item)
        };
        r.route(&path, h)
    });
    let r = r
        .route("/edge/ca.pem", get(edge::ca_pem))
        .route(
            "/workspace/{id}/public-access",
            get(edge::list_ports).post(edge::expose),
        )
        .route(
            "/workspace/{id}/public-access/{port}",
            axum::routing::patch(edge::update_port).delete(edge::revoke),
        )
        .route(
            "/workspace/{id}/domain",
            get(edge::domain_get)
                .post(edge::domain_connect)
                .delete(edge::domain_disconnect),
        )
        .route("/workspace/{id}/domain/check", post(edge::domain_check))
        .route("/workspace/{id}/domain/ssl/renew", post(edge::domain_renew))
        .route("/domain/verify", post(edge::domain_verify))
        .route("/workspace/{id}/ssh", get(edge::ssh_status))
        .route("/workspace/{id}/ssh/enable", post(edge::ssh_enable))
        .route("/workspace/{id}/ssh/disable", post(edge::ssh_disable))
        .route("/workspace/{id}/ssh/key", post(edge::ssh_key))
        .route("/workspace/{id}/ssh/password", post(edge::ssh_password));
    let r = unimplemented::add(r);
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A JSON body (empty: `{}`); malformed JSON is a 422 naming the body.
pub fn json_body(b: &Bytes) -> ApiResult<Value> {
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(b).map_err(|e| ApiError::invalid("body", format!("not valid JSON: {e}")))
}

/// The client's workspace by id or slug, or 404.
pub async fn find(st: &AppState, client_id: &str, id: &str) -> ApiResult<Workspace> {
    st.manager
        .store
        .client_workspace(client_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace", id))
}

/// A server-sent events response of `body`: not cached, not buffered by proxies.
pub(crate) fn sse(body: axum::body::Body) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    use axum::response::IntoResponse;
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
