//! File watchers: inotify on a directory tree, events over the runtime WebSocket.
//!
//! Raw inotify through nix (already a dependency) rather than the `notify` crate: one
//! instance per watcher, a watch per directory (new directories are added as they
//! appear), no polling backend to carry in a static PID 1. Events go to the open
//! WebSocket as `{"channel":"watcher","type":"change","watcher_id","path","op"}` with
//! `op` one of create, write, remove, rename; `ready` once the tree is watched;
//! `overflow` when the kernel queue overflowed and events were lost.

pub mod api;

use crate::error::{ApiError, ApiResult};
use crate::files::validate_path;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;
use tracing::Instrument;

/// Directories one watcher may watch.
pub const MAX_DIRS: usize = 20_000;

#[derive(Debug, Clone, Serialize)]
pub struct WatcherInfo {
    pub id: String,
    pub root: String,
    pub dir_count: usize,
    pub excludes: Vec<String>,
    pub active: bool,
}

pub struct Watcher {
    id: String,
    root: PathBuf,
    excludes: Vec<String>,
    dirs: Arc<AtomicUsize>,
    task: tokio::task::AbortHandle,
}

impl Watcher {
    pub fn info(&self) -> WatcherInfo {
        WatcherInfo {
            id: self.id.clone(),
            root: self.root.to_string_lossy().into_owned(),
            dir_count: self.dirs.load(Ordering::Relaxed),
            excludes: self.excludes.clone(),
            active: !self.task.is_finished(),
        }
    }
}

#[derive(Default)]
struct Inner {
    next: u64,
    items: BTreeMap<String, Arc<Watcher>>,
}

pub struct Watchers {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Value>,
}

/// `*` matches any run of characters; anything else is literal.
fn glob(pat: &str, s: &str) -> bool {
    match pat.split_once('*') {
        None => pat == s,
        Some((head, tail)) => {
            let Some(rest) = s.strip_prefix(head) else {
                return false;
            };
            if tail.is_empty() {
                return true;
            }
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

/// True when a component of `rel` (relative to the root) matches an exclude pattern.
pub fn excluded(excludes: &[String], rel: &Path) -> bool {
    rel.components().any(|c| {
        let c = c.as_os_str().to_string_lossy();
        excludes.iter().any(|p| glob(p, &c))
    })
}

struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
}

struct Tree {
    root: PathBuf,
    excludes: Vec<String>,
    wds: HashMap<WatchDescriptor, PathBuf>,
    dirs: Arc<AtomicUsize>,
}

impl Tree {
    /// Watch `dir` and every directory under it (not excluded, up to [`MAX_DIRS`]).
    fn add(&mut self, ino: &Inotify, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            if self.wds.len() >= MAX_DIRS {
                tracing::warn!("watcher: more than {MAX_DIRS} directories; not watching the rest");
                return;
            }
            let rel = d.strip_prefix(&self.root).unwrap_or(&d);
            if excluded(&self.excludes, rel) {
                continue;
            }
            match ino.add_watch(&d, mask()) {
                Ok(wd) => {
                    self.wds.insert(wd, d.clone());
                }
                Err(e) => {
                    tracing::debug!("watch {}: {e}", d.display());
                    continue;
                }
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
        }
        self.dirs.store(self.wds.len(), Ordering::Relaxed);
    }
}

fn op_of(m: AddWatchFlags) -> Option<&'static str> {
    if m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
        Some("create")
    } else if m.contains(AddWatchFlags::IN_MODIFY) {
        Some("write")
    } else if m.contains(AddWatchFlags::IN_DELETE) {
        Some("remove")
    } else if m.contains(AddWatchFlags::IN_MOVED_FROM) {
        Some("rename")
    } else {
        None
    }
}

async fn run(id: String, ino: Inotify, mut tree: Tree, events: broadcast::Sender<Value>) {
    tree.add(&ino, &tree.root.clone());
    let _ = events.send(json!({
        "channel": "watcher", "type": "ready", "watcher_id": id,
        "root": tree.root.to_string_lossy(), "dirs": tree.wds.len(),
    }));
    // SAFETY: the inotify fd stays open and unchanged while the AsyncFd owns it.
    let afd = match unsafe { AsyncFd::register(Fd(ino)) } {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("watcher {id}: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        let evs =
            match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(evs)) => evs,
                Ok(Err(e)) => {
                    tracing::warn!("watcher {id}: {e}");
                    return;
                }
                Err(_would_block) => continue,
            };
        for ev in evs {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                let _ = events.send(json!({
                    "channel": "watcher", "type": "overflow", "watcher_id": id,
                    "message": "the kernel's event queue overflowed: some changes were lost",
                }));
                continue;
            }
            if ev
                .mask
                .intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_IGNORED)
            {
                tree.wds.remove(&ev.wd);
                tree.dirs.store(tree.wds.len(), Ordering::Relaxed);
                continue;
            }
            let (Some(dir), Some(name)) = (tree.wds.get(&ev.wd), ev.name.as_ref()) else {
                continue;
            };
            let path = dir.join(name);
            let rel = path.strip_prefix(&tree.root).unwrap_or(&path);
            if excluded(&tree.excludes, rel) {
                continue;
            }
            if ev.mask.contains(AddWatchFlags::IN_ISDIR)
                && ev
                    .mask
                    .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            {
                tree.add(&afd.get_ref().0, &path);
            }
            if let Some(op) = op_of(ev.mask) {
                let _ = events.send(json!({
                    "channel": "watcher", "type": "change", "watcher_id": id,
                    "path": path.to_string_lossy(), "op": op,
                }));
            }
        }
    }
}

impl Watchers {
    pub fn new(events: broadcast::Sender<Value>) -> Watchers {
        Watchers {
            inner: Mutex::new(Inner::default()),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create(&self, root: &str, excludes: Vec<String>) -> ApiResult<Arc<Watcher>> {
        let root = validate_path(root)?;
        if !root.is_dir() {
            return Err(ApiError::validation(format!(
                "path must be an existing directory: {}",
                root.display()
            )));
        }
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| ApiError::Internal(format!("inotify: {e}")))?;
        let mut g = self.lock();
        g.next += 1;
        let id = g.next.to_string();
        let dirs = Arc::new(AtomicUsize::new(0));
        let tree = Tree {
            root: root.clone(),
            excludes: excludes.clone(),
            wds: HashMap::new(),
            dirs: dirs.clone(),
        };
        let span = tracing::info_span!("watcher", id = %id);
        let task = tokio::spawn(run(id.clone(), ino, tree, self.events.clone()).instrument(span));
        let w = Arc::new(Watcher {
            id: id.clone(),
            root,
            excludes,
            dirs,
            task: task.abort_handle(),
        });
        g.items.insert(id, w.clone());
        Ok(w)
    }

    pub fn list(&self) -> Vec<Arc<Watcher>> {
        self.lock().items.values().cloned().collect()
    }

    pub fn get(&self, id: &str) -> ApiResult<Arc<Watcher>> {
        self.lock()
            .items
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("no such watcher: {id}")))
    }

    pub fn delete(&self, id: &str) -> ApiResult<()> {
        let w = self
            .lock()
            .items
            .remove(id)
            .ok_or_else(|| ApiError::NotFound(format!("no such watcher: {id}")))?;
        // Dropping the task drops the inotify instance and all its watches.
        w.task.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_match_components() {
        let ex = vec![
            "node_modules".to_string(),
            "*.tmp".to_string(),
            ".git".into(),
        ];
        assert!(excluded(&ex, Path::new("a/node_modules/b")));
        assert!(excluded(&ex, Path::new("x.tmp")));
        assert!(excluded(&ex, Path::new(".git/HEAD")));
        assert!(!excluded(&ex, Path::new("src/main.rs")));
        assert!(glob("a*b*c", "aXXbYc"));
        assert!(!glob("a*b", "aXc"));
    }
}
