//! Read-mostly views: health, OpenAPI, quota, images, details, info, config, stats,
//! metadata, logs.

use super::{find, json_body};
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::model::workspace_view;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use warren_protocol::runtime::API_PORT;
use warren_state::ObservedState;

pub async fn health() -> Json<Value> {
    Json(json!({"success": true, "status": "ok"}))
}

pub async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

pub async fn quota(State(st): State<AppState>, Authed(c): Authed) -> ApiResult<Json<Value>> {
    let cap = &st.manager.config.capacity;
    let (n, cpus, mem, disk) = st.manager.store.usage(Some(&c.id)).await?;
    let (tn, _, tmem, tdisk) = st.manager.store.usage(None).await?;
    let l = st.manager.backend.limits();
    Ok(Json(json!({
        "success": true,
        "quota": {
            "max_workspaces": cap.max_workspaces_per_client,
            "max_cpus_per_workspace": l.max_cpus,
            "max_memory_mb_per_workspace": l.max_memory_mb,
            "max_disk_mb_per_workspace": l.max_disk_mb,
        },
        "usage": {"workspaces": n, "cpus": cpus, "memory_mb": mem, "disk_size_mb": disk},
        "server": {
            "max_workspaces": cap.max_workspaces,
            "max_memory_mb": cap.max_memory_mb,
            "max_disk_mb": cap.max_disk_mb,
            "workspaces": tn,
            "memory_mb": tmem,
            "disk_size_mb": tdisk,
        },
    })))
}

pub async fn images(
    State(st): State<AppState>,
    Authed(_): Authed,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let search = q.get("search").map(|s| s.to_lowercase());
    let category = q.get("category").filter(|c| *c != "all");
    let images: Vec<_> = st
        .manager
        .backend
        .images()
        .into_iter()
        .filter(|i| category.is_none_or(|c| &i.category == c))
        .filter(|i| {
            search.as_ref().is_none_or(|s| {
                [&i.id, &i.image, &i.label, &i.desc]
                    .iter()
                    .any(|f| f.to_lowercase().contains(s))
            })
        })
        .collect();
    let mut cats: Vec<String> = st
        .manager
        .backend
        .images()
        .into_iter()
        .map(|i| i.category)
        .collect();
    cats.sort();
    cats.dedup();
    Ok(Json(json!({
        "success": true,
        "images": images,
        "categories": cats.iter().map(|c| json!({"id": c, "label": c})).collect::<Vec<_>>(),
    })))
}

pub async fn details(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let metadata = st.manager.store.metadata(&w.id).await?;
    let ops = st.manager.store.operations(&w.id, 50).await?;
    Ok(Json(json!({
        "success": true,
        "workspace": workspace_view(&w),
        "metadata": metadata,
        "runtime_api_access": {"enabled": w.api_access_enabled},
        "operations": ops.iter().map(|o| json!({
            "at": o.at, "op": o.op, "outcome": o.outcome, "detail": o.detail,
        })).collect::<Vec<_>>(),
    })))
}

pub async fn info(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    Ok(Json(json!({
        "success": true,
        "id": w.id,
        "status": w.observed_state.as_str(),
        "is_running": w.observed_state == ObservedState::Running,
        "image": w.image,
        "internal_ip": w.internal_ip,
        "runtime_port": API_PORT,
        "resources": {"cpus": w.cpus, "memory_mb": w.memory_mb, "disk_size_mb": w.disk_size_mb},
        "started_at": w.started_at,
        "last_exit_code": w.last_exit_code,
        "vm": st.manager.backend.stats(&w.id),
    })))
}

pub async fn config(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    Ok(Json(json!({
        "success": true,
        "config": w.config,
        "image": w.image,
        "mode": w.mode,
        "resources": {"cpus": w.cpus, "memory_mb": w.memory_mb, "disk_size_mb": w.disk_size_mb},
    })))
}

pub async fn metadata_get(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let m = st.manager.store.metadata(&w.id).await?;
    Ok(Json(json!({"success": true, "metadata": m})))
}

fn metadata_of(body: &Bytes) -> ApiResult<BTreeMap<String, String>> {
    let b = json_body(body)?;
    let m = b
        .get("metadata")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::invalid("metadata", "must be an object of strings"))?;
    let mut out = BTreeMap::new();
    for (k, v) in m {
        if k.is_empty() || k.len() > 128 {
            return Err(ApiError::invalid(
                "metadata",
                format!("key {k:?} must be 1-128 characters"),
            ));
        }
        match v {
            Value::String(s) if s.len() <= 4096 => {
                out.insert(k.clone(), s.clone());
            }
            _ => {
                return Err(ApiError::invalid(
                    "metadata",
                    format!("{k}: values must be strings of at most 4096 bytes"),
                ))
            }
        }
    }
    Ok(out)
}

async fn metadata_set(
    st: AppState,
    client: &str,
    id: &str,
    body: Bytes,
    replace: bool,
) -> ApiResult<Json<Value>> {
    let values = metadata_of(&body)?;
    let w = find(&st, client, id).await?;
    let m = st
        .manager
        .store
        .set_metadata(&w.id, &values, replace)
        .await?;
    st.manager
        .log(Some(client), &w.id, "metadata", "ok", None)
        .await;
    Ok(Json(json!({"success": true, "metadata": m})))
}

pub async fn metadata_put(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    metadata_set(st, &c.id, &id, body, true).await
}

pub async fn metadata_patch(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    metadata_set(st, &c.id, &id, body, false).await
}

fn tail(text: &str, n: Option<usize>) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = n.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
    lines[start..].iter().map(|s| s.to_string()).collect()
}

/// The command log, read from the guest through its agent.
pub(crate) async fn cmd_log(st: &AppState, w: &warren_state::Workspace) -> ApiResult<String> {
    let (Some(ip), Some(token)) = (&w.internal_ip, &w.agent_token) else {
        return Err(ApiError::conflict(
            "workspace_not_running",
            format!(
                "workspace {} is {}: the command log is read from the running VM",
                w.id, w.observed_state
            ),
        ));
    };
    let r = st
        .http
        .get(format!("http://{ip}:{API_PORT}/files/read"))
        .query(&[("path", "/var/log/warren/cmd.log")])
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| ApiError::internal(format!("the workspace's agent did not answer: {e}")))?;
    if r.status().as_u16() == 404 {
        return Ok(String::new());
    }
    let v: Value = r
        .json()
        .await
        .map_err(|e| ApiError::internal(format!("unreadable answer from the agent: {e}")))?;
    Ok(v["content"].as_str().unwrap_or_default().to_string())
}

pub async fn logs(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let n = super::log_stream::tail_lines(&q)?;
    let source = q.get("source").map(String::as_str).unwrap_or("boot");
    let text = match source {
        "boot" => st.manager.backend.boot_log(&w.id).unwrap_or_default(),
        "cmd" => cmd_log(&st, &w).await?,
        other => {
            return Err(ApiError::invalid(
                "source",
                format!("{other:?}: use boot or cmd"),
            ));
        }
    };
    let lines = tail(&text, n);
    Ok(Json(json!({
        "success": true,
        "source": source,
        "logs": lines.join("\n"),
        "lines": lines,
    })))
}

pub async fn logs_list(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let boot = st.manager.backend.boot_log(&w.id).unwrap_or_default();
    Ok(Json(json!({
        "success": true,
        "files": [{"name": "boot.log", "size": boot.len()}, {"name": "cmd.log", "size": Value::Null}],
    })))
}

pub async fn logs_file(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let content = match name.as_str() {
        "boot.log" | "boot" => st.manager.backend.boot_log(&w.id).unwrap_or_default(),
        "cmd.log" | "cmd" => cmd_log(&st, &w).await?,
        _ => return Err(ApiError::not_found("log file", &name)),
    };
    Ok(Json(
        json!({"success": true, "name": name, "content": content}),
    ))
}
