//! The one and only reaper of child processes.
//!
//! As PID 1 the agent inherits every orphan in the VM and must reap them all, so it calls
//! `waitpid(-1)`. Any other waiter (tokio::process, `Child::wait`) would race with that,
//! so every child is started through [`Reaper::spawn`] with `std::process::Command` and
//! its status is delivered through a oneshot channel keyed by pid.
//!
//! The race between "child exits and gets reaped" and "parent records the pid" is closed
//! by one mutex: [`Reaper::spawn`] holds it across fork+exec and recording the pid, and
//! the reaping loop holds it across its `waitpid` calls. (std's `spawn` itself waits for a
//! child whose exec failed; holding the lock also keeps the reaper away from that child.)

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::io;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, or 128 + signal number when killed by a signal (shell convention).
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
}

impl ExitInfo {
    fn from_status(status: WaitStatus) -> Option<(i32, ExitInfo)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid.as_raw(), ExitInfo { code, signal: None })),
            WaitStatus::Signaled(pid, sig, _) => {
                let n = sig as i32;
                Some((
                    pid.as_raw(),
                    ExitInfo {
                        code: 128 + n,
                        signal: Some(n),
                    },
                ))
            }
            _ => None,
        }
    }
}

type Waiters = HashMap<i32, oneshot::Sender<ExitInfo>>;

#[derive(Clone)]
pub struct Reaper {
    waiters: Arc<Mutex<Waiters>>,
}

/// A started child: its pid, pipes, and the receiver of its exit status.
pub struct Spawned {
    pub pid: u32,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    pub exit: oneshot::Receiver<ExitInfo>,
}

fn lock(m: &Mutex<Waiters>) -> MutexGuard<'_, Waiters> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Reaper {
    /// Install the SIGCHLD handler and start the reaping task. Must run inside a tokio
    /// runtime.
    pub fn start() -> io::Result<Reaper> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper {
            waiters: Arc::new(Mutex::new(HashMap::new())),
        };
        let r = reaper.clone();
        tokio::spawn(async move {
            // A periodic sweep as well, in case a signal was ever coalesced away.
            let mut sweep = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = sweep.tick() => {}
                }
                r.reap_all();
            }
        });
        Ok(reaper)
    }

    /// Reap every child that has exited, delivering statuses to their waiters.
    pub fn reap_all(&self) {
        let mut waiters = lock(&self.waiters);
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("waitpid: {e}");
                    break;
                }
                Ok(status) => {
                    let Some((pid, info)) = ExitInfo::from_status(status) else {
                        continue;
                    };
                    match waiters.remove(&pid) {
                        Some(tx) => {
                            let _ = tx.send(info);
                        }
                        None => tracing::debug!(pid, code = info.code, "reaped orphan"),
                    }
                }
            }
        }
    }

    /// Spawn `cmd` and register its pid. Never call `wait` on the result: the status
    /// arrives through [`Spawned::exit`].
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        let mut waiters = lock(&self.waiters);
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid as i32, tx);
        drop(waiters);
        // Dropping a std Child neither kills nor waits for it.
        Ok(Spawned {
            pid,
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            exit: rx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    // The only unit test that starts children: a second reaper calling waitpid(-1) in
    // the same test process would steal them.
    #[tokio::test]
    async fn delivers_exit_codes_and_signals() {
        let reaper = Reaper::start().unwrap();
        let mut c = Command::new("/bin/sh");
        c.args(["-c", "exit 7"]).stdin(Stdio::null());
        let s = reaper.spawn(&mut c).unwrap();
        let info = tokio::time::timeout(Duration::from_secs(10), s.exit)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            info,
            ExitInfo {
                code: 7,
                signal: None
            }
        );

        let mut c = Command::new("/bin/sh");
        c.args(["-c", "kill -9 $$"]);
        let s = reaper.spawn(&mut c).unwrap();
        let info = tokio::time::timeout(Duration::from_secs(10), s.exit)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.signal, Some(9));
        assert_eq!(info.code, 137);

        // A failed exec is an error, not a panic (std waits for that child itself).
        let mut c = Command::new("/definitely/not/here");
        let err = reaper.spawn(&mut c).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
