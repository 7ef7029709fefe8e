//! The `sftp` subsystem (SFTP v3, which OpenSSH's `sftp` and modern `scp` speak),
//! served by russh-sftp on the channel and backed by the agent's files API:
//!
//! | SFTP                  | agent                                                  |
//! |-----------------------|--------------------------------------------------------|
//! | stat, lstat, fstat    | `GET /files/stat` (stat follows one symlink)           |
//! | opendir + readdir     | `GET /files?path=`                                     |
//! | open for reading+read | `GET /files/download`, streamed: sequential reads take |
//! |                       | the next bytes; a read behind restarts the download    |
//! | open for writing+write| `PUT /files/upload`, the body streamed from the writes |
//! |                       | (in order; the file appears complete at close)         |
//! | mkdir                 | `POST /files/mkdir`                                    |
//! | remove, rmdir         | `POST /files/delete` (rmdir only of an empty directory)|
//! | rename, symlink, chmod| a command through `POST /exec` (`mv`, `ln -s`, `chmod`)|
//! | realpath              | computed here (relative to the workspace's default    |
//! |                       | directory)                                             |
//!
//! No file is held whole in memory: reads and writes pass through in chunks. Writes
//! must come in order from offset 0 (OpenSSH's clients send them so; a write elsewhere
//! fails), and the file written replaces any old one whole when it is closed, with or
//! without the truncate flag (modern `scp` opens without it and truncates at the end).
//! Appending (`reput`) is refused.

use super::Agent;
use bytes::Bytes;
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, FileMode, Handle, Name, OpenFlags, Status, StatusCode,
    Version,
};
use russh_sftp::server::StatusReply;
use std::collections::HashMap;
use tokio::sync::mpsc;
use warren_protocol::runtime::{
    ExecMode, ExecRequest, ExecTask, FileListResponse, FileStatResponse, FileType,
};

/// Chunks of an upload in flight between the client's writes and the agent.
const UPLOAD_QUEUE: usize = 8;
/// Directory entries per SSH_FXP_NAME answer.
const READDIR_BATCH: usize = 128;

pub struct Sftp {
    agent: Agent,
    /// The workspace's default directory (where relative paths start).
    home: Option<String>,
    handles: HashMap<String, Open>,
    next: u64,
}

enum Open {
    Dir {
        entries: Option<Vec<File>>,
    },
    Read {
        path: String,
        /// The download in progress: its position and what is left of its last chunk.
        stream: Option<Download>,
    },
    Write {
        path: String,
        pos: u64,
        tx: Option<mpsc::Sender<Result<Bytes, std::io::Error>>>,
        done: tokio::task::JoinHandle<Result<(), String>>,
        /// Permissions to set once the file exists (fsetstat before close).
        chmod: Option<u32>,
    },
}

struct Download {
    pos: u64,
    rest: Bytes,
    body: reqwest::Response,
}

fn fail(code: StatusCode, msg: impl Into<String>) -> StatusReply {
    code.with_message(msg)
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

/// An agent error answer as an SFTP status.
async fn check(r: reqwest::Result<reqwest::Response>) -> Result<reqwest::Response, StatusReply> {
    let r = r.map_err(|e| {
        fail(
            StatusCode::Failure,
            format!("the agent is unreachable: {e}"),
        )
    })?;
    let status = r.status();
    if status.is_success() {
        return Ok(r);
    }
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    let msg = body["message"].as_str().unwrap_or("").to_string();
    let code = match status.as_u16() {
        404 => StatusCode::NoSuchFile,
        401 | 403 => StatusCode::PermissionDenied,
        _ if msg.contains("ermission denied") => StatusCode::PermissionDenied,
        _ if msg.contains("o such file") => StatusCode::NoSuchFile,
        _ => StatusCode::Failure,
    };
    Err(fail(code, msg))
}

/// `path` made absolute against `home`, with `.` and `..` resolved.
pub fn normalize(home: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{home}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn mtime(rfc3339: Option<&str>) -> Option<u32> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339?).ok()?;
    u32::try_from(t.timestamp()).ok()
}

fn type_bits(kind: FileType) -> u32 {
    match kind {
        FileType::Directory => FileMode::DIR.bits(),
        FileType::Symlink => FileMode::LNK.bits(),
        _ => FileMode::REG.bits(),
    }
}

fn attrs_of_stat(s: &FileStatResponse) -> FileAttributes {
    let perms = u32::from_str_radix(&s.permissions, 8).unwrap_or(0o644);
    FileAttributes {
        size: Some(s.size),
        uid: Some(0),
        gid: Some(0),
        user: None,
        group: None,
        permissions: Some(type_bits(s.kind) | perms),
        atime: mtime(Some(&s.modified)),
        mtime: mtime(Some(&s.modified)),
    }
}

impl Sftp {
    pub fn new(agent: Agent) -> Sftp {
        Sftp {
            agent,
            home: None,
            handles: HashMap::new(),
            next: 0,
        }
    }

    async fn path(&mut self, p: &str) -> String {
        if p.starts_with('/') {
            return normalize("/", p);
        }
        if self.home.is_none() {
            // The listing without a path is of the default directory, and says which.
            let r = self
                .agent
                .req(reqwest::Method::GET, "/files")
                .query(&[("path", "")])
                .send()
                .await;
            let home = match check(r).await {
                Ok(r) => r.json::<FileListResponse>().await.ok().map(|l| l.path),
                Err(_) => None,
            };
            self.home = Some(home.unwrap_or_else(|| "/".into()));
        }
        normalize(self.home.as_deref().unwrap_or("/"), p)
    }

    async fn stat_raw(&self, path: &str) -> Result<FileStatResponse, StatusReply> {
        self.get_json("/files/stat", path).await
    }

    /// GET an agent files route for `path` and read its JSON answer.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        path: &str,
    ) -> Result<T, StatusReply> {
        let r = self
            .agent
            .req(reqwest::Method::GET, route)
            .query(&[("path", path)])
            .send()
            .await;
        check(r)
            .await?
            .json()
            .await
            .map_err(|e| fail(StatusCode::Failure, e.to_string()))
    }

    /// stat, following a symlink (one level, as far as the agent reports it).
    async fn stat_follow(&self, path: &str) -> Result<FileStatResponse, StatusReply> {
        let s = self.stat_raw(path).await?;
        match (&s.kind, &s.symlink_target) {
            (FileType::Symlink, Some(t)) => {
                let parent = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("/");
                let parent = if parent.is_empty() { "/" } else { parent };
                self.stat_raw(&normalize(parent, t)).await
            }
            _ => Ok(s),
        }
    }

    /// Run a command (argv, no shell) in the workspace; an error status unless it
    /// exits 0.
    async fn command(&self, argv: &[&str]) -> Result<(), StatusReply> {
        let req = ExecRequest {
            cmd: argv.iter().map(|s| s.to_string()).collect(),
            exec_mode: Some(ExecMode::Direct),
            timeout_seconds: Some(60),
            ..ExecRequest::default()
        };
        let r = self
            .agent
            .req(reqwest::Method::POST, "/exec")
            .json(&req)
            .send()
            .await;
        let task: ExecTask = check(r)
            .await?
            .json()
            .await
            .map_err(|e| fail(StatusCode::Failure, e.to_string()))?;
        match task.exit_code {
            Some(0) => Ok(()),
            _ => {
                let err = task.stderr.unwrap_or_default();
                let code = if err.contains("ermission denied") {
                    StatusCode::PermissionDenied
                } else if err.contains("o such file") {
                    StatusCode::NoSuchFile
                } else {
                    StatusCode::Failure
                };
                Err(fail(code, err.trim().to_string()))
            }
        }
    }

    fn handle(&mut self, open: Open) -> String {
        self.next += 1;
        let h = self.next.to_string();
        self.handles.insert(h.clone(), open);
        h
    }

    async fn start_download(&self, path: &str) -> Result<Download, StatusReply> {
        let r = self
            .agent
            .req(reqwest::Method::GET, "/files/download")
            .query(&[("path", path)])
            .send()
            .await;
        let r = check(r).await?;
        Ok(Download {
            pos: 0,
            rest: Bytes::new(),
            body: r,
        })
    }
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        fail(
            StatusCode::OpUnsupported,
            "not supported by the Warren SSH gateway",
        )
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = self.path(&path).await;
        Ok(Name {
            id,
            files: vec![File::dummy(p)],
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let p = self.path(&path).await;
        let s = self.stat_follow(&p).await?;
        Ok(Attrs {
            id,
            attrs: attrs_of_stat(&s),
        })
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let p = self.path(&path).await;
        let s = self.stat_raw(&p).await?;
        Ok(Attrs {
            id,
            attrs: attrs_of_stat(&s),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let path = match self.handles.get(&handle) {
            Some(Open::Read { path, .. }) => path.clone(),
            Some(Open::Write { path, pos, .. }) => {
                // Not on disk until closed: what has been written so far.
                let _ = path;
                return Ok(Attrs {
                    id,
                    attrs: FileAttributes {
                        size: Some(*pos),
                        permissions: Some(FileMode::REG.bits() | 0o644),
                        ..FileAttributes::empty()
                    },
                });
            }
            _ => return Err(fail(StatusCode::Failure, "not a file handle")),
        };
        let s = self.stat_follow(&path).await?;
        Ok(Attrs {
            id,
            attrs: attrs_of_stat(&s),
        })
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let p = self.path(&path).await;
        let list = self.list(&p).await?;
        let entries = list
            .entries
            .iter()
            .map(|e| {
                let perms = if e.kind == FileType::Directory {
                    0o755
                } else {
                    0o644
                };
                File::new(
                    e.name.clone(),
                    FileAttributes {
                        size: Some(e.size.unwrap_or(0)),
                        uid: Some(0),
                        gid: Some(0),
                        permissions: Some(type_bits(e.kind) | perms),
                        atime: mtime(e.modified.as_deref()),
                        mtime: mtime(e.modified.as_deref()),
                        ..FileAttributes::empty()
                    },
                )
            })
            .collect();
        let handle = self.handle(Open::Dir {
            entries: Some(entries),
        });
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        match self.handles.get_mut(&handle) {
            // A batch at a time: one packet must stay under the client's limit
            // (OpenSSH: 256 KiB).
            Some(Open::Dir { entries }) => match entries.as_mut() {
                Some(files) if !files.is_empty() => {
                    let n = files.len().min(READDIR_BATCH);
                    Ok(Name {
                        id,
                        files: files.drain(..n).collect(),
                    })
                }
                _ => Err(StatusCode::Eof.into()),
            },
            _ => Err(fail(StatusCode::Failure, "not a directory handle")),
        }
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.path(&filename).await;
        if !pflags.contains(OpenFlags::WRITE) {
            let s = self.stat_follow(&path).await?;
            if s.kind == FileType::Directory {
                return Err(fail(StatusCode::Failure, format!("{path} is a directory")));
            }
            let handle = self.handle(Open::Read { path, stream: None });
            return Ok(Handle { id, handle });
        }
        let existing = self.stat_follow(&path).await.ok();
        if pflags.contains(OpenFlags::EXCLUDE) && existing.is_some() {
            return Err(fail(StatusCode::Failure, format!("{path} exists")));
        }
        if !pflags.contains(OpenFlags::CREATE) && existing.is_none() {
            return Err(fail(
                StatusCode::NoSuchFile,
                format!("no such file: {path}"),
            ));
        }
        if pflags.contains(OpenFlags::APPEND) {
            // Resuming (`reput`) would need writes into an existing file.
            return Err(fail(
                StatusCode::OpUnsupported,
                format!("{path}: the gateway writes whole files, not appends"),
            ));
        }
        let mut query = vec![("path", path.clone())];
        if let Some(m) = attrs.permissions {
            query.push(("mode", format!("{:04o}", m & 0o7777)));
        }
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(UPLOAD_QUEUE);
        let body = reqwest::Body::wrap_stream(tokio_stream(rx));
        let req = self
            .agent
            .req(reqwest::Method::PUT, "/files/upload")
            .query(&query)
            .body(body);
        let done = tokio::spawn(async move {
            check(req.send().await)
                .await
                .map(drop)
                .map_err(|e| e.error_message.unwrap_or_else(|| "upload failed".into()))
        });
        let handle = self.handle(Open::Write {
            path,
            pos: 0,
            tx: Some(tx),
            done,
            chmod: None,
        });
        Ok(Handle { id, handle })
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let path = match self.handles.get(&handle) {
            Some(Open::Read { path, .. }) => path.clone(),
            _ => return Err(fail(StatusCode::Failure, "not a readable handle")),
        };
        let behind = match self.handles.get(&handle) {
            Some(Open::Read {
                stream: Some(d), ..
            }) => offset < d.pos,
            _ => true,
        };
        if behind {
            let d = self.start_download(&path).await?;
            if let Some(Open::Read { stream, .. }) = self.handles.get_mut(&handle) {
                *stream = Some(d);
            }
        }
        let Some(Open::Read {
            stream: Some(d), ..
        }) = self.handles.get_mut(&handle)
        else {
            return Err(fail(StatusCode::Failure, "not a readable handle"));
        };
        let want = usize::try_from(len.min(256 << 10)).unwrap_or(32 << 10);
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            if d.rest.is_empty() {
                match d.body.chunk().await {
                    Ok(Some(b)) => d.rest = b,
                    Err(e) => return Err(fail(StatusCode::Failure, e.to_string())),
                    Ok(None) => break,
                }
                continue;
            }
            // Skip up to the requested offset, then take what is asked for.
            let skip = usize::try_from(offset.saturating_sub(d.pos))
                .unwrap_or(usize::MAX)
                .min(d.rest.len());
            if skip > 0 {
                let _ = d.rest.split_to(skip);
                d.pos += skip as u64;
                continue;
            }
            let take = (want - out.len()).min(d.rest.len());
            out.extend_from_slice(&d.rest.split_to(take));
            d.pos += take as u64;
        }
        if out.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        Ok(Data { id, data: out })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let Some(Open::Write { pos, tx, .. }) = self.handles.get_mut(&handle) else {
            return Err(fail(StatusCode::Failure, "not a writable handle"));
        };
        if offset != *pos {
            return Err(fail(
                StatusCode::OpUnsupported,
                format!("write at {offset}, expected {pos}: the gateway writes files in order"),
            ));
        }
        let n = data.len() as u64;
        let sent = match tx {
            Some(tx) => tx.send(Ok(Bytes::from(data))).await.is_ok(),
            None => false,
        };
        if !sent {
            return Err(fail(
                StatusCode::Failure,
                "the upload to the workspace failed",
            ));
        }
        *pos += n;
        Ok(ok(id))
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(Open::Write {
                path,
                tx,
                done,
                chmod,
                ..
            }) => {
                drop(tx);
                match done.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(fail(StatusCode::Failure, e)),
                    Err(e) => return Err(fail(StatusCode::Failure, e.to_string())),
                }
                if let Some(m) = chmod {
                    self.command(&["chmod", &format!("{m:o}"), "--", &path])
                        .await?;
                }
                Ok(ok(id))
            }
            Some(_) => Ok(ok(id)),
            None => Err(fail(StatusCode::Failure, "no such handle")),
        }
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let p = self.path(&path).await;
        if self.stat_raw(&p).await.is_ok() {
            return Err(fail(StatusCode::Failure, format!("{p} exists")));
        }
        let mut body = serde_json::json!({ "path": p });
        if let Some(m) = attrs.permissions {
            body["mode"] = format!("{:04o}", m & 0o7777).into();
        }
        let r = self
            .agent
            .req(reqwest::Method::POST, "/files/mkdir")
            .json(&body)
            .send()
            .await;
        check(r).await?;
        Ok(ok(id))
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let p = self.path(&filename).await;
        if self.stat_raw(&p).await?.kind == FileType::Directory {
            return Err(fail(StatusCode::Failure, format!("{p} is a directory")));
        }
        self.delete(&p).await?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let p = self.path(&path).await;
        if self.stat_raw(&p).await?.kind != FileType::Directory {
            return Err(fail(StatusCode::Failure, format!("{p} is not a directory")));
        }
        let list = self.list(&p).await?;
        if !list.entries.is_empty() {
            return Err(fail(StatusCode::Failure, format!("{p} is not empty")));
        }
        self.delete(&p).await?;
        Ok(ok(id))
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let from = self.path(&oldpath).await;
        let to = self.path(&newpath).await;
        // SFTP v3: renaming onto an existing name fails.
        if self.stat_raw(&to).await.is_ok() {
            return Err(fail(StatusCode::Failure, format!("{to} exists")));
        }
        self.command(&["mv", "--", &from, &to]).await?;
        Ok(ok(id))
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let p = self.path(&path).await;
        self.apply(&p, &attrs).await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        match self.handles.get_mut(&handle) {
            Some(Open::Write { chmod, .. }) => {
                *chmod = attrs.permissions.map(|m| m & 0o7777);
                Ok(ok(id))
            }
            Some(Open::Read { path, .. }) => {
                let p = path.clone();
                self.apply(&p, &attrs).await?;
                Ok(ok(id))
            }
            _ => Err(fail(StatusCode::Failure, "no such handle")),
        }
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = self.path(&path).await;
        match self.stat_raw(&p).await?.symlink_target {
            Some(t) => Ok(Name {
                id,
                files: vec![File::dummy(t)],
            }),
            None => Err(fail(StatusCode::Failure, format!("{p} is not a symlink"))),
        }
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        let link = self.path(&linkpath).await;
        self.command(&["ln", "-s", "--", &targetpath, &link])
            .await?;
        Ok(ok(id))
    }
}

impl Sftp {
    /// A directory's entries, from the agent's files API.
    async fn list(&self, p: &str) -> Result<FileListResponse, StatusReply> {
        self.get_json("/files", p).await
    }

    async fn delete(&self, p: &str) -> Result<(), StatusReply> {
        let r = self
            .agent
            .req(reqwest::Method::POST, "/files/delete")
            .json(&serde_json::json!({ "path": p }))
            .send()
            .await;
        check(r).await.map(drop)
    }

    /// Apply SETSTAT attributes: permissions, size (truncate) and times.
    async fn apply(&self, p: &str, attrs: &FileAttributes) -> Result<(), StatusReply> {
        if let Some(m) = attrs.permissions {
            self.command(&["chmod", &format!("{:o}", m & 0o7777), "--", p])
                .await?;
        }
        if let Some(size) = attrs.size {
            self.command(&["truncate", "-s", &size.to_string(), "--", p])
                .await?;
        }
        if let Some(t) = attrs.mtime {
            // Best effort (`sftp put -p`, `scp -p`): busybox and coreutils `touch -d
            // @EPOCH` take seconds since 1970, an image without touch keeps the time.
            let _ = self
                .command(&["touch", "-c", "-d", &format!("@{t}"), "--", p])
                .await;
        }
        Ok(())
    }
}

/// The receiver as a stream (the upload body).
fn tokio_stream(
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(normalize("/root", "."), "/root");
        assert_eq!(normalize("/root", "a/../b/./c"), "/root/b/c");
        assert_eq!(normalize("/root", "/x/../../y"), "/y");
        assert_eq!(normalize("/", ".."), "/");
    }
}
