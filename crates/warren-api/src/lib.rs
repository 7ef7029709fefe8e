//! The control plane's REST API.
//!
//! Paths, fields, statuses and error bodies follow the Oblien workspace API as the
//! official `oblien` npm client (v2.4.0) uses it, so that client works unmodified
//! against Warren. Layout:
//!
//! * [`routes`]: HTTP handlers (thin: parse, authorise, call the manager, render);
//! * [`model`]: request validation and the workspace's JSON view;
//! * [`manager`]: desired vs observed state, per-workspace locking, provisioning,
//!   power, TTL and exit handling, reconciliation at start;
//! * [`backend`]: the trait the manager drives VMs through; [`node_backend`] is the
//!   real one (the node agent);
//! * [`auth`], [`error`], [`openapi`].

pub mod auth;
pub mod backend;
pub mod error;
pub mod idle;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod network;
#[cfg(feature = "node")]
pub mod node_backend;
pub mod openapi;
pub mod ratelimit;
pub mod routes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use backend::WorkspaceBackend;
pub use manager::Manager;

/// Server-wide limits, checked before anything is allocated.
#[derive(Debug, Clone)]
pub struct Capacity {
    pub max_workspaces: u32,
    pub max_workspaces_per_client: u32,
    /// Sum of the memory of all workspaces.
    pub max_memory_mb: u64,
    /// Sum of the disks of all workspaces.
    pub max_disk_mb: u64,
}

/// Everything the API is configured with.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub data_dir: PathBuf,
    /// The gateway's URL as clients reach it (shown with gateway tokens).
    pub gateway_url: String,
    pub gateway_token_ttl: Duration,
    pub default_image: String,
    pub capacity: Capacity,
    /// How long a stopping guest may take to power off before it is killed.
    pub stop_grace: Duration,
    pub ttl_check_interval: Duration,
    /// The edge (public URLs, custom domains, SSH gateway) as clients reach it;
    /// `None`: this server runs no edge.
    pub edge: Option<warren_edge::EdgeConfig>,
    /// `POST /pause` freezes to disk (memory and device state saved, the VMM process
    /// ends and its memory goes back to the host), as the oblien client documents;
    /// `false`: pause only stops the vCPUs and keeps the memory resident.
    pub pause_to_disk: bool,
    /// The shortest `suspend_after` of a sleep-on-idle policy (the oblien client
    /// documents 120 s).
    pub idle_min_secs: u64,
    /// Requests per second (and burst) each client may make (`ratelimit`).
    pub rate_limit: ratelimit::RateLimit,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            data_dir: "/var/lib/warren".into(),
            gateway_url: "http://127.0.0.1:9991".into(),
            gateway_token_ttl: Duration::from_secs(3600),
            default_image: "debian-12".into(),
            capacity: Capacity {
                max_workspaces: 256,
                max_workspaces_per_client: 256,
                max_memory_mb: host_memory_mb().saturating_sub(256).max(1024),
                max_disk_mb: 1 << 22,
            },
            stop_grace: Duration::from_secs(5),
            ttl_check_interval: Duration::from_secs(1),
            edge: None,
            pause_to_disk: true,
            idle_min_secs: 120,
            rate_limit: ratelimit::RateLimit::default(),
        }
    }
}

/// MemTotal of this host, in MiB (0 if unknown).
pub fn host_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub(crate) http: reqwest::Client,
}

impl AppState {
    pub fn new(manager: Arc<Manager>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default();
        AppState { manager, http }
    }
}

pub fn router(state: AppState) -> axum::Router {
    routes::router(state)
}
