//! `GET/PUT/PATCH /workspace/:id/resources`: a workspace's CPUs, memory and disk
//! size. Values are checked against the node's limits before anything changes, and
//! the disk only grows. New values take effect at the next start (with `apply: true`
//! a running workspace restarts at once); the VMM's cgroup enforces CPU and memory,
//! the disk file's size the disk.

use super::{find, json_body};
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use warren_state::Workspace;

fn view(w: &Workspace) -> Value {
    json!({
        "success": true,
        "workspace_id": w.id,
        "resources": {
            "cpus": w.cpus,
            "memory_mb": w.memory_mb,
            "disk_size_mb": w.disk_size_mb,
        },
        "cpus": w.cpus,
        "memory_mb": w.memory_mb,
        "disk_size_mb": w.disk_size_mb,
    })
}

pub async fn get(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    Ok(Json(view(&w)))
}

/// A positive integer field, if present.
fn uint(b: &serde_json::Map<String, Value>, field: &str) -> ApiResult<Option<u64>> {
    match b.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, "must be a positive integer")),
    }
}

/// PUT and PATCH (the client's `update` and `patch`): both change only the fields
/// given.
pub async fn update(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let b = json_body(&body)?;
    let o = b
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))?;
    let cpus = uint(o, "cpus")?;
    let memory_mb = uint(o, "memory_mb")?;
    let disk_size_mb = uint(o, "disk_size_mb")?;
    let apply = match o.get("apply") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("apply", "must be a boolean")),
    };
    let to_u32 = |v: Option<u64>, field: &str| -> ApiResult<Option<u32>> {
        v.map(|n| u32::try_from(n).map_err(|_| ApiError::invalid(field, "too large")))
            .transpose()
    };
    let (cpus, memory_mb) = (to_u32(cpus, "cpus")?, to_u32(memory_mb, "memory_mb")?);
    let w = find(&st, &c.id, &id).await?;
    let (w, restarted) = st
        .manager
        .set_resources(&c.id, &w.id, cpus, memory_mb, disk_size_mb, apply)
        .await?;
    let mut v = view(&w);
    let running = w.observed_state == warren_state::ObservedState::Running;
    v["applied"] = json!(restarted || !running);
    v["restart_required"] = json!(running && !restarted);
    v["message"] = json!(if restarted {
        "resources updated; the workspace restarted with them"
    } else if running {
        "resources updated; they take effect at the next start (or pass apply: true)"
    } else {
        "resources updated; they take effect at the next start"
    });
    Ok(Json(v))
}
