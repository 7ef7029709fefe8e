//! `/workloads` on the agent (the control plane forwards `/workspace/:id/workloads`
//! here): create, list, get, update, delete, start, stop, status, logs (JSON and SSE
//! with tail and follow), stats (JSON and SSE at 1 s).

use super::stats::{rss_bytes, CpuMeter};
use super::{Info, Workload, WorkloadError};
use crate::api::{flag, ApiJson, ApiQuery, AppState};
use crate::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

impl From<WorkloadError> for ApiError {
    fn from(e: WorkloadError) -> Self {
        match e {
            WorkloadError::NotFound(_) => ApiError::NotFound(e.to_string()),
            WorkloadError::Duplicate(_) => ApiError::Conflict(e.to_string()),
            WorkloadError::Invalid(_) => ApiError::Validation(e.to_string()),
        }
    }
}

/// `{success, workload, ...the workload's fields}`: the client's `create` reads
/// `workload`, its `get`/`status` read the fields at the top.
fn one(w: &Workload) -> Json<Value> {
    let info = w.info();
    let mut v = serde_json::to_value(&info).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "workload".into(),
            serde_json::to_value(&info).unwrap_or_default(),
        );
        o.insert("success".into(), Value::Bool(true));
        o.insert("workload_id".into(), Value::String(info.id.clone()));
    }
    Json(v)
}

pub async fn create(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<Value>> {
    let w = st.workloads.create(&body)?;
    Ok(one(&w))
}

#[derive(Deserialize)]
pub struct ListQuery {
    states: Option<String>,
    name: Option<String>,
}

#[derive(Serialize)]
struct List {
    success: bool,
    workloads: Vec<Info>,
    total: usize,
}

pub async fn list(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Json<impl Serialize> {
    let states: Vec<String> = q
        .states
        .as_deref()
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let workloads: Vec<Info> = st
        .workloads
        .list()
        .iter()
        .map(|w| w.info())
        .filter(|i| states.is_empty() || states.iter().any(|s| s == i.status))
        .filter(|i| q.name.as_deref().is_none_or(|n| i.name == n))
        .collect();
    Json(List {
        success: true,
        total: workloads.len(),
        workloads,
    })
}

pub async fn get(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let w = st.workloads.get(&id)?;
    Ok(one(&w))
}

pub async fn update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<Value>> {
    let w = st.workloads.update(&id, &body)?;
    Ok(one(&w))
}

pub async fn delete(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    st.workloads.delete(&id).await?;
    Ok(Json(json!({"success": true, "id": id, "deleted": true})))
}

pub async fn delete_all(State(st): State<AppState>) -> Json<Value> {
    let n = st.workloads.delete_all().await;
    Json(json!({"success": true, "deleted": n}))
}

pub async fn start(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let w = st.workloads.get(&id)?;
    st.workloads.start(&w);
    Ok(one(&w))
}

pub async fn stop(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let w = st.workloads.get(&id)?;
    st.workloads.stop(&w).await;
    Ok(one(&w))
}

#[derive(Deserialize)]
pub struct LogQuery {
    /// Last N lines (default: all that are kept).
    tail: Option<usize>,
    /// SSE only: keep streaming new lines (default true).
    follow: Option<String>,
}

pub async fn logs(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<Json<Value>> {
    let w = st.workloads.get(&id)?;
    let mut all = w.logs.ring.snapshot();
    if let Some(n) = q.tail {
        all.drain(..all.len().saturating_sub(n));
    }
    Ok(Json(json!({
        "success": true,
        "id": w.id,
        "workload_id": w.id,
        "status": w.status().as_str(),
        "total": all.len(),
        "logs": all,
    })))
}

fn sse_response(body: Body) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn sse_frame(event: &str, v: &impl Serialize) -> Bytes {
    let data = serde_json::to_string(v).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// SSE of log lines (`event: log`, data `{stream, data, timestamp}`): the last `tail`
/// kept lines, then (with `follow`, the default) new ones until the workload is deleted.
pub async fn logs_stream(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<Response> {
    let w = st.workloads.get(&id)?;
    let follow = q.follow.is_none() || flag(&q.follow);
    let mut pos = 0u64;
    let kept = w.logs.ring.read_now(&mut pos);
    let skip = q.tail.map_or(0, |n| kept.len().saturating_sub(n));
    let head: Vec<Bytes> = kept
        .iter()
        .skip(skip)
        .map(|e| sse_frame("log", e))
        .collect();
    let head = Bytes::from(head.concat());
    let logs = w.logs.clone();
    let live =
        futures_util::stream::unfold((logs, pos, follow), |(logs, mut pos, follow)| async move {
            if !follow {
                return None;
            }
            let evs = logs.ring.next(&mut pos).await?;
            let frames: Vec<Bytes> = evs.iter().map(|e| sse_frame("log", e)).collect();
            Some((
                Ok::<Bytes, std::convert::Infallible>(Bytes::from(frames.concat())),
                (logs, pos, follow),
            ))
        });
    use futures_util::StreamExt;
    let body = futures_util::stream::once(async move { Ok(head) }).chain(live);
    Ok(sse_response(Body::from_stream(body)))
}

fn stats_of(w: &Workload, meter: &mut CpuMeter) -> Value {
    let pid = w.pid();
    json!({
        "workload_id": w.id,
        "id": w.id,
        "name": w.spec().name,
        "status": w.status().as_str(),
        "pid": pid,
        "cpu_usage": meter.sample(pid),
        "memory_usage": pid.and_then(rss_bytes).unwrap_or(0),
        "restarts": w.info().restarts,
        "timestamp": crate::time::now_rfc3339(),
    })
}

/// One sample: CPU measured over 250 ms.
pub async fn stats(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let w = st.workloads.get(&id)?;
    let mut meter = CpuMeter::new();
    meter.sample(w.pid());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut v = stats_of(&w, &mut meter);
    v["success"] = Value::Bool(true);
    Ok(Json(v))
}

/// `event: stats` every second for the workload, until it is deleted.
pub async fn stats_stream(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let w = st.workloads.get(&id)?;
    let all = st.workloads.clone();
    let body =
        futures_util::stream::unfold((w, CpuMeter::new(), true), move |(w, mut meter, first)| {
            let all = all.clone();
            async move {
                if !first {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                all.get(&w.id).ok()?;
                let v = stats_of(&w, &mut meter);
                Some((
                    Ok::<Bytes, std::convert::Infallible>(sse_frame("stats", &v)),
                    (w, meter, false),
                ))
            }
        });
    Ok(sse_response(Body::from_stream(body)))
}

/// `event: stats` every second with one entry per workload.
pub async fn all_stats_stream(State(st): State<AppState>) -> Response {
    let all = st.workloads.clone();
    let body = futures_util::stream::unfold(
        (all, Vec::<(String, CpuMeter)>::new(), true),
        |(all, mut meters, first)| async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let mut out = Vec::new();
            for w in all.list() {
                let i = match meters.iter().position(|(id, _)| *id == w.id) {
                    Some(i) => i,
                    None => {
                        meters.push((w.id.clone(), CpuMeter::new()));
                        meters.len() - 1
                    }
                };
                out.push(stats_of(&w, &mut meters[i].1));
            }
            let v = json!({"workloads": out, "timestamp": crate::time::now_rfc3339()});
            Some((
                Ok::<Bytes, std::convert::Infallible>(sse_frame("stats", &v)),
                (all, meters, false),
            ))
        },
    );
    sse_response(Body::from_stream(body))
}
