//! `GET /workspace/:id/stats` and `GET /workspace/:id/stats/stream` (SSE, one event a
//! second): CPU %, memory used and total, disk read/write bytes, network rx/tx bytes.
//!
//! Two sources, each turned into rates between samples: the guest agent's `/metrics`
//! (its /proc counters: CPU busy/total ticks, memory, virtio disk bytes, interface
//! bytes) and the host (the VMM process's CPU ticks and RSS, the tap's counters). CPU
//! % is the guest's (percent of all its vCPUs); `host.cpu_usage` is what the VMM
//! process costs the host (one core = 100).

use super::find;
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use warren_protocol::runtime::API_PORT;
use warren_state::{ObservedState, Workspace};

fn client() -> &'static reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default()
    })
}

/// One reading of every counter.
struct Sample {
    at: Instant,
    guest: Option<Value>,
    host: Option<Value>,
}

async fn sample(st: &AppState, w: &Workspace) -> Sample {
    let guest = match (w.internal_ip.as_deref(), w.agent_token.as_deref()) {
        (Some(ip), Some(token)) if w.observed_state == ObservedState::Running => {
            let url = format!("http://{ip}:{API_PORT}/metrics");
            match client().get(url).bearer_auth(token).send().await {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                _ => None,
            }
        }
        _ => None,
    };
    Sample {
        at: Instant::now(),
        guest,
        host: st.manager.backend.stats(&w.id),
    }
}

/// Clock ticks per second in /proc (USER_HZ: 100 on every Linux architecture we run).
fn ticks_per_second() -> f64 {
    100.0
}

fn u(v: Option<&Value>, path: &[&str]) -> Option<u64> {
    let mut cur = v?;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The stats event between two samples (`prev` None: rates are 0).
fn event(w: &Workspace, prev: Option<&Sample>, cur: &Sample) -> Value {
    let g = cur.guest.as_ref();
    let h = cur.host.as_ref();
    let secs = prev
        .map(|p| cur.at.duration_since(p.at).as_secs_f64())
        .unwrap_or(0.0);
    let delta = |now: Option<u64>, before: Option<u64>| match (now, before) {
        (Some(n), Some(b)) if n >= b => Some(n - b),
        _ => None,
    };
    let pg = prev.and_then(|p| p.guest.as_ref());
    let ph = prev.and_then(|p| p.host.as_ref());
    let cpu = match (
        delta(u(g, &["cpu", "busy_ticks"]), u(pg, &["cpu", "busy_ticks"])),
        delta(
            u(g, &["cpu", "total_ticks"]),
            u(pg, &["cpu", "total_ticks"]),
        ),
    ) {
        (Some(b), Some(t)) if t > 0 => round1(b as f64 / t as f64 * 100.0),
        _ => 0.0,
    };
    let host_cpu = match delta(u(h, &["cpu_ticks"]), u(ph, &["cpu_ticks"])) {
        Some(d) if secs > 0.0 => round1(d as f64 / ticks_per_second() / secs * 100.0),
        _ => 0.0,
    };
    let rate = |path: &[&str]| match delta(u(g, path), u(pg, path)) {
        Some(d) if secs > 0.0 => (d as f64 / secs).round() as u64,
        _ => 0,
    };
    let mem_used = u(g, &["memory", "used_bytes"]);
    let mem_total = u(g, &["memory", "total_bytes"]).or_else(|| Some(u64::from(w.memory_mb) << 20));
    json!({
        "workspace_id": w.id,
        "status": w.observed_state.as_str(),
        "cpu_usage": cpu,
        "cpus": w.cpus,
        "memory_usage": mem_used,
        "memory_used_bytes": mem_used,
        "memory_total_bytes": mem_total,
        "memory_percent": match (mem_used, mem_total) {
            (Some(a), Some(b)) if b > 0 => round1(a as f64 / b as f64 * 100.0),
            _ => 0.0,
        },
        "disk": {
            "read_bytes": u(g, &["disk", "read_bytes"]),
            "write_bytes": u(g, &["disk", "write_bytes"]),
            "read_bytes_per_sec": rate(&["disk", "read_bytes"]),
            "write_bytes_per_sec": rate(&["disk", "write_bytes"]),
        },
        "network": {
            "rx": u(g, &["network", "rx_bytes"]).or_else(|| u(h, &["net_rx_bytes"])),
            "tx": u(g, &["network", "tx_bytes"]).or_else(|| u(h, &["net_tx_bytes"])),
            "rx_bytes_per_sec": rate(&["network", "rx_bytes"]),
            "tx_bytes_per_sec": rate(&["network", "tx_bytes"]),
        },
        "host": {
            "cpu_usage": host_cpu,
            "vmm_rss_bytes": u(h, &["rss_bytes"]),
            "tap_rx_bytes": u(h, &["net_rx_bytes"]),
            "tap_tx_bytes": u(h, &["net_tx_bytes"]),
        },
        "guest_available": g.is_some(),
        "timestamp": warren_state::now(),
    })
}

/// One-shot: two samples 500 ms apart so CPU and rates mean something.
pub async fn stats(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    let first = sample(&st, &w).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = sample(&st, &w).await;
    let mut v = event(&w, Some(&first), &second);
    v["success"] = Value::Bool(true);
    // Fields this endpoint had before (kept for existing callers).
    v["memory_mb"] = json!(w.memory_mb);
    v["disk_size_mb"] = json!(w.disk_size_mb);
    v["vm"] = second.host.clone().unwrap_or(Value::Null);
    Ok(Json(v))
}

/// SSE: `event: stats` every second while the client reads; the first one after one
/// second so it carries rates.
pub async fn stream(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let w = find(&st, &c.id, &id).await?;
    if w.observed_state != ObservedState::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "workspace_not_running",
            format!("workspace {} is {}: start it first", w.id, w.observed_state),
        ));
    }
    let first = sample(&st, &w).await;
    let body = futures_util::stream::unfold((st, w, first), |(st, w, prev)| async move {
        let next_at = prev.at + Duration::from_secs(1);
        tokio::time::sleep_until(next_at.into()).await;
        // The row again: a stopped workspace ends the stream.
        let w = st.manager.store.workspace(&w.id).await.ok().flatten()?;
        if w.observed_state != ObservedState::Running {
            return None;
        }
        let cur = sample(&st, &w).await;
        let ev = event(&w, Some(&prev), &cur);
        let frame = Bytes::from(format!("event: stats\ndata: {ev}\n\n"));
        Some((Ok::<Bytes, std::convert::Infallible>(frame), (st, w, cur)))
    });
    Ok(super::sse(Body::from_stream(body)))
}
