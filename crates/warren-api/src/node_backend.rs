//! [`WorkspaceBackend`] on the node agent of this host ([`warren_node::Node`]).
//!
//! Running workspaces are held here with a watcher task each, which reports the
//! workspace's `cmd` exiting and the VM going away on its own. Stopping or removing a
//! workspace first stops its watcher, so only unexpected exits become events.

use crate::backend::{
    BackendError, BackendEvent, BootPhase, BootProgress, BootSpec, Booted, ImageInfo, Limits,
    WorkspaceBackend,
};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;
use warren_node::{Node, NodeError, RunningWorkspace, WorkspaceSpec};
use warren_protocol::control::{GuestMessage, HostMessage};

struct Entry {
    ws: Arc<RunningWorkspace>,
    watcher: JoinHandle<()>,
}

type Running = Arc<Mutex<HashMap<String, Entry>>>;
type Events = Arc<Mutex<Option<mpsc::UnboundedSender<BackendEvent>>>>;
/// The last exit report passed on, per workspace (`GuestMessage::CmdExited`'s
/// `report`): the agent repeats a report until acknowledged, and a freeze can make
/// one arrive twice (read while freezing, then again after the thaw).
type Reported = Arc<Mutex<HashMap<String, u64>>>;

/// Pass a command exit on to the manager, once per report.
fn pass_exit(events: &Events, reported: &Reported, id: &str, exit_code: i32, report: u64) {
    if report != 0 {
        let mut r = lock(reported);
        if r.get(id) == Some(&report) {
            tracing::debug!(
                workspace_id = id,
                report,
                "a repeated exit report: already passed on"
            );
            return;
        }
        r.insert(id.to_string(), report);
    }
    if let Some(tx) = lock(events).as_ref() {
        let _ = tx.send(BackendEvent::CmdExited {
            id: id.to_string(),
            exit_code,
        });
    }
}

pub struct NodeBackend {
    node: Arc<Node>,
    running: Running,
    events: Events,
    reported: Reported,
    /// Wakes the warm pool's filler (see [`NodeBackend::start_warm_pool`]).
    refill: Arc<tokio::sync::Notify>,
}

fn map_err(e: NodeError) -> BackendError {
    match e {
        NodeError::Invalid { field, reason } => BackendError::Invalid {
            field: field.to_string(),
            reason,
        },
        // A saved memory file that does not check out (tampered, cut short): the
        // client learns which file and why; nothing was changed.
        NodeError::SavedState(reason) => BackendError::Invalid {
            field: "saved_state".into(),
            reason,
        },
        NodeError::AddressesExhausted(m) => {
            BackendError::Capacity(format!("no free address left in {m}"))
        }
        other => BackendError::Failed(other.to_string()),
    }
}

// `..Default::default()` is needless while the node's spec has no other fields.
#[allow(clippy::needless_update)]
fn node_spec(s: &BootSpec) -> WorkspaceSpec {
    WorkspaceSpec {
        id: Some(s.id.clone()),
        image: s.image.clone(),
        cpus: s.cpus,
        memory_mb: s.memory_mb,
        disk_size_mb: s.disk_size_mb,
        env: s.env.clone(),
        cmd: s.cmd.clone(),
        persistent: s.persistent,
        die_with_owner: false,
        network: s.network.clone(),
        workloads: s.workloads.clone(),
        // Fields the node grows later keep their defaults until the API passes them.
        ..WorkspaceSpec::default()
    }
}

fn booted(ws: &RunningWorkspace) -> Booted {
    Booted {
        internal_ip: ws.guest_ip.to_string(),
        agent_token: ws.api_token.clone(),
        report: serde_json::to_value(&ws.report).unwrap_or_default(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NodeBackend {
    pub fn new(node: Node) -> Self {
        NodeBackend {
            node: Arc::new(node),
            running: Default::default(),
            events: Default::default(),
            reported: Default::default(),
            refill: Default::default(),
        }
    }

    /// Keep the node's warm pool (`NodeConfig::warm_pool`) filled: now, after every
    /// create that took from it, and every minute. A fill that failed (an image that
    /// cannot be built, say) is retried after 1, 2, 4... up to 30 minutes.
    pub fn start_warm_pool(&self) {
        if self.node.config.warm_pool.is_empty() {
            return;
        }
        let node = self.node.clone();
        let refill = self.refill.clone();
        tokio::spawn(
            async move {
                let mut backoff = Duration::from_secs(60);
                loop {
                    let wait = match node.fill_warm().await {
                        Ok(n) => {
                            if n > 0 {
                                tracing::info!(booted = n, "warm pool filled");
                            }
                            backoff = Duration::from_secs(60);
                            Duration::from_secs(60)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?backoff, "cannot fill the warm pool");
                            let w = backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(30 * 60));
                            w
                        }
                    };
                    // A create that used a warm VM wakes us at once.
                    let _ = tokio::time::timeout(wait, refill.notified()).await;
                }
            }
            .instrument(tracing::info_span!("warm_pool")),
        );
    }

    /// Destroy the warm pool's VMs (the server is stopping: nobody owns them).
    pub async fn drain_warm_pool(&self) {
        self.node.drain_warm().await;
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    fn register(&self, ws: RunningWorkspace) -> Booted {
        let b = booted(&ws);
        let id = ws.id.clone();
        let ws = Arc::new(ws);
        let watcher = tokio::spawn(
            watch(
                ws.clone(),
                self.node.clone(),
                self.running.clone(),
                self.events.clone(),
                self.reported.clone(),
            )
            .instrument(tracing::info_span!("workspace", workspace_id = %id)),
        );
        let old = lock(&self.running).insert(id, Entry { ws, watcher });
        if let Some(old) = old {
            old.watcher.abort();
        }
        b
    }

    /// Take a running workspace out, stop its watcher and return sole ownership.
    async fn take(&self, id: &str) -> Option<RunningWorkspace> {
        let entry = lock(&self.running).remove(id)?;
        entry.watcher.abort();
        let _ = entry.watcher.await;
        // What the watcher had not read yet is still to be reported: a cmd that ended
        // just before this stop or freeze would otherwise lose its exit code.
        if let Ok(mut rx) = entry.ws.events.try_lock() {
            while let Ok(m) = rx.try_recv() {
                if let GuestMessage::CmdExited { exit_code, report } = m {
                    pass_exit(&self.events, &self.reported, id, exit_code, report);
                }
            }
        }
        let mut ws = entry.ws;
        // Pause/resume may hold a clone for a moment.
        for _ in 0..100 {
            match Arc::try_unwrap(ws) {
                Ok(w) => return Some(w),
                Err(back) => {
                    ws = back;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        tracing::error!(workspace_id = id, "workspace still in use; killing its VM");
        let _ = ws.vm.kill().await;
        None
    }

    fn get(&self, id: &str) -> Option<Arc<RunningWorkspace>> {
        lock(&self.running).get(id).map(|e| e.ws.clone())
    }
}

/// Report the workspace's cmd exits and an unexpected end of its VM; on the latter,
/// release the VM's host resources (tap) and keep its disk.
async fn watch(
    ws: Arc<RunningWorkspace>,
    node: Arc<Node>,
    running: Running,
    events: Events,
    reported: Reported,
) {
    let send = |ev: BackendEvent| {
        if let Some(tx) = lock(&events).as_ref() {
            let _ = tx.send(ev);
        }
    };
    let detail = loop {
        tokio::select! {
            m = async { ws.events.lock().await.recv().await } => match m {
                Some(GuestMessage::CmdExited { exit_code, report }) => {
                    pass_exit(&events, &reported, &ws.id, exit_code, report);
                    // The agent repeats it until told.
                    let _ = ws.control.send(&HostMessage::CmdExitSeen).await;
                }
                Some(_) => {}
                None => {
                    let exit = ws.vm.wait_timeout(Duration::from_secs(10)).await;
                    break format!("the control channel closed; VM exit: {exit:?}");
                }
            },
            exit = ws.vm.wait() => break format!("the VM exited: {exit:?}"),
        }
    };
    tracing::warn!(detail, "workspace VM ended on its own");
    let id = ws.id.clone();
    let ours = {
        let mut m = lock(&running);
        match m.get(&id) {
            Some(e) if Arc::ptr_eq(&e.ws, &ws) => m.remove(&id).is_some(),
            _ => false,
        }
    };
    if ours {
        if let Ok(w) = Arc::try_unwrap(ws) {
            if let Err(e) = node.stop(w, Duration::ZERO).await {
                tracing::warn!(error = %e, "cleaning up after the VM failed");
            }
        }
        send(BackendEvent::VmExited { id, detail });
    }
}

/// Flush the guest's file systems through its agent before the VM is powered off.
/// The power-off itself asks the guest to sync and shut down over the control
/// channel, but when that does not happen within the grace period (a guest that
/// ignores it, or a control channel that no longer reaches the agent after a server
/// restart) the VM is killed, and whatever sat in its page cache would be lost.
async fn flush_guest(ws: &RunningWorkspace) {
    let req = warren_protocol::runtime::ExecRequest {
        cmd: vec!["sync".into()],
        timeout_seconds: Some(10),
        ..Default::default()
    };
    let r = async {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?
            .post(format!("{}/exec", ws.api_url()))
            .bearer_auth(&ws.api_token)
            .json(&req)
            .send()
            .await?
            .error_for_status()
    }
    .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not sync the guest before stopping it");
    }
}

/// The image store's progress, as boot progress.
struct ImageProgress<'a>(&'a dyn BootProgress);

impl warren_images::Progress for ImageProgress<'_> {
    fn phase(&self, msg: &str) {
        self.0.phase(BootPhase::Preparing, msg);
    }
    fn bytes(&self, _done: u64, _total: Option<u64>) {}
}

fn category(name: &str) -> &'static str {
    if name.starts_with("postgres") {
        "database"
    } else if name.starts_with("python") || name.starts_with("node") {
        "runtime"
    } else {
        "os"
    }
}

#[async_trait]
impl WorkspaceBackend for NodeBackend {
    fn limits(&self) -> Limits {
        let c = &self.node.config;
        Limits {
            max_cpus: c.max_cpus,
            max_memory_mb: c.max_memory_mb,
            max_disk_mb: c.max_disk_mb,
        }
    }

    fn reserve_warm(&self, spec: &BootSpec) -> Option<String> {
        let mut s = node_spec(spec);
        s.id = None;
        self.node.reserve_warm(&s)
    }

    fn release_warm(&self, id: &str) {
        self.node.release_warm(id);
    }

    fn warm_idle(&self) -> u64 {
        self.node.warm_status().idle as u64
    }

    fn validate(&self, spec: &BootSpec) -> Result<(), BackendError> {
        self.node.validate(&node_spec(spec)).map_err(map_err)
    }

    fn images(&self) -> Vec<ImageInfo> {
        self.node
            .images()
            .catalog()
            .iter()
            .map(|e| ImageInfo {
                id: e.name.clone(),
                image: e.name.clone(),
                label: e.name.clone(),
                desc: e.description.clone(),
                category: category(&e.name).into(),
            })
            .collect()
    }

    async fn create(
        &self,
        spec: &BootSpec,
        progress: &dyn BootProgress,
    ) -> Result<Booted, BackendError> {
        let warm = self.node.is_reserved_warm(&spec.id);
        if warm {
            // It is used now: boot the next one.
            self.refill.notify_one();
        } else {
            // Leftovers of an interrupted attempt with this id go first.
            if let Some(ws) = self.take(&spec.id).await {
                let _ = self.node.destroy(ws, Duration::ZERO).await;
            }
            self.node.remove(&spec.id).map_err(map_err)?;
        }
        // The image first (it may be pulled or built: minutes), so the workspace shows
        // what it is waiting for; the node's own resolve is then a cache hit.
        progress.phase(
            BootPhase::Preparing,
            &format!("Preparing image {}", spec.image),
        );
        self.node
            .images()
            .resolve(&spec.image, &ImageProgress(progress))
            .await
            .map_err(|e| map_err(NodeError::from(e)))?;
        progress.phase(BootPhase::Starting, "Booting the VM");
        let ws = self
            .node
            .create(&node_spec(spec), &warren_images::NoProgress)
            .await
            .map_err(map_err)?;
        Ok(self.register(ws))
    }

    async fn start(&self, spec: &BootSpec) -> Result<Booted, BackendError> {
        if let Some(ws) = self.get(&spec.id) {
            return Ok(booted(&ws));
        }
        if self.node.is_suspended(&spec.id) {
            let (ws, _report) = self
                .node
                .resume_suspended(&node_spec(spec))
                .await
                .map_err(map_err)?;
            return Ok(self.register(ws));
        }
        let ws = self
            .node
            .start(&node_spec(spec), &warren_images::NoProgress)
            .await
            .map_err(map_err)?;
        Ok(self.register(ws))
    }

    fn can_suspend(&self) -> bool {
        true
    }

    async fn suspend(&self, id: &str) -> Result<(), BackendError> {
        let ws = self
            .take(id)
            .await
            .ok_or_else(|| BackendError::NotRunning(id.into()))?;
        match self.node.suspend(ws).await {
            Ok(report) => {
                // A command that ended as the VM froze: its exit is still reported.
                for (exit_code, r) in report.cmd_exits {
                    pass_exit(&self.events, &self.reported, id, exit_code, r);
                }
                Ok(())
            }
            Err((e, ws)) => {
                // The VM goes on running: watch it again.
                self.register(ws);
                Err(map_err(e))
            }
        }
    }

    fn is_suspended(&self, id: &str) -> bool {
        !self.is_running(id) && self.node.is_suspended(id)
    }

    fn suspended_since(&self, id: &str) -> Option<std::time::SystemTime> {
        self.is_suspended(id)
            .then(|| self.node.suspended_since(id))
            .flatten()
    }

    async fn snapshot(
        &self,
        id: &str,
        keep_paused: bool,
    ) -> Result<serde_json::Value, BackendError> {
        let ws = self
            .get(id)
            .ok_or_else(|| BackendError::NotRunning(id.into()))?;
        // Memory and disk are captured with the vCPUs stopped; flush the guest's page
        // cache first so the disk copy is complete on its own too.
        flush_guest(&ws).await;
        let info = self.node.snapshot(&ws).await.map_err(map_err)?;
        if !keep_paused {
            ws.vm
                .resume()
                .await
                .map_err(|e| BackendError::Failed(e.to_string()))?;
        }
        Ok(serde_json::to_value(info).unwrap_or_default())
    }

    async fn fork(
        &self,
        id: &str,
        children: &[BootSpec],
    ) -> Result<(Vec<Booted>, serde_json::Value), BackendError> {
        let ws = self
            .get(id)
            .ok_or_else(|| BackendError::NotRunning(id.into()))?;
        // The children's disks start from the parent's: flush its page cache first,
        // as for a snapshot (memory and disk agree either way).
        flush_guest(&ws).await;
        let specs: Vec<WorkspaceSpec> = children.iter().map(node_spec).collect();
        let (made, report) = self.node.fork(&ws, &specs).await.map_err(map_err)?;
        let booted = made.into_iter().map(|w| self.register(w)).collect();
        Ok((booted, serde_json::to_value(report).unwrap_or_default()))
    }

    fn snapshot_info(&self, id: &str) -> Option<serde_json::Value> {
        self.node
            .snapshot_info(id)
            .map(|i| serde_json::to_value(i).unwrap_or_default())
    }

    async fn create_archive(
        &self,
        id: &str,
        version: &str,
    ) -> Result<serde_json::Value, BackendError> {
        let info = match self.get(id) {
            Some(ws) => {
                // A consistent copy: the guest flushes, its vCPUs stop meanwhile.
                flush_guest(&ws).await;
                ws.vm
                    .pause()
                    .await
                    .map_err(|e| BackendError::Failed(e.to_string()))?;
                let r = self.node.create_archive(id, version);
                let _ = ws.vm.resume().await;
                r
            }
            None => self.node.create_archive(id, version),
        }
        .map_err(map_err)?;
        Ok(serde_json::to_value(info).unwrap_or_default())
    }

    fn archives(&self, id: &str) -> Vec<serde_json::Value> {
        self.node
            .archives(id)
            .into_iter()
            .map(|a| serde_json::to_value(a).unwrap_or_default())
            .collect()
    }

    fn archive(&self, id: &str, version: &str) -> Option<serde_json::Value> {
        self.node
            .archive(id, version)
            .map(|a| serde_json::to_value(a).unwrap_or_default())
    }

    async fn delete_archive(&self, id: &str, version: &str) -> Result<bool, BackendError> {
        self.node.delete_archive(id, version).map_err(map_err)
    }

    async fn delete_snapshot(&self, id: &str) -> Result<bool, BackendError> {
        self.node.delete_snapshot(id).map_err(map_err)
    }

    async fn restore_snapshot(&self, spec: &BootSpec) -> Result<Booted, BackendError> {
        if self.node.snapshot_info(&spec.id).is_none() {
            return Err(BackendError::Invalid {
                field: "snapshot".into(),
                reason: format!("workspace {} has no snapshot", spec.id),
            });
        }
        // A tampered or cut snapshot is refused while the workspace still runs.
        self.node.verify_snapshot(&spec.id).await.map_err(map_err)?;
        let current = self.take(&spec.id).await;
        let ws = self
            .node
            .restore_snapshot(current, &node_spec(spec))
            .await
            .map_err(map_err)?;
        Ok(self.register(ws))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), BackendError> {
        match self.take(id).await {
            Some(ws) => {
                flush_guest(&ws).await;
                self.node.stop(ws, grace).await.map_err(map_err)
            }
            None => {
                self.node.discard_suspended(id);
                Ok(())
            }
        }
    }

    async fn pause(&self, id: &str) -> Result<(), BackendError> {
        let ws = self
            .get(id)
            .ok_or_else(|| BackendError::NotRunning(id.into()))?;
        ws.vm
            .pause()
            .await
            .map_err(|e| BackendError::Failed(e.to_string()))
    }

    async fn resume(&self, id: &str) -> Result<(), BackendError> {
        let ws = self
            .get(id)
            .ok_or_else(|| BackendError::NotRunning(id.into()))?;
        ws.vm
            .resume()
            .await
            .map_err(|e| BackendError::Failed(e.to_string()))
    }

    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        if let Some(ws) = self.take(id).await {
            self.node
                .destroy(ws, Duration::ZERO)
                .await
                .map_err(map_err)?;
        }
        self.node.remove(id).map_err(map_err)
    }

    async fn adopt(&self, spec: &BootSpec) -> Result<Option<Booted>, BackendError> {
        if let Some(ws) = self.get(&spec.id) {
            return Ok(Some(booted(&ws)));
        }
        match self.node.adopt(&node_spec(spec)).await.map_err(map_err)? {
            Some(ws) => Ok(Some(self.register(ws))),
            None => Ok(None),
        }
    }

    async fn reconcile(&self, keep: &HashSet<String>) -> Result<serde_json::Value, BackendError> {
        let running: HashSet<String> = lock(&self.running).keys().cloned().collect();
        // Leases are host-wide: a lease whose workspace has no directory under our
        // data dir belongs to another server or `warren run` (perhaps down right now,
        // to adopt its VMs later), not to us. Listed before reconcile removes any.
        // TODO(node): reconcile(Scope::All) should itself only release leases of
        // workspaces under its data dir (e.g. the lease naming its data dir).
        let ours: HashSet<String> = std::fs::read_dir(self.node.config.data_dir.join("workspaces"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let partial = warren_node::suspend::clean_partial_saves(&self.node.config.data_dir);
        if !partial.is_empty() {
            tracing::info!(?partial, "removed half-written saved states");
        }
        let r = warren_node::reconcile::reconcile(
            &self.node.config.data_dir,
            self.node.pool(),
            warren_node::reconcile::Scope::All,
            &|id| keep.contains(id) || running.contains(id) || !ours.contains(id),
        );
        // Fork bases whose children went while no server ran.
        let fork_scratch_removed = self.node.remove_fork_scratch();
        let forks_removed = self.node.collect_forks();
        Ok(serde_json::json!({
            "fork_scratch_removed": fork_scratch_removed,
            "vms_killed": r.vms_killed,
            "leases_released": r.leases_released,
            "dirs_removed": r.dirs_removed,
            "fork_bases_removed": forks_removed,
        }))
    }

    async fn set_network(
        &self,
        id: &str,
        policy: &warren_netpolicy::NetworkPolicy,
    ) -> Result<(), BackendError> {
        let ws = self
            .get(id)
            .ok_or_else(|| BackendError::NotRunning(id.into()))?;
        self.node.set_network(&ws, policy).map_err(map_err)
    }

    fn is_running(&self, id: &str) -> bool {
        lock(&self.running).contains_key(id)
    }

    fn boot_log(&self, id: &str) -> Option<String> {
        let p = self.node.workspace_dir(id).join("console.log");
        std::fs::read(p)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    fn stats(&self, id: &str) -> Option<serde_json::Value> {
        let ws = self.get(id)?;
        let pid = ws.vm.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        // CPU ticks (user + system) of the VMM process: fields 14 and 15 of
        // /proc/<pid>/stat, counted after the command name's closing parenthesis.
        let cpu_ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| {
                let rest = t.get(t.rfind(')')? + 2..)?.to_string();
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .map(|x| x.parse().unwrap_or(0))
                    .collect();
                Some(f.get(11)? + f.get(12)?)
            });
        // The tap's counters, from the host's side: what it receives the guest sent.
        let tap = ws.tap().to_string();
        let counter = |name: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/{name}"))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some(serde_json::json!({
            "vmm_pid": pid,
            "rss_bytes": kb("VmRSS:").map(|k| k * 1024),
            "threads": status.lines().find_map(|l| l.strip_prefix("Threads:")).map(|v| v.trim().to_string()),
            "cpu_ticks": cpu_ticks,
            "tap": tap,
            "net_rx_bytes": counter("tx_bytes"),
            "net_tx_bytes": counter("rx_bytes"),
        }))
    }

    fn set_events(&self, tx: mpsc::UnboundedSender<BackendEvent>) {
        *lock(&self.events) = Some(tx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One exit report passes once however often it arrives; another report (the
    /// command's next run) passes; a report without an id (an older agent) always
    /// passes.
    #[test]
    fn an_exit_report_is_passed_on_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let events: Events = Arc::new(Mutex::new(Some(tx)));
        let reported: Reported = Default::default();
        for (id, code, report) in [
            ("ws_a", 3, 7),
            ("ws_a", 3, 7),
            ("ws_b", 1, 7),
            ("ws_a", 0, 8),
            ("ws_a", 0, 8),
            ("ws_a", 5, 0),
            ("ws_a", 5, 0),
        ] {
            pass_exit(&events, &reported, id, code, report);
        }
        let mut got = Vec::new();
        while let Ok(BackendEvent::CmdExited { id, exit_code }) = rx.try_recv() {
            got.push((id, exit_code));
        }
        let want: Vec<(String, i32)> = [
            ("ws_a", 3),
            ("ws_b", 1),
            ("ws_a", 0),
            ("ws_a", 5),
            ("ws_a", 5),
        ]
        .into_iter()
        .map(|(i, c)| (i.to_string(), c))
        .collect();
        assert_eq!(got, want);
    }
}
