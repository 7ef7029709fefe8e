//! Workspace networking on real VMs (issue 4): default deny, ingress and egress
//! rules, `allow_internet`, hostnames through Warren's resolver, air-gap, bandwidth
//! limits, live changes, and rules surviving a node restart.
//!
//! "The internet" is a network namespace this test creates, reached from the host
//! through a veth pair, with an HTTP server and a DNS server in it. Its addresses are
//! in TEST-NET ranges, so they count as public for `allow_internet`; no packet ever
//! leaves this machine.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};
use warren_netpolicy::NetworkPolicy;
use warren_node::{Node, NodeConfig, RunningWorkspace, WorkspaceSpec};
use warren_protocol::runtime::{ExecMode, ExecRequest};
use warren_sdk::RuntimeClient;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace standing in for the internet: `<prefix>.1` on the host's
/// veth end, `<prefix>.2` (HTTP on :8080, DNS on :53) and `<prefix>.4` inside.
pub struct Internet {
    pub ns: String,
    host_if: String,
    pub prefix: String,
}

impl Internet {
    pub fn new(tag: &str, prefix: &str) -> Internet {
        let pid = std::process::id();
        let ns = format!("wn{tag}{pid}");
        let host_if = format!("wh{tag}{pid}");
        let peer = format!("wp{tag}{pid}");
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &host_if]);
        ip(&["addr", "add", &format!("{prefix}.3/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        for a in [".2", ".4"] {
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{prefix}{a}/24"),
                "dev",
                &peer,
            ]);
        }
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        // So the namespace can try to reach workspaces directly (it must fail).
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "10.0.0.0/8",
            "via",
            &format!("{prefix}.1"),
        ]);
        let net = Internet {
            ns,
            host_if,
            prefix: prefix.to_string(),
        };
        net.serve_http();
        net.serve_dns();
        net
    }

    pub fn addr(&self, last: u8) -> String {
        format!("{}.{last}", self.prefix)
    }

    /// Run `f` on a thread that has entered the namespace (sockets it creates stay
    /// in the namespace).
    pub fn spawn_in<F: FnOnce() + Send + 'static>(&self, f: F) -> std::thread::JoinHandle<()> {
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let f_ns = std::fs::File::open(&path).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread with a namespace descriptor we hold.
            let r = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Can the namespace open a TCP connection to `addr`?
    pub fn connects_to(&self, addr: SocketAddr) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        self.spawn_in(move || {
            let ok = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok();
            let _ = tx.send(ok);
        })
        .join()
        .expect("join");
        rx.recv().unwrap_or(false)
    }

    /// GET / answers `outside:<peer address>`; GET /big answers 2 MiB; POST reads
    /// the body and answers its length.
    fn serve_http(&self) {
        self.spawn_in(|| {
            let l = TcpListener::bind("0.0.0.0:8080").expect("bind http");
            for c in l.incoming().flatten() {
                std::thread::spawn(move || handle_http(c));
            }
        });
    }

    /// api.example.test -> .2, other.example.test -> .4 (TTL 60), else NXDOMAIN.
    fn serve_dns(&self) {
        let prefix = self.prefix.clone();
        self.spawn_in(move || {
            let s = UdpSocket::bind("0.0.0.0:53").expect("bind dns");
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = s.recv_from(&mut buf) {
                let Some(q) = warren_netpolicy::dns::parse_query(&buf[..n]) else {
                    continue;
                };
                let ip: Option<Ipv4Addr> = match q.qname.as_str() {
                    "api.example.test" => format!("{prefix}.2").parse().ok(),
                    "other.example.test" => format!("{prefix}.4").parse().ok(),
                    _ => None,
                };
                let mut r =
                    warren_netpolicy::dns::empty_reply(&q, if ip.is_some() { 0 } else { 3 });
                if let (Some(ip), 1) = (ip, q.qtype) {
                    r[7] = 1;
                    r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
                    r.extend_from_slice(&60u32.to_be_bytes());
                    r.extend_from_slice(&4u16.to_be_bytes());
                    r.extend_from_slice(&ip.octets());
                }
                let _ = s.send_to(&r, peer);
            }
        });
    }
}

fn handle_http(mut c: TcpStream) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let peer = c
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut left = len;
    let mut chunk = vec![0u8; 65536];
    while left > 0 {
        match c.read(&mut chunk[..left.min(65536)]) {
            Ok(0) | Err(_) => return,
            Ok(n) => left -= n,
        }
    }
    let body: Vec<u8> = if head.starts_with("GET /big") {
        vec![b'x'; 2 << 20]
    } else if head.starts_with("POST") {
        format!("received:{len}\n").into_bytes()
    } else {
        format!("outside:{peer}\n").into_bytes()
    };
    let _ = write!(
        c,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(&body);
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        cmd: vec![cmd.into()],
        exec_mode: Some(ExecMode::Shell),
        timeout_seconds: Some(60),
        ..ExecRequest::default()
    }
}

async fn run(ws: &RunningWorkspace, cmd: &str) -> (i32, String) {
    let rt = RuntimeClient::new(&ws.api_url(), &ws.api_token).expect("client");
    let t = rt
        .exec(&sh(cmd))
        .await
        .expect("exec through the agent port");
    (
        t.exit_code.unwrap_or(-1),
        format!(
            "{}{}",
            t.stdout.unwrap_or_default(),
            t.stderr.unwrap_or_default()
        ),
    )
}

/// The body of `url` fetched from inside `ws`, or `None` if it cannot be reached.
async fn fetch(ws: &RunningWorkspace, url: &str) -> Option<String> {
    // (busybox's own `wget -T` crashes in this build: `timeout` bounds it instead.)
    let (code, out) = run(ws, &format!("timeout 3 wget -q -O - {url}")).await;
    (code == 0).then_some(out)
}

async fn reaches(from: &RunningWorkspace, to: &RunningWorkspace) -> bool {
    fetch(from, &format!("http://{}:8080/", to.guest_ip))
        .await
        .is_some_and(|b| b.contains(&format!("hi-{}", to.id)))
}

fn spec(network: NetworkPolicy) -> WorkspaceSpec {
    WorkspaceSpec {
        image: "busybox".into(),
        memory_mb: 256,
        disk_size_mb: 128,
        die_with_owner: true,
        persistent: true,
        network,
        ..WorkspaceSpec::default()
    }
}

fn policy(f: impl FnOnce(&mut NetworkPolicy)) -> NetworkPolicy {
    let mut p = NetworkPolicy::default();
    f(&mut p);
    p
}

/// Lease indices that have chains in the table.
fn indices_in_table() -> std::collections::BTreeSet<u32> {
    warren_netpolicy::nft::indices_in_table()
}

async fn boot(node: &Node, p: NetworkPolicy) -> RunningWorkspace {
    let ws = node
        .create(&spec(p), &warren_images::NoProgress)
        .await
        .expect("boot");
    let (code, out) = run(
        &ws,
        &format!(
            "mkdir -p /tmp/www && echo hi-{} > /tmp/www/index.html && httpd -p 8080 -h /tmp/www",
            ws.id
        ),
    )
    .await;
    assert_eq!(code, 0, "httpd: {out}");
    ws
}

fn node_with_upstream(data: &std::path::Path, net: &Internet) -> Node {
    Node::new(NodeConfig {
        dns_upstream: vec![format!("{}:53", net.addr(2))],
        ..node_config(data)
    })
    .expect("node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_hold_on_real_vms() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warren_netpolicy=debug")
        .with_test_writer()
        .try_init();
    let net = Internet::new("a", "198.51.100");
    let outside = format!("http://{}:8080/", net.addr(2));
    let data = tempfile::tempdir().unwrap();
    let node = node_with_upstream(data.path(), &net);
    let (a, b, c) = tokio::join!(
        boot(&node, NetworkPolicy::default()),
        boot(&node, NetworkPolicy::default()),
        boot(&node, NetworkPolicy::default())
    );
    let (a_ip, b_ip, c_ip) = (
        a.guest_ip.to_string(),
        b.guest_ip.to_string(),
        c.guest_ip.to_string(),
    );

    // Default: the internet is reachable (masqueraded), no workspace is.
    let body = fetch(&a, &outside)
        .await
        .expect("default reaches the internet");
    assert_eq!(
        body.trim(),
        format!("outside:{}", net.addr(1)),
        "masqueraded"
    );
    assert!(!reaches(&a, &b).await, "default deny between workspaces");
    let b_http: SocketAddr = format!("{b_ip}:8080").parse().unwrap();
    assert!(!net.connects_to(b_http), "the outside reaches no workspace");
    assert!(
        TcpStream::connect_timeout(&b_http, Duration::from_secs(2)).is_err(),
        "the host reaches the agent port only"
    );

    // A reaches B only when B lists A (a live change, no restart).
    node.set_network(&b, &policy(|p| p.ingress = vec![a_ip.clone()]))
        .unwrap();
    assert!(reaches(&a, &b).await, "B lists A");
    assert!(!reaches(&c, &b).await, "B does not list C");

    // A sandbox with egress [B] reaches B and nothing else.
    node.set_network(
        &b,
        &policy(|p| p.ingress = vec![a_ip.clone(), c_ip.clone()]),
    )
    .unwrap();
    node.set_network(
        &a,
        &policy(|p| p.ingress = vec![c_ip.clone(), b_ip.clone()]),
    )
    .unwrap();
    node.set_network(&c, &policy(|p| p.egress = vec![b_ip.clone()]))
        .unwrap();
    assert!(reaches(&c, &b).await, "sandbox reaches its data workspace");
    assert!(!reaches(&c, &a).await, "sandbox reaches no other workspace");
    assert!(
        fetch(&c, &outside).await.is_none(),
        "sandbox reaches no internet"
    );

    // allow_internet: false cannot reach the outside host; workspaces still can.
    node.set_network(
        &a,
        &policy(|p| {
            p.ingress = vec![c_ip.clone(), b_ip.clone()];
            p.allow_internet = false;
        }),
    )
    .unwrap();
    assert!(fetch(&a, &outside).await.is_none(), "allow_internet false");
    assert!(reaches(&a, &b).await, "other workspaces stay reachable");

    // Hostnames: only the allowed name resolves, and only its answer is reachable.
    node.set_network(&c, &policy(|p| p.egress = vec!["api.example.test".into()]))
        .unwrap();
    assert!(
        fetch(&c, &outside).await.is_none(),
        "not reachable before it was resolved"
    );
    let (code, out) = run(&c, "nslookup -type=a other.example.test").await;
    assert!(
        code != 0 || !out.contains(&net.addr(4)),
        "other name: {out}"
    );
    let (code, out) = run(&c, "nslookup -type=a api.example.test").await;
    assert!(
        code == 0 && out.contains(&net.addr(2)),
        "allowed name: {out}"
    );
    let body = fetch(&c, &outside).await.expect("reachable once resolved");
    assert!(body.starts_with("outside:"));
    let by_name = fetch(&c, "http://api.example.test:8080/").await;
    assert!(
        by_name.is_some_and(|b| b.starts_with("outside:")),
        "the allowed name works by name too"
    );
    assert!(
        fetch(&c, &format!("http://{}:8080/", net.addr(4)))
            .await
            .is_none(),
        "an address that was not resolved stays closed"
    );
    let (code, out) = run(&a, "nslookup -type=a api.example.test").await;
    assert!(
        code != 0 || !out.contains(&net.addr(2)),
        "A (no internet) resolves nothing: {out}"
    );

    // Rules hold across a node restart; a lost rule set is rebuilt from the records.
    let (a_idx, a_id) = (
        a.tap().trim_start_matches("wt").parse::<u32>().unwrap(),
        a.id.clone(),
    );
    let (b_id, c_id) = (b.id.clone(), c.id.clone());
    let a_policy = a.network();
    let b_policy = b.network();
    let c_policy = c.network();
    drop((a, b, c));
    drop(node);
    let node = node_with_upstream(data.path(), &net);
    warren_netpolicy::nft::run_nft(&warren_netpolicy::nft::removal_script(a_idx)).unwrap();
    assert!(!indices_in_table().contains(&a_idx), "A's rules are gone");
    node.pool().reconcile_firewall();
    assert!(indices_in_table().contains(&a_idx), "A's rules are rebuilt");
    let adopt = |id: &str, p: &NetworkPolicy| WorkspaceSpec {
        id: Some(id.to_string()),
        ..spec(p.clone())
    };
    let a = node
        .adopt(&adopt(&a_id, &a_policy))
        .await
        .unwrap()
        .expect("A runs");
    let b = node
        .adopt(&adopt(&b_id, &b_policy))
        .await
        .unwrap()
        .expect("B runs");
    let c = node
        .adopt(&adopt(&c_id, &c_policy))
        .await
        .unwrap()
        .expect("C runs");
    assert!(
        fetch(&a, &outside).await.is_none(),
        "A still has no internet"
    );
    assert!(reaches(&a, &b).await, "A still reaches B");
    assert!(!reaches(&c, &a).await, "C still reaches only its names");

    // Air-gapped: reaches nothing, nothing reaches it, no DNS; the host still execs.
    node.set_network(
        &b,
        &policy(|p| {
            p.air_gapped = true;
            p.ingress = vec![a_ip.clone(), c_ip.clone()];
        }),
    )
    .unwrap();
    assert!(
        !reaches(&a, &b).await,
        "nothing reaches an air-gapped workspace"
    );
    assert!(!net.connects_to(b_http), "not from outside either");
    assert!(
        fetch(&b, &outside).await.is_none(),
        "air-gapped reaches no internet"
    );
    assert!(!reaches(&b, &a).await, "air-gapped reaches no workspace");
    let (code, out) = run(&b, "nslookup -type=a api.example.test").await;
    assert!(
        code != 0 || !out.contains(&net.addr(2)),
        "air-gapped has no DNS: {out}"
    );
    assert_eq!(run(&b, "echo still-here").await.1.trim(), "still-here");

    // Bandwidth: a limit measurably holds, both ways.
    node.set_network(&a, &NetworkPolicy::default()).unwrap();
    let big = format!("http://{}:8080/big", net.addr(2));
    let timed = |ws: &RunningWorkspace, cmd: String| {
        let ws_url = ws.api_url();
        let token = ws.api_token.clone();
        async move {
            let rt = RuntimeClient::new(&ws_url, &token).unwrap();
            let t = Instant::now();
            let r = rt.exec(&sh(&cmd)).await.unwrap();
            assert_eq!(r.exit_code, Some(0), "{cmd}: {:?}", r.stderr);
            t.elapsed().as_secs_f64()
        }
    };
    let bytes = (2u64 << 20) as f64;
    let free = timed(&a, format!("wget -q -O /dev/null {big}")).await;
    let limit_kbps = 2000u64;
    node.set_network(
        &a,
        &policy(|p| {
            p.ingress_kbps = Some(limit_kbps);
            p.egress_kbps = Some(limit_kbps);
        }),
    )
    .unwrap();
    let limited = timed(&a, format!("wget -q -O /dev/null {big}")).await;
    run(
        &a,
        // busybox wget posts its file as a C string: no NUL bytes in it.
        "dd if=/dev/zero bs=1024 count=2048 2>/dev/null | tr '\\000' a > /tmp/blob",
    )
    .await;
    let up = timed(
        &a,
        format!("wget -q -O - --post-file /tmp/blob {outside} | grep -q received:2097152"),
    )
    .await;
    let limit_bps = (limit_kbps * 125) as f64;
    let (free_rate, down_rate, up_rate) = (bytes / free, bytes / limited, bytes / up);
    println!(
        "bandwidth: unlimited download {:.0} KB/s; limit {} kbit/s ({:.0} KB/s): download {:.0} KB/s, upload {:.0} KB/s",
        free_rate / 1000.0,
        limit_kbps,
        limit_bps / 1000.0,
        down_rate / 1000.0,
        up_rate / 1000.0
    );
    // The policer is a token bucket holding one second of the rate plus the burst
    // (nft's byte limits): in t seconds at most rate * (t + 1) + burst bytes pass.
    let burst = (limit_bps / 10.0).max(16384.0);
    let allowed = |t: f64| limit_bps * (t + 1.0) + burst;
    assert!(
        bytes <= allowed(limited),
        "download over the limit: {limited:.2}s"
    );
    assert!(bytes <= allowed(up), "upload over the limit: {up:.2}s");
    assert!(free_rate > down_rate, "the limit is what slowed it");

    // Destroy: every rule of the three goes with them.
    let idx: Vec<u32> = [&a, &b, &c]
        .iter()
        .map(|w| w.tap().trim_start_matches("wt").parse().unwrap())
        .collect();
    for w in [a, b, c] {
        node.destroy(w, Duration::ZERO).await.unwrap();
    }
    let left = indices_in_table();
    assert!(
        idx.iter().all(|i| !left.contains(i)),
        "rules left: {left:?}"
    );
    assert_nothing_left(data.path(), &[a_id, b_id, c_id]);
}
