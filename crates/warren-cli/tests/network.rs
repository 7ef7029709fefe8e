//! Workspace networking on real VMs (issue 4): default deny, ingress and egress
//! rules, `allow_internet`, hostnames through Warren's resolver, air-gap, bandwidth
//! limits, live changes, and rules surviving a node restart.
//!
//! "The internet" is a network namespace this test creates, reached from the host
//! through a veth pair, with an HTTP server and a DNS server in it. Its addresses are
//! in TEST-NET ranges, so they count as public for `allow_internet`; no packet ever
//! leaves this machine.

mod common;
#[path = "support/internet.rs"]
mod internet;

use common::*;
use internet::Internet;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use warren_netpolicy::NetworkPolicy;
use warren_node::{Node, NodeConfig, RunningWorkspace, WorkspaceSpec};
use warren_protocol::runtime::{ExecMode, ExecRequest};
use warren_sdk::RuntimeClient;

/// On a failed test, release the leases this process holds (its VMs die with it).
struct ReleaseOnPanic;

impl Drop for ReleaseOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            internet::release_leases_of(&[std::process::id()]);
        }
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
        // Debian's kernel: the tests need working guest timers (TCP retransmits under a
        // policer), whatever state the minimal kernel build is in.
        kernel: "debian".into(),
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
    // The workspaces are persistent (to be adopted): a failed run releases their leases.
    let _cleanup = ReleaseOnPanic;
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

    // Air-gapping cuts a download already under way (a slow one: 100 KB/s).
    node.set_network(
        &b,
        &policy(|p| {
            p.ingress = vec![a_ip.clone(), c_ip.clone()];
            p.ingress_kbps = Some(800);
        }),
    )
    .unwrap();
    let big = format!("http://{}:8080/big", net.addr(2));
    let (code, _) = run(
        &b,
        &format!("wget -q -O /tmp/big {big} </dev/null >/dev/null 2>&1 &"),
    )
    .await;
    assert_eq!(code, 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let size = |ws: &RunningWorkspace| {
        let ws_url = ws.api_url();
        let token = ws.api_token.clone();
        async move {
            let rt = RuntimeClient::new(&ws_url, &token).unwrap();
            let r = rt.exec(&sh("wc -c < /tmp/big")).await.unwrap();
            r.stdout
                .unwrap_or_default()
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        }
    };
    let before = size(&b).await;
    assert!(before > 0, "the download started");

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
    let cut = size(&b).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = size(&b).await;
    println!("air-gap: download at {before} bytes before, {cut} then {later} after");
    assert!(
        later == cut && later < 2 << 20,
        "the open download stopped: {cut} -> {later}"
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
        "download over the limit: {limited:.2}s ({down_rate:.0} B/s)"
    );
    assert!(
        bytes <= allowed(up),
        "upload over the limit: {up:.2}s ({up_rate:.0} B/s)"
    );
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
