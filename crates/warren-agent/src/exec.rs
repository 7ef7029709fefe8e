//! Running commands for `POST /exec` and `POST /exec/stream`.
//!
//! Every command is its own session and process group (`setsid`), so a timeout or a
//! `DELETE /exec/:id` can kill it together with whatever it started. Children are
//! started and reaped through the [`Reaper`]; output is read from pipes as it arrives.

use crate::error::{ApiError, ApiResult};
use crate::files::validate_path;
use crate::reaper::{ExitInfo, Reaper};
use crate::replay::Replay;
use crate::tasks::{kill_group, StdinTx, Tasks, DEFAULT_TTL, MAX_TTL};
use crate::time::now_rfc3339;
use crate::workspace::{Credentials, Workspace};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use warren_protocol::runtime::{ExecMode, ExecRequest, ExecTask, StreamExit, TaskStatus};

/// Output collected per stream for `POST /exec`; the rest is read and dropped.
pub const OUTPUT_CAP: usize = 64 << 20;
/// Largest chunk read from a pipe (and so the largest `stdout`/`stderr` SSE event).
pub const CHUNK: usize = 64 << 10;
/// After the process exits, how long to wait for more output from whatever still holds
/// its pipes (background children) before giving up on them.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
pub const SHELL: &str = "/bin/sh";

/// Characters that make a single-string command shell syntax in `auto` mode.
const SHELL_CHARS: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', ']', '#', '~',
    '{', '}', '!',
];

/// True when `s` holds whitespace or shell metacharacters.
pub fn needs_shell(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_whitespace() || SHELL_CHARS.contains(&c))
}

/// The argv actually executed for `cmd` under `mode`.
pub fn build_argv(cmd: &[String], mode: ExecMode) -> Vec<String> {
    let shell = |script: String| vec![SHELL.to_string(), "-c".to_string(), script];
    match mode {
        ExecMode::Direct => cmd.to_vec(),
        ExecMode::Shell => shell(cmd.join(" ")),
        ExecMode::Auto => match cmd {
            [only] if needs_shell(only) => shell(only.clone()),
            _ => cmd.to_vec(),
        },
    }
}

/// A validated exec request.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub stdin: Option<String>,
    pub timeout: Option<Duration>,
    pub ttl: Duration,
    pub keep_logs: bool,
    pub user: Option<Credentials>,
    /// Keep stdin open as a pipe fed by `POST /exec/:id/input` (when no inline `stdin`).
    pub stdin_open: bool,
}

/// Validate `req` against the workspace (422 on bad input).
pub fn prepare(ws: &Workspace, req: &ExecRequest) -> ApiResult<Prepared> {
    if req.cmd.is_empty() || req.cmd.iter().all(|a| a.trim().is_empty()) {
        return Err(ApiError::validation(
            "cmd must be a non-empty array of strings",
        ));
    }
    if req.cmd.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::validation("cmd must not contain NUL bytes"));
    }
    let argv = build_argv(&req.cmd, req.exec_mode.unwrap_or(ExecMode::Auto));
    match argv.first() {
        Some(program) if !program.is_empty() => {}
        _ => return Err(ApiError::validation("cmd[0] must not be empty")),
    }
    let cwd = match &req.cwd {
        Some(c) => {
            let p = validate_path(c)?;
            if !p.is_dir() {
                return Err(ApiError::validation(format!(
                    "cwd does not exist or is not a directory: {c}"
                )));
            }
            p
        }
        None => ws.default_cwd(),
    };
    let mut env = ws.env();
    for (k, v) in req.env.iter().flatten() {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ApiError::validation(format!(
                "invalid environment variable {k:?}"
            )));
        }
        env.insert(k.clone(), v.clone());
    }
    let ttl = req
        .ttl_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TTL)
        .min(MAX_TTL);
    Ok(Prepared {
        argv,
        env,
        cwd,
        stdin: req.stdin.clone(),
        timeout: req
            .timeout_seconds
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        ttl,
        keep_logs: req.keep_logs.unwrap_or(false),
        user: ws.user.clone(),
        stdin_open: false,
    })
}

/// Build the `Command` for a prepared request: clean env, own session, credentials.
pub fn build_command(p: &Prepared, stdin_piped: bool) -> Command {
    let (program, args) = p
        .argv
        .split_first()
        .map_or(("", &[][..]), |(a, rest)| (a.as_str(), rest));
    // An empty program fails at spawn (ENOENT) and is reported like any missing command.
    let mut c = Command::new(program);
    c.args(args)
        .env_clear()
        .envs(&p.env)
        .current_dir(&p.cwd)
        .stdin(if stdin_piped {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    in_own_session_as(&mut c, p.user.clone());
    c
}

/// Make the child its own session/process group leader and drop to `user`.
pub fn in_own_session_as(c: &mut Command, user: Option<Credentials>) {
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls on memory allocated before the fork.
    unsafe {
        c.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(u) = &user {
                if libc::setgroups(u.groups.len(), u.groups.as_ptr()) < 0
                    || libc::setgid(u.gid) < 0
                    || libc::setuid(u.uid) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Exit code and message for a command that could not be started.
pub fn spawn_error(program: &str, err: &io::Error) -> (i32, String) {
    match err.kind() {
        io::ErrorKind::NotFound => {
            if program.contains('/') && Path::new(program).exists() {
                (
                    127,
                    format!("{program}: its interpreter or loader was not found"),
                )
            } else {
                (127, format!("command not found: {program}"))
            }
        }
        io::ErrorKind::PermissionDenied => (126, format!("permission denied: {program}")),
        _ if err.raw_os_error() == Some(libc::ENOEXEC) => {
            (126, format!("cannot execute {program}: exec format error"))
        }
        _ => (126, format!("failed to start {program}: {err}")),
    }
}

/// One piece of a running task's life, as streamed by `POST /exec/stream`.
#[derive(Debug, Clone)]
pub enum Event {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(StreamExit),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_truncated: bool,
    stderr_truncated: bool,
}

impl Collected {
    fn push(&mut self, kind: Kind, data: &[u8]) {
        let (buf, truncated) = match kind {
            Kind::Stdout => (&mut self.stdout, &mut self.stdout_truncated),
            Kind::Stderr => (&mut self.stderr, &mut self.stderr_truncated),
        };
        let room = OUTPUT_CAP.saturating_sub(buf.len());
        if data.len() > room {
            *truncated = true;
        }
        buf.extend_from_slice(&data[..data.len().min(room)]);
    }

    fn notes(&self) -> Vec<String> {
        let mut n = Vec::new();
        if self.stdout_truncated {
            n.push(format!("stdout truncated to {} MiB", OUTPUT_CAP >> 20));
        }
        if self.stderr_truncated {
            n.push(format!("stderr truncated to {} MiB", OUTPUT_CAP >> 20));
        }
        n
    }

    fn store(&self, task: &mut ExecTask) {
        task.stdout = Some(String::from_utf8_lossy(&self.stdout).into_owned());
        task.stderr = Some(String::from_utf8_lossy(&self.stderr).into_owned());
    }
}

enum Sink {
    Collect(Collected),
    Stream {
        tx: mpsc::Sender<Event>,
        open: bool,
        keep: Option<Collected>,
    },
}

impl Sink {
    async fn output(&mut self, kind: Kind, data: Bytes) {
        match self {
            Sink::Collect(c) => c.push(kind, &data),
            Sink::Stream { tx, open, keep } => {
                if let Some(k) = keep {
                    k.push(kind, &data);
                }
                if *open {
                    let ev = match kind {
                        Kind::Stdout => Event::Stdout(data),
                        Kind::Stderr => Event::Stderr(data),
                    };
                    // The client went away: keep draining the pipes so the process is
                    // not blocked, but stop forwarding.
                    if tx.send(ev).await.is_err() {
                        *open = false;
                    }
                }
            }
        }
    }

    fn collected(&self) -> Option<&Collected> {
        match self {
            Sink::Collect(c) => Some(c),
            Sink::Stream { keep, .. } => keep.as_ref(),
        }
    }

    async fn exit(&mut self, task: &ExecTask) {
        if let Sink::Stream { tx, open: true, .. } = self {
            let _ = tx.send(Event::Exit(exit_of(task))).await;
        }
    }
}

/// The `exit` event of a finished task.
pub fn exit_of(task: &ExecTask) -> StreamExit {
    let status = match task.status {
        TaskStatus::Exited => "exited",
        _ => "failed",
    };
    StreamExit {
        exit_code: task.exit_code.unwrap_or(-1),
        pid: task.guest_pid,
        status: Some(status.to_string()),
        error: task.error.clone(),
    }
}

/// Tell live subscribers how the task ended, and that nothing more will come.
fn close_live(live: Option<&Arc<Replay<Event>>>, task: &ExecTask) {
    if let Some(l) = live {
        l.push(Event::Exit(exit_of(task)), 0);
        l.close();
    }
}

/// Feed a running task's stdin from `POST /exec/:id/input` until it is closed (an empty
/// input or the task's end) or the process stops reading.
fn stdin_writer(tasks: Arc<Tasks>, id: String, mut tx: pipe::Sender) -> StdinTx {
    let (send, mut recv) = mpsc::channel::<Option<Bytes>>(16);
    tokio::spawn(async move {
        while let Some(Some(data)) = recv.recv().await {
            if let Err(e) = tx.write_all(&data).await {
                tracing::debug!("stdin: {e}");
                break;
            }
        }
        // Dropping `tx` closes the pipe: the process reads EOF.
        tasks.clear_stdin(&id);
    });
    send
}

/// What running a task needs from the server.
#[derive(Clone)]
pub struct ExecCtx {
    pub reaper: Reaper,
    pub tasks: Arc<Tasks>,
}

/// Run to completion, collecting output (capped); the returned task carries it.
pub async fn run_collect(ctx: ExecCtx, p: Prepared, task: ExecTask) -> ApiResult<ExecTask> {
    // A task of its own: the command keeps running (and gets recorded) even if the
    // HTTP client goes away.
    let span = tracing::info_span!("exec", id = %task.id);
    tokio::spawn(run(ctx, p, task, Sink::Collect(Collected::default())).instrument(span))
        .await
        .map_err(|e| ApiError::Internal(format!("exec task failed: {e}")))
}

/// Start the task and return the receiver of its events; `Exit` comes last.
pub fn run_stream(ctx: ExecCtx, p: Prepared, task: ExecTask) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel(8);
    let keep = p.keep_logs.then(Collected::default);
    let span = tracing::info_span!("exec_stream", id = %task.id);
    tokio::spawn(
        run(
            ctx,
            p,
            task,
            Sink::Stream {
                tx,
                open: true,
                keep,
            },
        )
        .instrument(span),
    );
    rx
}

/// Forward what arrives on `rx` to `out` in chunks of at most [`CHUNK`] bytes, until EOF,
/// or until nothing came for [`DRAIN_GRACE`] after `exited` turned true.
pub async fn pump(
    rx: pipe::Receiver,
    kind: Kind,
    out: mpsc::Sender<(Kind, Bytes)>,
    mut exited: watch::Receiver<bool>,
) {
    let mut rx = rx;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let grace = async {
            let _ = exited.wait_for(|e| *e).await;
            tokio::time::sleep(DRAIN_GRACE).await;
        };
        let n = tokio::select! {
            r = rx.read(&mut buf) => match r {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("read {kind:?}: {e}");
                    break;
                }
            },
            _ = grace => {
                tracing::debug!("{kind:?} still open {DRAIN_GRACE:?} after exit; not waiting for it");
                break;
            }
        };
        if out
            .send((kind, Bytes::copy_from_slice(&buf[..n])))
            .await
            .is_err()
        {
            break;
        }
    }
}

async fn run(ctx: ExecCtx, p: Prepared, mut task: ExecTask, mut sink: Sink) -> ExecTask {
    let live = ctx.tasks.live(&task.id);
    let mut cmd = build_command(&p, p.stdin.is_some() || p.stdin_open);
    let spawned = match ctx.reaper.spawn(&mut cmd) {
        Ok(s) => s,
        Err(e) => {
            let program = p.argv.first().map(String::as_str).unwrap_or("");
            let (code, msg) = spawn_error(program, &e);
            tracing::info!("{msg}");
            task.status = TaskStatus::Failed;
            task.exit_code = Some(code);
            task.error = Some(msg);
            task.exited_at = Some(now_rfc3339());
            if let Some(c) = sink.collected() {
                c.store(&mut task);
            }
            close_live(live.as_ref(), &task);
            ctx.tasks.finish(&task);
            sink.exit(&task).await;
            return task;
        }
    };
    let pid = spawned.pid;
    tracing::info!(pid, argv = ?p.argv, "started");
    if !ctx.tasks.set_running(&task.id, pid) {
        tracing::info!(pid, "task deleted while starting: killing it");
        kill_group(i32::try_from(pid).ok());
    }
    task.status = TaskStatus::Running;
    task.guest_pid = Some(pid);
    task.started_at = Some(now_rfc3339());

    if let Some(pipe_in) = spawned.stdin {
        match pipe::Sender::from_owned_fd(OwnedFd::from(pipe_in)) {
            Ok(mut tx) => match p.stdin.clone() {
                Some(data) => {
                    tokio::spawn(async move {
                        // EPIPE when the process does not read its stdin: fine.
                        let _ = tx.write_all(data.as_bytes()).await;
                    });
                }
                None => {
                    let writer = stdin_writer(ctx.tasks.clone(), task.id.clone(), tx);
                    ctx.tasks.set_stdin(&task.id, writer);
                }
            },
            Err(e) => tracing::warn!("stdin pipe: {e}"),
        }
    }

    let (exited_tx, exited_rx) = watch::channel(false);
    let (ev_tx, mut ev_rx) = mpsc::channel::<(Kind, Bytes)>(4);
    let pipes = [
        (spawned.stdout.map(OwnedFd::from), Kind::Stdout),
        (spawned.stderr.map(OwnedFd::from), Kind::Stderr),
    ];
    for (fd, kind) in pipes {
        let Some(fd) = fd else { continue };
        match pipe::Receiver::from_owned_fd(fd) {
            Ok(rx) => {
                tokio::spawn(pump(rx, kind, ev_tx.clone(), exited_rx.clone()));
            }
            Err(e) => tracing::warn!("{kind:?} pipe: {e}"),
        }
    }
    drop(ev_tx);

    // The timeout lives in its own task so that a slow stream consumer cannot delay it.
    let timed_out = Arc::new(AtomicBool::new(false));
    let killer = p.timeout.map(|t| {
        let flag = timed_out.clone();
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            flag.store(true, Ordering::SeqCst);
            kill_group(i32::try_from(pid).ok());
        })
    });

    let exit = spawned.exit;
    tokio::pin!(exit);
    let mut status: Option<Option<ExitInfo>> = None;
    loop {
        tokio::select! {
            r = &mut exit, if status.is_none() => {
                status = Some(r.ok());
                let _ = exited_tx.send(true);
            }
            ev = ev_rx.recv() => match ev {
                Some((kind, data)) => {
                    if let Some(l) = &live {
                        let n = data.len();
                        l.push(match kind {
                            Kind::Stdout => Event::Stdout(data.clone()),
                            Kind::Stderr => Event::Stderr(data.clone()),
                        }, n);
                    }
                    sink.output(kind, data).await
                }
                None => break,
            }
        }
    }
    let info = match status {
        Some(s) => s,
        None => exit.await.ok(),
    };
    if let Some(k) = killer {
        k.abort();
    }

    task.exited_at = Some(now_rfc3339());
    let mut errors = Vec::new();
    if timed_out.load(Ordering::SeqCst) {
        task.status = TaskStatus::Failed;
        task.exit_code = Some(124);
        errors.push(format!(
            "timed out after {}s",
            p.timeout.map(|t| t.as_secs()).unwrap_or(0)
        ));
    } else {
        match info {
            Some(ExitInfo {
                code,
                signal: Some(sig),
            }) => {
                task.status = TaskStatus::Failed;
                task.exit_code = Some(code);
                errors.push(format!("killed by signal {sig}"));
            }
            Some(ExitInfo { code, signal: None }) => {
                task.status = TaskStatus::Exited;
                task.exit_code = Some(code);
            }
            None => {
                task.status = TaskStatus::Failed;
                task.exit_code = Some(-1);
                errors.push("lost track of the process".into());
            }
        }
    }
    if let Some(c) = sink.collected() {
        errors.extend(c.notes());
        c.store(&mut task);
    }
    if !errors.is_empty() {
        task.error = Some(errors.join("; "));
    }
    tracing::info!(pid, code = ?task.exit_code, status = ?task.status, "finished");
    close_live(live.as_ref(), &task);
    ctx.tasks.finish(&task);
    sink.exit(&task).await;
    task
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mode_selection() {
        // auto: argv unless a single element that is shell syntax
        assert_eq!(
            build_argv(&v(&["ls", "-l"]), ExecMode::Auto),
            v(&["ls", "-l"])
        );
        assert_eq!(build_argv(&v(&["ls"]), ExecMode::Auto), v(&["ls"]));
        assert_eq!(
            build_argv(&v(&["ls -l | wc"]), ExecMode::Auto),
            v(&["/bin/sh", "-c", "ls -l | wc"])
        );
        assert_eq!(
            build_argv(&v(&["echo$HOME"]), ExecMode::Auto),
            v(&["/bin/sh", "-c", "echo$HOME"])
        );
        // two elements are argv even when they contain spaces
        assert_eq!(
            build_argv(&v(&["echo", "a b"]), ExecMode::Auto),
            v(&["echo", "a b"])
        );
        assert_eq!(
            build_argv(&v(&["echo", "a", "b"]), ExecMode::Shell),
            v(&["/bin/sh", "-c", "echo a b"])
        );
        assert_eq!(
            build_argv(&v(&["echo hi"]), ExecMode::Direct),
            v(&["echo hi"])
        );
        assert!(needs_shell("a;b"));
        assert!(needs_shell("a\tb"));
        assert!(!needs_shell("/usr/bin/env"));
        assert!(!needs_shell("node"));
    }

    #[test]
    fn prepare_validates() {
        let ws = Workspace::new(BTreeMap::new(), Some("/".into()), None);
        let req = |cmd: &[&str]| ExecRequest {
            cmd: v(cmd),
            ..Default::default()
        };
        let e = prepare(&ws, &req(&[])).unwrap_err();
        assert_eq!(e.code(), "validation_error");
        assert!(prepare(&ws, &req(&[""])).is_err());
        let mut r = req(&["true"]);
        r.cwd = Some("relative/dir".into());
        assert_eq!(prepare(&ws, &r).unwrap_err().code(), "validation_error");
        r.cwd = Some("/definitely/not/a/dir".into());
        assert_eq!(prepare(&ws, &r).unwrap_err().code(), "validation_error");
        r.cwd = Some("/".into());
        let mut env = BTreeMap::new();
        env.insert("A=B".to_string(), "x".to_string());
        r.env = Some(env);
        assert!(prepare(&ws, &r).is_err());
        let mut env = BTreeMap::new();
        env.insert("FOO".to_string(), "bar".to_string());
        r.env = Some(env);
        r.timeout_seconds = Some(0);
        let p = prepare(&ws, &r).unwrap();
        assert_eq!(p.env["FOO"], "bar");
        assert!(p.env.contains_key("PATH"));
        assert_eq!(p.timeout, None);
        assert_eq!(p.ttl, DEFAULT_TTL);
    }

    #[test]
    fn spawn_errors() {
        let (code, msg) = spawn_error("nope", &io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(code, 127);
        assert!(msg.contains("nope"));
        let (code, _) = spawn_error("x", &io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(code, 126);
    }

    #[test]
    fn collected_output_is_capped() {
        let mut c = Collected::default();
        c.push(Kind::Stdout, &vec![b'a'; OUTPUT_CAP - 1]);
        c.push(Kind::Stdout, b"bc");
        assert_eq!(c.stdout.len(), OUTPUT_CAP);
        assert!(c.stdout_truncated && !c.stderr_truncated);
        assert_eq!(c.notes().len(), 1);
    }
}
