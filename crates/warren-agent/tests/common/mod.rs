//! Start `warren-agent serve` on a free loopback port and talk HTTP/1.1 to it.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const TOKEN: &str = "test-token-0123456789";

pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// Start the agent with `--listen 127.0.0.1:0` and learn its port from its log.
    pub fn start() -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_warren-agent"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--token",
                TOKEN,
                "--workdir",
            ])
            .arg(dir.path())
            .env("WARREN_AGENT_LOG", "info")
            .env("WARREN_TEST_MARKER", "from-agent-env")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start warren-agent");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_string());
                    }
                }
                if std::env::var_os("AGENT_LOG").is_some() {
                    eprintln!("agent: {line}");
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("agent did not report its address")
            .parse()
            .expect("address");
        Agent { child, addr, dir }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> Response<Incoming> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        sender
            .send_request(req.body(Full::new(body)).expect("request"))
            .await
            .expect("send")
    }

    /// A request with the right token; returns status and the whole body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> (StatusCode, Bytes) {
        let resp = self.send(method, path, Some(TOKEN), body.into()).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    }

    /// A JSON request with the right token; returns status and parsed JSON.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let bytes = body
            .map(|b| Bytes::from(serde_json::to_vec(&b).expect("json")))
            .unwrap_or_default();
        let (status, body) = self.raw(method, path, bytes).await;
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("non-JSON body ({e}): {}", String::from_utf8_lossy(&body)));
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.json(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.json(Method::POST, path, Some(body)).await
    }

    pub fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_string_lossy().into_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Assert the standard error body.
pub fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "body: {body}");
    assert_eq!(body["success"], false, "body: {body}");
    assert_eq!(body["code"], want_code, "body: {body}");
    let msg = body["message"].as_str().expect("message");
    assert!(!msg.is_empty());
    assert_eq!(body["error"], body["message"]);
}

/// One parsed server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub data: Value,
    /// When it arrived, relative to the request.
    pub at: Duration,
}

/// Read SSE events from a response as they arrive.
pub struct SseReader {
    body: Incoming,
    buf: Vec<u8>,
    start: std::time::Instant,
}

impl SseReader {
    pub fn new(resp: Response<Incoming>) -> SseReader {
        SseReader {
            body: resp.into_body(),
            buf: Vec::new(),
            start: std::time::Instant::now(),
        }
    }

    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(frame).expect("SSE frames are UTF-8");
                let mut event = String::new();
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = d.to_string();
                    }
                }
                return Some(Sse {
                    event,
                    data: serde_json::from_str(&data).expect("data is JSON"),
                    at: self.start.elapsed(),
                });
            }
            let frame = self.body.frame().await?.expect("body frame");
            if let Ok(d) = frame.into_data() {
                self.buf.extend_from_slice(&d);
            }
        }
    }

    pub async fn all(&mut self) -> Vec<Sse> {
        let mut v = Vec::new();
        while let Some(e) = self.next().await {
            v.push(e);
        }
        assert!(self.buf.is_empty(), "trailing bytes after the last event");
        v
    }
}
