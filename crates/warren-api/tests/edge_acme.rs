//! Custom domains with certificates from a real ACME server (pebble), through the API
//! and the edge in-process, against a test backend (no VMs: the certificate side of
//! the edge needs no workspace to answer). pebble validates with TLS-ALPN-01 on the
//! edge's listener, resolving the domain through pebble-challtestsrv (a mock DNS
//! server that the DNS check also asks). openssl and curl are the clients: the served
//! certificate must chain to pebble's root, not to the local Warren CA.

mod support;

use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::TestBackend;
use tokio::sync::mpsc;
use warren_api::backend::WorkspaceBackend;
use warren_api::{ApiConfig, AppState, Manager};
use warren_gateway::GatewayKeys;
use warren_state::Store;

const PREVIEW: &str = "warren.test";

/// A child process killed when dropped.
struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_tcp(addr: SocketAddr, p: &mut Proc) {
    let t = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(st)) = p.0.try_wait() {
            panic!("{} exited: {st}", p.1);
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} never listened on {addr}",
            p.1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA and a certificate for 127.0.0.1 (pebble's own HTTPS), made with openssl.
fn pebble_https_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("test-ca.key");
    let ca = dir.join("test-ca.pem");
    let key = dir.join("pebble.key");
    let csr = dir.join("pebble.csr");
    let cert = dir.join("pebble.pem");
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pebble test CA",
            "-keyout",
        ])
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .args(["-CAcreateserial", "-extfile"])
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (ca, cert, key)
}

struct Acme {
    _dns: Proc,
    _pebble: Proc,
    dns_addr: SocketAddr,
    dns_mgmt: String,
    directory: String,
    directory_root: PathBuf,
    mgmt: String,
}

/// challtestsrv (mock DNS answering A 127.0.0.1 by default) and pebble validating
/// TLS-ALPN-01 on `tls_port`.
fn start_acme(dir: &Path, tls_port: u16) -> Acme {
    let dns_port = free_port();
    let dns_mgmt_port = free_port();
    let mut dns = Proc(
        Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble: scripts/install-deps.sh)"),
        "pebble-challtestsrv",
    );
    wait_tcp(SocketAddr::from(([127, 0, 0, 1], dns_mgmt_port)), &mut dns);
    let (ca, cert, key) = pebble_https_cert(dir);
    let port = free_port();
    let mgmt_port = free_port();
    let cfg = dir.join("pebble.json");
    std::fs::write(
        &cfg,
        json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": 5002,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }})
        .to_string(),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
    let mut pebble = Proc(
        Command::new("pebble")
            .arg("-config")
            .arg(&cfg)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble (apt-get install pebble: scripts/install-deps.sh)"),
        "pebble",
    );
    wait_tcp(SocketAddr::from(([127, 0, 0, 1], port)), &mut pebble);
    wait_tcp(SocketAddr::from(([127, 0, 0, 1], mgmt_port)), &mut pebble);
    Acme {
        _dns: dns,
        _pebble: pebble,
        dns_addr: SocketAddr::from(([127, 0, 0, 1], dns_port)),
        dns_mgmt: format!("http://127.0.0.1:{dns_mgmt_port}"),
        directory: format!("https://127.0.0.1:{port}/dir"),
        directory_root: ca,
        mgmt: format!("https://127.0.0.1:{mgmt_port}"),
    }
}

/// The tests' client, with the one helper they add.
type Api = support::Client;

impl Api {
    async fn workspace(&self) -> String {
        let (s, b) = self.call("POST", "/workspace", Some(json!({}))).await;
        assert!(s == 200 || s == 201 || s == 202, "{s} {b}");
        let id = b["workspace"]["id"]
            .as_str()
            .or(b["id"].as_str())
            .unwrap()
            .to_string();
        for _ in 0..200 {
            let (_, b) = self.call("GET", &format!("/workspace/{id}"), None).await;
            if b["workspace"]["status"] == "running" {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("workspace {id} never ran");
    }

    async fn domain(&self, id: &str) -> Value {
        let (s, b) = self
            .call("GET", &format!("/workspace/{id}/domain"), None)
            .await;
        assert_eq!(s, 200, "{b}");
        b["domain"].clone()
    }

    /// Wait until the domain's SSL status is no longer `pending`.
    async fn settled(&self, id: &str) -> Value {
        let t = Instant::now();
        loop {
            let d = self.domain(id).await;
            if d["sslStatus"] != "pending" {
                return d;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "still pending: {d}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The certificate the edge serves for `host` (openssl s_client verifying against
/// `ca`): (verified, serial, issuer).
fn served(edge: SocketAddr, host: &str, ca: &Path) -> (bool, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {edge} -servername {host} -CAfile {} -verify_return_error -showcerts </dev/null 2>&1",
            ca.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let verified = out.status.success() && text.contains("Verify return code: 0 (ok)");
    let begin = text.find("-----BEGIN CERTIFICATE-----");
    let end = text.find("-----END CERTIFICATE-----");
    let (Some(b), Some(e)) = (begin, end) else {
        return (false, String::new(), text);
    };
    let pem = &text[b..e + "-----END CERTIFICATE-----".len()];
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-issuer"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x.stdin
        .take()
        .unwrap()
        .write_all(format!("{pem}\n").as_bytes())
        .unwrap();
    let o = x.wait_with_output().unwrap();
    let info = String::from_utf8_lossy(&o.stdout).into_owned();
    let serial = info
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap_or_default()
        .to_string();
    let issuer = info
        .lines()
        .find_map(|l| l.strip_prefix("issuer="))
        .unwrap_or_default()
        .trim()
        .to_string();
    (verified, serial, issuer)
}

/// curl over HTTPS to `host` at the edge trusting only `ca`: curl's exit code.
fn curl_exit(edge: SocketAddr, host: &str, ca: &Path) -> i32 {
    Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{}:127.0.0.1", edge.port())])
        .arg(format!("https://{host}:{}/", edge.port()))
        .status()
        .unwrap()
        .code()
        .unwrap_or(-1)
}

async fn start(
    data: &Path,
    listener: tokio::net::TcpListener,
    acme: Option<&Acme>,
    tweak: impl FnOnce(&mut warren_edge::EdgeConfig),
) -> (Api, SocketAddr, PathBuf) {
    let edge_addr = listener.local_addr().unwrap();
    let edge_cfg = warren_edge::EdgeConfig {
        https_addr: edge_addr,
        preview_domain: PREVIEW.into(),
        public_https_port: edge_addr.port(),
        gateway_host: format!("gateway.{PREVIEW}"),
        acme: acme.map(|a| warren_edge::acme::AcmeConfig {
            directory_url: a.directory.clone(),
            contact_email: Some("ops@example.test".into()),
            directory_root: Some(a.directory_root.clone()),
        }),
        dns: warren_edge::dns::DnsConfig {
            nameserver: acme.map(|a| a.dns_addr),
            public_ips: vec!["127.0.0.1".parse().unwrap()],
        },
        ..warren_edge::EdgeConfig::default()
    };
    let mut edge_cfg = edge_cfg;
    tweak(&mut edge_cfg);
    let store = Store::open(&data.join("warren.db")).await.unwrap();
    let c = store.create_client("admin", true).await.unwrap();
    // The edge proxies to 127.0.0.1: the test's own upstream servers.
    let backend = Arc::new(TestBackend::at("127.0.0.1"));
    let keys = GatewayKeys::from_secret(b"test-secret-test-secret-test-sec");
    let mut config = ApiConfig {
        default_image: "busybox".into(),
        data_dir: data.to_path_buf(),
        edge: Some(edge_cfg.clone()),
        ..ApiConfig::default()
    };
    config.capacity.max_memory_mb = 100_000;
    let (tx, rx) = mpsc::unbounded_channel();
    backend.set_events(tx);
    let manager = Manager::new(store.clone(), backend, config, keys);
    manager.startup().await.unwrap();
    manager.spawn_background(rx);
    let certs = warren_edge::CertStore::open(data, store.clone()).unwrap();
    let ca = certs.ca().pem_path().to_path_buf();
    let edge = warren_edge::Edge::new(edge_cfg, store, certs, None);
    tokio::spawn(warren_edge::serve(edge, listener));
    let app = warren_api::router(AppState::new(manager));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (Api::new(url, c), edge_addr, ca)
}

async fn pebble_root(a: &Acme) -> String {
    let root = reqwest::Certificate::from_pem(&std::fs::read(&a.directory_root).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .unwrap();
    let r = http
        .get(format!("{}/roots/0", a.mgmt))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

async fn challtest(a: &Acme, path: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", a.dns_mgmt))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "challtestsrv {path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_domain_gets_an_acme_certificate_renews_and_checks_dns() {
    let data = tempfile::tempdir().unwrap();
    // pebble validates on the edge's port, and the edge orders from pebble: bind the
    // edge's listener first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acme = start_acme(data.path(), listener.local_addr().unwrap().port());
    let (api, edge, local_ca) = start(data.path(), listener, Some(&acme), |_| {}).await;
    let root = data.path().join("pebble-root.pem");
    std::fs::write(&root, pebble_root(&acme).await).unwrap();

    let ws = api.workspace().await;
    let other = api.workspace().await;
    let (s, b) = api
        .call("GET", &format!("/workspace/{ws}/network"), None)
        .await;
    assert_eq!((s, &b["public_access"]), (200, &json!(false)), "{b}");
    let (s, b) = api
        .call(
            "POST",
            &format!("/workspace/{ws}/public-access"),
            Some(json!({"port": 8080, "slug": "shop"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = api
        .call("GET", &format!("/workspace/{ws}/network"), None)
        .await;
    assert_eq!((s, &b["public_access"]), (200, &json!(true)), "{b}");

    // DNS check: the default answer is A 127.0.0.1 (the edge's public address).
    let dom = "app.acme.test";
    let (s, b) = api
        .call(
            "POST",
            &format!("/workspace/{ws}/domain/check"),
            Some(json!({"domain": dom})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["verified"], true, "{b}");
    assert_eq!(b["cname"], false, "{b}");
    assert_eq!(b["records"]["A"], json!(["127.0.0.1"]), "{b}");
    assert_eq!(b["errors"], json!([]), "{b}");
    assert_eq!(b["edge_ips"], json!(["127.0.0.1"]), "{b}");
    assert_eq!(
        b["required_records"]["cname"]["target"], "shop.warren.test",
        "{b}"
    );
    // A CNAME to the workspace's preview host.
    challtest(
        &acme,
        "/set-cname",
        json!({"host": "www.shop.test.", "target": "shop.warren.test."}),
    )
    .await;
    let (s, b) = api
        .call(
            "POST",
            &format!("/workspace/{ws}/domain/check"),
            Some(json!({"domain": "www.shop.test"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (&b["verified"], &b["cname"]),
        (&json!(true), &json!(true)),
        "{b}"
    );
    // Mismatches: an address elsewhere, a CNAME elsewhere.
    challtest(
        &acme,
        "/add-a",
        json!({"host": "elsewhere.test.", "addresses": ["198.51.100.7"]}),
    )
    .await;
    let (s, b) = api
        .call(
            "POST",
            &format!("/workspace/{ws}/domain/check"),
            Some(json!({"domain": "elsewhere.test"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["verified"], false, "{b}");
    assert_eq!(b["records"]["A"], json!(["198.51.100.7"]), "{b}");
    assert!(
        b["errors"][0].as_str().unwrap().contains("198.51.100.7"),
        "{b}"
    );
    challtest(
        &acme,
        "/set-cname",
        json!({"host": "cdn.test.", "target": "cdn.example.net."}),
    )
    .await;
    challtest(
        &acme,
        "/add-a",
        json!({"host": "cdn.example.net.", "addresses": ["198.51.100.9"]}),
    )
    .await;
    let (s, b) = api
        .call(
            "POST",
            &format!("/workspace/{ws}/domain/check"),
            Some(json!({"domain": "cdn.test"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (&b["verified"], &b["cname"]),
        (&json!(false), &json!(false)),
        "{b}"
    );
    assert!(
        b["errors"][0].as_str().unwrap().contains("cdn.example.net"),
        "{b}"
    );

    // The standalone pre-flight check (client.domain.verify): with the workspace the
    // CNAME counts; without, only the preview domain would (the address still does).
    let (s, b) = api
        .call(
            "POST",
            "/domain/verify",
            Some(json!({"domain": "www.shop.test", "resource_id": ws})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (&b["verified"], &b["cname"]),
        (&json!(true), &json!(true)),
        "{b}"
    );
    let (s, b) = api
        .call(
            "POST",
            "/domain/verify",
            Some(json!({"domain": "www.shop.test"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["cname"], false, "{b}");
    assert_eq!(b["required_records"]["cname"]["target"], PREVIEW, "{b}");
    let (s, b) = api
        .call(
            "POST",
            "/domain/verify",
            Some(json!({"domain": "elsewhere.test", "resource_id": ws})),
        )
        .await;
    assert_eq!((s, &b["verified"]), (200, &json!(false)), "{b}");
    let (s, b) = api
        .call(
            "POST",
            "/domain/verify",
            Some(json!({"domain": "www.shop.test", "resource_id": "ws_nope"})),
        )
        .await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = api
        .call(
            "POST",
            "/domain/verify",
            Some(json!({"domain": "no_such domain"})),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (422, Some("validation_error")),
        "{b}"
    );

    // Connect: the route works at once with the local CA, pending ACME.
    let (s, b) = api
        .call(
            "POST",
            &format!("/workspace/{ws}/domain"),
            Some(json!({"domain": dom, "port": 8080})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["ssl"]["status"], "pending", "{b}");
    assert_eq!(b["dns"]["verified"], true, "{b}");
    assert_eq!(b["url"], format!("https://{dom}:{}", edge.port()), "{b}");
    let d = api.settled(&ws).await;
    assert_eq!(
        d["sslStatus"],
        "active",
        "ACME issuance failed: {d}\npebble: {}",
        std::fs::read_to_string(data.path().join("pebble.log")).unwrap_or_default()
    );
    assert_eq!(d["sslIssuer"], "ACME", "{d}");
    let (ok, serial, issuer) = served(edge, dom, &root);
    assert!(
        ok,
        "the served certificate does not chain to pebble's root: {issuer}"
    );
    assert!(issuer.to_lowercase().contains("pebble"), "{issuer}");
    // curl: pebble's root is trusted, the local CA is not what signs it any more.
    assert_eq!(curl_exit(edge, dom, &root), 0);
    assert_eq!(curl_exit(edge, dom, &local_ca), 60);

    // Renew on demand: a new certificate with a new serial, from pebble again.
    let (s, b) = api
        .call("POST", &format!("/workspace/{ws}/domain/ssl/renew"), None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["domain"], dom, "{b}");
    assert_eq!(b["ssl"]["status"], "pending", "{b}");
    let d = api.settled(&ws).await;
    assert_eq!(d["sslStatus"], "active", "{d}");
    let (ok, serial2, _) = served(edge, dom, &root);
    assert!(ok);
    assert!(
        !serial2.is_empty() && serial2 != serial,
        "{serial} -> {serial2}"
    );

    // Bad input changes nothing: an invalid domain, a domain another workspace uses.
    for (body, status, code) in [
        (
            json!({"domain": "not a domain", "port": 8080}),
            422,
            "validation_error",
        ),
        (json!({"domain": dom, "port": 8080}), 409, "domain_taken"),
    ] {
        let (s, b) = api
            .call("POST", &format!("/workspace/{other}/domain"), Some(body))
            .await;
        assert_eq!(
            (s, b["code"].as_str().unwrap_or_default()),
            (status, code),
            "{b}"
        );
        assert_eq!(api.domain(&other).await, Value::Null);
    }
    let (s, b) = api
        .call(
            "POST",
            &format!("/workspace/{ws}/domain/check"),
            Some(json!({"domain": "-bad-.test"})),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(api.domain(&ws).await["customDomain"], dom);
    let (ok, serial3, _) = served(edge, dom, &root);
    assert!(ok);
    assert_eq!(serial3, serial2);
}

/// Without an ACME directory the local CA issues at once (status active).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acme_the_local_ca_issues_and_renews() {
    let data = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api, edge, local_ca) = start(data.path(), listener, None, |_| {}).await;
    let ws = api.workspace().await;
    let (s, b) = api
        .call(
            "POST",
            &format!("/workspace/{ws}/domain"),
            Some(json!({"domain": "local.test", "port": 80})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["ssl"]["status"], "active", "{b}");
    assert_eq!(b["ssl"]["issuer"], "Warren local CA", "{b}");
    let (ok, serial, _) = served(edge, "local.test", &local_ca);
    assert!(ok);
    let (s, b) = api
        .call("POST", &format!("/workspace/{ws}/domain/ssl/renew"), None)
        .await;
    assert_eq!((s, &b["ssl"]["status"]), (200, &json!("active")), "{b}");
    let (ok, serial2, _) = served(edge, "local.test", &local_ca);
    assert!(ok);
    assert_ne!(serial, serial2);
}

/// The background sweep renews an ACME certificate once it is within the renewal
/// window (here wider than pebble's validity, checked every second), with no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_renews_acme_certificates_within_the_window() {
    let data = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acme = start_acme(data.path(), listener.local_addr().unwrap().port());
    let (api, edge, _) = start(data.path(), listener, Some(&acme), |c| {
        c.renew_before_days = 365 * 100;
        c.renew_check_interval = Duration::from_secs(1);
    })
    .await;
    let root = data.path().join("pebble-root.pem");
    std::fs::write(&root, pebble_root(&acme).await).unwrap();
    let ws = api.workspace().await;
    let dom = "sweep.acme.test";
    let (s, b) = api
        .call(
            "POST",
            &format!("/workspace/{ws}/domain"),
            Some(json!({"domain": dom, "port": 8080})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // The first ACME certificate...
    let t = Instant::now();
    let first = loop {
        let (ok, serial, _) = served(edge, dom, &root);
        if ok {
            break serial;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no ACME certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // ... is replaced by the sweep, with no renew request.
    let t = Instant::now();
    loop {
        let (ok, serial, _) = served(edge, dom, &root);
        if ok && serial != first {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the sweep never renewed: {}",
            api.domain(&ws).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// WebSocket over HTTP/2 (RFC 8441): an extended CONNECT with `:protocol websocket`
/// reaches the workspace as an HTTP/1.1 upgrade (with a Sec-WebSocket-Key), the 101
/// comes back as a 200 on the stream, and bytes pass both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_reaches_the_workspace() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api, edge, local_ca) = start(data.path(), listener, None, |_| {}).await;
    // The workspace's side: an HTTP/1.1 WebSocket upgrade, then an upper-casing echo.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = upstream.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(String::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        *seen2.lock().unwrap() = String::from_utf8_lossy(&head).to_lowercase();
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: test\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
        }
    });
    let ws = api.workspace().await;
    let (s, b) = api
        .call(
            "POST",
            &format!("/workspace/{ws}/public-access"),
            Some(json!({"port": up_port, "slug": "chat"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");

    // An HTTP/2 client over TLS (ALPN h2), trusting the local CA.
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&local_ca).unwrap();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let host = format!("chat.{PREVIEW}");
    let tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls_pki_types::ServerName::try_from(host.clone()).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(format!("https://{host}:{}/chat?room=1", edge.port()))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = send.send_request(req).await.unwrap();
    if resp.status() != 200 {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        panic!(
            "extended CONNECT refused: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let up = hyper::upgrade::on(&mut resp).await.unwrap();
    let mut io = hyper_util::rt::TokioIo::new(up);
    io.write_all(b"hello over h2").await.unwrap();
    let mut got = vec![0u8; 13];
    io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"HELLO OVER H2");
    let head = seen.lock().unwrap().clone();
    assert!(head.starts_with("get /chat?room=1 http/1.1\r\n"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(head.contains(&format!("host: {host}")), "{head}");
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("sec-websocket-key: "))
        .unwrap_or_default()
        .trim()
        .to_string();
    assert_eq!(key.len(), 24, "{head}");
    assert!(key.ends_with("=="), "{head}");
}
