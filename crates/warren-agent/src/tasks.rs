//! The registry of exec tasks: running ones, and finished ones until their TTL expires.

use crate::exec::Event;
use crate::replay::Replay;
use crate::time::now_rfc3339;
use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use warren_protocol::runtime::{ExecTask, TaskStatus};

pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Upper bound on a requested TTL (a week).
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Output of a running task kept for subscribers that attach late (per task).
pub const LIVE_REPLAY: usize = 1 << 20;

/// Bytes for a task's stdin; `None` closes it.
pub type StdinTx = mpsc::Sender<Option<Bytes>>;

/// Why stdin could not be written.
#[derive(Debug, PartialEq, Eq)]
pub enum InputError {
    UnknownTask,
    NotRunning,
    StdinClosed,
}

struct Entry {
    task: ExecTask,
    /// Process group of the running task (its leader's pid).
    pgid: Option<i32>,
    finished: Option<Instant>,
    ttl: Duration,
    /// What the task printed, for live subscribers (while it runs).
    live: Option<Arc<Replay<Event>>>,
    /// Open stdin of a running task.
    stdin: Option<StdinTx>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    tasks: BTreeMap<u64, Entry>,
}

#[derive(Default)]
pub struct Tasks {
    inner: Mutex<Inner>,
}

fn without_output(t: &ExecTask) -> ExecTask {
    ExecTask {
        stdout: None,
        stderr: None,
        ..t.clone()
    }
}

impl Tasks {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        g.tasks
            .retain(|_, e| !matches!(e.finished, Some(at) if now.duration_since(at) >= e.ttl));
        g
    }

    /// Register a new pending task; returns it (with its id).
    pub fn create(&self, command: Vec<String>, ttl: Duration) -> ExecTask {
        let mut g = self.lock();
        g.next_id += 1;
        let id = g.next_id;
        let task = ExecTask {
            success: true,
            id: id.to_string(),
            command,
            status: TaskStatus::Pending,
            guest_pid: None,
            exit_code: None,
            stdout: None,
            stderr: None,
            error: None,
            created_at: now_rfc3339(),
            started_at: None,
            exited_at: None,
            ttl_seconds: Some(ttl.as_secs()),
        };
        g.tasks.insert(
            id,
            Entry {
                task: task.clone(),
                pgid: None,
                finished: None,
                ttl,
                live: Some(Arc::new(Replay::new(LIVE_REPLAY))),
                stdin: None,
            },
        );
        task
    }

    /// Record that the task's process started. False when the task was deleted while
    /// it was starting: the caller must then kill the process itself.
    pub fn set_running(&self, id: &str, pid: u32) -> bool {
        let mut g = self.lock();
        match parse(id).and_then(|n| g.tasks.get_mut(&n)) {
            Some(e) => {
                e.task.status = TaskStatus::Running;
                e.task.guest_pid = Some(pid);
                e.task.started_at = Some(now_rfc3339());
                e.pgid = i32::try_from(pid).ok();
                true
            }
            None => false,
        }
    }

    /// Record the final state of a task (if it was not deleted meanwhile).
    pub fn finish(&self, task: &ExecTask) {
        let mut g = self.lock();
        if let Some(e) = parse(&task.id).and_then(|n| g.tasks.get_mut(&n)) {
            e.task = task.clone();
            e.pgid = None;
            e.finished = Some(Instant::now());
            e.stdin = None;
            // The runner closes the log itself, after the exit event.
            e.live = None;
        }
    }

    /// The live output log of a task that has not finished yet.
    pub fn live(&self, id: &str) -> Option<Arc<Replay<Event>>> {
        let g = self.lock();
        parse(id)
            .and_then(|n| g.tasks.get(&n))
            .and_then(|e| e.live.clone())
    }

    /// Attach the writer of a running task's stdin.
    pub fn set_stdin(&self, id: &str, tx: StdinTx) {
        let mut g = self.lock();
        if let Some(e) = parse(id).and_then(|n| g.tasks.get_mut(&n)) {
            if e.finished.is_none() {
                e.stdin = Some(tx);
            }
        }
    }

    /// The stdin writer of a running task.
    pub fn stdin(&self, id: &str) -> Result<StdinTx, InputError> {
        let g = self.lock();
        let e = parse(id)
            .and_then(|n| g.tasks.get(&n))
            .ok_or(InputError::UnknownTask)?;
        if e.finished.is_some() {
            return Err(InputError::NotRunning);
        }
        e.stdin.clone().ok_or(InputError::StdinClosed)
    }

    /// Forget the stdin writer (after it was closed).
    pub fn clear_stdin(&self, id: &str) {
        let mut g = self.lock();
        if let Some(e) = parse(id).and_then(|n| g.tasks.get_mut(&n)) {
            e.stdin = None;
        }
    }

    pub fn get(&self, id: &str) -> Option<ExecTask> {
        let g = self.lock();
        parse(id)
            .and_then(|n| g.tasks.get(&n))
            .map(|e| e.task.clone())
    }

    /// All tasks, oldest first, without their output.
    pub fn list(&self) -> Vec<ExecTask> {
        self.lock()
            .tasks
            .values()
            .map(|e| without_output(&e.task))
            .collect()
    }

    /// Remove a task, killing its process group if it still runs. False if unknown.
    pub fn remove(&self, id: &str) -> bool {
        let removed = {
            let mut g = self.lock();
            parse(id).and_then(|n| g.tasks.remove(&n))
        };
        match removed {
            Some(e) => {
                kill_group(e.pgid);
                true
            }
            None => false,
        }
    }

    /// Remove every task, killing the running ones. Returns how many were removed.
    pub fn remove_all(&self) -> usize {
        let all = std::mem::take(&mut self.lock().tasks);
        let n = all.len();
        for e in all.into_values() {
            kill_group(e.pgid);
        }
        n
    }
}

fn parse(id: &str) -> Option<u64> {
    id.parse().ok()
}

pub fn kill_group(pgid: Option<i32>) {
    if let Some(pgid) = pgid.filter(|p| *p > 1) {
        if let Err(e) = killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
            tracing::debug!(pgid, "killpg: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_and_ttl() {
        let t = Tasks::default();
        let a = t.create(vec!["true".into()], Duration::from_millis(0));
        let b = t.create(vec!["false".into()], DEFAULT_TTL);
        assert_ne!(a.id, b.id);
        assert_eq!(t.list().len(), 2);
        // Unfinished tasks never expire.
        assert!(t.get(&a.id).is_some());
        let mut done = t.get(&a.id).unwrap();
        done.status = TaskStatus::Exited;
        done.stdout = Some("out".into());
        t.finish(&done);
        // TTL 0: gone at the next access.
        assert!(t.get(&a.id).is_none());
        let mut done = t.get(&b.id).unwrap();
        done.stdout = Some("out".into());
        t.finish(&done);
        assert_eq!(t.get(&b.id).unwrap().stdout.as_deref(), Some("out"));
        assert_eq!(t.list()[0].stdout, None);
        assert!(t.remove(&b.id));
        assert!(!t.remove(&b.id));
        assert!(!t.remove("nonsense"));
        t.create(vec!["x".into()], DEFAULT_TTL);
        assert_eq!(t.remove_all(), 1);
        assert!(t.list().is_empty());
    }
}
