//! `warren server` (the binary) as the tests drive it: started on free ports with a
//! private data dir, reached over HTTP with its own credentials, and cleaned up after
//! a failed test (its VMs outlive it, and so would its host-wide leases and taps).
//! Used as `#[path = "support/server.rs"] mod server;` next to `mod common;`.
#![allow(dead_code)]

use crate::common::{agent, cache_dir};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_sdk::ControlClient;

pub struct Server {
    child: Child,
    pub url: String,
    pub data: PathBuf,
    /// The edge's address and the path of its CA, when the server announced one.
    pub edge: Option<(SocketAddr, PathBuf)>,
    /// The SSH gateway's address, when the server announced one.
    pub ssh: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    /// A `KillVmsOnPanic` releases this server's leases after a failed test (by
    /// owner pid, with their firewall state), so its own drop must leave them.
    tracked: AtomicBool,
}

impl Server {
    /// The command that starts a server on `data` with `extra` arguments (after the
    /// free API and gateway ports and the busybox default image). It never picks up
    /// a master key file from the test's environment, and keeps no warm pool.
    pub fn command(data: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
        c.args([
            "server",
            "--api-addr",
            "127.0.0.1:0",
            "--gateway-addr",
            "127.0.0.1:0",
        ])
        .args(["--default-image", "busybox"])
        .args(extra)
        .env("WARREN_DATA_DIR", data)
        .env("WARREN_CACHE_DIR", cache_dir())
        .env("WARREN_AGENT", agent())
        // No VMs booted ahead of demand unless a test asks (`--warm-pool N`): they
        // would compete with the test's own for the CPU.
        .env("WARREN_WARM_POOL", "0")
        .env_remove("WARREN_MASTER_KEY_FILE")
        .env_remove("RUST_LOG");
        c
    }

    pub fn start(data: &Path) -> Server {
        Self::start_with(data, &[])
    }

    /// Start a server and wait until its API listens. The edge and SSH gateway lines
    /// it prints before that are recorded in `edge` and `ssh`.
    pub fn start_with(data: &Path, extra: &[&str]) -> Server {
        let mut child = Self::command(data, extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn warren server");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr");
        let log = stderr.clone();
        std::thread::spawn(move || {
            let mut edge = None;
            let mut ssh = None;
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.strip_prefix("warren: edge listening on https://") {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let ca = rest
                        .split("(CA: ")
                        .nth(1)
                        .map(|s| PathBuf::from(s.trim_end_matches(')')));
                    edge = addr.parse::<SocketAddr>().ok().zip(ca);
                }
                if let Some(a) = line.strip_prefix("warren: ssh gateway listening on ") {
                    ssh = a.trim().parse::<SocketAddr>().ok();
                }
                if let Some(url) = line.strip_prefix("warren: api listening on ") {
                    let _ = tx.send((url.to_string(), edge.clone(), ssh));
                }
            }
        });
        let (url, edge, ssh) = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("server did not start: {}", stderr.lock().unwrap()));
        Server {
            child,
            url,
            data: data.to_path_buf(),
            edge,
            ssh,
            stderr,
            tracked: AtomicBool::new(false),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn creds(&self) -> (String, String) {
        let v: Value =
            serde_json::from_slice(&std::fs::read(self.data.join("credentials.json")).unwrap())
                .unwrap();
        (
            v["client_id"].as_str().unwrap().to_string(),
            v["client_secret"].as_str().unwrap().to_string(),
        )
    }

    pub fn sdk(&self) -> ControlClient {
        let (id, secret) = self.creds();
        ControlClient::new(&self.url, &id, &secret).unwrap()
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (id, secret) = self.creds();
        let mut r = reqwest::Client::new()
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{}", self.url, path),
            )
            .header("X-Client-ID", id)
            .header("X-Client-Secret", secret);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let s = resp.status().as_u16();
        (s, resp.json().await.unwrap_or(Value::Null))
    }

    /// `GET /workspace/{id}/runtime-api-access/token/raw` (the agent's own URL and
    /// raw token); fails unless it answers 200.
    pub async fn raw_token(&self, id: &str) -> Value {
        let (st, b) = self
            .call(
                "GET",
                &format!("/workspace/{id}/runtime-api-access/token/raw"),
                None,
            )
            .await;
        assert_eq!(st, 200, "{b}");
        b
    }

    /// The workspace `id` once it is ready; fails after `secs` seconds.
    pub async fn ready(&self, id: &str, secs: u64) -> Value {
        let t0 = Instant::now();
        loop {
            let (_, b) = self.call("GET", &format!("/workspace/{id}"), None).await;
            if b["workspace"]["ready"] == true {
                return b["workspace"].clone();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{id} never became ready: {b}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Delete the workspace `id` and wait until it is gone; fails after `secs` seconds.
    pub async fn delete_and_wait(&self, id: &str, secs: u64) {
        let (st, b) = self.call("DELETE", &format!("/workspace/{id}"), None).await;
        assert_eq!(st, 202, "{b}");
        let t0 = Instant::now();
        loop {
            let (st, _) = self.call("GET", &format!("/workspace/{id}"), None).await;
            if st == 404 {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{id} not deleted\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// Stop the server (SIGTERM, then wait); workspaces' VMs are left as they are.
    pub fn shutdown(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("server log:\n{}", self.log());
            // A failed test must not leave its VMs running (they outlive the server).
            kill_vms_of(&self.data);
            if self.tracked.load(Ordering::Relaxed) {
                return;
            }
            // And their host-wide leases and taps (no later reconcile would know
            // they were this test's once its directory is gone).
            let ours = run_dirs(&self.data);
            for e in std::fs::read_dir("/run/warren/net/leases")
                .into_iter()
                .flatten()
                .flatten()
            {
                let v: Value = std::fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                if v["workspace_id"]
                    .as_str()
                    .is_some_and(|id| ours.iter().any(|o| o == id))
                {
                    if let Some(tap) = v["tap"].as_str() {
                        let _ = Command::new("ip")
                            .args(["link", "del", "dev", tap])
                            .status();
                    }
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// On a failed test, kill the VMs under a data dir (they outlive the server) and
/// hand the pids of every server the test started (`track`) to `release`, which
/// frees the leases they held (no later server knows them once the dir is gone).
/// It outlives each `Server`, so it also covers one that was killed with -9.
pub struct KillVmsOnPanic {
    data: PathBuf,
    servers: Mutex<Vec<u32>>,
    release: fn(&[u32]),
}

impl KillVmsOnPanic {
    pub fn new(data: &Path, release: fn(&[u32])) -> Self {
        KillVmsOnPanic {
            data: data.to_path_buf(),
            servers: Mutex::new(Vec::new()),
            release,
        }
    }

    pub fn track(&self, s: &Server) {
        s.tracked.store(true, Ordering::Relaxed);
        self.servers.lock().unwrap().push(s.pid());
    }
}

impl Drop for KillVmsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let servers = self.servers.lock().map(|v| v.clone()).unwrap_or_default();
        kill_vms_of(&self.data);
        (self.release)(&servers);
    }
}

/// Kill -9 every VMM whose command line names `data`'s workspaces.
pub fn kill_vms_of(data: &Path) {
    let marker = data.join("workspaces").display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("qemu-system") && cmd.contains(&marker) {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    }
}

/// The workspace run directories under `data`, sorted.
pub fn run_dirs(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("workspaces"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A small busybox workspace's create body, with `extra` fields on top.
pub fn small(extra: Value) -> Value {
    let mut b = json!({"image": "busybox", "memory_mb": 256, "disk_size_mb": 128});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

pub fn vmm_running(id: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&format!("/workspaces/{id}/"))
            })
            .unwrap_or(false)
    })
}

/// No VMM of `id` is left, allowing a killed one a few seconds to finish exiting
/// (SIGKILL is asynchronous; a VM's memory takes a moment to tear down).
pub fn vmm_gone(id: &str) -> bool {
    let t0 = Instant::now();
    while vmm_running(id) {
        if t0.elapsed() > Duration::from_secs(5) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Poll workspace `id` until `what` holds for it (None: it does not exist); fails
/// after `secs` seconds with the last answer and the server's log.
pub async fn wait_for(
    s: &Server,
    id: &str,
    secs: u64,
    what: impl Fn(Option<&Value>) -> bool,
) -> Option<Value> {
    let t0 = Instant::now();
    loop {
        let (st, b) = s.call("GET", &format!("/workspace/{id}"), None).await;
        let w = (st == 200).then(|| b["workspace"].clone());
        if what(w.as_ref()) {
            return w;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "workspace {id} never got there; last: {st} {b}\nserver log:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run `script` with the guest's shell through the runtime API: (exit code, stdout).
pub async fn sh(rt: &warren_sdk::RuntimeClient, script: &str) -> (i32, String) {
    use warren_protocol::runtime::{ExecMode, ExecRequest};
    let t = rt
        .exec(&ExecRequest {
            cmd: vec![script.into()],
            exec_mode: Some(ExecMode::Shell),
            timeout_seconds: Some(30),
            ..ExecRequest::default()
        })
        .await
        .unwrap_or_else(|e| panic!("exec {script:?}: {e}"));
    (t.exit_code.unwrap_or(-1), t.stdout.unwrap_or_default())
}

/// What two workspaces made from one template (or the warm pool) must not share, as
/// the guest and the API show it.
#[derive(Debug)]
pub struct Identity {
    pub ip: Value,
    pub token: Value,
    pub boot_id: String,
    /// 32 bytes from the guest's /dev/urandom, hex.
    pub random: String,
    pub hostname: String,
    pub mac: String,
    /// The guest's clock, Unix seconds.
    pub clock: i64,
    /// The wrapped data key on the host.
    pub key: Option<Vec<u8>>,
}

impl Identity {
    pub async fn of(s: &Server, id: &str) -> Identity {
        let (st, w) = s.call("GET", &format!("/workspace/{id}"), None).await;
        assert_eq!(st, 200, "{w}");
        let raw = s.raw_token(id).await;
        let rt = s.sdk().runtime(id).await.unwrap();
        let (code, out) = sh(
            &rt,
            "cat /proc/sys/kernel/random/boot_id; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; \
             echo; hostname; cat /sys/class/net/e*/address; date +%s",
        )
        .await;
        assert_eq!(code, 0, "{out}");
        let l: Vec<String> = out.lines().map(str::to_string).collect();
        assert_eq!(l.len(), 5, "{out}");
        Identity {
            ip: w["workspace"]["internal_ip"].clone(),
            token: raw["token"].clone(),
            boot_id: l[0].clone(),
            random: l[1].clone(),
            hostname: l[2].clone(),
            mac: l[3].clone(),
            clock: l[4].parse().unwrap(),
            key: std::fs::read(s.data.join("workspaces").join(id).join("data.key")).ok(),
        }
    }

    /// Each its own IP, token, boot_id, entropy, MAC and disk key; hostname and clock
    /// as they should be.
    pub fn assert_distinct(ids: &[&str], seen: &[Identity]) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        for (id, me) in ids.iter().zip(seen) {
            assert_eq!(me.hostname, id.replace('_', "-"));
            assert!((me.clock - now).abs() <= 5, "{id}: clock {}", me.clock);
        }
        let (a, b) = (&seen[0], &seen[1]);
        assert_ne!(a.ip, b.ip, "same IP");
        assert_ne!(a.token, b.token, "same agent token");
        assert_ne!(a.boot_id, b.boot_id, "same boot_id");
        assert_ne!(a.random, b.random, "same random bytes");
        assert_ne!(a.mac, b.mac, "same MAC");
        if a.key.is_some() || b.key.is_some() {
            assert_ne!(a.key, b.key, "same disk key");
        }
    }
}
