//! start, stop, restart, pause, resume. Each answers once the node confirmed the state.

use super::find;
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::model::workspace_view;
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use warren_state::{DesiredState, ObservedState, ProvisioningState, Workspace};

fn answer(id: &str, w: Option<Workspace>) -> ApiResult<Json<Value>> {
    let w = w.ok_or_else(|| ApiError::not_found("workspace", id))?;
    Ok(Json(json!({
        "success": true,
        "status": w.observed_state.as_str(),
        "workspace": workspace_view(&w),
    })))
}

fn refuse_unprovisioned(w: &Workspace) -> ApiResult<()> {
    if w.prov_state != ProvisioningState::Ready {
        return Err(ApiError::conflict(
            "conflict",
            format!(
                "workspace {} is not provisioned (provisioning is {}); retry or delete it",
                w.id, w.prov_state
            ),
        )
        .with_details(json!({"workspace_id": w.id})));
    }
    Ok(())
}

pub async fn start(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    refuse_unprovisioned(&w)?;
    let r = st
        .manager
        .set_desired(Some(&c.id), &w.id, DesiredState::Running, false, "start")
        .await?;
    answer(&id, r)
}

pub async fn stop(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    refuse_unprovisioned(&w)?;
    let r = st
        .manager
        .set_desired(Some(&c.id), &w.id, DesiredState::Stopped, true, "stop")
        .await?;
    answer(&id, r)
}

pub async fn restart(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    refuse_unprovisioned(&w)?;
    let r = st.manager.restart(&c.id, &w.id).await?;
    answer(&id, r)
}

pub async fn pause(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    freeze_or_thaw(
        &st,
        &c.id,
        &id,
        DesiredState::Paused,
        true,
        "pause",
        "only a running workspace can be paused",
    )
    .await
}

pub async fn resume(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    freeze_or_thaw(
        &st,
        &c.id,
        &id,
        DesiredState::Running,
        false,
        "resume",
        "only a paused workspace can be resumed (use start)",
    )
    .await
}

/// Pause and resume: both act only on a workspace whose VM exists (running or
/// paused), and differ in the state they ask for.
async fn freeze_or_thaw(
    st: &AppState,
    client_id: &str,
    id: &str,
    desired: DesiredState,
    keep_memory: bool,
    verb: &str,
    refusal: &str,
) -> ApiResult<Json<Value>> {
    let w = find(st, client_id, id).await?;
    refuse_unprovisioned(&w)?;
    if !matches!(
        w.observed_state,
        ObservedState::Running | ObservedState::Paused
    ) {
        return Err(ApiError::conflict(
            "conflict",
            format!("workspace {} is {}: {refusal}", w.id, w.observed_state),
        ));
    }
    let r = st
        .manager
        .set_desired(Some(client_id), &w.id, desired, keep_memory, verb)
        .await?;
    answer(id, r)
}
