//! The workspace manager: turns requests into desired state and drives each
//! workspace's observed state towards it through the backend.
//!
//! Rules that make crashes harmless:
//! * A request first writes what the user wants (`desired_state`) to the database, then
//!   acts. A killed server finds the intent on restart and finishes it ([`Manager::startup`]).
//! * All work on one workspace happens under that workspace's lock, in
//!   [`Manager::converge`], which reads the row, compares desired with observed, calls
//!   the backend and writes what it observed. Two requests never act on one VM at once.
//! * A create stores the row (with its idempotency key, atomically unique) before any
//!   allocation; a failed boot releases everything (the node's guard) and leaves a
//!   `failed` row that can be retried or deleted.

use crate::backend::{
    BackendError, BackendEvent, BootPhase, BootProgress, BootSpec, WorkspaceBackend,
};
use crate::error::{ApiError, ApiResult};
use crate::model::{self, CreateRequest};
use crate::ApiConfig;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;
use warren_gateway::GatewayKeys;
use warren_state::{
    now, DesiredState, InsertOutcome, NewWorkspace, ObservedState, ProvisioningPhase,
    ProvisioningState, Store, Workspace,
};

/// Provisioning message of a fork's child until the fork answers; at start it marks
/// children of a fork the server died in (see `Manager::startup`).
pub const FORKING_FROM: &str = "Forking from ";

pub struct Manager {
    pub store: Store,
    pub backend: Arc<dyn WorkspaceBackend>,
    pub config: ApiConfig,
    pub keys: GatewayKeys,
    /// The server's Prometheus metrics (`GET /metrics`).
    pub metrics: crate::metrics::Metrics,
    /// Per-client request rate limits (checked with the credentials).
    pub rate_limiter: crate::ratelimit::RateLimiter,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Invalid { field, reason } => ApiError::invalid(&field, reason),
            BackendError::Capacity(m) => ApiError::conflict("POOL_LIMIT_REACHED", m),
            BackendError::NotRunning(id) => {
                ApiError::conflict("conflict", format!("workspace {id} is not running"))
            }
            BackendError::Failed(m) => ApiError::internal(m),
        }
    }
}

/// Boot progress into a watch channel (latest value wins).
struct WatchProgress(tokio::sync::watch::Sender<Option<(BootPhase, String)>>);

impl BootProgress for WatchProgress {
    fn phase(&self, phase: BootPhase, message: &str) {
        let _ = self.0.send(Some((phase, message.to_string())));
    }
}

/// A new workspace id: `ws_` and 12 random lowercase letters or digits.
pub(crate) fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    use rand::Rng;
    let mut r = rand::thread_rng();
    let s: String = (0..12)
        .map(|_| ALPHABET[r.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("ws_{s}")
}

fn add_secs(secs: u64) -> String {
    warren_state::fmt_time(chrono::Utc::now() + chrono::Duration::seconds(secs as i64))
}

/// The TTL deadline counted from now, for a workspace with a TTL.
pub fn ttl_deadline(w: &Workspace) -> Option<String> {
    w.ttl_seconds.map(add_secs)
}

impl Manager {
    pub fn new(
        store: Store,
        backend: Arc<dyn WorkspaceBackend>,
        config: ApiConfig,
        keys: GatewayKeys,
    ) -> Arc<Self> {
        Arc::new(Manager {
            store,
            backend,
            rate_limiter: crate::ratelimit::RateLimiter::new(config.rate_limit),
            config,
            keys,
            metrics: crate::metrics::Metrics::new(),
            locks: Default::default(),
        })
    }

    pub(crate) fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id.to_string()).or_default().clone()
    }

    /// What to boot for a workspace row.
    pub fn boot_spec(&self, w: &Workspace) -> BootSpec {
        let cfg = w.config.as_object().cloned().unwrap_or_default();
        let mut workloads = model::workloads_of(&cfg).unwrap_or_default();
        // A restarting cmd is supervised by the agent as a workload; otherwise it runs
        // once.
        let cmd = match model::cmd_workload(&cfg).unwrap_or_default() {
            Some(wl) => {
                workloads.push(wl);
                None
            }
            None => model::cmd_of(&cfg).unwrap_or_default(),
        };
        BootSpec {
            id: w.id.clone(),
            image: w.image.clone(),
            cpus: w.cpus,
            memory_mb: w.memory_mb,
            disk_size_mb: w.disk_size_mb,
            env: model::env_of(&cfg).unwrap_or_default(),
            cmd,
            // Checked when stored; a config that no longer checks boots with the default.
            network: crate::network::policy_of(&cfg).unwrap_or_default(),
            workloads,
            // Every workspace the server manages keeps its disk and address while it
            // exists; the server itself removes it (delete, TTL, remove_on_exit).
            persistent: true,
        }
    }

    /// Check the request against the node and the server's capacity, then store it
    /// and start provisioning in the background. Returns the row and whether it is new
    /// (false: the idempotency key matched an earlier create).
    pub async fn create(
        self: &Arc<Self>,
        client_id: &str,
        req: &CreateRequest,
    ) -> ApiResult<(Workspace, bool)> {
        if let Some(key) = &req.idempotency_key {
            // A retried create is answered before any check that could now fail
            // (capacity used by the first attempt itself).
            if let Some(w) = self.store.client_workspace_by_key(client_id, key).await? {
                return Ok((w, false));
            }
        }
        let image = req
            .image
            .clone()
            .unwrap_or_else(|| self.config.default_image.clone());
        let mut spec = BootSpec {
            id: String::new(),
            image: image.clone(),
            cpus: req.cpus,
            memory_mb: req.memory_mb,
            disk_size_mb: req.disk_size_mb,
            env: model::env_of(req.config.as_object().unwrap_or(&Default::default()))?,
            cmd: model::cmd_of(req.config.as_object().unwrap_or(&Default::default()))?,
            network: crate::network::policy_of(
                req.config.as_object().unwrap_or(&Default::default()),
            )?,
            workloads: model::workloads_of(req.config.as_object().unwrap_or(&Default::default()))?,
            persistent: true,
        };
        spec.id = new_id();
        self.backend.validate(&spec)?;
        self.check_capacity(client_id, &spec).await?;
        // A workspace booted ahead of demand, when one fits: the row takes its id.
        let id = match self.backend.reserve_warm(&spec) {
            Some(warm) => warm,
            None => spec.id.clone(),
        };
        let name = req.name.clone().unwrap_or_else(|| id.clone());
        let new = NewWorkspace {
            id: id.clone(),
            client_id: client_id.to_string(),
            name,
            slug: req.slug.clone(),
            image,
            mode: req.mode.clone(),
            cpus: req.cpus,
            memory_mb: req.memory_mb,
            disk_size_mb: req.disk_size_mb,
            config: req.config.clone(),
            idempotency_key: req.idempotency_key.clone(),
            ttl_seconds: req.lifecycle.ttl_seconds,
            ttl_action: req.lifecycle.ttl_action.clone(),
            // The TTL counts from when the workspace is running (see `boot`).
            ttl_expires_at: None,
            remove_on_exit: req.lifecycle.remove_on_exit,
            restart_policy: req.lifecycle.restart_policy.clone(),
        };
        let inserted = self.store.insert_workspace(&new).await;
        if !matches!(inserted, Ok(InsertOutcome::Created(_))) {
            self.backend.release_warm(&id);
        }
        match inserted? {
            InsertOutcome::Existing(w) => Ok((w, false)),
            InsertOutcome::Created(w) => {
                self.log(Some(client_id), &w.id, "create", "accepted", None)
                    .await;
                self.spawn_converge(&w.id);
                Ok((w, true))
            }
        }
    }

    async fn check_capacity(&self, client_id: &str, spec: &BootSpec) -> ApiResult<()> {
        let c = &self.config.capacity;
        let (mine, _, _, _) = self.store.usage(Some(client_id)).await?;
        if mine as u64 >= u64::from(c.max_workspaces_per_client) {
            return Err(ApiError::conflict(
                "SANDBOX_LIMIT_REACHED",
                format!(
                    "this client has {mine} workspaces, the limit is {}",
                    c.max_workspaces_per_client
                ),
            ));
        }
        let (n, _cpus, mem, disk) = self.store.usage(None).await?;
        if n as u64 >= u64::from(c.max_workspaces) {
            return Err(ApiError::conflict(
                "POOL_LIMIT_REACHED",
                format!("this server runs at most {} workspaces", c.max_workspaces),
            ));
        }
        if mem as u64 + u64::from(spec.memory_mb) > c.max_memory_mb {
            return Err(ApiError::conflict(
                "POOL_LIMIT_REACHED",
                format!(
                    "not enough memory: {} MB asked, {} MB of {} MB left",
                    spec.memory_mb,
                    c.max_memory_mb.saturating_sub(mem as u64),
                    c.max_memory_mb
                ),
            ));
        }
        if disk as u64 + spec.disk_size_mb > c.max_disk_mb {
            return Err(ApiError::conflict(
                "POOL_LIMIT_REACHED",
                format!(
                    "not enough disk: {} MB asked, {} MB of {} MB left",
                    spec.disk_size_mb,
                    c.max_disk_mb.saturating_sub(disk as u64),
                    c.max_disk_mb
                ),
            ));
        }
        Ok(())
    }

    pub async fn log(
        &self,
        client: Option<&str>,
        id: &str,
        op: &str,
        outcome: &str,
        detail: Option<&str>,
    ) {
        if let Err(e) = self
            .store
            .log_operation(client, Some(id), op, outcome, detail)
            .await
        {
            tracing::warn!(workspace_id = id, error = %e, "cannot write the operations log");
        }
    }

    /// Replace a workspace's `config.network_config`: checked first (a bad one changes
    /// nothing), applied at once if the VM runs, then stored. Under the workspace's
    /// lock, so it cannot race a boot that would apply the old one.
    pub async fn set_network(
        &self,
        client_id: &str,
        id: &str,
        network_config: serde_json::Map<String, serde_json::Value>,
    ) -> ApiResult<Workspace> {
        let lock = self.lock_of(id);
        let _g = lock.lock().await;
        let mut w = self
            .store
            .workspace(id)
            .await?
            .ok_or_else(|| ApiError::not_found("workspace", id))?;
        let mut cfg = w.config.as_object().cloned().unwrap_or_default();
        cfg.insert(
            crate::network::KEY.into(),
            serde_json::Value::Object(network_config),
        );
        let policy = crate::network::policy_of(&cfg)?;
        if self.backend.is_running(id) {
            self.backend.set_network(id, &policy).await?;
        }
        w.config = serde_json::Value::Object(cfg);
        let w = self.store.save_settings(&w).await?;
        self.log(Some(client_id), id, "network_update", "ok", None)
            .await;
        Ok(w)
    }

    /// Converge in the background (create, delete).
    pub fn spawn_converge(self: &Arc<Self>, id: &str) {
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = me.converge(&id).await {
                tracing::warn!(workspace_id = %id, error = %e.message, "background work failed");
            }
        });
    }

    /// Record what the user wants and converge now; the answer comes when the node
    /// has confirmed the state. `None`: the workspace is gone (deleted).
    pub async fn set_desired(
        self: &Arc<Self>,
        client_id: Option<&str>,
        id: &str,
        desired: DesiredState,
        user_requested: bool,
        op: &str,
    ) -> ApiResult<Option<Workspace>> {
        if !self.store.set_desired(id, desired, user_requested).await? {
            return Err(ApiError::conflict(
                "conflict",
                format!("workspace {id} is being deleted"),
            ));
        }
        let r = self.converge(id).await;
        let outcome = if r.is_ok() { "ok" } else { "error" };
        let detail = r.as_ref().err().map(|e| e.message.clone());
        self.log(client_id, id, op, outcome, detail.as_deref())
            .await;
        r
    }

    /// Change a workspace's resources. Everything is checked before anything
    /// changes: each value against the node's limits (422 naming the field), and the
    /// disk only grows. The new values are stored and take effect at the next start
    /// (the node grows the disk file, the guest its file system); with `apply` a
    /// running workspace is restarted now. Returns the row and whether it restarted.
    pub async fn set_resources(
        self: &Arc<Self>,
        client_id: &str,
        id: &str,
        cpus: Option<u32>,
        memory_mb: Option<u32>,
        disk_size_mb: Option<u64>,
        apply: bool,
    ) -> ApiResult<(Workspace, bool)> {
        let lock = self.lock_of(id);
        let changed = {
            let _g = lock.lock().await;
            let mut w = self
                .store
                .workspace(id)
                .await?
                .ok_or_else(|| ApiError::not_found("workspace", id))?;
            if let Some(d) = disk_size_mb {
                if d < w.disk_size_mb {
                    return Err(ApiError::invalid(
                        "disk_size_mb",
                        format!(
                            "{d} is smaller than the disk ({} MB): disks only grow",
                            w.disk_size_mb
                        ),
                    ));
                }
            }
            let before = (w.cpus, w.memory_mb, w.disk_size_mb);
            w.cpus = cpus.unwrap_or(w.cpus);
            w.memory_mb = memory_mb.unwrap_or(w.memory_mb);
            w.disk_size_mb = disk_size_mb.unwrap_or(w.disk_size_mb);
            self.backend.validate(&self.boot_spec(&w))?;
            let changed = before != (w.cpus, w.memory_mb, w.disk_size_mb);
            if changed {
                self.store
                    .set_resources(id, w.cpus, w.memory_mb, w.disk_size_mb)
                    .await?;
                self.log(Some(client_id), id, "resources_update", "ok", None)
                    .await;
            }
            changed
        };
        let running = self.backend.is_running(id);
        let restarted = apply && changed && running;
        if restarted {
            self.restart(client_id, id).await?;
        }
        let w = self
            .store
            .workspace(id)
            .await?
            .ok_or_else(|| ApiError::not_found("workspace", id))?;
        Ok((w, restarted))
    }

    /// Stop then start, under one lock.
    pub async fn restart(
        self: &Arc<Self>,
        client_id: &str,
        id: &str,
    ) -> ApiResult<Option<Workspace>> {
        let lock = self.lock_of(id);
        {
            let _g = lock.lock().await;
            if let Some(mut w) = self.store.workspace(id).await? {
                if matches!(
                    w.observed_state,
                    ObservedState::Running | ObservedState::Paused
                ) {
                    self.stop_vm(&mut w).await?;
                }
            }
        }
        self.set_desired(Some(client_id), id, DesiredState::Running, false, "restart")
            .await
    }

    /// Drive one workspace's observed state to its desired state.
    pub async fn converge(self: &Arc<Self>, id: &str) -> ApiResult<Option<Workspace>> {
        let lock = self.lock_of(id);
        let _g = lock.lock().await;
        let span = tracing::info_span!("workspace", workspace_id = %id);
        self.converge_locked(id).instrument(span).await
    }

    async fn converge_locked(self: &Arc<Self>, id: &str) -> ApiResult<Option<Workspace>> {
        let Some(mut w) = self.store.workspace(id).await? else {
            return Ok(None);
        };
        match w.desired_state {
            DesiredState::Deleted => {
                self.remove(&mut w).await?;
                Ok(None)
            }
            DesiredState::Running => {
                match w.observed_state {
                    ObservedState::Running if self.backend.is_running(id) => {}
                    ObservedState::Paused if self.backend.is_running(id) => {
                        self.backend.resume(id).await?;
                        w.observed_state = ObservedState::Running;
                        w = self.store.save_observed(&w).await?;
                    }
                    _ => self.boot(&mut w).await?,
                }
                Ok(Some(w))
            }
            DesiredState::Stopped => {
                if self.backend.is_running(id)
                    || matches!(
                        w.observed_state,
                        ObservedState::Running | ObservedState::Paused | ObservedState::Stopping
                    )
                {
                    self.stop_vm(&mut w).await?;
                } else if w.observed_state != ObservedState::Stopped
                    && w.prov_state == ProvisioningState::Ready
                {
                    w.observed_state = ObservedState::Stopped;
                    w = self.store.save_observed(&w).await?;
                }
                Ok(Some(w))
            }
            DesiredState::Paused => {
                if w.observed_state == ObservedState::Running && self.backend.is_running(id) {
                    if self.config.pause_to_disk && self.backend.can_suspend() {
                        // Freeze to disk: the VM ends; its token is reissued on resume.
                        self.backend.suspend(id).await?;
                        w.agent_token = None;
                    } else {
                        self.backend.pause(id).await?;
                    }
                    w.observed_state = ObservedState::Paused;
                    w = self.store.save_observed(&w).await?;
                } else if w.observed_state != ObservedState::Paused {
                    return Err(ApiError::conflict(
                        "conflict",
                        format!(
                            "workspace {id} is {}: only a running workspace can be paused",
                            w.observed_state
                        ),
                    ));
                }
                Ok(Some(w))
            }
        }
    }

    async fn boot(&self, w: &mut Workspace) -> ApiResult<()> {
        // A workspace that never became ready is (re)created from scratch: leftovers
        // of an interrupted attempt are removed first by the backend.
        let fresh = w.prov_state != ProvisioningState::Ready;
        // Thawing a workspace frozen to disk: the same run goes on (its start time,
        // TTL deadline and cmd's exit code stay).
        let thaw = !fresh && w.observed_state == ObservedState::Paused;
        let spec = self.boot_spec(w);
        if fresh {
            w.observed_state = ObservedState::Creating;
            w.set_provisioning(
                ProvisioningState::Running,
                ProvisioningPhase::Starting,
                "Booting the VM",
            );
        } else {
            w.observed_state = ObservedState::Starting;
        }
        *w = self.store.save_observed(w).await?;
        let boot_started = std::time::Instant::now();
        let r = if fresh {
            // Progress goes to the row through one writer task, finished before the
            // final save so it cannot overwrite it.
            let (tx, mut rx) = tokio::sync::watch::channel(None::<(BootPhase, String)>);
            let store = self.store.clone();
            let id = w.id.clone();
            let writer = tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let Some((phase, msg)) = rx.borrow_and_update().clone() else {
                        continue;
                    };
                    let phase = match phase {
                        BootPhase::Preparing => ProvisioningPhase::Preparing,
                        BootPhase::Starting => ProvisioningPhase::Starting,
                    };
                    if let Err(e) = store.set_provisioning_progress(&id, phase, &msg).await {
                        tracing::warn!(error = %e, "cannot record provisioning progress");
                    }
                }
            });
            let r = self.backend.create(&spec, &WatchProgress(tx)).await;
            let _ = writer.await;
            r
        } else {
            self.backend.start(&spec).await
        };
        self.metrics
            .observe_boot(fresh, r.is_ok(), boot_started.elapsed());
        match r {
            Ok(b) => {
                w.internal_ip = Some(b.internal_ip);
                w.agent_token = Some(b.agent_token);
                w.observed_state = ObservedState::Running;
                if !thaw {
                    w.started_at = Some(now());
                    w.last_exit_code = None;
                }
                if fresh {
                    w.set_provisioning(ProvisioningState::Ready, ProvisioningPhase::Ready, "Ready");
                }
                *w = self.store.save_observed(w).await?;
                // A TTL counts from each start.
                if let Some(deadline) = ttl_deadline(w).filter(|_| !thaw) {
                    self.store.set_ttl_expiry(&w.id, Some(&deadline)).await?;
                    w.ttl_expires_at = Some(deadline);
                }
                tracing::info!(ip = ?w.internal_ip, "workspace running");
                if fresh {
                    self.log(None, &w.id, "provision", "ok", None).await;
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "boot failed");
                let (code, api) = match &e {
                    BackendError::Invalid { .. } => ("VALIDATION_FAILED", ApiError::from(e)),
                    BackendError::Capacity(_) => ("CAPACITY", ApiError::from(e)),
                    _ => ("CREATE_FAILED", ApiError::from(e)),
                };
                w.agent_token = None;
                if fresh {
                    w.observed_state = ObservedState::Failed;
                    w.set_provisioning(
                        ProvisioningState::Failed,
                        ProvisioningPhase::Failed,
                        "Failed",
                    );
                    w.prov_error_code = Some(code.to_string());
                    w.prov_error_message = Some(api.message.clone());
                } else if thaw && self.backend.is_suspended(&w.id) {
                    // The frozen state is untouched (e.g. its file failed
                    // authentication): stay paused rather than retry the thaw; stop
                    // discards it and start boots cold.
                    w.observed_state = ObservedState::Paused;
                    self.store
                        .set_desired(&w.id, DesiredState::Paused, true)
                        .await?;
                } else {
                    w.observed_state = ObservedState::Stopped;
                }
                *w = self.store.save_observed(w).await?;
                let op = if fresh { "provision" } else { "start" };
                self.log(None, &w.id, op, "error", Some(&api.message)).await;
                Err(api)
            }
        }
    }

    async fn stop_vm(&self, w: &mut Workspace) -> ApiResult<()> {
        w.observed_state = ObservedState::Stopping;
        *w = self.store.save_observed(w).await?;
        self.backend.stop(&w.id, self.config.stop_grace).await?;
        w.observed_state = ObservedState::Stopped;
        w.agent_token = None;
        *w = self.store.save_observed(w).await?;
        Ok(())
    }

    async fn remove(&self, w: &mut Workspace) -> ApiResult<()> {
        w.observed_state = ObservedState::Deleting;
        w.prov_phase = ProvisioningPhase::Deleting;
        *w = self.store.save_observed(w).await?;
        self.backend.remove(&w.id).await?;
        self.store.delete_workspace(&w.id).await?;
        self.log(None, &w.id, "delete", "ok", None).await;
        tracing::info!("workspace deleted");
        Ok(())
    }

    /// Mark a workspace for deletion and delete it in the background.
    pub async fn delete(self: &Arc<Self>, client_id: &str, id: &str) -> ApiResult<()> {
        self.store
            .set_desired(id, DesiredState::Deleted, false)
            .await?;
        self.log(Some(client_id), id, "delete", "accepted", None)
            .await;
        self.spawn_converge(id);
        Ok(())
    }

    /// Retry a failed creation with the same id and configuration.
    pub async fn retry(self: &Arc<Self>, client_id: &str, id: &str) -> ApiResult<Workspace> {
        let lock = self.lock_of(id);
        let w = {
            let _g = lock.lock().await;
            let mut w = self
                .store
                .workspace(id)
                .await?
                .ok_or_else(|| ApiError::not_found("workspace", id))?;
            if w.prov_state != ProvisioningState::Failed {
                return Err(ApiError::conflict(
                    "conflict",
                    format!(
                        "workspace {id} did not fail (provisioning is {})",
                        w.prov_state
                    ),
                ));
            }
            w.observed_state = ObservedState::Creating;
            w.set_provisioning(
                ProvisioningState::Queued,
                ProvisioningPhase::Queued,
                "Queued",
            );
            self.store.save_observed(&w).await?
        };
        self.store
            .set_desired(id, DesiredState::Running, false)
            .await?;
        self.log(Some(client_id), id, "provisioning_retry", "accepted", None)
            .await;
        self.spawn_converge(id);
        Ok(w)
    }

    /// At server start: take over VMs that still run, remove what belongs to no
    /// workspace, and converge every workspace to what it should be.
    pub async fn startup(self: &Arc<Self>) -> ApiResult<()> {
        let mut all = self.store.all_workspaces().await?;
        // Children of a fork that never answered (the server died during it): the
        // caller got no workspace, and booting them afresh would make empty ones that
        // nobody asked for. They are deleted, with whatever the node made for them.
        for w in &mut all {
            if w.prov_state != ProvisioningState::Ready
                && w.desired_state != DesiredState::Deleted
                && w.prov_message.starts_with(FORKING_FROM)
            {
                tracing::info!(workspace_id = %w.id, "removing the child of an unfinished fork");
                self.store
                    .set_desired(&w.id, DesiredState::Deleted, false)
                    .await?;
                w.desired_state = DesiredState::Deleted;
                self.log(None, &w.id, "fork", "abandoned", Some(&w.prov_message))
                    .await;
            }
        }
        // What the node keeps; an abandoned fork child's VM, lease and disk go with the
        // node's own sweep, since nothing adopts them.
        let keep: HashSet<String> = all
            .iter()
            .filter(|w| {
                !(w.desired_state == DesiredState::Deleted
                    && w.prov_message.starts_with(FORKING_FROM))
            })
            .map(|w| w.id.clone())
            .collect();
        for w in &all {
            let lock = self.lock_of(&w.id);
            let _g = lock.lock().await;
            let mut w = w.clone();
            let adopted = if w.desired_state == DesiredState::Deleted {
                None
            } else {
                match self.backend.adopt(&self.boot_spec(&w)).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(workspace_id = %w.id, error = %e, "cannot adopt");
                        None
                    }
                }
            };
            match adopted {
                Some(b) => {
                    w.internal_ip = Some(b.internal_ip);
                    w.agent_token = Some(b.agent_token);
                    if !matches!(w.observed_state, ObservedState::Paused) {
                        w.observed_state = ObservedState::Running;
                    }
                    if w.prov_state != ProvisioningState::Ready {
                        w.set_provisioning(
                            ProvisioningState::Ready,
                            ProvisioningPhase::Ready,
                            "Ready",
                        );
                    }
                }
                None => {
                    w.agent_token = None;
                    w.observed_state = match w.observed_state {
                        ObservedState::Failed => ObservedState::Failed,
                        ObservedState::Deleting => ObservedState::Deleting,
                        // Frozen to disk (perhaps by a server that died before it
                        // could record it): resumable, whatever the row said.
                        _ if self.backend.is_suspended(&w.id) => ObservedState::Paused,
                        _ if w.prov_state == ProvisioningState::Ready => ObservedState::Stopped,
                        _ => ObservedState::Creating,
                    };
                }
            }
            self.store.save_observed(&w).await?;
        }
        let report = self.backend.reconcile(&keep).await?;
        tracing::info!(workspaces = all.len(), %report, "reconciled at start");
        for w in all {
            let me = self.clone();
            tokio::spawn(async move {
                // A failed create is not retried on its own; everything else converges.
                if w.prov_state == ProvisioningState::Failed
                    && w.desired_state != DesiredState::Deleted
                {
                    return;
                }
                if let Err(e) = me.converge(&w.id).await {
                    tracing::warn!(workspace_id = %w.id, error = %e.message, "converge at start failed");
                }
            });
        }
        Ok(())
    }

    /// Background duties: TTL expiry and events from running workspaces.
    pub fn spawn_background(self: &Arc<Self>, mut events: mpsc::UnboundedReceiver<BackendEvent>) {
        crate::idle::spawn(self.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                me.rate_limiter.shrink();
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.config.ttl_check_interval);
            loop {
                tick.tick().await;
                if let Err(e) = me.expire_ttls().await {
                    tracing::warn!(error = %e.message, "TTL sweep failed");
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let me = me.clone();
                tokio::spawn(async move { me.on_event(ev).await });
            }
        });
    }

    async fn expire_ttls(self: &Arc<Self>) -> ApiResult<()> {
        for mut w in self.store.expired_workspaces(&now()).await? {
            let action = w.ttl_action.clone().unwrap_or_else(|| "stop".into());
            tracing::info!(workspace_id = %w.id, action, "TTL expired");
            // Fire once: the next deadline is set when the workspace starts again.
            w.ttl_expires_at = None;
            self.store.save_settings(&w).await?;
            let desired = match action.as_str() {
                "remove" => DesiredState::Deleted,
                "pause" => DesiredState::Paused,
                _ => DesiredState::Stopped,
            };
            let me = self.clone();
            tokio::spawn(async move {
                if desired == DesiredState::Deleted {
                    let _ = me.store.set_desired(&w.id, desired, false).await;
                    me.log(None, &w.id, "ttl_expired", "ok", Some(&action))
                        .await;
                    let _ = me.converge(&w.id).await;
                } else {
                    let _ = me
                        .set_desired(None, &w.id, desired, false, "ttl_expired")
                        .await;
                }
            });
        }
        Ok(())
    }

    async fn on_event(self: &Arc<Self>, ev: BackendEvent) {
        let (id, exit_code, vm_gone) = match &ev {
            BackendEvent::CmdExited { id, exit_code } => (id.clone(), Some(*exit_code), false),
            BackendEvent::VmExited { id, .. } => (id.clone(), None, true),
        };
        tracing::info!(workspace_id = %id, ?ev, "workspace event");
        let lock = self.lock_of(&id);
        let remove = {
            let _g = lock.lock().await;
            let Ok(Some(mut w)) = self.store.workspace(&id).await else {
                return;
            };
            if exit_code.is_some() {
                w.last_exit_code = exit_code;
            }
            if vm_gone
                && matches!(
                    w.observed_state,
                    ObservedState::Running | ObservedState::Paused
                )
            {
                w.observed_state = ObservedState::Stopped;
                w.agent_token = None;
            }
            let _ = self.store.save_observed(&w).await;
            w.remove_on_exit && w.desired_state != DesiredState::Deleted
        };
        let detail = format!("{ev:?}");
        self.log(None, &id, "exit", "ok", Some(&detail)).await;
        if remove {
            let _ = self
                .store
                .set_desired(&id, DesiredState::Deleted, false)
                .await;
            self.log(None, &id, "remove_on_exit", "accepted", None)
                .await;
            let _ = self.converge(&id).await;
        } else if vm_gone {
            // The VM is gone; a desired `running` is not restarted behind the user's back
            // (restart policies are a later issue), so record it as stopped.
            let _ = self
                .store
                .set_desired(&id, DesiredState::Stopped, false)
                .await;
        }
    }

    /// Wait until the workspace is ready, failed, gone, or the timeout passed.
    pub async fn wait_ready(&self, id: &str, timeout: Duration) -> ApiResult<Option<Workspace>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let w = self.store.workspace(id).await?;
            match &w {
                None => return Ok(None),
                Some(w) if model::is_ready(w) || w.prov_state == ProvisioningState::Failed => {
                    return Ok(Some(w.clone()))
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(w);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
