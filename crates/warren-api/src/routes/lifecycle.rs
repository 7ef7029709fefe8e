//! Lifecycle: permanent/temporary, TTL, ping.

use super::{find, json_body};
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::manager::ttl_deadline;
use crate::model;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use warren_state::{ObservedState, Workspace};

fn lifecycle_view(w: &Workspace) -> Value {
    let uptime = match (&w.started_at, w.observed_state) {
        (Some(s), ObservedState::Running | ObservedState::Paused) => warren_state::parse_time(s)
            .map(|t| (chrono::Utc::now() - t).num_seconds().max(0))
            .unwrap_or(0),
        _ => 0,
    };
    json!({
        "success": true,
        "mode": w.mode,
        "status": w.observed_state.as_str(),
        "restart_policy": w.restart_policy,
        "ttl": w.config.get("ttl").cloned().or(w.ttl_seconds.map(|s| json!(s))),
        "ttl_seconds": w.ttl_seconds,
        "ttl_action": w.ttl_action.clone().unwrap_or_else(|| "stop".into()),
        "remove_on_exit": w.remove_on_exit,
        "uptime": uptime,
        "expires_at": w.ttl_expires_at,
        "created_at": w.created_at,
        // Sleep on idle (PUT lifecycle/idle); null: off.
        "idle": w.config.get("idle").cloned().unwrap_or(Value::Null),
        // Memory snapshots: freeze to disk, /snapshot and /restore.
        "snapshot_supported": true,
        "snapshot_unavailable_reason": Value::Null,
    })
}

pub async fn get(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    Ok(Json(lifecycle_view(&w)))
}

/// Apply `ttl`, `ttl_action`, `remove_on_exit` from a body onto `w` (and its config).
fn apply(w: &mut Workspace, o: &serde_json::Map<String, Value>) -> ApiResult<()> {
    let mut cfg = w.config.as_object().cloned().unwrap_or_default();
    for k in ["ttl", "ttl_action", "remove_on_exit"] {
        if let Some(v) = o.get(k) {
            cfg.insert(k.to_string(), v.clone());
        }
    }
    let lc = model::check_config(&cfg).map_err(|mut e| {
        // Name the field as the body has it.
        if let Some(d) = e.details.as_mut() {
            if let Some(f) = d["field"].as_str() {
                d["field"] = json!(f.trim_start_matches("config."));
            }
        }
        e
    })?;
    if o.contains_key("ttl") {
        w.ttl_seconds = lc.ttl_seconds;
        w.ttl_expires_at = ttl_deadline(w);
    }
    if o.contains_key("ttl_action") {
        w.ttl_action = lc.ttl_action;
    }
    if o.contains_key("remove_on_exit") {
        w.remove_on_exit = lc.remove_on_exit;
    }
    w.config = Value::Object(cfg);
    Ok(())
}

pub async fn permanent(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let mut w = find(&st, &c.id, &id).await?;
    w.mode = "permanent".into();
    w.ttl_seconds = None;
    w.ttl_expires_at = None;
    w.remove_on_exit = false;
    if let Some(cfg) = w.config.as_object_mut() {
        cfg.remove("ttl");
        cfg.remove("remove_on_exit");
    }
    let w = st.manager.store.save_settings(&w).await?;
    st.manager
        .log(Some(&c.id), &w.id, "make_permanent", "ok", None)
        .await;
    Ok(Json(lifecycle_view(&w)))
}

pub async fn temporary(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let b = json_body(&body)?;
    let o = b
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))?;
    let mut w = find(&st, &c.id, &id).await?;
    apply(&mut w, o)?;
    w.mode = "temporary".into();
    let w = st.manager.store.save_settings(&w).await?;
    st.manager
        .log(Some(&c.id), &w.id, "make_temporary", "ok", None)
        .await;
    Ok(Json(lifecycle_view(&w)))
}

pub async fn ttl(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let b = json_body(&body)?;
    let o = b
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))?;
    if !o.contains_key("ttl") && !o.contains_key("ttl_action") {
        return Err(ApiError::invalid("ttl", "give ttl and/or ttl_action"));
    }
    let mut w = find(&st, &c.id, &id).await?;
    let only: serde_json::Map<String, Value> = o
        .iter()
        .filter(|(k, _)| *k == "ttl" || *k == "ttl_action")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    apply(&mut w, &only)?;
    let w = st.manager.store.save_settings(&w).await?;
    st.manager
        .log(Some(&c.id), &w.id, "update_ttl", "ok", None)
        .await;
    Ok(Json(lifecycle_view(&w)))
}

pub async fn ping(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let mut w = find(&st, &c.id, &id).await?;
    if w.ttl_seconds.is_some() && w.ttl_expires_at.is_some() {
        w.ttl_expires_at = ttl_deadline(&w);
        w = st.manager.store.save_settings(&w).await?;
    }
    Ok(Json(json!({
        "success": true,
        "status": w.observed_state.as_str(),
        "expires_at": w.ttl_expires_at,
        "ttl_expires_at": w.ttl_expires_at,
    })))
}
