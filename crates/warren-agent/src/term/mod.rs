//! Terminal sessions: a process on a pseudo-terminal, its scrollback, and its exit.
//!
//! A session belongs to the agent, not to a client: it outlives WebSocket disconnects,
//! and every (re)connection replays the scrollback before the live output. Ids are
//! 1..=255 because the WebSocket's binary frames carry the id in one byte.

pub mod api;
pub mod pty;

use crate::exec::{self, SHELL};
use crate::reaper::Reaper;
use crate::replay::Replay;
use crate::tasks::kill_group;
use crate::time::now_rfc3339;
use crate::workspace::Workspace;
use bytes::Bytes;
use pty::Master;
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;
use tracing::Instrument;

pub const DEFAULT_SCROLLBACK: usize = 64 << 10;
pub const MAX_SCROLLBACK: usize = 16 << 20;
pub const DEFAULT_COLS: u16 = 80;
pub const DEFAULT_ROWS: u16 = 24;
const READ_CHUNK: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TermError {
    #[error("no such terminal: {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("all 255 terminal ids are in use: close some sessions first")]
    Full,
    #[error("terminal {0} has exited")]
    Exited(u8),
    #[error("{0}")]
    Start(String),
    #[error("terminal {id}: {err}")]
    Io { id: u8, err: std::io::Error },
}

/// What `GET /terminals` reports of a session (`TerminalSession` in the client).
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub command: Vec<String>,
    pub cols: u16,
    pub rows: u16,
    pub alive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub created_at: String,
    pub scrollback_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

struct State {
    cols: u16,
    rows: u16,
    exit_code: Option<i32>,
}

pub struct Session {
    pub id: u8,
    command: Vec<String>,
    created_at: String,
    scrollback_size: usize,
    pid: u32,
    master: Master,
    /// Everything the terminal printed (bounded: the scrollback), for every reader.
    pub output: Replay<Bytes>,
    state: Mutex<State>,
}

impl Session {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn info(&self) -> SessionInfo {
        let s = self.state();
        SessionInfo {
            id: self.id.to_string(),
            command: self.command.clone(),
            cols: s.cols,
            rows: s.rows,
            alive: s.exit_code.is_none(),
            exit_code: s.exit_code,
            created_at: self.created_at.clone(),
            scrollback_size: self.scrollback_size,
            pid: Some(self.pid),
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.state().exit_code
    }

    /// The last `max` bytes of the scrollback (all of it when `None`).
    pub fn scrollback(&self, max: Option<usize>) -> Vec<u8> {
        let all: Vec<u8> = self.output.snapshot().concat();
        match max {
            Some(n) if n < all.len() => all[all.len() - n..].to_vec(),
            _ => all,
        }
    }

    pub async fn write(&self, data: &[u8]) -> Result<(), TermError> {
        if self.exit_code().is_some() {
            return Err(TermError::Exited(self.id));
        }
        self.master
            .write_all(data)
            .await
            .map_err(|err| TermError::Io { id: self.id, err })
    }

    /// Resize; 0 columns or rows is refused and changes nothing.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), TermError> {
        validate_size(cols, rows)?;
        if self.exit_code().is_some() {
            return Err(TermError::Exited(self.id));
        }
        self.master
            .resize(cols, rows)
            .map_err(|err| TermError::Io { id: self.id, err })?;
        let mut s = self.state();
        s.cols = cols;
        s.rows = rows;
        Ok(())
    }
}

pub fn validate_size(cols: u16, rows: u16) -> Result<(), TermError> {
    if cols == 0 || rows == 0 {
        return Err(TermError::Invalid(format!(
            "terminal size must be at least 1x1 (got {cols}x{rows})"
        )));
    }
    Ok(())
}

/// What `POST /terminals` asks for.
#[derive(Debug, Default)]
pub struct Spec {
    pub cmd: Option<Vec<String>>,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    pub scrollback_size: Option<usize>,
}

/// All sessions of the agent.
pub struct Terminals {
    sessions: Mutex<BTreeMap<u8, Arc<Session>>>,
    /// New sessions, for WebSocket connections already open.
    added: broadcast::Sender<Arc<Session>>,
}

impl Default for Terminals {
    fn default() -> Self {
        Terminals {
            sessions: Mutex::new(BTreeMap::new()),
            added: broadcast::channel(16).0,
        }
    }
}

fn default_shell() -> String {
    if std::path::Path::new("/bin/bash").exists() {
        "/bin/bash".into()
    } else {
        SHELL.into()
    }
}

impl Terminals {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u8, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Vec<Arc<Session>> {
        self.lock().values().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Result<Arc<Session>, TermError> {
        id.trim()
            .parse::<u8>()
            .ok()
            .and_then(|n| self.lock().get(&n).cloned())
            .ok_or_else(|| TermError::NotFound(id.to_string()))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Session>> {
        self.added.subscribe()
    }

    /// Start a session.
    pub fn create(
        self: &Arc<Self>,
        ws: &Workspace,
        reaper: &Reaper,
        spec: Spec,
    ) -> Result<Arc<Session>, TermError> {
        let cols = spec.cols.unwrap_or(DEFAULT_COLS);
        let rows = spec.rows.unwrap_or(DEFAULT_ROWS);
        validate_size(cols, rows)?;
        let scrollback_size = spec.scrollback_size.unwrap_or(DEFAULT_SCROLLBACK);
        if scrollback_size == 0 || scrollback_size > MAX_SCROLLBACK {
            return Err(TermError::Invalid(format!(
                "scrollback_size must be 1..={MAX_SCROLLBACK} bytes"
            )));
        }
        let command = match spec.cmd {
            Some(c) if c.iter().any(|a| a.contains('\0')) => {
                return Err(TermError::Invalid("cmd must not contain NUL bytes".into()))
            }
            Some(c) if c.first().is_some_and(|p| !p.trim().is_empty()) => c,
            Some(c) if !c.is_empty() => {
                return Err(TermError::Invalid("cmd[0] must not be empty".into()))
            }
            _ => vec![default_shell()],
        };
        let mut sessions = self.lock();
        let id = (1..=u8::MAX)
            .find(|n| !sessions.contains_key(n))
            .ok_or(TermError::Full)?;
        let (program, args) = command
            .split_first()
            .map_or(("", &[][..]), |(a, rest)| (a.as_str(), rest));
        let mut c = Command::new(program);
        let mut env = ws.env();
        env.insert("TERM".into(), "xterm-256color".into());
        c.args(args)
            .env_clear()
            .envs(&env)
            .current_dir(ws.default_cwd());
        let (master, spawned) = pty::spawn(reaper, c, cols, rows, ws.user.clone())
            .map_err(|e| TermError::Start(exec::spawn_error(program, &e).1))?;
        let session = Arc::new(Session {
            id,
            command,
            created_at: now_rfc3339(),
            scrollback_size,
            pid: spawned.pid,
            master,
            output: Replay::new(scrollback_size),
            state: Mutex::new(State {
                cols,
                rows,
                exit_code: None,
            }),
        });
        sessions.insert(id, session.clone());
        drop(sessions);
        tracing::info!(id, pid = spawned.pid, argv = ?session.command, "terminal started");
        let span = tracing::info_span!("terminal", id);
        tokio::spawn(pump(session.clone(), spawned.exit).instrument(span));
        let _ = self.added.send(session.clone());
        Ok(session)
    }

    /// Close a session: hang up and kill its process group, forget it.
    pub fn close(&self, id: &str) -> Result<(), TermError> {
        let s = self.get(id)?;
        self.lock().remove(&s.id);
        if s.exit_code().is_none() {
            kill_group(i32::try_from(s.pid).ok());
        }
        s.output.close();
        Ok(())
    }
}

/// Copy the terminal's output into its scrollback until nobody holds the slave any
/// more, then record the exit code and close the log (readers then see the exit).
async fn pump(s: Arc<Session>, exit: tokio::sync::oneshot::Receiver<crate::reaper::ExitInfo>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match s.master.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => s.output.push(Bytes::copy_from_slice(&buf[..n]), n),
            Err(e) => {
                tracing::debug!("read: {e}");
                break;
            }
        }
    }
    let code = exit.await.map(|i| i.code).unwrap_or(-1);
    tracing::info!(code, "terminal exited");
    s.state().exit_code = Some(code);
    s.output.close();
}
