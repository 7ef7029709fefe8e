//! `/terminals` REST: create, list, get, input, resize, scrollback, close.

use super::{SessionInfo, Spec, TermError};
use crate::api::{ApiJson, ApiQuery, AppState};
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

impl From<TermError> for ApiError {
    fn from(e: TermError) -> Self {
        match e {
            TermError::NotFound(_) => ApiError::NotFound(e.to_string()),
            TermError::Invalid(_) => ApiError::Validation(e.to_string()),
            TermError::Full | TermError::Exited(_) => ApiError::Conflict(e.to_string()),
            TermError::Start(_) => ApiError::Unprocessable {
                code: "start_failed",
                message: e.to_string(),
            },
            TermError::Io { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct CreateBody {
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    shell: Option<String>,
    #[serde(default)]
    cols: Option<u16>,
    #[serde(default)]
    rows: Option<u16>,
    #[serde(default)]
    scrollback_size: Option<usize>,
}

#[derive(Serialize)]
pub struct SessionResponse {
    success: bool,
    #[serde(flatten)]
    session: SessionInfo,
}

pub async fn create(
    State(st): State<AppState>,
    ApiJson(b): ApiJson<CreateBody>,
) -> ApiResult<Json<SessionResponse>> {
    let spec = Spec {
        cmd: b.cmd.or_else(|| b.shell.map(|s| vec![s])),
        cols: b.cols,
        rows: b.rows,
        scrollback_size: b.scrollback_size,
    };
    let s = st.terminals.create(&st.ws, &st.exec.reaper, spec)?;
    Ok(Json(SessionResponse {
        success: true,
        session: s.info(),
    }))
}

#[derive(Serialize)]
pub struct ListResponse {
    success: bool,
    terminals: Vec<SessionInfo>,
}

pub async fn list(State(st): State<AppState>) -> Json<ListResponse> {
    Json(ListResponse {
        success: true,
        terminals: st.terminals.list().iter().map(|s| s.info()).collect(),
    })
}

pub async fn get(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionResponse>> {
    Ok(Json(SessionResponse {
        success: true,
        session: st.terminals.get(&id)?.info(),
    }))
}

#[derive(Serialize)]
pub struct Done {
    success: bool,
}

pub async fn close(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Done>> {
    st.terminals.close(&id)?;
    Ok(Json(Done { success: true }))
}

#[derive(Deserialize)]
pub struct ScrollbackQuery {
    bytes: Option<usize>,
}

#[derive(Serialize)]
pub struct ScrollbackResponse {
    success: bool,
    /// Base64 of the raw bytes.
    scrollback: String,
    size: usize,
    alive: bool,
    exit_code: i32,
}

pub async fn scrollback(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ScrollbackQuery>,
) -> ApiResult<Json<ScrollbackResponse>> {
    use base64::Engine;
    let s = st.terminals.get(&id)?;
    let data = s.scrollback(q.bytes);
    let exit = s.exit_code();
    Ok(Json(ScrollbackResponse {
        success: true,
        scrollback: base64::engine::general_purpose::STANDARD.encode(&data),
        size: data.len(),
        alive: exit.is_none(),
        exit_code: exit.unwrap_or(0),
    }))
}

#[derive(Deserialize)]
pub struct ResizeBody {
    cols: u16,
    rows: u16,
}

pub async fn resize(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ResizeBody>,
) -> ApiResult<Json<SessionResponse>> {
    let s = st.terminals.get(&id)?;
    s.resize(b.cols, b.rows)?;
    Ok(Json(SessionResponse {
        success: true,
        session: s.info(),
    }))
}

#[derive(Serialize)]
pub struct InputResponse {
    success: bool,
    bytes: usize,
}

/// Raw bytes for the terminal (like the WebSocket's binary frames).
pub async fn input(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<InputResponse>> {
    let s = st.terminals.get(&id)?;
    s.write(&body).await?;
    Ok(Json(InputResponse {
        success: true,
        bytes: body.len(),
    }))
}
