//! Managed workloads: long-running processes the agent supervises.
//!
//! Each workload has a definition ([`spec::Spec`]), a supervisor task while it is
//! started, and logs ([`logs::Logs`]). The supervisor runs the command in its own
//! session, logs its output line by line, and when it ends applies the restart policy
//! (`never`, `on-failure`, `always`) with exponential backoff and `max_restarts`.
//! Workloads belong to the agent: they outlive client connections and `warren server`
//! restarts. Definitions are saved in the guest (when a state file is configured) and
//! started again at the next boot.

pub mod api;
pub mod logs;
pub mod spec;
pub mod stats;

use crate::exec::{self, Kind};
use crate::reaper::Reaper;
use crate::time::now_rfc3339;
use crate::workspace::Workspace;
use logs::Logs;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spec::{RestartPolicy, Spec, SpecError};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// How long a stopped workload gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("no such workload: {0}")]
    NotFound(String),
    #[error("a workload named {0:?} already exists")]
    Duplicate(String),
    #[error("{0}")]
    Invalid(#[from] SpecError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Defined, never started (or `enabled: false`).
    Created,
    Starting,
    Running,
    /// Waiting to be restarted.
    Backoff,
    /// Stopped on request.
    Stopped,
    /// Ended with code 0 and will not be restarted.
    Exited,
    /// Ended with a failure and will not be restarted (policy or max_restarts).
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Backoff => "backoff",
            Status::Stopped => "stopped",
            Status::Exited => "exited",
            Status::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
struct RunState {
    status: Status,
    pid: Option<u32>,
    restarts: u32,
    exit_code: Option<i32>,
    started_at: Option<String>,
    exited_at: Option<String>,
    error: Option<String>,
}

struct Running {
    stop: watch::Sender<bool>,
    done: JoinHandle<()>,
}

pub struct Workload {
    pub id: String,
    created_at: String,
    spec: Mutex<Spec>,
    state: Mutex<RunState>,
    pub logs: Arc<Logs>,
    running: Mutex<Option<Running>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A workload as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub id: String,
    pub name: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    pub restart_policy: RestartPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    pub restart_delay: f64,
    pub restart_backoff: bool,
    pub max_log_size_mb: u64,
    pub enabled: bool,
    pub labels: std::collections::BTreeMap<String, String>,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exited_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
}

impl Workload {
    pub fn spec(&self) -> Spec {
        lock(&self.spec).clone()
    }

    pub fn status(&self) -> Status {
        lock(&self.state).status
    }

    pub fn pid(&self) -> Option<u32> {
        lock(&self.state).pid
    }

    pub fn info(&self) -> Info {
        let s = self.spec();
        let st = lock(&self.state).clone();
        Info {
            id: self.id.clone(),
            name: s.name,
            cmd: s.cmd,
            env: s.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: s.working_dir,
            restart_policy: s.restart_policy,
            max_restarts: s.max_restarts,
            restart_delay: s.restart_delay,
            restart_backoff: s.restart_backoff,
            max_log_size_mb: s.max_log_size_mb,
            enabled: s.enabled,
            labels: s.labels,
            status: st.status.as_str(),
            pid: st.pid,
            restarts: st.restarts,
            exit_code: st.exit_code,
            error: st.error,
            created_at: self.created_at.clone(),
            started_at: st.started_at,
            exited_at: st.exited_at,
            log_path: self.logs.path().map(|p| p.to_string_lossy().into_owned()),
        }
    }

    fn set(&self, f: impl FnOnce(&mut RunState)) {
        f(&mut lock(&self.state));
    }
}

/// What the supervisor needs to start processes.
#[derive(Clone)]
pub struct Ctx {
    pub ws: Arc<Workspace>,
    pub reaper: Reaper,
    /// Every workload's final exit (no restart follows), for whoever listens.
    pub exits: tokio::sync::broadcast::Sender<FinalExit>,
}

/// A workload ended for good: its policy or `max_restarts` allows no restart. Not
/// sent when it was stopped on request.
#[derive(Debug, Clone)]
pub struct FinalExit {
    pub id: String,
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub exit_code: i32,
}

impl Ctx {
    pub fn new(ws: Arc<Workspace>, reaper: Reaper) -> Ctx {
        Ctx {
            ws,
            reaper,
            exits: tokio::sync::broadcast::channel(16).0,
        }
    }
}

/// Saved form of a definition.
#[derive(Serialize, Deserialize)]
struct Saved {
    id: String,
    created_at: String,
    spec: Spec,
}

pub struct Workloads {
    items: Mutex<Vec<Arc<Workload>>>,
    next: Mutex<u64>,
    ctx: Ctx,
    log_dir: Option<PathBuf>,
    state_file: Option<PathBuf>,
}

impl Workloads {
    pub fn new(ctx: Ctx, log_dir: Option<PathBuf>, state_file: Option<PathBuf>) -> Workloads {
        Workloads {
            items: Mutex::new(Vec::new()),
            next: Mutex::new(0),
            ctx,
            log_dir,
            state_file,
        }
    }

    /// Final exits of workloads from now on.
    pub fn exits(&self) -> tokio::sync::broadcast::Receiver<FinalExit> {
        self.ctx.exits.subscribe()
    }

    pub fn list(&self) -> Vec<Arc<Workload>> {
        lock(&self.items).clone()
    }

    /// By id, or by name.
    pub fn get(&self, key: &str) -> Result<Arc<Workload>, WorkloadError> {
        let items = lock(&self.items);
        items
            .iter()
            .find(|w| w.id == key)
            .or_else(|| items.iter().find(|w| lock(&w.spec).name == key))
            .cloned()
            .ok_or_else(|| WorkloadError::NotFound(key.to_string()))
    }

    fn new_workload(&self, id: String, created_at: String, spec: Spec) -> Arc<Workload> {
        let log_path = self
            .log_dir
            .as_ref()
            .map(|d| d.join(format!("{}.log", spec.name)));
        let logs = Logs::new(log_path, spec.max_log_size_mb << 20);
        Arc::new(Workload {
            id,
            created_at,
            spec: Mutex::new(spec),
            state: Mutex::new(RunState {
                status: Status::Created,
                pid: None,
                restarts: 0,
                exit_code: None,
                started_at: None,
                exited_at: None,
                error: None,
            }),
            logs,
            running: Mutex::new(None),
        })
    }

    /// Define a workload from the client's JSON and start it unless `enabled: false`.
    pub fn create(&self, body: &Value) -> Result<Arc<Workload>, WorkloadError> {
        let mut s = spec::apply(&Spec::default(), body, true)?;
        let w = {
            let mut items = lock(&self.items);
            let mut next = lock(&self.next);
            *next += 1;
            if s.name.is_empty() {
                s.name = format!("workload-{}", *next);
            }
            if items.iter().any(|w| lock(&w.spec).name == s.name) {
                return Err(WorkloadError::Duplicate(s.name));
            }
            let w = self.new_workload(format!("wl_{}", *next), now_rfc3339(), s);
            items.push(w.clone());
            w
        };
        self.save();
        if w.spec().enabled {
            self.start(&w);
        }
        Ok(w)
    }

    /// Change a definition; it applies from the next (re)start.
    pub fn update(&self, key: &str, body: &Value) -> Result<Arc<Workload>, WorkloadError> {
        let w = self.get(key)?;
        let new = spec::apply(&w.spec(), body, false)?;
        {
            let items = lock(&self.items);
            if items
                .iter()
                .any(|o| o.id != w.id && lock(&o.spec).name == new.name)
            {
                return Err(WorkloadError::Duplicate(new.name));
            }
            *lock(&w.spec) = new;
        }
        self.save();
        Ok(w)
    }

    /// Start (again); a running workload is left alone.
    pub fn start(&self, w: &Arc<Workload>) {
        let mut running = lock(&w.running);
        if running.as_ref().is_some_and(|r| !r.done.is_finished()) {
            return;
        }
        let (stop, stop_rx) = watch::channel(false);
        w.set(|s| {
            s.restarts = 0;
            s.error = None;
            s.status = Status::Starting;
        });
        let span = tracing::info_span!("workload", id = %w.id, name = %w.spec().name);
        let done = tokio::spawn(supervise(w.clone(), self.ctx.clone(), stop_rx).instrument(span));
        *running = Some(Running { stop, done });
    }

    /// Stop: SIGTERM to its process group, SIGKILL after [`STOP_GRACE`]; no restart.
    pub async fn stop(&self, w: &Arc<Workload>) {
        let r = lock(&w.running).take();
        if let Some(r) = r {
            let _ = r.stop.send(true);
            let _ = r.done.await;
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), WorkloadError> {
        let w = self.get(key)?;
        lock(&self.items).retain(|o| o.id != w.id);
        self.save();
        self.stop(&w).await;
        w.logs.ring.close();
        Ok(())
    }

    pub async fn delete_all(&self) -> usize {
        let all = std::mem::take(&mut *lock(&self.items));
        self.save();
        for w in &all {
            self.stop(w).await;
            w.logs.ring.close();
        }
        all.len()
    }

    fn save(&self) {
        let Some(path) = &self.state_file else { return };
        let saved: Vec<Saved> = self
            .list()
            .iter()
            .map(|w| Saved {
                id: w.id.clone(),
                created_at: w.created_at.clone(),
                spec: w.spec(),
            })
            .collect();
        let write = || -> std::io::Result<()> {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&saved).unwrap_or_default())?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!("saving workloads to {}: {e}", path.display());
        }
    }

    /// At boot: the saved definitions, then the ones from the boot configuration (which
    /// replace saved ones of the same name); start every enabled one.
    pub fn restore(&self, from_boot: &[Value]) {
        if let Some(path) = &self.state_file {
            if let Ok(text) = std::fs::read(path) {
                match serde_json::from_slice::<Vec<Saved>>(&text) {
                    Ok(saved) => {
                        let mut items = lock(&self.items);
                        let mut next = lock(&self.next);
                        for s in saved {
                            if let Some(n) = s.id.strip_prefix("wl_").and_then(|n| n.parse().ok()) {
                                *next = (*next).max(n);
                            }
                            items.push(self.new_workload(s.id, s.created_at, s.spec));
                        }
                    }
                    Err(e) => tracing::warn!("ignoring {}: {e}", path.display()),
                }
            }
        }
        for body in from_boot {
            let name = body.get("name").and_then(Value::as_str).unwrap_or("");
            let existing = (!name.is_empty()).then(|| self.get(name).ok()).flatten();
            let r = match existing {
                Some(w) => self.update(&w.id, body).map(|_| ()),
                None => {
                    let mut b = body.clone();
                    if let Some(o) = b.as_object_mut() {
                        // Started below with the others.
                        o.insert("enabled".into(), Value::Bool(false));
                    }
                    self.create(&b).map(|w| {
                        let enabled = body.get("enabled").and_then(Value::as_bool).unwrap_or(true);
                        lock(&w.spec).enabled = enabled;
                    })
                }
            };
            if let Err(e) = r {
                tracing::error!("boot workload {name:?}: {e}");
            }
        }
        self.save();
        for w in self.list() {
            if w.spec().enabled {
                self.start(&w);
            }
        }
    }
}

fn command_for(spec: &Spec, ws: &Workspace) -> Command {
    let (program, args) = spec
        .cmd
        .split_first()
        .map_or(("", &[][..]), |(a, rest)| (a.as_str(), rest));
    let mut env = ws.env();
    env.extend(spec.env.clone());
    let cwd = spec
        .working_dir
        .as_ref()
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| ws.default_cwd());
    let mut c = Command::new(program);
    c.args(args)
        .env_clear()
        .envs(&env)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    exec::in_own_session_as(&mut c, ws.user.clone());
    c
}

/// Run one incarnation; returns its exit code, or `None` when stopped on request.
async fn run_once(w: &Workload, ctx: &Ctx, stop: &mut watch::Receiver<bool>) -> Option<i32> {
    let spec = w.spec();
    let mut cmd = command_for(&spec, &ctx.ws);
    let spawned = match ctx.reaper.spawn(&mut cmd) {
        Ok(s) => s,
        Err(e) => {
            let (code, msg) = exec::spawn_error(spec.cmd.first().map_or("", String::as_str), &e);
            w.logs.system(format!("failed to start: {msg}"));
            w.set(|s| {
                s.error = Some(msg);
                s.exit_code = Some(code);
                s.exited_at = Some(now_rfc3339());
            });
            return Some(code);
        }
    };
    let pid = spawned.pid;
    tracing::info!(pid, argv = ?spec.cmd, "workload started");
    w.logs.system(format!("started (pid {pid})"));
    w.set(|s| {
        s.status = Status::Running;
        s.pid = Some(pid);
        s.started_at = Some(now_rfc3339());
        s.error = None;
    });

    let (exited_tx, exited_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel::<(Kind, bytes::Bytes)>(16);
    for (fd, kind) in [
        (spawned.stdout.map(OwnedFd::from), Kind::Stdout),
        (spawned.stderr.map(OwnedFd::from), Kind::Stderr),
    ] {
        if let Some(Ok(r)) = fd.map(pipe::Receiver::from_owned_fd) {
            tokio::spawn(exec::pump(r, kind, tx.clone(), exited_rx.clone()));
        }
    }
    drop(tx);

    let pgid = Pid::from_raw(i32::try_from(pid).unwrap_or(0));
    let exit = spawned.exit;
    tokio::pin!(exit);
    let mut code: Option<i32> = None;
    let mut stopped = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    loop {
        let deadline = async {
            match kill_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut exit, if code.is_none() => {
                code = Some(r.map(|i| i.code).unwrap_or(-1));
                let _ = exited_tx.send(true);
            }
            chunk = rx.recv() => match chunk {
                Some((kind, data)) => w.logs.output(kind == Kind::Stderr, &data),
                None if code.is_some() => break,
                None => {
                    // Pipes closed before the exit: only the exit is left to wait for.
                    code = Some(exit.as_mut().await.map(|i| i.code).unwrap_or(-1));
                    break;
                }
            },
            _ = stop.changed(), if !stopped => {
                stopped = true;
                w.logs.system("stopping (SIGTERM)");
                let _ = killpg(pgid, Signal::SIGTERM);
                kill_at = Some(tokio::time::Instant::now() + STOP_GRACE);
            }
            _ = deadline => {
                w.logs.system("still running: SIGKILL");
                let _ = killpg(pgid, Signal::SIGKILL);
                kill_at = None;
            }
        }
    }
    w.logs.flush();
    let code = code.unwrap_or(-1);
    w.logs.system(format!("exited with code {code}"));
    tracing::info!(pid, code, "workload exited");
    w.set(|s| {
        s.pid = None;
        s.exit_code = Some(code);
        s.exited_at = Some(now_rfc3339());
    });
    (!stopped).then_some(code)
}

async fn supervise(w: Arc<Workload>, ctx: Ctx, mut stop: watch::Receiver<bool>) {
    let mut restarts = 0u32;
    loop {
        w.set(|s| s.status = Status::Starting);
        let Some(code) = run_once(&w, &ctx, &mut stop).await else {
            w.set(|s| s.status = Status::Stopped);
            return;
        };
        let spec = w.spec();
        let failed = code != 0;
        let again = match spec.restart_policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Always => true,
        };
        let end = if failed {
            Status::Failed
        } else {
            Status::Exited
        };
        let final_exit = || {
            w.set(|s| s.status = end);
            let _ = ctx.exits.send(FinalExit {
                id: w.id.clone(),
                name: spec.name.clone(),
                labels: spec.labels.clone(),
                exit_code: code,
            });
        };
        if !again {
            final_exit();
            return;
        }
        if spec.max_restarts.is_some_and(|m| restarts >= m) {
            w.logs
                .system(format!("not restarting: max_restarts ({restarts}) reached"));
            final_exit();
            return;
        }
        restarts += 1;
        let delay = spec.delay(restarts);
        w.logs.system(format!(
            "restart {restarts} in {:.1}s ({:?} policy)",
            delay.as_secs_f64(),
            spec.restart_policy
        ));
        w.set(|s| {
            s.status = Status::Backoff;
            s.restarts = restarts;
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {
                w.set(|s| s.status = Status::Stopped);
                return;
            }
        }
    }
}
