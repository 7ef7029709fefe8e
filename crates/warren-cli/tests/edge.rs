//! The edge through `warren server` (the binary) and a real VM running busybox httpd:
//! a port exposed through `/workspace/:id/public-access` answers at
//! `https://<slug>.<preview domain>` (curl with `--resolve` and the local CA, HTTP/1.1
//! and HTTP/2), a WebSocket (the `ws` client of tests/compat) passes through, a revoke
//! answers 404 at once, ports that are not exposed are unreachable (neither through the
//! edge nor from the host), bad input changes nothing, a custom domain works at once
//! with a certificate from the local CA, and the data-plane gateway answers through the
//! edge over HTTPS.

mod common;
#[path = "support/internet.rs"]
mod internet;
#[path = "support/server.rs"]
mod server;

use common::*;
use serde_json::{json, Value};
use server::*;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use warren_protocol::runtime::{ExecMode, ExecRequest};
use warren_sdk::RuntimeClient;

const PREVIEW: &str = "warren.test";

/// A server with the edge (on `PREVIEW`) and the SSH gateway, both on free ports.
struct EdgeServer {
    s: Server,
    edge: SocketAddr,
    ca: PathBuf,
    ssh: SocketAddr,
}

impl std::ops::Deref for EdgeServer {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.s
    }
}

impl EdgeServer {
    fn start(data: &Path) -> EdgeServer {
        let s = Server::start_with(
            data,
            &[
                "--edge-addr",
                "127.0.0.1:0",
                "--preview-domain",
                PREVIEW,
                "--ssh-addr",
                "127.0.0.1:0",
                "--kernel",
                "debian",
            ],
        );
        let (edge, ca) = s
            .edge
            .clone()
            .unwrap_or_else(|| panic!("the server announced no edge: {}", s.log()));
        let ssh = s
            .ssh
            .unwrap_or_else(|| panic!("no ssh gateway: {}", s.log()));
        EdgeServer { s, edge, ca, ssh }
    }

    /// `curl` over HTTPS to `host` at the edge, trusting only our CA: (status, HTTP
    /// version, body).
    fn curl(&self, host: &str, path: &str, extra: &[&str]) -> (u16, String, String) {
        let port = self.edge.port();
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&self.ca)
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_code} %{http_version}"])
            .args(extra)
            .arg(format!("https://{host}:{port}{path}"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
        let mut t = tail.split_whitespace();
        let code = t.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let version = t.next().unwrap_or_default().to_string();
        assert!(
            code != 0,
            "curl to {host}{path} failed: {}\nserver: {}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        (code, version, body.to_string())
    }

    /// Does the edge refuse the TLS handshake for `host` (curl's exit code 35)?
    fn tls_refused(&self, host: &str) -> bool {
        let port = self.edge.port();
        let st = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-o", "/dev/null", "--cacert"])
            .arg(&self.ca)
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .arg(format!("https://{host}:{port}/"))
            .status()
            .expect("run curl");
        st.code() == Some(35)
    }
}

async fn sh(agent: &(String, String), cmd: &str) -> (i32, String) {
    let rt = RuntimeClient::new(&agent.0, &agent.1).unwrap();
    let t = rt
        .exec(&ExecRequest {
            cmd: vec![cmd.into()],
            exec_mode: Some(ExecMode::Shell),
            timeout_seconds: Some(60),
            ..ExecRequest::default()
        })
        .await
        .expect("exec");
    (t.exit_code.unwrap_or(-1), t.stdout.unwrap_or_default())
}

/// A CGI for busybox httpd that answers a WebSocket handshake and sends one text
/// frame (busybox passes a CGI's own `HTTP/1.1 101` status line through verbatim).
const WS_CGI: &str = r#"#!/bin/sh
a=$(printf '%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11' "$HTTP_SEC_WEBSOCKET_KEY" | sha1sum | cut -c1-40 | sed 's/../\\x&/g')
a=$(printf "$a" | base64)
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' "$a"
printf '\201\022hello from the vm!'
sleep 1
"#;

/// The `ws` WebSocket client (tests/compat/node_modules), trusting our CA and
/// resolving every name to 127.0.0.1: the first message it receives.
fn ws_client(ca: &Path, url: &str) -> Result<String, String> {
    let ws = repo_root().join("tests/compat/node_modules/ws");
    assert!(
        ws.exists(),
        "{} is missing: run `npm ci` in tests/compat (scripts/install-deps.sh)",
        ws.display()
    );
    let script = r#"
const WebSocket = require(process.env.WS_MODULE);
const fs = require('fs');
const lookup = (h, o, cb) => (o && o.all) ? cb(null, [{address: '127.0.0.1', family: 4}]) : cb(null, '127.0.0.1', 4);
const ws = new WebSocket(process.env.WS_URL, { ca: fs.readFileSync(process.env.WS_CA), lookup });
const t = setTimeout(() => { console.error('timeout'); process.exit(2); }, 20000);
ws.on('message', (m) => { console.log(String(m)); clearTimeout(t); ws.terminate(); process.exit(0); });
ws.on('unexpected-response', (req, res) => { console.error('status ' + res.statusCode); process.exit(3); });
ws.on('error', (e) => { console.error(e.message); process.exit(1); });
"#;
    let out = Command::new("node")
        .args(["-e", script])
        .env("WS_MODULE", &ws)
        .env("WS_URL", url)
        .env("WS_CA", ca)
        .output()
        .expect("run node");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn tcp_open(ip: &str, port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse().unwrap(),
        Duration::from_secs(3),
    )
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_ports_domains_and_the_gateway_through_the_edge() {
    let data = tempfile::tempdir().unwrap();
    let cleanup = KillVmsOnPanic::new(data.path(), internet::release_leases_of);
    let s = EdgeServer::start(data.path());
    cleanup.track(&s);
    let ca_pem = std::fs::read_to_string(&s.ca).unwrap();
    assert!(ca_pem.contains("BEGIN CERTIFICATE"));
    // The root certificate is downloadable from the API without credentials.
    let dl = reqwest::get(format!("{}/edge/ca.pem", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(dl, ca_pem);

    let (st, w) = s
        .call(
            "POST",
            "/workspace",
            Some(json!({
                "image": "busybox", "memory_mb": 256, "disk_size_mb": 128,
                "config": {"cmd": "mkdir -p /www/cgi-bin; echo hello-from-vm > /www/index.html; \
                                   httpd -f -p 8080 -h /www & httpd -f -p 8081 -h /www & wait"}
            })),
        )
        .await;
    assert_eq!(st, 201, "{w}");
    let id = w["workspace"]["id"].as_str().unwrap().to_string();
    let ip = s.ready(&id, 180).await["internal_ip"]
        .as_str()
        .unwrap()
        .to_string();
    let raw = s.raw_token(&id).await;
    let agent = (
        raw["url"].as_str().unwrap().to_string(),
        raw["token"].as_str().unwrap().to_string(),
    );
    let (code, _) = sh(
        &agent,
        &format!(
            "mkdir -p /www/cgi-bin && echo hello-from-vm > /www/index.html && \
             cat > /www/cgi-bin/ws <<'EOF'\n{WS_CGI}EOF\nchmod +x /www/cgi-bin/ws && \
             for i in $(seq 100); do wget -q -O - http://127.0.0.1:8080/ && wget -q -O - http://127.0.0.1:8081/ && exit 0; sleep 0.2; done; exit 1"
        ),
    )
    .await;
    if code != 0 {
        let (_, diag) = sh(&agent, "ps; ls -la /www /www/cgi-bin; command -v httpd").await;
        panic!("httpd is not serving in the VM: {diag}");
    }

    // Nothing is exposed: the host (where the edge runs) cannot reach the ports, and
    // the edge has no route.
    assert!(
        !tcp_open(&ip, 8080),
        "port 8080 is reachable before exposing"
    );
    let (code, _, body) = s.curl(&format!("web.{PREVIEW}"), "/", &[]);
    assert_eq!(code, 404, "{body}");

    // Expose 8080 as "web".
    let path = format!("/workspace/{id}/public-access");
    let (st, p) = s
        .call(
            "POST",
            &path,
            Some(json!({"port": 8080, "label": "site", "slug": "web"})),
        )
        .await;
    assert_eq!(st, 201, "{p}");
    let url = p["port"]["url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("https://web.{PREVIEW}:{}", s.edge.port()));
    assert_eq!(p["port"]["label"], "site");
    let (code, version, body) = s.curl(&format!("web.{PREVIEW}"), "/", &["--http1.1"]);
    assert_eq!(
        (code, version.as_str(), body.trim()),
        (200, "1.1", "hello-from-vm")
    );
    let (code, version, body) = s.curl(&format!("web.{PREVIEW}"), "/", &["--http2"]);
    assert_eq!(
        (code, version.as_str(), body.trim()),
        (200, "2", "hello-from-vm")
    );
    // 8081 stays unreachable: from the host and through the edge.
    assert!(
        !tcp_open(&ip, 8081),
        "port 8081 is reachable without being exposed"
    );
    assert!(
        tcp_open(&ip, 8080),
        "the exposed port is not admitted from the host"
    );

    // A WebSocket through the edge (TLS, then the upgrade spliced to the VM).
    let msg = ws_client(
        &s.ca,
        &format!("wss://web.{PREVIEW}:{}/cgi-bin/ws", s.edge.port()),
    );
    assert_eq!(msg.as_deref(), Ok("hello from the vm!"));

    // Bad input: a clear error and nothing changes.
    for (body, st_want, code_want) in [
        (json!({"port": 8080}), 409, "port_already_exposed"),
        (json!({"port": 0}), 422, "validation_error"),
        (json!({"port": 70000}), 422, "validation_error"),
        (json!({"port": "x"}), 422, "validation_error"),
        (json!({"label": "no port"}), 422, "validation_error"),
        (
            json!({"port": 9000, "slug": "Bad Slug"}),
            422,
            "validation_error",
        ),
        (json!({"port": 9000, "slug": "web"}), 409, "slug_taken"),
        (
            json!({"port": 9000, "domain": "not a domain"}),
            422,
            "validation_error",
        ),
    ] {
        let (st, b) = s.call("POST", &path, Some(body.clone())).await;
        assert_eq!(
            (st, b["code"].as_str()),
            (st_want, Some(code_want)),
            "{body}: {b}"
        );
    }
    let (_, list) = s.call("GET", &path, None).await;
    assert_eq!(list["ports"].as_array().map(|a| a.len()), Some(1), "{list}");

    // Up to 20 ports; the 21st is refused and changes nothing.
    for port in 9001..=9019u16 {
        let (st, b) = s.call("POST", &path, Some(json!({"port": port}))).await;
        assert_eq!(st, 201, "{b}");
    }
    let (st, b) = s.call("POST", &path, Some(json!({"port": 9020}))).await;
    assert_eq!(
        (st, b["code"].as_str()),
        (409, Some("port_limit_reached")),
        "{b}"
    );
    let (_, list) = s.call("GET", &path, None).await;
    assert_eq!(
        list["ports"].as_array().map(|a| a.len()),
        Some(20),
        "{list}"
    );
    for port in 9001..=9019u16 {
        let (st, b) = s.call("DELETE", &format!("{path}/{port}"), None).await;
        assert_eq!(st, 200, "{b}");
    }

    // Rename: the new slug answers at once, the old one is gone.
    let (st, b) = s
        .call(
            "PATCH",
            &format!("{path}/8080"),
            Some(json!({"slug": "site2"})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(s.curl(&format!("site2.{PREVIEW}"), "/", &[]).0, 200);
    assert_eq!(s.curl(&format!("web.{PREVIEW}"), "/", &[]).0, 404);

    // A custom domain: invalid ones are refused; a valid one works at once with a
    // certificate from the local CA.
    let dpath = format!("/workspace/{id}/domain");
    for bad in [
        "not a domain",
        "localhost",
        "10.0.0.1",
        &format!("x.{PREVIEW}"),
    ] {
        let (st, b) = s
            .call("POST", &dpath, Some(json!({"domain": bad, "port": 8080})))
            .await;
        assert_eq!(st, 422, "{bad}: {b}");
    }
    let (_, none) = s.call("GET", &dpath, None).await;
    assert_eq!(none["domain"], Value::Null, "{none}");
    let (st, b) = s
        .call(
            "POST",
            &dpath,
            Some(json!({"domain": "App.Example.org", "port": 8080})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["domain"], "app.example.org");
    assert_eq!(b["ssl"]["status"], "active");
    let (code, _, body) = s.curl("app.example.org", "/", &[]);
    assert_eq!((code, body.trim()), (200, "hello-from-vm"));
    let (_, got) = s.call("GET", &dpath, None).await;
    assert_eq!(got["domain"]["customDomain"], "app.example.org", "{got}");
    let before = got["domain"]["sslExpiry"].clone();
    let (st, b) = s.call("POST", &format!("{dpath}/ssl/renew"), None).await;
    assert_eq!(st, 200, "{b}");
    assert!(
        b["ssl"]["expiresAt"].is_string() && before.is_string(),
        "{b}"
    );
    assert_eq!(s.curl("app.example.org", "/", &[]).0, 200);

    // The data-plane gateway through the edge, over HTTPS.
    let (st, tok) = s
        .call(
            "POST",
            &format!("/workspace/{id}/runtime-api-access/enable"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{tok}");
    let auth = format!("Authorization: Bearer {}", tok["token"].as_str().unwrap());
    let (code, _, body) = s.curl(
        &format!("gateway.{PREVIEW}"),
        "/exec",
        &[
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"cmd":["echo","through-the-edge"]}"#,
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("through-the-edge"), "{body}");

    // Revoke: 404 at once, on the preview URL; the firewall closes again.
    let (st, b) = s.call("DELETE", &format!("{path}/8080"), None).await;
    assert_eq!(st, 200, "{b}");
    let (code, _, _) = s.curl(&format!("site2.{PREVIEW}"), "/", &[]);
    assert_eq!(code, 404);
    let (st, b) = s.call("DELETE", &format!("{path}/8080"), None).await;
    assert_eq!((st, b["code"].as_str()), (404, Some("not_found")), "{b}");
    // The custom domain's port stays admitted until the domain goes too.
    let (st, _) = s.call("DELETE", &dpath, None).await;
    assert_eq!(st, 200);
    // The name is unknown again: the edge has no certificate for it, so the TLS
    // handshake itself is refused.
    assert!(s.tls_refused("app.example.org"));
    let t0 = Instant::now();
    while tcp_open(&ip, 8080) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "8080 still admitted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    ssh_gateway(&s, &id, data.path()).await;

    s.delete_and_wait(&id, 60).await;
}

/// `ssh -i KEY -p PORT <id>@127.0.0.1 CMD`: (exit code, stdout, stderr).
fn ssh(s: &EdgeServer, id: &str, key: &Path, cmd: &str) -> (i32, String, String) {
    ssh_with_input(s, id, key, cmd, None)
}

fn ssh_with_input(
    s: &EdgeServer,
    id: &str,
    key: &Path,
    cmd: &str,
    input: Option<&[u8]>,
) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new("ssh")
        .args(["-p", &s.ssh.port().to_string(), "-i"])
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("{id}@127.0.0.1"))
        .arg(cmd)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ssh (scripts/install-deps.sh installs openssh-client)");
    if let (Some(data), Some(mut w)) = (input, child.stdin.take()) {
        w.write_all(data).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The SSH gateway: key set and enabled -> commands run in the VM through its agent
/// (output and exit code); a wrong key, or SSH disabled, is refused.
async fn ssh_gateway(s: &EdgeServer, id: &str, data: &Path) {
    let (good, good_pub) = keygen(data, "good");
    let (bad, _) = keygen(data, "bad");
    let base = format!("/workspace/{id}/ssh");
    let (st, b) = s.call("POST", &format!("{base}/enable"), None).await;
    assert_eq!(
        (st, b["code"].as_str()),
        (409, Some("ssh_no_credentials")),
        "{b}"
    );
    let (st, b) = s
        .call(
            "POST",
            &format!("{base}/key"),
            Some(json!({"public_key": "ssh-ed25519 nope"})),
        )
        .await;
    assert_eq!(st, 422, "{b}");
    let (st, b) = s
        .call(
            "POST",
            &format!("{base}/password"),
            Some(json!({"password": "short"})),
        )
        .await;
    assert_eq!(st, 422, "{b}");
    let (st, b) = s
        .call(
            "POST",
            &format!("{base}/key"),
            Some(json!({"public_key": good_pub})),
        )
        .await;
    assert_eq!((st, b["ssh_key_set"].as_bool()), (200, Some(true)), "{b}");
    // Not enabled yet: refused.
    let (code, out, _) = ssh(s, id, &good, "echo no");
    assert_eq!((code, out.as_str()), (255, ""));

    let (st, b) = s.call("POST", &format!("{base}/enable"), None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b["connection"]["command"],
        format!("ssh -p {} {id}@127.0.0.1", s.ssh.port())
    );
    let (code, out, err) = ssh(
        s,
        id,
        &good,
        "echo hi-$((1+2)); echo oops >&2; hostname; exit 3",
    );
    assert_eq!(code, 3, "stdout {out} stderr {err}");
    assert!(out.starts_with("hi-3\n"), "{out}");
    assert!(out.contains(&format!("ws-{}", &id[3..])), "{out}");
    assert!(err.contains("oops"), "{err}");
    // Stdin reaches the command: a file copied in and read back.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (code, out, err) = ssh_with_input(
        s,
        id,
        &good,
        "cat > /tmp/up.bin; wc -c < /tmp/up.bin",
        Some(&data),
    );
    assert_eq!((code, out.trim()), (0, "200000"), "{err}");
    let (code, out, _) = ssh(s, id, &good, "md5sum < /tmp/up.bin");
    let local = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&data)?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        out.split_whitespace().next(),
        String::from_utf8_lossy(&local.stdout)
            .split_whitespace()
            .next()
    );
    let (code, out, _) = ssh(s, id, &bad, "echo no");
    assert_eq!((code, out.as_str()), (255, ""), "a wrong key got in");
    let (code, _, _) = ssh(s, "ws_nosuch", &good, "echo no");
    assert_eq!(code, 255);

    let (st, b) = s.call("POST", &format!("{base}/disable"), None).await;
    assert_eq!((st, b["ssh_enabled"].as_bool()), (200, Some(false)), "{b}");
    let (code, out, _) = ssh(s, id, &good, "echo no");
    assert_eq!(
        (code, out.as_str()),
        (255, ""),
        "SSH disabled but a login worked"
    );
}
