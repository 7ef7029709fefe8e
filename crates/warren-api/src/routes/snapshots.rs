//! `POST /workspace/:id/snapshot` and `/restore` (the oblien client's `snapshots`):
//! capture memory, device state and disk of a running workspace; put it back in
//! place later. A workspace has one snapshot (the latest); disk archives. Fork is
//! in `fork`.

use super::find;
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::model::workspace_view;
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use tracing::Instrument;
use warren_state::{DesiredState, ObservedState, Workspace};

fn refuse_deleting(w: &Workspace) -> ApiResult<()> {
    if w.desired_state == DesiredState::Deleted {
        return Err(ApiError::conflict(
            "workspace_deleting",
            format!("workspace {} is being deleted", w.id),
        ));
    }
    Ok(())
}

/// `{"after": "resume" | "paused" | "stop"}` (default resume).
pub async fn snapshot(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let after = match body.as_ref().and_then(|b| b.get("after")) {
        None | Some(Value::Null) => "resume".to_string(),
        Some(Value::String(s)) if ["resume", "paused", "stop"].contains(&s.as_str()) => s.clone(),
        Some(other) => {
            return Err(ApiError::invalid(
                "after",
                format!("{other}: use resume, paused or stop"),
            ))
        }
    };
    let m = st.manager.clone();
    let span = tracing::info_span!("workspace", workspace_id = %w.id);
    let info = async {
        let lock = m.lock_of(&w.id);
        let _g = lock.lock().await;
        let mut w = m
            .store
            .workspace(&w.id)
            .await?
            .ok_or_else(|| ApiError::not_found("workspace", &id))?;
        refuse_deleting(&w)?;
        if w.observed_state != ObservedState::Running || !m.backend.is_running(&w.id) {
            return Err(ApiError::conflict(
                "workspace_not_running",
                format!(
                    "workspace {} is {}: only a running workspace can be snapshotted",
                    w.id, w.observed_state
                ),
            ));
        }
        let info = m.backend.snapshot(&w.id, after == "paused").await?;
        if after == "paused" {
            m.store
                .set_desired(&w.id, DesiredState::Paused, true)
                .await?;
            w.observed_state = ObservedState::Paused;
            m.store.save_observed(&w).await?;
        }
        m.log(Some(&c.id), &w.id, "snapshot", "ok", None).await;
        Ok::<_, ApiError>(info)
    }
    .instrument(span)
    .await?;
    let w = if after == "stop" {
        st.manager
            .set_desired(Some(&c.id), &w.id, DesiredState::Stopped, true, "stop")
            .await?
    } else {
        st.manager.store.workspace(&w.id).await?
    }
    .ok_or_else(|| ApiError::not_found("workspace", &id))?;
    Ok(Json(json!({
        "success": true,
        "snapshot": info,
        "status": w.observed_state.as_str(),
        "workspace": workspace_view(&w),
    })))
}

/// Restore the workspace's snapshot in place: memory, processes and disk as they
/// were when it was taken. Whatever ran since is gone.
pub async fn restore(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let m = st.manager.clone();
    let span = tracing::info_span!("workspace", workspace_id = %w.id);
    let w = async {
        let lock = m.lock_of(&w.id);
        let _g = lock.lock().await;
        let mut w = m
            .store
            .workspace(&w.id)
            .await?
            .ok_or_else(|| ApiError::not_found("workspace", &id))?;
        refuse_deleting(&w)?;
        if m.backend.snapshot_info(&w.id).is_none() {
            return Err(ApiError::not_found("snapshot", &w.id).with_details(json!({
                "workspace_id": w.id,
                "reason": "this workspace has no snapshot (none was taken, or it was deleted)",
            })));
        }
        if !matches!(
            w.observed_state,
            ObservedState::Running | ObservedState::Paused | ObservedState::Stopped
        ) {
            return Err(ApiError::conflict(
                "conflict",
                format!(
                    "workspace {} is {}: cannot restore now",
                    w.id, w.observed_state
                ),
            ));
        }
        let booted = m.backend.restore_snapshot(&m.boot_spec(&w)).await?;
        m.store
            .set_desired(&w.id, DesiredState::Running, false)
            .await?;
        w.internal_ip = Some(booted.internal_ip);
        w.agent_token = Some(booted.agent_token);
        w.observed_state = ObservedState::Running;
        let w = m.store.save_observed(&w).await?;
        m.log(Some(&c.id), &w.id, "restore", "ok", None).await;
        Ok::<_, ApiError>(w)
    }
    .instrument(span)
    .await?;
    Ok(Json(json!({
        "success": true,
        "status": w.observed_state.as_str(),
        "workspace": workspace_view(&w),
    })))
}

/// `DELETE /workspace/:id/snapshot`: drop the workspace's snapshot.
pub async fn delete(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let deleted = st.manager.backend.delete_snapshot(&w.id).await?;
    if !deleted {
        return Err(ApiError::not_found("snapshot", &w.id));
    }
    Ok(Json(json!({"success": true, "deleted": true})))
}

/// `POST /workspace/:id/archives` `{version?}`: a versioned copy of the disk.
pub async fn archive_create(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let m = st.manager.clone();
    let version = match body.as_ref().and_then(|b| b.get("version")) {
        None | Some(Value::Null) => {
            let n = m.backend.archives(&w.id).len() + 1;
            let mut k = n;
            while m.backend.archive(&w.id, &format!("v{k}")).is_some() {
                k += 1;
            }
            format!("v{k}")
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(ApiError::invalid("version", format!("{other}: a string"))),
    };
    // The client can ask for an archive of some paths only; ours is the whole disk.
    for field in ["vm_paths", "exclude_vm_paths"] {
        match body.as_ref().and_then(|b| b.get(field)) {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(_) => {
                return Err(ApiError::not_implemented(
                    &format!("archives of selected paths ({field}); an archive is the whole disk"),
                    "issue 8",
                ))
            }
        }
    }
    if let Some(f) = body
        .as_ref()
        .and_then(|b| b.get("format"))
        .and_then(Value::as_str)
    {
        if f != "raw" {
            return Err(ApiError::invalid(
                "format",
                format!("{f:?}: only raw (a sparse copy of the disk) is supported"),
            ));
        }
    }
    let lock = m.lock_of(&w.id);
    let _g = lock.lock().await;
    let w = m
        .store
        .workspace(&w.id)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace", &id))?;
    refuse_deleting(&w)?;
    if m.backend.archive(&w.id, &version).is_some() {
        return Err(ApiError::conflict(
            "conflict",
            format!("archive {version} of {} already exists", w.id),
        ));
    }
    let info = m.backend.create_archive(&w.id, &version).await?;
    m.log(Some(&c.id), &w.id, "archive_create", "ok", Some(&version))
        .await;
    let mut out = json!({"success": true, "archive": info.clone()});
    if let (Some(o), Some(i)) = (out.as_object_mut(), info.as_object()) {
        for (k, v) in i {
            o.insert(k.clone(), v.clone());
        }
    }
    Ok(Json(out))
}

pub async fn archive_list(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let archives = st.manager.backend.archives(&w.id);
    Ok(Json(json!({"success": true, "archives": archives})))
}

pub async fn archive_get(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let info = st
        .manager
        .backend
        .archive(&w.id, &version)
        .ok_or_else(|| ApiError::not_found("archive", &version))?;
    let mut out = json!({"success": true, "archive": info.clone()});
    if let (Some(o), Some(i)) = (out.as_object_mut(), info.as_object()) {
        for (k, v) in i {
            o.insert(k.clone(), v.clone());
        }
    }
    Ok(Json(out))
}

pub async fn archive_delete(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    if !st.manager.backend.delete_archive(&w.id, &version).await? {
        return Err(ApiError::not_found("archive", &version));
    }
    Ok(Json(json!({"success": true, "deleted": version})))
}

pub async fn archive_delete_all(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let mut deleted = Vec::new();
    for a in st.manager.backend.archives(&w.id) {
        if let Some(v) = a["version"].as_str() {
            if st.manager.backend.delete_archive(&w.id, v).await? {
                deleted.push(v.to_string());
            }
        }
    }
    Ok(Json(json!({"success": true, "deleted": deleted})))
}
