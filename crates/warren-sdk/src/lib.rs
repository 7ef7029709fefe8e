//! Rust client for Warren.
//!
//! [`RuntimeClient`] speaks the runtime API of one workspace: directly to the agent at
//! `http://<internal_ip>:9990` with the raw token, or through the data-plane gateway
//! with a gateway token. Paths and bodies are those of `warren_protocol::runtime`.

pub mod control;

pub use control::{ControlClient, Power};

use base64::Engine;
use futures_util::StreamExt;
use reqwest::StatusCode;
use std::time::Duration;
use warren_protocol::runtime::{
    stream_event, ErrorBody, ExecRequest, ExecTask, FileListResponse, FileReadResponse,
    FileStatResponse, FileWriteRequest, FileWriteResponse, PathRequest, StreamData, StreamExit,
    StreamTaskId,
};

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("bad response: {0}")]
    Decode(String),
}

pub type Result<T> = std::result::Result<T, SdkError>;

/// One event of an exec stream, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    TaskId(String),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(StreamExit),
}

#[derive(Clone)]
pub struct RuntimeClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl RuntimeClient {
    pub fn new(base_url: &str, token: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(RuntimeClient {
            base: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    async fn json<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
        let resp = check(resp).await?;
        resp.json::<T>()
            .await
            .map_err(|e| SdkError::Decode(e.to_string()))
    }

    pub async fn health(&self) -> Result<bool> {
        let v: serde_json::Value =
            Self::json(self.req(reqwest::Method::GET, "/health").send().await?).await?;
        Ok(v.get("status").and_then(|s| s.as_str()) == Some("ok"))
    }

    /// Run a command to completion.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecTask> {
        Self::json(
            self.req(reqwest::Method::POST, "/exec")
                .json(req)
                .send()
                .await?,
        )
        .await
    }

    /// Run a command and receive its output as it comes. `on_event` is called for each
    /// event; the final exit event is also returned.
    pub async fn exec_stream(
        &self,
        req: &ExecRequest,
        mut on_event: impl FnMut(ExecEvent),
    ) -> Result<StreamExit> {
        let resp = check(
            self.req(reqwest::Method::POST, "/exec/stream")
                .json(req)
                .send()
                .await?,
        )
        .await?;
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut event = String::new();
        let mut exit = None;
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk?);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).to_string();
                let line = line.trim_end_matches('\r');
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_string();
                } else if let Some(data) = line.strip_prefix("data:") {
                    let ev = decode_event(&event, data.trim())?;
                    if let ExecEvent::Exit(e) = &ev {
                        exit = Some(e.clone());
                    }
                    on_event(ev);
                } else if line.is_empty() {
                    event.clear();
                }
            }
        }
        exit.ok_or_else(|| SdkError::Decode("exec stream ended without an exit event".into()))
    }

    /// `GET path?path=<file>` answered with JSON.
    async fn get_path<T: serde::de::DeserializeOwned>(&self, route: &str, path: &str) -> Result<T> {
        Self::json(
            self.req(reqwest::Method::GET, route)
                .query(&[("path", path)])
                .send()
                .await?,
        )
        .await
    }

    /// `POST route` with a JSON body, answered with JSON.
    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        body: &B,
    ) -> Result<T> {
        Self::json(
            self.req(reqwest::Method::POST, route)
                .json(body)
                .send()
                .await?,
        )
        .await
    }

    pub async fn list(&self, path: &str) -> Result<FileListResponse> {
        self.get_path("/files", path).await
    }

    pub async fn read(&self, path: &str) -> Result<FileReadResponse> {
        self.get_path("/files/read", path).await
    }

    pub async fn stat(&self, path: &str) -> Result<FileStatResponse> {
        self.get_path("/files/stat", path).await
    }

    pub async fn write(&self, req: &FileWriteRequest) -> Result<FileWriteResponse> {
        self.post("/files/write", req).await
    }

    pub async fn mkdir(&self, path: &str) -> Result<()> {
        let req = PathRequest {
            path: path.into(),
            mode: None,
        };
        let _: serde_json::Value = self.post("/files/mkdir", &req).await?;
        Ok(())
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        let req = PathRequest {
            path: path.into(),
            mode: None,
        };
        let _: serde_json::Value = self.post("/files/delete", &req).await?;
        Ok(())
    }

    /// Write raw bytes to a file (any size, binary safe).
    pub async fn upload(&self, path: &str, data: Vec<u8>) -> Result<FileWriteResponse> {
        Self::json(
            self.req(reqwest::Method::PUT, "/files/upload")
                .query(&[("path", path), ("create_dirs", "true")])
                .body(data)
                .send()
                .await?,
        )
        .await
    }

    /// Read a file's raw bytes.
    pub async fn download(&self, path: &str) -> Result<Vec<u8>> {
        let resp = check(
            self.req(reqwest::Method::GET, "/files/download")
                .query(&[("path", path)])
                .send()
                .await?,
        )
        .await?;
        Ok(resp.bytes().await?.to_vec())
    }
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => (b.code, b.message),
        Err(_) => (
            default_code(status).to_string(),
            if text.is_empty() {
                status.to_string()
            } else {
                text
            },
        ),
    };
    Err(SdkError::Api {
        status: status.as_u16(),
        code,
        message,
    })
}

fn default_code(s: StatusCode) -> &'static str {
    match s.as_u16() {
        401 => "unauthorized",
        404 => "not_found",
        409 => "conflict",
        422 => "validation_error",
        _ => "server_error",
    }
}

fn decode_event(name: &str, data: &str) -> Result<ExecEvent> {
    let bad = |e: serde_json::Error| SdkError::Decode(format!("{name} event: {e}"));
    let b64 = |d: StreamData| {
        base64::engine::general_purpose::STANDARD
            .decode(d.data)
            .map_err(|e| SdkError::Decode(format!("{name} event: {e}")))
    };
    Ok(match name {
        stream_event::TASK_ID => ExecEvent::TaskId(
            serde_json::from_str::<StreamTaskId>(data)
                .map_err(bad)?
                .task_id,
        ),
        stream_event::STDOUT => ExecEvent::Stdout(b64(serde_json::from_str(data).map_err(bad)?)?),
        stream_event::STDERR => ExecEvent::Stderr(b64(serde_json::from_str(data).map_err(bad)?)?),
        stream_event::EXIT => ExecEvent::Exit(serde_json::from_str(data).map_err(bad)?),
        other => return Err(SdkError::Decode(format!("unknown exec event {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_events() {
        assert_eq!(
            decode_event("stdout", r#"{"data":"aGk="}"#).unwrap(),
            ExecEvent::Stdout(b"hi".to_vec())
        );
        assert_eq!(
            decode_event("task_id", r#"{"task_id":"7"}"#).unwrap(),
            ExecEvent::TaskId("7".into())
        );
        match decode_event("exit", r#"{"exit_code":3,"status":"exited"}"#).unwrap() {
            ExecEvent::Exit(e) => assert_eq!(e.exit_code, 3),
            other => panic!("{other:?}"),
        }
        assert!(decode_event("bogus", "{}").is_err());
    }
}
