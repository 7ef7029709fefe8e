//! The workspace's own command (`BootConfig::cmd`): run once the agent is ready, its
//! output appended to [`CMD_LOG`] and echoed to the console.

use crate::control::ControlTx;
use crate::exec::{self, Kind};
use crate::reaper::Reaper;
use crate::workspace::Workspace;
use bytes::Bytes;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use warren_protocol::control::GuestMessage;

pub const CMD_LOG: &str = "/var/log/warren/cmd.log";

/// Start the command in the background; `CmdExited` is sent when it ends.
pub fn start(ws: Arc<Workspace>, reaper: Reaper, argv: Vec<String>, control: ControlTx) {
    let span = tracing::info_span!("cmd");
    tokio::spawn(
        async move {
            let code = run(&ws, &reaper, &argv).await;
            tracing::info!(exit_code = code, "workspace command exited");
            report_exit(&control, code).await;
        }
        .instrument(span),
    );
}

/// Set when the host says it recorded the command's exit (`HostMessage::CmdExitSeen`).
static EXIT_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static EXIT_SEEN_NOTIFY: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The host recorded the command's exit.
pub fn exit_seen() {
    EXIT_SEEN.store(true, std::sync::atomic::Ordering::SeqCst);
    EXIT_SEEN_NOTIFY.notify_waiters();
}

/// Send `CmdExited` until the host says it has it (every 2 s, for 10 minutes at
/// most): a message written while the VM is being frozen, or while nobody listens on
/// the host end, can be lost, and the exit code is the command's one result.
pub async fn report_exit(control: &ControlTx, exit_code: i32) {
    EXIT_SEEN.store(false, std::sync::atomic::Ordering::SeqCst);
    let report = report_id();
    for _ in 0..300 {
        let seen = EXIT_SEEN_NOTIFY.notified();
        tokio::pin!(seen);
        seen.as_mut().enable();
        if EXIT_SEEN.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        control.send(&GuestMessage::CmdExited { exit_code, report });
        if tokio::time::timeout(std::time::Duration::from_secs(2), seen)
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// A random id for one exit report (`getrandom(2)`; the kernel's RNG is reseeded
/// at every restore, so a copy of this VM draws other ids).
fn report_id() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into the live buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Never expected; an id from the clock still tells two exits apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        return t | 1;
    }
    u64::from_ne_bytes(b) | 1
}

/// A console echo that never slows the command down: when the (serial, slow) console
/// falls behind, output is dropped from the echo only, never from the log file.
fn console_echo() -> SyncSender<Bytes> {
    let (tx, rx) = sync_channel::<Bytes>(256);
    let _ = std::thread::Builder::new()
        .name("cmd-console".into())
        .spawn(move || {
            let mut err = std::io::stderr();
            while let Ok(b) = rx.recv() {
                let _ = err.write_all(&b);
            }
        });
    tx
}

async fn run(ws: &Workspace, reaper: &Reaper, argv: &[String]) -> i32 {
    let Some(program) = argv.first().filter(|p| !p.is_empty()) else {
        tracing::warn!("the workspace command is empty");
        return 127;
    };
    let _ = tokio::fs::create_dir_all("/var/log/warren").await;
    let mut log = match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(CMD_LOG)
        .await
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!("{CMD_LOG}: {e}");
            None
        }
    };
    let mut c = Command::new(program);
    c.args(&argv[1..])
        .env_clear()
        .envs(ws.env())
        .current_dir(ws.default_cwd())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    exec::in_own_session_as(&mut c, ws.user.clone());
    let spawned = match reaper.spawn(&mut c) {
        Ok(s) => s,
        Err(e) => {
            let (code, msg) = exec::spawn_error(program, &e);
            tracing::error!("workspace command: {msg}");
            if let Some(f) = log.as_mut() {
                let _ = f.write_all(format!("warren: {msg}\n").as_bytes()).await;
            }
            return code;
        }
    };
    tracing::info!(pid = spawned.pid, ?argv, "workspace command started");

    let (exited_tx, exited_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel::<(Kind, Bytes)>(16);
    for (fd, kind) in [
        (spawned.stdout.map(OwnedFd::from), Kind::Stdout),
        (spawned.stderr.map(OwnedFd::from), Kind::Stderr),
    ] {
        if let Some(fd) = fd {
            match pipe::Receiver::from_owned_fd(fd) {
                Ok(r) => {
                    tokio::spawn(exec::pump(r, kind, tx.clone(), exited_rx.clone()));
                }
                Err(e) => tracing::warn!("{kind:?} pipe: {e}"),
            }
        }
    }
    drop(tx);

    let console = console_echo();
    let mut dropped = 0usize;
    let exit = spawned.exit;
    tokio::pin!(exit);
    let mut code = None;
    loop {
        tokio::select! {
            r = &mut exit, if code.is_none() => {
                code = Some(r.map(|i| i.code).unwrap_or(-1));
                let _ = exited_tx.send(true);
            }
            chunk = rx.recv() => {
                let Some((_, data)) = chunk else { break };
                if let Some(f) = log.as_mut() {
                    let _ = f.write_all(&data).await;
                }
                match console.try_send(data) {
                    Ok(()) => {}
                    Err(TrySendError::Full(b)) => dropped += b.len(),
                    Err(TrySendError::Disconnected(_)) => {}
                }
            }
        }
    }
    if let Some(f) = log.as_mut() {
        let _ = f.flush().await;
    }
    if dropped > 0 {
        tracing::info!(
            "{dropped} bytes of command output were not echoed to the console (see {CMD_LOG})"
        );
    }
    match code {
        Some(c) => c,
        None => exit.await.map(|i| i.code).unwrap_or(-1),
    }
}
