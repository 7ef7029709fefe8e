//! The boundary between the control plane and whatever runs VMs.
//!
//! [`WorkspaceBackend`] is what the manager needs from a node; the node agent
//! implements it in [`crate::node_backend`]. Keeping it a trait lets the API build and
//! be tested without VM code, and lets a remote node (a later multi-host control plane)
//! implement it over the network.

use async_trait::async_trait;
use serde::Serialize;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::mpsc;

/// What to boot.
#[derive(Debug, Clone, PartialEq)]
pub struct BootSpec {
    pub id: String,
    pub image: String,
    pub cpus: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u64,
    pub env: Vec<(String, String)>,
    pub cmd: Option<Vec<String>>,
    /// Disk and address survive stop/start and server restarts.
    pub persistent: bool,
    /// Firewall, DNS and bandwidth policy (see [`crate::network`]).
    pub network: warren_netpolicy::NetworkPolicy,
    /// `config.workloads`: started by the agent at every boot.
    pub workloads: Vec<serde_json::Value>,
}

/// A VM whose agent is serving the runtime API.
#[derive(Debug, Clone, PartialEq)]
pub struct Booted {
    pub internal_ip: String,
    pub agent_token: String,
    /// Where boot time went (engine specific), shown in the workspace's info.
    pub report: serde_json::Value,
}

/// Something that happened to a running workspace on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendEvent {
    /// The workspace's `cmd` exited.
    CmdExited { id: String, exit_code: i32 },
    /// The VM went away without being asked (crash, poweroff inside).
    VmExited { id: String, detail: String },
}

/// Where a boot is, for the workspace's `provisioning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPhase {
    /// Resolving (pulling, building) the image.
    Preparing,
    /// The VM is booting.
    Starting,
}

/// Receives progress of a boot.
pub trait BootProgress: Send + Sync {
    fn phase(&self, phase: BootPhase, message: &str);
}

/// Ignores progress.
pub struct NoBootProgress;

impl BootProgress for NoBootProgress {
    fn phase(&self, _phase: BootPhase, _message: &str) {}
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The spec is outside what the node accepts (maps to 422).
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The node is out of something (addresses, disk) (maps to 409).
    #[error("{0}")]
    Capacity(String),
    /// The workspace is not running (maps to 409).
    #[error("workspace {0} is not running")]
    NotRunning(String),
    #[error("{0}")]
    Failed(String),
}

/// An image the node can boot.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub id: String,
    pub image: String,
    pub label: String,
    pub desc: String,
    pub category: String,
}

/// The node's per-workspace limits.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    pub max_cpus: u32,
    pub max_memory_mb: u32,
    pub max_disk_mb: u64,
}

#[async_trait]
pub trait WorkspaceBackend: Send + Sync + 'static {
    fn limits(&self) -> Limits;
    /// Check a spec before anything is allocated.
    fn validate(&self, spec: &BootSpec) -> Result<(), BackendError>;
    /// Reserve a workspace booted ahead of demand that fits `spec` (its `id` aside):
    /// the returned id is the one to create it with. `None`: there is none.
    fn reserve_warm(&self, _spec: &BootSpec) -> Option<String> {
        None
    }
    /// Give back a reservation that will not be used.
    fn release_warm(&self, _id: &str) {}
    /// How many workspaces booted ahead of demand are waiting.
    fn warm_idle(&self) -> u64 {
        0
    }
    fn images(&self) -> Vec<ImageInfo>;
    /// Boot a new workspace (removing leftovers of an earlier attempt with the same id).
    async fn create(
        &self,
        spec: &BootSpec,
        progress: &dyn BootProgress,
    ) -> Result<Booted, BackendError>;
    /// Boot an existing (stopped) workspace with its disk; a workspace frozen to disk
    /// is thawed instead.
    async fn start(&self, spec: &BootSpec) -> Result<Booted, BackendError>;
    /// Power off; the disk stays (a frozen workspace's saved memory is dropped). Not
    /// running is not an error.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), BackendError>;
    /// Freeze the vCPUs, memory kept.
    async fn pause(&self, id: &str) -> Result<(), BackendError>;
    async fn resume(&self, id: &str) -> Result<(), BackendError>;
    /// Can this backend freeze a workspace to disk ([`WorkspaceBackend::suspend`])?
    fn can_suspend(&self) -> bool {
        false
    }
    /// Freeze to disk: save memory and device state, end the VM; the disk and the
    /// address stay. [`WorkspaceBackend::start`] thaws it with every process as it
    /// was. On failure the VM keeps running.
    async fn suspend(&self, id: &str) -> Result<(), BackendError> {
        Err(BackendError::Failed(format!(
            "this backend cannot freeze {id} to disk"
        )))
    }
    /// Is the workspace frozen to disk (and so resumable after a restart)?
    fn is_suspended(&self, _id: &str) -> bool {
        false
    }
    /// Since when a workspace has been frozen to disk (kept across server restarts).
    fn suspended_since(&self, _id: &str) -> Option<std::time::SystemTime> {
        None
    }
    /// Capture memory, device state and disk of a running workspace (its one
    /// snapshot, replacing an older one). It runs on afterwards unless `keep_paused`,
    /// in which case its vCPUs stay stopped (memory kept). Returns the snapshot's info.
    async fn snapshot(
        &self,
        id: &str,
        _keep_paused: bool,
    ) -> Result<serde_json::Value, BackendError> {
        Err(BackendError::Failed(format!(
            "this backend cannot snapshot {id}"
        )))
    }
    /// The workspace's snapshot, if any.
    fn snapshot_info(&self, _id: &str) -> Option<serde_json::Value> {
        None
    }
    /// Delete the workspace's snapshot; `false`: it had none.
    async fn delete_snapshot(&self, _id: &str) -> Result<bool, BackendError> {
        Ok(false)
    }
    /// Copy the workspace's writable disk as archive `version` (a running workspace's
    /// guest is flushed and its vCPUs stopped for the copy).
    async fn create_archive(
        &self,
        id: &str,
        _version: &str,
    ) -> Result<serde_json::Value, BackendError> {
        Err(BackendError::Failed(format!(
            "this backend cannot archive {id}"
        )))
    }
    /// The workspace's archives, oldest first.
    fn archives(&self, _id: &str) -> Vec<serde_json::Value> {
        Vec::new()
    }
    fn archive(&self, _id: &str, _version: &str) -> Option<serde_json::Value> {
        None
    }
    /// Delete one archive; `false`: no such version.
    async fn delete_archive(&self, _id: &str, _version: &str) -> Result<bool, BackendError> {
        Ok(false)
    }
    /// Put the workspace back to its snapshot (memory, processes, disk), running.
    async fn restore_snapshot(&self, spec: &BootSpec) -> Result<Booted, BackendError> {
        Err(BackendError::Failed(format!(
            "this backend cannot restore {}",
            spec.id
        )))
    }
    /// Fork the running workspace `id` into `children` (new ids, the parent's shape):
    /// each a copy of it at one instant with its own identity. The parent runs on;
    /// on failure no child is left. Returns the children and a report.
    async fn fork(
        &self,
        id: &str,
        _children: &[BootSpec],
    ) -> Result<(Vec<Booted>, serde_json::Value), BackendError> {
        Err(BackendError::Failed(format!(
            "this backend cannot fork {id}"
        )))
    }
    /// Remove everything of the workspace on the node, running or not; idempotent.
    async fn remove(&self, id: &str) -> Result<(), BackendError>;
    /// After a server restart: take over the workspace's VM if it still runs.
    async fn adopt(&self, spec: &BootSpec) -> Result<Option<Booted>, BackendError>;
    /// Remove VMs, taps, leases and directories of workspaces not in `keep`.
    async fn reconcile(&self, keep: &HashSet<String>) -> Result<serde_json::Value, BackendError>;
    fn is_running(&self, id: &str) -> bool;
    /// Change a running workspace's network policy at once (atomically); a workspace
    /// that is not running gets it at its next boot from its [`BootSpec`].
    async fn set_network(
        &self,
        id: &str,
        _policy: &warren_netpolicy::NetworkPolicy,
    ) -> Result<(), BackendError> {
        Err(BackendError::Failed(format!(
            "this backend cannot change the network of {id} while it runs"
        )))
    }
    /// The boot (console) log.
    fn boot_log(&self, id: &str) -> Option<String>;
    /// Host-side numbers about a running VM (pid, memory), for one-shot stats.
    fn stats(&self, id: &str) -> Option<serde_json::Value>;
    /// Where [`BackendEvent`]s go; set once at start.
    fn set_events(&self, tx: mpsc::UnboundedSender<BackendEvent>);
}
