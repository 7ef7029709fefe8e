//! `/files/transfer/download` and `/files/transfer/upload`: tar.gz archives, streamed.
//!
//! Download builds the archive on the blocking pool while the response streams it
//! (nothing is held whole in memory; the client reports progress from the bytes as
//! they come). Upload spools the body to a temporary file, then unpacks it under
//! `dest` with `tar`'s `unpack_in`, which refuses entries that would land outside it.
//! flate2 (miniz_oxide, pure Rust) and tar are small and already in the workspace.

use crate::api::{ApiJson, ApiQuery};
use crate::error::{ApiError, ApiResult};
use crate::files::validate_path;
use crate::watchers::excluded;
use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const CHUNK: usize = 64 << 10;

#[derive(Deserialize)]
pub struct DownloadBody {
    paths: Vec<String>,
    #[serde(default)]
    exclude_patterns: Vec<String>,
}

/// A `Write` that hands 64 KiB chunks to the response stream.
struct ChanWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChanWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Add `path` (a file, a symlink, or a directory with what is under it) to the
/// archive under its absolute path without the leading `/`.
fn add<W: Write>(b: &mut tar::Builder<W>, path: &Path, excludes: &[String]) -> io::Result<()> {
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let name = p.strip_prefix("/").unwrap_or(&p).to_path_buf();
        if !name.as_os_str().is_empty() && excluded(excludes, &name) {
            continue;
        }
        let md = std::fs::symlink_metadata(&p)?;
        if md.is_dir() {
            if !name.as_os_str().is_empty() {
                b.append_dir(&name, &p)?;
            }
            let mut children: Vec<PathBuf> =
                std::fs::read_dir(&p)?.flatten().map(|e| e.path()).collect();
            children.sort();
            stack.extend(children.into_iter().rev());
        } else if md.is_file() || md.file_type().is_symlink() {
            b.append_path_with_name(&p, &name)?;
        }
        // Sockets, fifos and devices are skipped.
    }
    Ok(())
}

pub async fn download(ApiJson(body): ApiJson<DownloadBody>) -> ApiResult<Response> {
    if body.paths.is_empty() {
        return Err(ApiError::validation("paths must name at least one path"));
    }
    let mut paths = Vec::new();
    for p in &body.paths {
        let path = validate_path(p)?;
        std::fs::symlink_metadata(&path).map_err(|e| ApiError::io(p, &e))?;
        paths.push(path);
    }
    let excludes = body.exclude_patterns;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let err_tx = tx.clone();
        let w = ChanWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let gz = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        b.follow_symlinks(false);
        let r = (|| -> io::Result<()> {
            for p in &paths {
                add(&mut b, p, &excludes)?;
            }
            let gz = b.into_inner()?;
            let mut w = gz.finish()?;
            w.flush()
        })();
        if let Err(e) = r {
            tracing::info!("transfer download ended: {e}");
            // The stream ends with an error: the client sees a cut, not a short archive.
            let _ = err_tx.blocking_send(Err(e));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"transfer.tar.gz\""),
    );
    Ok(resp)
}

#[derive(Deserialize)]
pub struct UploadQuery {
    dest: Option<String>,
}

pub async fn upload(ApiQuery(q): ApiQuery<UploadQuery>, body: Body) -> ApiResult<Json<Value>> {
    let dest_s = q.dest.unwrap_or_else(|| "/".into());
    let dest = validate_path(&dest_s)?;
    tokio::fs::create_dir_all(&dest)
        .await
        .map_err(|e| ApiError::io(&dest_s, &e))?;
    let spool = std::env::temp_dir().join(format!(
        ".warren-upload-{}-{}",
        std::process::id(),
        crate::time::boottime_ms()
    ));
    let mut f = tokio::fs::File::create(&spool)
        .await
        .map_err(|e| ApiError::Internal(format!("spooling the upload: {e}")))?;
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::validation(format!("reading the upload: {e}")))?;
        size += chunk.len() as u64;
        f.write_all(&chunk)
            .await
            .map_err(|e| ApiError::Internal(format!("spooling the upload: {e}")))?;
    }
    f.flush().await.ok();
    drop(f);
    let spool2 = spool.clone();
    let dest2 = dest.clone();
    let result = tokio::task::spawn_blocking(move || -> io::Result<usize> {
        let file = std::fs::File::open(&spool2)?;
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
        ar.set_preserve_permissions(true);
        ar.set_overwrite(true);
        let mut n = 0;
        for entry in ar.entries()? {
            let mut entry = entry?;
            // false: the entry would land outside dest (skipped, not an error).
            if entry.unpack_in(&dest2)? && entry.header().entry_type().is_file() {
                n += 1;
            }
        }
        Ok(n)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("upload task: {e}")))?;
    let _ = tokio::fs::remove_file(&spool).await;
    let n = result.map_err(|e| ApiError::Unprocessable {
        code: "invalid_archive",
        message: format!("not a readable tar.gz archive ({size} bytes): {e}"),
    })?;
    Ok(Json(json!({
        "success": true,
        "dest": dest.to_string_lossy(),
        "files_extracted": n,
        "bytes": size,
    })))
}
