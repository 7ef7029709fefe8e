//! The warm pool: workspaces booted ahead of demand, waiting to be created.
//!
//! Restoring a template (crate::template) skips the kernel's boot, but under TCG each
//! restored QEMU starts with an empty translation cache: the first time the guest
//! opens its encrypted disk, mounts its root, configures its network and runs a
//! process, that code is translated anew, and that is most of a template start. A
//! warm VM has done all of it before anyone asks: it is restored from the template,
//! given its own disk, data key, address, MAC, API token and boot id like any new
//! workspace, booted, and exercised through its runtime API (an exec in each mode).
//! Creating a workspace of its shape then only hands it what the pool could not
//! know (`HostMessage::Adopt`: hostname, environment, command, workloads; the clock is
//! stepped and the RNG reseeded again) and applies the network policy.
//!
//! A warm VM is a workspace nobody owns yet: its run directory carries [`WARM_FILE`],
//! so reconcile removes it once the process that booted it is gone, whatever its
//! caller keeps; the pool is refilled by [`Node::fill_warm`] (the server calls it after
//! each create that took from it), never implicitly.

use crate::workspace::{new_workspace_id, RunningWorkspace, WorkspaceSpec};
use crate::{io_err, NodeError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::Instrument;
use warren_netpolicy::NetworkPolicy;
use warren_protocol::control::{AdoptIdentity, GuestMessage, HostMessage};
use warren_protocol::runtime::{ExecMode, ExecRequest};

/// Marker in a warm VM's run directory (removed when it is adopted).
pub const WARM_FILE: &str = "warm";

/// One shape the pool keeps ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmSpec {
    pub image: String,
    pub cpus: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u64,
    /// How many to keep booted.
    pub count: u32,
    /// The VMs die with the process that booted them (`WorkspaceSpec::die_with_owner`).
    #[serde(default)]
    pub die_with_owner: bool,
}

impl WarmSpec {
    fn fits(&self, spec: &WorkspaceSpec) -> bool {
        self.image == spec.image
            && self.cpus == spec.cpus
            && self.memory_mb == spec.memory_mb
            && self.disk_size_mb == spec.disk_size_mb
            && self.die_with_owner == spec.die_with_owner
    }
}

struct WarmVm {
    shape: WarmSpec,
    ws: RunningWorkspace,
}

/// The warm VMs of a node: idle ones, and those a caller has reserved (it knows their
/// id and is about to create a workspace with it).
#[derive(Default)]
pub(crate) struct WarmPool {
    idle: std::sync::Mutex<Vec<WarmVm>>,
    reserved: std::sync::Mutex<HashMap<String, WarmVm>>,
    /// One fill at a time.
    filling: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WarmPool {
    fn take_idle(&self, spec: &WorkspaceSpec) -> Option<WarmVm> {
        let mut idle = lock(&self.idle);
        let i = idle.iter().position(|w| w.shape.fits(spec))?;
        Some(idle.remove(i))
    }

    fn idle_of(&self, shape: &WarmSpec) -> usize {
        lock(&self.idle)
            .iter()
            .filter(|w| &w.shape == shape)
            .count()
    }
}

/// What [`Node::warm_status`] reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WarmStatus {
    pub idle: usize,
    pub reserved: usize,
}

impl crate::Node {
    /// Boot warm VMs until every configured shape has its count idle. Returns how many
    /// were booted; a shape that fails to boot is skipped (the others are still
    /// filled) and its error returned at the end.
    pub async fn fill_warm(&self) -> Result<usize> {
        let _one = self.warm.filling.lock().await;
        let mut booted = 0;
        let mut failed = None;
        for shape in self.config.warm_pool.clone() {
            while self.warm.idle_of(&shape) < shape.count as usize {
                match self.boot_warm(&shape).await {
                    Ok(ws) => {
                        lock(&self.warm.idle).push(WarmVm {
                            shape: shape.clone(),
                            ws,
                        });
                        booted += 1;
                    }
                    Err(e) => {
                        tracing::warn!(image = %shape.image, error = %e, "cannot boot a warm VM");
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(booted),
        }
    }

    /// Reserve an idle warm VM fitting `spec` (whose `id` is ignored): its id is then
    /// the id to create the workspace with. `None`: none fits.
    pub fn reserve_warm(&self, spec: &WorkspaceSpec) -> Option<String> {
        let vm = self.warm.take_idle(spec)?;
        let id = vm.ws.id.clone();
        lock(&self.warm.reserved).insert(id.clone(), vm);
        Some(id)
    }

    /// Give back a reservation that will not be used.
    pub fn release_warm(&self, id: &str) {
        if let Some(vm) = lock(&self.warm.reserved).remove(id) {
            lock(&self.warm.idle).push(vm);
        }
    }

    pub fn warm_status(&self) -> WarmStatus {
        WarmStatus {
            idle: lock(&self.warm.idle).len(),
            reserved: lock(&self.warm.reserved).len(),
        }
    }

    /// Destroy every warm VM (a server shutting down).
    pub async fn drain_warm(&self) {
        let vms: Vec<WarmVm> = lock(&self.warm.idle)
            .drain(..)
            .chain(lock(&self.warm.reserved).drain().map(|(_, v)| v))
            .collect();
        for vm in vms {
            if let Err(e) = self.destroy(vm.ws, Duration::ZERO).await {
                tracing::warn!(error = %e, "cannot destroy a warm VM");
            }
        }
    }

    /// Is `id` a reserved warm VM?
    pub fn is_reserved_warm(&self, id: &str) -> bool {
        lock(&self.warm.reserved).contains_key(id)
    }

    /// A reserved warm VM that `remove` is deleting: forget it here (its VMM, lease
    /// and directory are removed from their records on disk).
    pub(crate) fn forget_reserved(&self, id: &str) -> bool {
        lock(&self.warm.reserved).remove(id).is_some()
    }

    /// The warm VM `create` should use for `spec`: the one reserved under its id, or
    /// (no id given) an idle one that fits.
    pub(crate) fn take_warm(&self, spec: &WorkspaceSpec) -> Option<RunningWorkspace> {
        match &spec.id {
            Some(id) => lock(&self.warm.reserved).remove(id).map(|v| v.ws),
            None => self.warm.take_idle(spec).map(|v| v.ws),
        }
    }

    async fn boot_warm(&self, shape: &WarmSpec) -> Result<RunningWorkspace> {
        let id = new_workspace_id();
        let span = tracing::info_span!("workspace", workspace_id = %id, warm = true);
        async {
            let spec = WorkspaceSpec {
                id: Some(id.clone()),
                image: shape.image.clone(),
                cpus: shape.cpus,
                memory_mb: shape.memory_mb,
                disk_size_mb: shape.disk_size_mb,
                die_with_owner: shape.die_with_owner,
                // Nothing of anyone's runs in it yet, and it needs no network.
                network: NetworkPolicy {
                    allow_internet: false,
                    air_gapped: true,
                    ..NetworkPolicy::default()
                },
                persistent: false,
                ..WorkspaceSpec::default()
            };
            self.validate(&spec)?;
            let t = Instant::now();
            let ws = self.create(&spec, &warren_images::NoProgress).await?;
            if let Err(e) = std::fs::write(ws.run_dir.join(WARM_FILE), b"")
                .map_err(io_err("mark a warm VM"))
                .and(Ok(()))
            {
                let _ = self.destroy(ws, Duration::ZERO).await;
                return Err(e);
            }
            if let Err(e) = exercise(&ws).await {
                let _ = self.destroy(ws, Duration::ZERO).await;
                return Err(e);
            }
            tracing::info!(ms = t.elapsed().as_millis() as u64, "warm VM ready");
            Ok(ws)
        }
        .instrument(span)
        .await
    }

    /// Make warm VM `ws` the workspace `spec` describes. On failure the VM is
    /// destroyed.
    pub(crate) async fn adopt_warm(
        &self,
        mut ws: RunningWorkspace,
        spec: &WorkspaceSpec,
        progress: &dyn warren_images::Progress,
    ) -> Result<RunningWorkspace> {
        let t0 = Instant::now();
        let r = async {
            let image = self.images().resolve(&spec.image, progress).await?;
            if ws.image.digest != image.digest {
                return Err(NodeError::Boot(format!(
                    "the warm VM has an older build of {}",
                    spec.image
                )));
            }
            self.set_network(&ws, &spec.network)?;
            if spec.persistent {
                // Keep the address and disk when it stops, as any persistent workspace.
                ws.lease = self
                    .pool()
                    .reserve(&ws.id, Some(ws.lease.record.index), true)?;
                let mut rec = crate::workspace::read_record(&ws.run_dir)
                    .ok_or_else(|| NodeError::Boot("the warm VM's record is missing".into()))?;
                rec.persistent = true;
                crate::workspace::write_record(&ws.run_dir, &rec)?;
            }
            let mut env: std::collections::BTreeMap<String, String> =
                image.config.env.iter().cloned().collect();
            env.extend(spec.env.iter().cloned());
            const APPLIED: u64 = 0x_adb7;
            let mut events = ws.events.lock().await;
            ws.control
                .send(&HostMessage::Adopt {
                    identity: Box::new(AdoptIdentity {
                        workspace_id: ws.id.clone(),
                        hostname: ws.id.replace('_', "-"),
                        env,
                        cmd: spec.cmd.clone(),
                        workloads: spec.workloads.clone(),
                        clock_unix_ns: SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_nanos() as u64)
                            .unwrap_or(0),
                        entropy_hex: crate::workspace::random_hex(64),
                        ack: APPLIED,
                    }),
                })
                .await?;
            let timeout = Duration::from_secs(self.config.boot_timeout_secs);
            let answer = tokio::time::timeout(timeout, async {
                while let Some(m) = events.recv().await {
                    match m {
                        GuestMessage::Pong { id: APPLIED } => return Ok(()),
                        GuestMessage::BootFailed { error } => return Err(error),
                        _ => {}
                    }
                }
                Err("the control channel closed".to_string())
            })
            .await;
            drop(events);
            match answer {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(NodeError::Boot(format!(
                        "the warm VM did not become the workspace: {e}"
                    )))
                }
                Err(_) => return Err(NodeError::BootTimeout(timeout, String::new())),
            }
            std::fs::remove_file(ws.run_dir.join(WARM_FILE))
                .map_err(io_err("unmark an adopted warm VM"))?;
            Ok(())
        }
        .await;
        match r {
            Ok(()) => {
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                ws.report = crate::BootReport {
                    engine: format!("{} (warm pool)", self.engine().name()),
                    accel: ws.report.accel.clone(),
                    accel_reason: ws.report.accel_reason.clone(),
                    guest_boot_ms: ms,
                    total_ms: ms,
                    ..crate::BootReport::default()
                };
                tracing::info!(total_ms = ms, "workspace ready (warm pool)");
                Ok(ws)
            }
            Err(e) => {
                if let Err(d) = self.destroy(ws, Duration::ZERO).await {
                    tracing::warn!(error = %d, "cannot destroy a warm VM that failed");
                }
                Err(e)
            }
        }
    }
}

/// Run the runtime API's exec paths once in each mode, so the guest code behind them
/// is translated (TCG) and paged in before a user's first request.
async fn exercise(ws: &RunningWorkspace) -> Result<()> {
    let rt = warren_sdk::RuntimeClient::new(&ws.api_url(), &ws.api_token)
        .map_err(|e| NodeError::Boot(format!("warm-up client: {e}")))?;
    for (cmd, mode) in [("true", ExecMode::Direct), (":", ExecMode::Shell)] {
        let r = rt
            .exec(&ExecRequest {
                cmd: vec![cmd.into()],
                exec_mode: Some(mode),
                ..ExecRequest::default()
            })
            .await
            .map_err(|e| NodeError::Boot(format!("warm-up exec: {e}")))?;
        if r.exit_code != Some(0) {
            return Err(NodeError::Boot(format!("warm-up exec failed: {r:?}")));
        }
    }
    Ok(())
}
