//! Create, list, get, update, delete, retry.

use super::{find, json_body};
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::model::{self, workspace_view};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use warren_state::WorkspaceFilter;

pub async fn create(
    State(st): State<AppState>,
    Authed(client): Authed,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let mut req = model::parse_create(&json_body(&body)?)?;
    // config.idle: the same policy and limits as lifecycle/idle, checked before
    // anything is stored.
    if let Value::Object(cfg) = &mut req.config {
        crate::idle::normalize_config(cfg, st.manager.config.idle_min_secs)
            .map_err(|(field, reason)| ApiError::invalid(&field, reason))?;
    }
    let (mut w, created) = st.manager.create(&client.id, &req).await?;
    if req.wait_ready {
        let timeout = Duration::from_secs(req.ready_timeout_seconds);
        match st.manager.wait_ready(&w.id, timeout).await? {
            Some(done) => w = done,
            None => return Err(ApiError::not_found("workspace", &w.id)),
        }
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "success": true,
            "created": created,
            "workspace": workspace_view(&w),
        })),
    ))
}

pub async fn list(
    State(st): State<AppState>,
    Authed(client): Authed,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let num = |field: &str, default: u32, max: u32| -> ApiResult<u32> {
        match q.get(field) {
            None => Ok(default),
            Some(s) => match s.parse::<u32>() {
                Ok(n) if n >= 1 && n <= max => Ok(n),
                _ => Err(ApiError::invalid(
                    field,
                    format!("{s:?} is not a number 1-{max}"),
                )),
            },
        }
    };
    let page = num("page", 1, 1_000_000)?;
    let limit = num("limit", 20, 100)?;
    let status = q.get("status").filter(|s| !s.is_empty()).cloned();
    if let Some(s) = &status {
        if warren_state::ObservedState::parse(s).is_none() {
            return Err(ApiError::invalid(
                "status",
                format!("{s:?} is not a workspace status"),
            ));
        }
    }
    let mode = q.get("mode").filter(|s| !s.is_empty()).cloned();
    if let Some(m) = &mode {
        if m != "permanent" && m != "temporary" {
            return Err(ApiError::invalid(
                "mode",
                format!("{m:?}: use permanent or temporary"),
            ));
        }
    }
    let (ws, total) = st
        .manager
        .store
        .list_workspaces(
            &client.id,
            &WorkspaceFilter {
                status,
                mode,
                page,
                limit,
            },
        )
        .await?;
    Ok(Json(json!({
        "success": true,
        "workspaces": ws.iter().map(workspace_view).collect::<Vec<_>>(),
        "total": total,
        "page": page,
        "limit": limit,
    })))
}

pub async fn get(
    State(st): State<AppState>,
    Authed(client): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &client.id, &id).await?;
    Ok(Json(
        json!({"success": true, "workspace": workspace_view(&w)}),
    ))
}

pub async fn update(
    State(st): State<AppState>,
    Authed(client): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let u = model::parse_update(&json_body(&body)?)?;
    let mut w = find(&st, &client.id, &id).await?;
    if let Some(patch) = &u.config {
        let mut merged = model::merge_config(&w.config, patch);
        let network_change = crate::network::touches(patch);
        if network_change {
            let mut obj = merged.as_object().cloned().unwrap_or_default();
            crate::network::normalize(&serde_json::Map::new(), &mut obj)?;
            merged = Value::Object(obj);
        }
        if patch.contains_key("idle") {
            let mut obj = merged.as_object().cloned().unwrap_or_default();
            crate::idle::normalize_config(&mut obj, st.manager.config.idle_min_secs)
                .map_err(|(field, reason)| ApiError::invalid(&field, reason))?;
            merged = Value::Object(obj);
        }
        let obj = merged.as_object().cloned().unwrap_or_default();
        let lc = model::check_config(&obj)?;
        // Network keys take effect at once, as through PATCH /workspace/:id/network.
        if network_change {
            let nc = obj
                .get(crate::network::KEY)
                .and_then(|v| v.as_object())
                .cloned()
                .unwrap_or_default();
            st.manager.set_network(&client.id, &w.id, nc).await?;
        }
        // Lifecycle keys given in config take effect like the lifecycle endpoints.
        if patch.contains_key("ttl") {
            w.ttl_seconds = lc.ttl_seconds;
            w.ttl_expires_at = crate::manager::ttl_deadline(&w);
        }
        if patch.contains_key("ttl_action") {
            w.ttl_action = lc.ttl_action;
        }
        if patch.contains_key("remove_on_exit") {
            w.remove_on_exit = lc.remove_on_exit;
        }
        if patch.contains_key("restart_policy") {
            w.restart_policy = lc.restart_policy;
        }
        w.config = merged;
    }
    if let Some(n) = u.name {
        w.name = n;
    }
    if let Some(s) = u.slug {
        w.slug = s;
    }
    if let Some(l) = u.logo {
        w.logo = l;
    }
    let w = st.manager.store.save_settings(&w).await?;
    st.manager
        .log(Some(&client.id), &w.id, "update", "ok", None)
        .await;
    Ok(Json(
        json!({"success": true, "workspace": workspace_view(&w)}),
    ))
}

pub async fn delete(
    State(st): State<AppState>,
    Authed(client): Authed,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let w = find(&st, &client.id, &id).await?;
    st.manager.delete(&client.id, &w.id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "success": true,
            "accepted": true,
            "id": w.id,
            "message": "deletion accepted; it completes in the background",
        })),
    ))
}

pub async fn retry(
    State(st): State<AppState>,
    Authed(client): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &client.id, &id).await?;
    let w = st.manager.retry(&client.id, &w.id).await?;
    Ok(Json(
        json!({"success": true, "workspace": workspace_view(&w)}),
    ))
}
