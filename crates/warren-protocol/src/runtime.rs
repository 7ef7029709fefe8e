//! The runtime API served by the in-guest agent (and forwarded by the gateway).
//!
//! Paths and fields follow the public Oblien runtime API (the `oblien` npm package's
//! `dist/types/runtime.d.ts`). Every JSON response carries `success`; errors are
//! [`ErrorBody`] with a stable `code`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// TCP port the agent serves the runtime API on, on the workspace's private IP.
pub const API_PORT: u16 = 9990;

/// `POST /exec` and `POST /exec/stream`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    /// argv. With `exec_mode: shell` (or `auto` and a single element containing shell
    /// syntax) it is run by `/bin/sh -c`.
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_mode: Option<ExecMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_logs: Option<bool>,
    /// Working directory (default: the image's WorkingDir, else `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment, on top of the workspace's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Bytes written to the process's stdin, then stdin is closed. Without it stdin is
    /// empty (closed at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExecMode {
    Auto,
    Shell,
    Direct,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Running,
    Exited,
    Failed,
}

/// A command run by the agent (`ExecTask` in the client's types).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecTask {
    #[serde(default = "yes")]
    pub success: bool,
    pub id: String,
    pub command: Vec<String>,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Names of the SSE events of `POST /exec/stream`. Each event's `data:` is JSON:
/// `task_id` -> `{"task_id": ".."}`, `stdout`/`stderr` -> `{"data": "<base64>"}`,
/// `exit` -> `{"exit_code": n, "pid": p, "status": "exited"}`.
pub mod stream_event {
    pub const TASK_ID: &str = "task_id";
    pub const STDOUT: &str = "stdout";
    pub const STDERR: &str = "stderr";
    pub const EXIT: &str = "exit";
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamTaskId {
    pub task_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamData {
    /// Base64 of the raw bytes.
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamExit {
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Directory,
    Symlink,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: FileType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<FileEntry>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileListResponse {
    pub success: bool,
    pub path: String,
    pub entries: Vec<FileEntry>,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileReadResponse {
    pub success: bool,
    pub path: String,
    /// UTF-8 text, or base64 when the request asked for `encoding=base64`.
    pub content: String,
    pub size: u64,
    pub lines: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_line: Option<usize>,
}

/// `POST /files/write`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FileWriteRequest {
    pub path: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_dirs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<bool>,
    /// Octal permission bits, e.g. "0644".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `utf8` (default) or `base64` (Warren extension, for binary content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileWriteResponse {
    pub success: bool,
    pub path: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileStatResponse {
    pub success: bool,
    pub path: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FileType,
    pub size: u64,
    pub modified: String,
    pub permissions: String,
    pub is_code: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// `POST /files/mkdir`, `POST /files/delete`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PathRequest {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// A plain `{ "success": true, "path": ".." }` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PathResponse {
    pub success: bool,
    pub path: String,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub success: bool,
    pub status: String,
}

/// `GET /runtime`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RuntimeInfo {
    pub success: bool,
    pub os: String,
    pub arch: String,
    pub cpus: u32,
    pub home: String,
    pub shell: String,
    pub protocol_version: u32,
    pub capabilities: Vec<String>,
}

/// The error body of every failed request. `code` is stable and machine readable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub success: bool,
    pub code: String,
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ErrorBody {
            success: false,
            code: code.to_string(),
            error: message.clone(),
            message,
            details: None,
        }
    }
}
