//! `/watchers` REST: create, list, get, delete. Events go over `/ws`.

use super::WatcherInfo;
use crate::api::{ApiJson, AppState};
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub struct CreateBody {
    path: Option<String>,
    /// Alias of `path`.
    root: Option<String>,
    excludes: Option<Vec<String>>,
    /// Alias of `excludes`.
    exclude: Option<Vec<String>>,
}

#[derive(Serialize)]
pub struct One {
    success: bool,
    watcher: WatcherInfo,
}

#[derive(Serialize)]
pub struct Many {
    success: bool,
    watchers: Vec<WatcherInfo>,
}

#[derive(Serialize)]
pub struct Done {
    success: bool,
}

pub async fn create(
    State(st): State<AppState>,
    ApiJson(b): ApiJson<CreateBody>,
) -> ApiResult<Json<One>> {
    let root = b
        .path
        .or(b.root)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::validation("path is required"))?;
    let mut excludes = b.excludes.unwrap_or_default();
    excludes.extend(b.exclude.unwrap_or_default());
    let w = st.watchers.create(&root, excludes)?;
    Ok(Json(One {
        success: true,
        watcher: w.info(),
    }))
}

pub async fn list(State(st): State<AppState>) -> Json<Many> {
    Json(Many {
        success: true,
        watchers: st.watchers.list().iter().map(|w| w.info()).collect(),
    })
}

pub async fn get(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<One>> {
    Ok(Json(One {
        success: true,
        watcher: st.watchers.get(&id)?.info(),
    }))
}

pub async fn delete(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Done>> {
    st.watchers.delete(&id)?;
    Ok(Json(Done { success: true }))
}
