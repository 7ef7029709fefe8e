//! The `/files` endpoints. File system work is synchronous and runs on tokio's blocking
//! pool; downloads and uploads stream.

use crate::api::{flag, ApiJson, ApiQuery, AppState};
use crate::error::{ApiError, ApiResult};
use crate::time::system_time_rfc3339;
use crate::workspace::Credentials;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;
use std::fs::{self, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_protocol::runtime::{
    FileEntry, FileListResponse, FileReadResponse, FileStatResponse, FileType, FileWriteRequest,
    FileWriteResponse, PathRequest, PathResponse,
};

/// Largest file `GET /files/read` returns inline (use `/files/download` beyond).
pub const MAX_READ: u64 = 64 << 20;
/// Most entries one listing returns.
pub const MAX_LIST_ENTRIES: usize = 100_000;
/// Depth of a nested listing when the request gives none.
pub const DEFAULT_MAX_DEPTH: usize = 10;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Every path in the file API must be absolute and free of NUL bytes.
pub fn validate_path(p: &str) -> ApiResult<PathBuf> {
    if p.is_empty() {
        return Err(ApiError::validation("path is required"));
    }
    if !p.starts_with('/') {
        return Err(ApiError::validation(format!("path must be absolute: {p}")));
    }
    if p.contains('\0') {
        return Err(ApiError::validation("path must not contain NUL bytes"));
    }
    Ok(PathBuf::from(p))
}

/// Parse an octal mode such as "0644", "755" or "0o600".
pub fn parse_mode(s: &str) -> ApiResult<u32> {
    let t = s.trim();
    let t = t.strip_prefix("0o").unwrap_or(t);
    match u32::from_str_radix(t, 8) {
        Ok(m) if !t.is_empty() && m <= 0o7777 => Ok(m),
        _ => Err(ApiError::validation(format!(
            "mode must be octal permission bits like \"0644\", got {s:?}"
        ))),
    }
}

const CODE_EXTENSIONS: &[&str] = &[
    "rs", "js", "mjs", "cjs", "ts", "mts", "cts", "jsx", "tsx", "py", "pyi", "rb", "go", "java",
    "kt", "kts", "c", "h", "cc", "cpp", "cxx", "hh", "hpp", "cs", "php", "swift", "scala", "sh",
    "bash", "zsh", "fish", "lua", "pl", "pm", "r", "sql", "html", "htm", "css", "scss", "sass",
    "less", "vue", "svelte", "astro", "json", "jsonc", "yaml", "yml", "toml", "xml", "md", "mdx",
    "dart", "ex", "exs", "erl", "hrl", "hs", "ml", "mli", "clj", "cljs", "zig", "nim", "tf",
    "proto", "graphql", "gql", "gradle", "ps1", "bat", "cmake", "mk", "nix", "ini", "cfg", "conf",
    "vim", "el", "jl", "sol", "wat", "asm", "s",
];
const CODE_NAMES: &[&str] = &[
    "Dockerfile",
    "Makefile",
    "Containerfile",
    "Justfile",
    "Rakefile",
    "Gemfile",
    "CMakeLists.txt",
];

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .filter(|e| !e.is_empty())
        .map(str::to_string)
}

pub fn is_code(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    CODE_NAMES.contains(&name)
        || extension(path)
            .map(|e| CODE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            .unwrap_or(false)
}

fn kind_of(md: &Metadata) -> FileType {
    let ft = md.file_type();
    if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_dir() {
        FileType::Directory
    } else {
        FileType::File
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("worker failed: {e}")))?
}

// ---------------------------------------------------------------- listing

fn entry(path: PathBuf, md: &Metadata) -> FileEntry {
    let kind = kind_of(md);
    FileEntry {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        extension: if kind == FileType::Directory {
            None
        } else {
            extension(&path)
        },
        path: path_str(&path),
        kind,
        size: (kind != FileType::Directory).then_some(md.len()),
        modified: md.modified().ok().map(system_time_rfc3339),
        children: None,
    }
}

fn sort_entries(v: &mut [FileEntry]) {
    v.sort_by(|a, b| {
        let ad = a.kind != FileType::Directory;
        let bd = b.kind != FileType::Directory;
        ad.cmp(&bd).then_with(|| a.name.cmp(&b.name))
    });
}

/// List `dir`; with `depth_left > 0` descend into subdirectories (not symlinks).
/// `budget` counts entries still allowed.
pub fn list_dir(dir: &Path, depth_left: usize, budget: &mut usize) -> io::Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    for de in fs::read_dir(dir)? {
        if *budget == 0 {
            break;
        }
        let Ok(de) = de else { continue };
        let path = de.path();
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        *budget -= 1;
        let mut e = entry(path, &md);
        if e.kind == FileType::Directory && depth_left > 0 {
            // An unreadable subdirectory does not fail the whole listing.
            e.children =
                Some(list_dir(Path::new(&e.path), depth_left - 1, budget).unwrap_or_default());
        }
        out.push(e);
    }
    sort_entries(&mut out);
    Ok(out)
}

fn count(entries: &[FileEntry]) -> usize {
    entries
        .iter()
        .map(|e| 1 + e.children.as_deref().map(count).unwrap_or(0))
        .sum()
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub path: Option<String>,
    pub nested: Option<String>,
    pub max_depth: Option<String>,
}

pub async fn list(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<FileListResponse>> {
    let raw = match q.path.filter(|p| !p.is_empty()) {
        Some(p) => p,
        None => path_str(&st.ws.default_cwd()),
    };
    let dir = validate_path(&raw)?;
    let nested = flag(&q.nested);
    let depth = match q.max_depth.as_deref().filter(|s| !s.is_empty()) {
        Some(d) => d
            .parse::<usize>()
            .map_err(|_| ApiError::validation(format!("max_depth must be a number, got {d:?}")))?,
        None => DEFAULT_MAX_DEPTH,
    };
    // max_depth counts levels below `path`: 1 = only its own entries.
    let depth_left = if nested { depth.saturating_sub(1) } else { 0 };
    blocking(move || {
        let md = fs::metadata(&dir).map_err(|e| ApiError::io(&raw, &e))?;
        if !md.is_dir() {
            return Err(ApiError::Conflict(format!("not a directory: {raw}")));
        }
        let mut budget = MAX_LIST_ENTRIES;
        let entries =
            list_dir(&dir, depth_left, &mut budget).map_err(|e| ApiError::io(&raw, &e))?;
        Ok(Json(FileListResponse {
            success: true,
            count: count(&entries),
            path: raw,
            entries,
        }))
    })
    .await
}

// ---------------------------------------------------------------- reading

#[derive(Debug, Default, Deserialize)]
pub struct ReadQuery {
    pub path: Option<String>,
    pub start_line: Option<String>,
    pub end_line: Option<String>,
    pub with_line_numbers: Option<String>,
    pub encoding: Option<String>,
}

fn line_number(name: &str, v: &Option<String>) -> ApiResult<Option<usize>> {
    match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::validation(format!(
                "{name} must be a line number >= 1, got {s:?}"
            ))),
        },
    }
}

/// Select lines `start..=end` (1-based) of `text`, optionally numbered like `cat -n`.
pub fn select_lines(
    text: &str,
    start: Option<usize>,
    end: Option<usize>,
    numbers: bool,
) -> (String, usize, usize) {
    let all: Vec<&str> = text.split_inclusive('\n').collect();
    let total = all.len();
    let first = start.unwrap_or(1);
    let last = end.unwrap_or(total).min(total);
    let picked: &[&str] = if first > last || first > total {
        &[]
    } else {
        &all[first - 1..last]
    };
    let content = if numbers {
        picked
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let body = l.strip_suffix('\n').unwrap_or(l);
                let body = body.strip_suffix('\r').unwrap_or(body);
                let nl = if l.ends_with('\n') { "\n" } else { "" };
                format!("{:>6}\t{body}{nl}", first + i)
            })
            .collect()
    } else {
        picked.concat()
    };
    (content, first, last)
}

fn read_file(raw: String, q: ReadQuery) -> ApiResult<FileReadResponse> {
    let path = validate_path(&raw)?;
    let start = line_number("start_line", &q.start_line)?;
    let end = line_number("end_line", &q.end_line)?;
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            return Err(ApiError::validation(format!(
                "end_line ({e}) is before start_line ({s})"
            )));
        }
    }
    let numbers = flag(&q.with_line_numbers);
    let base64 = match q
        .encoding
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("") | Some("utf8") | Some("utf-8") | Some("text") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "encoding must be utf8 or base64, got {other:?}"
            )))
        }
    };
    let md = fs::metadata(&path).map_err(|e| ApiError::io(&raw, &e))?;
    if md.is_dir() {
        return Err(ApiError::Conflict(format!("is a directory: {raw}")));
    }
    if md.len() > MAX_READ {
        return Err(ApiError::Unprocessable {
            code: "file_too_large",
            message: format!(
                "{raw} is {} bytes; /files/read returns at most {} MiB: use GET /files/download",
                md.len(),
                MAX_READ >> 20
            ),
        });
    }
    let bytes = fs::read(&path).map_err(|e| ApiError::io(&raw, &e))?;
    let size = bytes.len() as u64;
    let extension = extension(&path);
    if base64 {
        let lines = bytes.split_inclusive(|b| *b == b'\n').count();
        return Ok(FileReadResponse {
            success: true,
            path: raw,
            content: B64.encode(&bytes),
            size,
            lines,
            extension,
            encoding: Some("base64".into()),
            start_line: None,
            end_line: None,
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| ApiError::Unprocessable {
        code: "binary_file",
        message: format!(
            "{raw} is not UTF-8 text: read it with encoding=base64 or GET /files/download"
        ),
    })?;
    let lines = text.split_inclusive('\n').count();
    let ranged = start.is_some() || end.is_some();
    let (content, first, last) = if ranged || numbers {
        select_lines(&text, start, end, numbers)
    } else {
        (text, 1, lines)
    };
    Ok(FileReadResponse {
        success: true,
        path: raw,
        content,
        size,
        lines,
        extension,
        encoding: None,
        start_line: ranged.then_some(first),
        end_line: ranged.then_some(last),
    })
}

pub async fn read(ApiQuery(q): ApiQuery<ReadQuery>) -> ApiResult<Json<FileReadResponse>> {
    let raw = q.path.clone().unwrap_or_default();
    blocking(move || read_file(raw, q).map(Json)).await
}

// ---------------------------------------------------------------- writing

/// Chown `path` to the workspace user, if there is one (errors only logged).
fn give_to(user: Option<&Credentials>, path: &Path) {
    if let Some(u) = user {
        if let Err(e) = std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid)) {
            tracing::debug!("chown {}: {e}", path.display());
        }
    }
}

/// `mkdir -p` with `mode`, handing every directory it creates to `user`.
fn create_dirs(path: &Path, mode: u32, user: Option<&Credentials>) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(path);
    while let Some(p) = cur {
        if fs::symlink_metadata(p).is_ok() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    for p in missing.iter().rev() {
        give_to(user, p);
    }
    Ok(())
}

fn decode_content(req: &FileWriteRequest) -> ApiResult<Vec<u8>> {
    match req
        .encoding
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("") | Some("utf8") | Some("utf-8") | Some("text") => {
            Ok(req.content.as_bytes().to_vec())
        }
        Some("base64") => B64
            .decode(req.content.trim())
            .map_err(|e| ApiError::validation(format!("content is not valid base64: {e}"))),
        Some(other) => Err(ApiError::validation(format!(
            "encoding must be utf8 or base64, got {other:?}"
        ))),
    }
}

fn write_file(req: FileWriteRequest, user: Option<Credentials>) -> ApiResult<FileWriteResponse> {
    let raw = req.path.clone();
    let path = validate_path(&raw)?;
    let data = decode_content(&req)?;
    let mode = req.mode.as_deref().map(parse_mode).transpose()?;
    if req.create_dirs.unwrap_or(false) {
        if let Some(parent) = path.parent() {
            create_dirs(parent, 0o755, user.as_ref())
                .map_err(|e| ApiError::io(&path_str(parent), &e))?;
        }
    }
    let existed = fs::symlink_metadata(&path).is_ok();
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).mode(mode.unwrap_or(0o644));
    if req.append.unwrap_or(false) {
        opts.append(true);
    } else {
        opts.truncate(true);
    }
    let mut f = opts.open(&path).map_err(|e| ApiError::io(&raw, &e))?;
    f.write_all(&data).map_err(|e| ApiError::io(&raw, &e))?;
    if let Some(m) = mode {
        f.set_permissions(fs::Permissions::from_mode(m))
            .map_err(|e| ApiError::io(&raw, &e))?;
    }
    let size = f.metadata().map_err(|e| ApiError::io(&raw, &e))?.len();
    drop(f);
    if !existed {
        give_to(user.as_ref(), &path);
    }
    Ok(FileWriteResponse {
        success: true,
        path: raw,
        size,
    })
}

pub async fn write(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<FileWriteRequest>,
) -> ApiResult<Json<FileWriteResponse>> {
    let user = st.ws.user.clone();
    blocking(move || write_file(req, user).map(Json)).await
}

pub async fn mkdir(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<PathRequest>,
) -> ApiResult<Json<PathResponse>> {
    let user = st.ws.user.clone();
    blocking(move || {
        let path = validate_path(&req.path)?;
        let mode = req
            .mode
            .as_deref()
            .map(parse_mode)
            .transpose()?
            .unwrap_or(0o755);
        create_dirs(&path, mode, user.as_ref()).map_err(|e| ApiError::io(&req.path, &e))?;
        Ok(Json(PathResponse {
            success: true,
            path: req.path,
        }))
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
pub struct PathQuery {
    pub path: Option<String>,
}

/// `POST /files/delete` (also `DELETE`): the path from the JSON body or the query.
pub async fn delete(
    ApiQuery(q): ApiQuery<PathQuery>,
    body: Bytes,
) -> ApiResult<Json<PathResponse>> {
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let r: PathRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}")))?;
        Some(r.path)
    };
    let raw = from_body.or(q.path).unwrap_or_default();
    blocking(move || {
        let path = validate_path(&raw)?;
        if path.components().count() <= 1 {
            return Err(ApiError::validation("refusing to delete /"));
        }
        let md = fs::symlink_metadata(&path).map_err(|e| ApiError::io(&raw, &e))?;
        let r = if md.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        r.map_err(|e| ApiError::io(&raw, &e))?;
        Ok(Json(PathResponse {
            success: true,
            path: raw,
        }))
    })
    .await
}

pub async fn stat(ApiQuery(q): ApiQuery<PathQuery>) -> ApiResult<Json<FileStatResponse>> {
    let raw = q.path.unwrap_or_default();
    blocking(move || {
        let path = validate_path(&raw)?;
        let md = fs::symlink_metadata(&path).map_err(|e| ApiError::io(&raw, &e))?;
        let kind = kind_of(&md);
        Ok(Json(FileStatResponse {
            success: true,
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/".into()),
            kind,
            size: md.len(),
            modified: md.modified().map(system_time_rfc3339).unwrap_or_default(),
            permissions: format!("{:04o}", md.mode() & 0o7777),
            is_code: kind == FileType::File && is_code(&path),
            extension: if kind == FileType::Directory {
                None
            } else {
                extension(&path)
            },
            symlink_target: if kind == FileType::Symlink {
                fs::read_link(&path).ok().map(|t| path_str(&t))
            } else {
                None
            },
            path: raw,
        }))
    })
    .await
}

// ---------------------------------------------------------------- raw bytes

/// Whether `st_size` is the number of bytes a read returns: not for pseudo files in
/// procfs/sysfs (0 or 4096 whatever their contents) nor for devices and pipes.
fn has_reliable_size(file: &tokio::fs::File, md: &Metadata) -> bool {
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    if !md.is_file() {
        return false;
    }
    match nix::sys::statfs::fstatfs(file) {
        Ok(st) => {
            // f_type is a different integer type on different architectures.
            #[allow(clippy::unnecessary_cast)]
            let magic = st.filesystem_type().0 as i64;
            magic != PROC_SUPER_MAGIC && magic != SYSFS_MAGIC
        }
        Err(_) => false,
    }
}

pub async fn download(ApiQuery(q): ApiQuery<PathQuery>) -> ApiResult<Response> {
    let raw = q.path.unwrap_or_default();
    let path = validate_path(&raw)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::io(&raw, &e))?;
    let md = file.metadata().await.map_err(|e| ApiError::io(&raw, &e))?;
    if md.is_dir() {
        return Err(ApiError::Conflict(format!("is a directory: {raw}")));
    }
    let sized = has_reliable_size(&file, &md);
    let stream = futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = BytesMut::with_capacity(crate::exec::CHUNK);
        match file.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok::<Bytes, io::Error>(buf.freeze()), Some(file))),
            Err(e) => Some((Err(e), None)),
        }
    });
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().replace(['"', '\\', '\r', '\n'], "_"))
        .unwrap_or_else(|| "download".into());
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if sized {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(md.len()));
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[derive(Debug, Default, Deserialize)]
pub struct UploadQuery {
    pub path: Option<String>,
    pub create_dirs: Option<String>,
    pub mode: Option<String>,
}

static UPLOAD_SEQ: AtomicU64 = AtomicU64::new(0);

/// `PUT /files/upload?path=..`: the raw body, streamed into a temporary file beside the
/// target and renamed over it once complete.
pub async fn upload(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Body,
) -> ApiResult<Json<FileWriteResponse>> {
    let raw = q.path.unwrap_or_default();
    let path = validate_path(&raw)?;
    let mode = q.mode.as_deref().map(parse_mode).transpose()?;
    let parent = path
        .parent()
        .ok_or_else(|| ApiError::validation(format!("cannot upload to {raw}")))?
        .to_path_buf();
    let name = path
        .file_name()
        .ok_or_else(|| ApiError::validation(format!("cannot upload to {raw}")))?
        .to_string_lossy()
        .into_owned();
    let user = st.ws.user.clone();
    if flag(&q.create_dirs) {
        let (p, u) = (parent.clone(), user.clone());
        blocking(move || {
            create_dirs(&p, 0o755, u.as_ref()).map_err(|e| ApiError::io(&path_str(&p), &e))
        })
        .await?;
    }
    let existing = tokio::fs::metadata(&path).await.ok();
    if existing.as_ref().is_some_and(|m| m.is_dir()) {
        return Err(ApiError::Conflict(format!("is a directory: {raw}")));
    }
    let tmp = parent.join(format!(
        ".{name}.upload-{}-{}",
        std::process::id(),
        UPLOAD_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let final_mode = mode
        .or_else(|| existing.as_ref().map(|m| m.mode() & 0o7777))
        .unwrap_or(0o644);
    let result = async {
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .map_err(|e| ApiError::io(&raw, &e))?;
        let mut size: u64 = 0;
        let mut data = body.into_data_stream();
        while let Some(chunk) = data.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::validation(format!("upload body interrupted: {e}")))?;
            f.write_all(&chunk)
                .await
                .map_err(|e| ApiError::io(&raw, &e))?;
            size += chunk.len() as u64;
        }
        f.flush().await.map_err(|e| ApiError::io(&raw, &e))?;
        f.set_permissions(fs::Permissions::from_mode(final_mode))
            .await
            .map_err(|e| ApiError::io(&raw, &e))?;
        drop(f);
        match (&existing, &user) {
            (Some(m), _) => {
                let _ = std::os::unix::fs::lchown(&tmp, Some(m.uid()), Some(m.gid()));
            }
            (None, Some(u)) => give_to(Some(u), &tmp),
            (None, None) => {}
        }
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| ApiError::io(&raw, &e))?;
        Ok(size)
    }
    .await;
    match result {
        Ok(size) => Ok(Json(FileWriteResponse {
            success: true,
            path: raw,
            size,
        })),
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute() {
        assert!(validate_path("/etc/hosts").is_ok());
        assert!(validate_path("/").is_ok());
        for bad in ["", "etc/hosts", "./x", "../x", "~/x", "/a\0b"] {
            let e = validate_path(bad).unwrap_err();
            assert_eq!(e.code(), "validation_error", "{bad:?}");
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert_eq!(parse_mode("0o600").unwrap(), 0o600);
        assert!(parse_mode("rw-r--r--").is_err());
        assert!(parse_mode("99").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("17777").is_err());
    }

    #[test]
    fn line_selection() {
        let t = "a\nb\nc\n";
        assert_eq!(
            select_lines(t, Some(2), Some(3), false),
            ("b\nc\n".into(), 2, 3)
        );
        assert_eq!(
            select_lines(t, Some(2), None, true).0,
            "     2\tb\n     3\tc\n"
        );
        assert_eq!(select_lines(t, Some(9), None, false).0, "");
        assert_eq!(
            select_lines("x\ny", None, Some(9), false),
            ("x\ny".into(), 1, 2)
        );
    }

    #[test]
    fn code_detection() {
        assert!(is_code(Path::new("/a/main.rs")));
        assert!(is_code(Path::new("/a/Dockerfile")));
        assert!(is_code(Path::new("/a/X.TSX")));
        assert!(!is_code(Path::new("/a/photo.png")));
        assert!(!is_code(Path::new("/a/.bashrc")));
    }

    #[test]
    fn listing_sorts_directories_first() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("b.txt"), "x").unwrap();
        fs::write(d.path().join("a.rs"), "x").unwrap();
        fs::create_dir(d.path().join("zdir")).unwrap();
        fs::write(d.path().join("zdir/inner"), "x").unwrap();
        std::os::unix::fs::symlink("b.txt", d.path().join("link")).unwrap();
        let mut budget = 100;
        let e = list_dir(d.path(), 1, &mut budget).unwrap();
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["zdir", "a.rs", "b.txt", "link"]);
        assert_eq!(e[3].kind, FileType::Symlink);
        assert_eq!(e[0].children.as_ref().unwrap().len(), 1);
        assert_eq!(count(&e), 5);
        assert_eq!(e[1].extension.as_deref(), Some("rs"));
        let mut budget = 2;
        assert_eq!(list_dir(d.path(), 1, &mut budget).unwrap().len(), 2);
    }
}
