//! A workload's logs: lines in a bounded ring (for `logs` and SSE with tail/follow)
//! and appended to a file in the guest that rotates at the workload's size limit
//! (`<name>.log` -> `<name>.log.1`, one old file kept).

use crate::replay::Replay;
use crate::time::now_rfc3339;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Bytes of log lines kept in memory per workload.
pub const RING_BYTES: usize = 1 << 20;
/// A line longer than this is split.
const MAX_LINE: usize = 16 << 10;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogEntry {
    /// `stdout`, `stderr`, or `system` (starts, exits, restarts).
    pub stream: &'static str,
    pub data: String,
    pub timestamp: String,
}

struct FileLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
}

impl FileLog {
    fn write(&mut self, line: &str) {
        if self.file.is_none() {
            return;
        }
        if self.size + line.len() as u64 > self.max {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.path, &old);
            self.file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path)
                .ok();
            self.size = 0;
        }
        if let Some(f) = self.file.as_mut() {
            if f.write_all(line.as_bytes()).is_ok() {
                self.size += line.len() as u64;
            }
        }
    }
}

pub struct Logs {
    pub ring: Replay<LogEntry>,
    file: Mutex<FileLog>,
    /// Unterminated output per stream (stdout, stderr).
    partial: Mutex<[Vec<u8>; 2]>,
}

impl Logs {
    /// Logs kept in memory and, when `path` is given, in that file.
    pub fn new(path: Option<PathBuf>, max_bytes: u64) -> Arc<Logs> {
        let file = path.as_ref().and_then(|p| {
            if let Some(d) = p.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            match OpenOptions::new().create(true).append(true).open(p) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!("workload log {}: {e}", p.display());
                    None
                }
            }
        });
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Arc::new(Logs {
            ring: Replay::new(RING_BYTES),
            file: Mutex::new(FileLog {
                path: path.unwrap_or_default(),
                file,
                size,
                max: max_bytes,
            }),
            partial: Mutex::new([Vec::new(), Vec::new()]),
        })
    }

    pub fn path(&self) -> Option<PathBuf> {
        let f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.file.as_ref().map(|_| f.path.clone())
    }

    fn emit(&self, stream: &'static str, data: String) {
        let ts = now_rfc3339();
        {
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            f.write(&format!("{ts} {stream} {data}\n"));
        }
        let n = data.len() + 48;
        self.ring.push(
            LogEntry {
                stream,
                data,
                timestamp: ts,
            },
            n,
        );
    }

    /// A note from the supervisor.
    pub fn system(&self, msg: impl Into<String>) {
        self.emit("system", msg.into());
    }

    /// Process output: complete lines are logged, the rest waits for its newline.
    pub fn output(&self, stderr: bool, data: &[u8]) {
        let (idx, stream) = if stderr { (1, "stderr") } else { (0, "stdout") };
        let mut lines = Vec::new();
        {
            let mut p = self.partial.lock().unwrap_or_else(|p| p.into_inner());
            let buf = &mut p[idx];
            buf.extend_from_slice(data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                lines.push(line[..line.len() - 1].to_vec());
            }
            while buf.len() > MAX_LINE {
                lines.push(buf.drain(..MAX_LINE).collect());
            }
        }
        for l in lines {
            self.emit(stream, String::from_utf8_lossy(&l).into_owned());
        }
    }

    /// Log what is left of unterminated lines (the process ended).
    pub fn flush(&self) {
        let rest: Vec<(&'static str, Vec<u8>)> = {
            let mut p = self.partial.lock().unwrap_or_else(|p| p.into_inner());
            vec![
                ("stdout", std::mem::take(&mut p[0])),
                ("stderr", std::mem::take(&mut p[1])),
            ]
        };
        for (stream, b) in rest {
            if !b.is_empty() {
                self.emit(stream, String::from_utf8_lossy(&b).into_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_ring_and_rotation() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("w.log");
        let logs = Logs::new(Some(path.clone()), 200);
        logs.output(false, b"one\ntw");
        logs.output(false, b"o\n");
        logs.output(true, b"err");
        logs.flush();
        let got: Vec<(&str, String)> = logs
            .ring
            .snapshot()
            .into_iter()
            .map(|e| (e.stream, e.data))
            .collect();
        assert_eq!(
            got,
            [
                ("stdout", "one".to_string()),
                ("stdout", "two".into()),
                ("stderr", "err".into())
            ]
        );
        for i in 0..20 {
            logs.system(format!("line {i}"));
        }
        let mut old = path.clone().into_os_string();
        old.push(".1");
        assert!(std::path::Path::new(&old).exists(), "rotated");
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
    }
}
