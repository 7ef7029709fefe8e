//! The server's own Prometheus metrics (`GET /metrics`): workspaces by state, boot
//! latency, API request latency.
//!
//! Built on `prometheus-client`, the Prometheus project's Rust client: typed metric
//! families and the OpenMetrics text format without a global registry, so every
//! server (and every test server in one process) has its own.
//!
//! The endpoint carries aggregates only (no workspace ids or client ids), like the
//! `/metrics` of Nomad or Kubernetes components, and needs no token so a Prometheus
//! server can scrape it; bind the API to a private address if even counts are
//! sensitive.

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::{Duration, Instant};

/// Observed states reported even when no workspace is in them (so dashboards see 0).
const STATES: &[&str] = &[
    "creating", "starting", "running", "stopping", "stopped", "paused", "failed", "deleting",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BootLabels {
    /// `create` (first boot of a new workspace) or `start` (a later start).
    pub kind: String,
    /// `ok` or `error`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route template (`/workspace/{id}/stats`), never the raw path, so ids do
    /// not become label values.
    pub route: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    workspaces: Family<StateLabels, Gauge>,
    boot_seconds: Family<BootLabels, Histogram>,
    request_seconds: Family<RequestLabels, Histogram>,
    warm_idle: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Boot buckets: a template restore is ~0.1 s, a cold boot under TCG 1-3 s, a first
/// boot that builds an image can take minutes.
const BOOT_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 180.0,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("warren");
        let workspaces = Family::<StateLabels, Gauge>::default();
        registry.register(
            "workspaces",
            "Workspaces by observed state",
            workspaces.clone(),
        );
        let boot_seconds = Family::<BootLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(BOOT_BUCKETS.iter().copied())
        });
        registry.register(
            "workspace_boot_seconds",
            "Time from asking the node to boot a workspace to its agent being ready",
            boot_seconds.clone(),
        );
        let request_seconds = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(REQUEST_BUCKETS.iter().copied())
        });
        registry.register(
            "api_request_seconds",
            "Control-plane API request latency until the response head",
            request_seconds.clone(),
        );
        let warm_idle = Gauge::default();
        registry.register(
            "warm_pool_idle",
            "Workspaces booted ahead of demand, waiting to be created",
            warm_idle.clone(),
        );
        Metrics {
            registry,
            workspaces,
            boot_seconds,
            request_seconds,
            warm_idle,
        }
    }

    /// Record one boot attempt.
    pub fn observe_boot(&self, fresh: bool, ok: bool, took: Duration) {
        self.boot_seconds
            .get_or_create(&BootLabels {
                kind: if fresh { "create" } else { "start" }.into(),
                outcome: if ok { "ok" } else { "error" }.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.request_seconds
            .get_or_create(&RequestLabels {
                method: method.into(),
                route: route.into(),
                status,
            })
            .observe(took.as_secs_f64());
    }

    /// Set the per-state gauges from a fresh count.
    pub fn set_workspace_states<'a>(&self, states: impl Iterator<Item = &'a str>) {
        let mut counts: std::collections::BTreeMap<String, i64> =
            STATES.iter().map(|s| (s.to_string(), 0)).collect();
        for s in states {
            *counts.entry(s.to_string()).or_default() += 1;
        }
        for (state, n) in counts {
            self.workspaces.get_or_create(&StateLabels { state }).set(n);
        }
    }

    pub fn set_warm_idle(&self, n: u64) {
        self.warm_idle.set(n as i64);
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Middleware: time every request by its route template.
pub async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    st.manager
        .metrics
        .observe_request(&method, &route, resp.status().as_u16(), start.elapsed());
    resp
}

/// `GET /metrics`
pub async fn handler(State(st): State<AppState>) -> Response {
    match st.manager.store.all_workspaces().await {
        Ok(all) => st
            .manager
            .metrics
            .set_workspace_states(all.iter().map(|w| w.observed_state.as_str())),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count workspaces"),
    }
    st.manager
        .metrics
        .set_warm_idle(st.manager.backend.warm_idle());
    match st.manager.metrics.encode() {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_states_boots_and_requests() {
        let m = Metrics::new();
        m.set_workspace_states(["running", "running", "stopped"].into_iter());
        m.observe_boot(true, true, Duration::from_millis(1200));
        m.observe_request("GET", "/workspace/{id}", 200, Duration::from_millis(3));
        m.set_warm_idle(2);
        let text = m.encode().unwrap();
        assert!(text.contains("warren_warm_pool_idle 2"), "{text}");
        assert!(
            text.contains("warren_workspaces{state=\"running\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("warren_workspaces{state=\"stopped\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("warren_workspaces{state=\"paused\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "warren_workspace_boot_seconds_bucket{le=\"1.5\",kind=\"create\",outcome=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "warren_workspace_boot_seconds_bucket{le=\"1.0\",kind=\"create\",outcome=\"ok\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("warren_api_request_seconds_count{method=\"GET\",route=\"/workspace/{id}\",status=\"200\"} 1"),
            "{text}"
        );
        // A later count replaces the earlier one; states that emptied go to 0.
        m.set_workspace_states(["stopped"].into_iter());
        let text = m.encode().unwrap();
        assert!(
            text.contains("warren_workspaces{state=\"running\"} 0"),
            "{text}"
        );
    }
}
