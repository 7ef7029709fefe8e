//! Runtime API access: gateway JWTs (short-lived, per workspace) and the raw agent
//! token.

use super::find;
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use warren_protocol::runtime::API_PORT;
use warren_state::{ObservedState, Workspace};

fn token_answer(st: &AppState, w: &Workspace) -> Value {
    let ttl = st.manager.config.gateway_token_ttl;
    let (token, exp) = st.manager.keys.issue(&w.id, w.gateway_token_gen, ttl);
    let expires_at = chrono::DateTime::from_timestamp(exp as i64, 0)
        .map(warren_state::fmt_time)
        .unwrap_or_default();
    json!({
        "success": true,
        "enabled": true,
        "token": token,
        "expires_at": expires_at,
        "expires_in": ttl.as_secs(),
        "gateway_url": st.manager.config.gateway_url,
        "workspace_id": w.id,
    })
}

pub async fn status(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    Ok(Json(json!({
        "success": true,
        "enabled": w.api_access_enabled,
        "gateway_url": st.manager.config.gateway_url,
        "port": API_PORT,
        "status": w.observed_state.as_str(),
    })))
}

pub async fn enable(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let mut w = find(&st, &c.id, &id).await?;
    if !w.api_access_enabled {
        w.api_access_enabled = true;
        w = st.manager.store.save_settings(&w).await?;
        st.manager
            .log(Some(&c.id), &w.id, "runtime_api_enable", "ok", None)
            .await;
    }
    Ok(Json(token_answer(&st, &w)))
}

pub async fn disable(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let mut w = find(&st, &c.id, &id).await?;
    w.api_access_enabled = false;
    // Every token issued so far stops working.
    w.gateway_token_gen += 1;
    let w = st.manager.store.save_settings(&w).await?;
    st.manager
        .log(Some(&c.id), &w.id, "runtime_api_disable", "ok", None)
        .await;
    Ok(Json(json!({"success": true, "enabled": false})))
}

fn require_enabled(w: &Workspace) -> ApiResult<()> {
    if !w.api_access_enabled {
        return Err(ApiError::conflict(
            "runtime_api_disabled",
            format!(
                "runtime API access of workspace {} is disabled: enable it first",
                w.id
            ),
        ));
    }
    Ok(())
}

pub async fn get_token(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    require_enabled(&w)?;
    Ok(Json(token_answer(&st, &w)))
}

pub async fn rotate_token(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let mut w = find(&st, &c.id, &id).await?;
    require_enabled(&w)?;
    w.gateway_token_gen += 1;
    let w = st.manager.store.save_settings(&w).await?;
    st.manager
        .log(Some(&c.id), &w.id, "runtime_api_rotate", "ok", None)
        .await;
    Ok(Json(token_answer(&st, &w)))
}

pub async fn raw_token(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    match (&w.internal_ip, &w.agent_token, w.observed_state) {
        (Some(ip), Some(token), ObservedState::Running | ObservedState::Paused) => {
            Ok(Json(json!({
                "success": true,
                "token": token,
                "ip": ip,
                "port": API_PORT,
                "url": format!("http://{ip}:{API_PORT}"),
            })))
        }
        _ => Err(ApiError::conflict(
            "workspace_not_running",
            format!(
                "workspace {} is {}: the raw token exists while it runs",
                w.id, w.observed_state
            ),
        )),
    }
}
