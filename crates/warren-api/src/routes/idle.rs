//! `PUT /workspace/:id/lifecycle/idle`: sleep on idle (see [`crate::idle`]).

use super::{find, json_body};
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

pub async fn set(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let mut w = find(&st, &c.id, &id).await?;
    let body = json_body(&body)?;
    let policy = crate::idle::parse_policy(&body, st.manager.config.idle_min_secs)
        .map_err(|(field, reason)| ApiError::invalid(&field, reason))?;
    let mut cfg = w.config.as_object().cloned().unwrap_or_default();
    match &policy {
        Some(p) => cfg.insert("idle".into(), p.clone()),
        None => cfg.remove("idle"),
    };
    w.config = Value::Object(cfg);
    st.manager.store.save_settings(&w).await?;
    st.manager
        .log(Some(&c.id), &w.id, "lifecycle_idle", "ok", None)
        .await;
    Ok(Json(json!({
        "success": true,
        "idle": policy,
        "snapshot_supported": true,
    })))
}
