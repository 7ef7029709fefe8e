//! A workspace backend for the API's tests (no VMs): boots instantly at a set address,
//! records what the API asked of it, and can be told to fail or hold a create.
#![allow(dead_code)] // each test file uses part of it

use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;
use warren_api::backend::{
    BackendError, BackendEvent, BootPhase, BootProgress, BootSpec, Booted, ImageInfo, Limits,
    WorkspaceBackend,
};

/// Records calls; boots instantly with a made-up address. It stands in for the node
/// so these tests can count what the API asked of it.
pub struct TestBackend {
    /// The address every workspace gets: made up, or 127.0.0.1 where a test runs the
    /// "workspace's" servers itself (the edge proxies there).
    pub internal_ip: &'static str,
    pub calls: Mutex<Vec<String>>,
    pub fail_create: AtomicBool,
    /// Creates wait (after reporting progress) while this is set.
    pub hold_create: AtomicBool,
    pub running: Mutex<HashSet<String>>,
    /// What the last `reconcile` was told to keep.
    pub kept: Mutex<Vec<String>>,
    pub events: Mutex<Option<mpsc::UnboundedSender<BackendEvent>>>,
    /// Every workspace's boot log (tests append to it while a create is held).
    pub boot_log: Mutex<String>,
}

impl Default for TestBackend {
    fn default() -> Self {
        Self::at("10.88.0.6")
    }
}

impl TestBackend {
    pub fn at(internal_ip: &'static str) -> Self {
        TestBackend {
            internal_ip,
            calls: Mutex::default(),
            fail_create: AtomicBool::default(),
            hold_create: AtomicBool::default(),
            running: Mutex::default(),
            kept: Mutex::default(),
            events: Mutex::default(),
            boot_log: Mutex::new("line one\nline two\nline three\n".into()),
        }
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn record(&self, c: String) {
        self.calls.lock().unwrap().push(c);
    }
    pub fn emit(&self, ev: BackendEvent) {
        if let Some(tx) = self.events.lock().unwrap().as_ref() {
            tx.send(ev).unwrap();
        }
    }
}

#[async_trait]
impl WorkspaceBackend for TestBackend {
    fn limits(&self) -> Limits {
        Limits {
            max_cpus: 4,
            max_memory_mb: 4096,
            max_disk_mb: 10240,
        }
    }
    fn validate(&self, spec: &BootSpec) -> Result<(), BackendError> {
        if spec.cpus > 4 {
            return Err(BackendError::Invalid {
                field: "cpus".into(),
                reason: "out of range 1-4".into(),
            });
        }
        if spec.memory_mb < 128 || spec.memory_mb > 4096 {
            return Err(BackendError::Invalid {
                field: "memory_mb".into(),
                reason: "out of range 128-4096".into(),
            });
        }
        Ok(())
    }
    fn images(&self) -> Vec<ImageInfo> {
        vec![ImageInfo {
            id: "busybox".into(),
            image: "busybox".into(),
            label: "busybox".into(),
            desc: "tiny".into(),
            category: "os".into(),
        }]
    }
    async fn create(
        &self,
        spec: &BootSpec,
        progress: &dyn BootProgress,
    ) -> Result<Booted, BackendError> {
        self.record(format!("create {}", spec.id));
        progress.phase(BootPhase::Preparing, "Preparing image busybox");
        while self.hold_create.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(BackendError::Failed("the image does not exist".into()));
        }
        self.running.lock().unwrap().insert(spec.id.clone());
        Ok(Booted {
            internal_ip: self.internal_ip.into(),
            agent_token: "tok".into(),
            report: json!({}),
        })
    }
    async fn start(&self, spec: &BootSpec) -> Result<Booted, BackendError> {
        self.record(format!("start {}", spec.id));
        self.running.lock().unwrap().insert(spec.id.clone());
        Ok(Booted {
            internal_ip: self.internal_ip.into(),
            agent_token: "tok2".into(),
            report: json!({}),
        })
    }
    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), BackendError> {
        self.record(format!("stop {id}"));
        self.running.lock().unwrap().remove(id);
        Ok(())
    }
    async fn pause(&self, id: &str) -> Result<(), BackendError> {
        self.record(format!("pause {id}"));
        Ok(())
    }
    async fn resume(&self, id: &str) -> Result<(), BackendError> {
        self.record(format!("resume {id}"));
        Ok(())
    }
    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        self.record(format!("remove {id}"));
        self.running.lock().unwrap().remove(id);
        Ok(())
    }
    async fn adopt(&self, _spec: &BootSpec) -> Result<Option<Booted>, BackendError> {
        Ok(None)
    }
    async fn reconcile(&self, keep: &HashSet<String>) -> Result<Value, BackendError> {
        let mut keep: Vec<_> = keep.iter().cloned().collect();
        keep.sort();
        *self.kept.lock().unwrap() = keep;
        Ok(json!({}))
    }
    fn is_running(&self, id: &str) -> bool {
        self.running.lock().unwrap().contains(id)
    }
    async fn set_network(
        &self,
        _id: &str,
        _policy: &warren_netpolicy::NetworkPolicy,
    ) -> Result<(), BackendError> {
        Ok(())
    }
    fn boot_log(&self, _id: &str) -> Option<String> {
        Some(self.boot_log.lock().unwrap().clone())
    }
    fn stats(&self, _id: &str) -> Option<Value> {
        None
    }
    fn set_events(&self, tx: mpsc::UnboundedSender<BackendEvent>) {
        *self.events.lock().unwrap() = Some(tx);
    }
}

/// The API as a client reaches it: its URL and the client's credentials.
#[derive(Clone)]
pub struct Client {
    pub url: String,
    pub id: String,
    pub secret: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(url: String, c: warren_state::NewClientSecret) -> Client {
        Client {
            url,
            id: c.client.id,
            secret: c.secret,
            http: reqwest::Client::new(),
        }
    }

    /// `method path` with `body` as JSON: (status, JSON body or null).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .http
            .request(m, format!("{}{}", self.url, path))
            .header("X-Client-ID", &self.id)
            .header("X-Client-Secret", &self.secret);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `GET path` read as server-sent events until the server ends the stream:
    /// (status, each event's `data` as JSON). Errors are read as a JSON body.
    pub async fn sse(&self, path: &str) -> (u16, Vec<Value>) {
        let resp = self
            .http
            .get(format!("{}{}", self.url, path))
            .header("X-Client-ID", &self.id)
            .header("X-Client-Secret", &self.secret)
            .header("Accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        if status != 200 {
            return (
                status,
                vec![serde_json::from_str(&text).unwrap_or(Value::Null)],
            );
        }
        let events = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        (status, events)
    }
}
