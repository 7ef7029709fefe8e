//! Networking through `warren server` (the binary): the network endpoints of the
//! `oblien` API change a running workspace's firewall at once, bad input is a 422 that
//! changes nothing, an outbound IP of this host is honoured, and the rules hold across
//! a kill -9 of the server and are rebuilt when it comes back.

mod common;
#[path = "support/internet.rs"]
mod internet;
#[path = "support/server.rs"]
mod server;

use internet::Internet;
use serde_json::{json, Value};
use server::*;
use std::path::Path;
use std::time::{Duration, Instant};
use warren_protocol::runtime::{ExecMode, ExecRequest};
use warren_sdk::RuntimeClient;

/// A server with the fake internet's DNS server as upstream.
fn start_server(data: &Path, upstream: &str) -> Server {
    // Debian's kernel: guest timers must work (see tests/network.rs).
    Server::start_with(data, &["--dns-upstream", upstream, "--kernel", "debian"])
}

impl Server {
    /// The agent of `id`, reached directly (the host always reaches the agent port):
    /// its URL and token.
    async fn agent(&self, id: &str) -> (String, String) {
        let b = self.raw_token(id).await;
        (
            b["url"].as_str().unwrap().to_string(),
            b["token"].as_str().unwrap().to_string(),
        )
    }
}

/// Run `cmd` in the workspace whose agent is `agent` (a fresh connection each time).
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

async fn fetch(rt: &(String, String), url: &str) -> Option<String> {
    let (code, out) = sh(rt, &format!("timeout 3 wget -q -O - {url}")).await;
    (code == 0).then_some(out)
}

/// Lease index of a workspace, from the firewall's host-wide records.
fn firewall_index(id: &str) -> Option<u32> {
    std::fs::read_dir("/run/warren/net/policy")
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .find(|r| r["workspace_id"] == id)
        .and_then(|r| r["attachment"]["index"].as_u64())
        .map(|i| i as u32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_endpoints_live_changes_and_restart() {
    // 198.51.100.0/24 like tests/network.rs (test binaries run one at a time). Not
    // 203.0.113.0/24 or 192.0.2.0/24: here those hold the package mirror and the
    // host's own uplink, and a connected route over them cuts the machine off.
    let net = Internet::new("s", "198.51.100");
    let outside = format!("http://{}:8080/", net.addr(2));
    let data = tempfile::tempdir().unwrap();
    let cleanup = KillVmsOnPanic::new(data.path(), internet::release_leases_of);
    let s = start_server(data.path(), &format!("{}:53", net.addr(2)));
    cleanup.track(&s);

    // Bad input: a 422 naming the field, and nothing is created.
    for (cfg, field) in [
        (
            json!({"egress": ["10.0.0.300"]}),
            "config.network_config.egress",
        ),
        (
            json!({"network_config": {"ingress": ["nope/8"]}}),
            "config.network_config.ingress",
        ),
        (
            json!({"egress": (0..300).map(|i| format!("10.1.{}.{}", i / 200, i % 200)).collect::<Vec<_>>()}),
            "config.network_config.egress",
        ),
    ] {
        let (st, b) = s
            .call(
                "POST",
                "/workspace",
                Some(json!({"image": "busybox", "config": cfg})),
            )
            .await;
        assert_eq!(st, 422, "{b}");
        assert_eq!(b["details"]["field"], field, "{b}");
    }
    let (_, list) = s.call("GET", "/workspace", None).await;
    assert_eq!(
        list["workspaces"].as_array().map(|a| a.len()),
        Some(0),
        "{list}"
    );

    // A (default) and B (no internet, admitting nobody yet).
    let small = |cfg: Value| json!({"image": "busybox", "memory_mb": 256, "disk_size_mb": 128, "config": cfg});
    let (st, a) = s.call("POST", "/workspace", Some(small(json!({})))).await;
    assert_eq!(st, 201, "{a}");
    let (st, b) = s
        .call(
            "POST",
            "/workspace",
            Some(small(json!({"network_config": {"allow_internet": false}}))),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let (a_id, b_id) = (
        a["workspace"]["id"].as_str().unwrap().to_string(),
        b["workspace"]["id"].as_str().unwrap().to_string(),
    );
    let a_ip = s.ready(&a_id, 120).await["internal_ip"]
        .as_str()
        .unwrap()
        .to_string();
    let b_ip = s.ready(&b_id, 120).await["internal_ip"]
        .as_str()
        .unwrap()
        .to_string();
    let (ra, rb) = (s.agent(&a_id).await, s.agent(&b_id).await);
    let (code, _) = sh(
        &rb,
        "mkdir -p /w && echo hi-b > /w/index.html && httpd -p 8080 -h /w",
    )
    .await;
    assert_eq!(code, 0);
    let b_url = format!("http://{b_ip}:8080/");

    let (st, n) = s
        .call("GET", &format!("/workspace/{b_id}/network"), None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(n["allow_internet"], false, "{n}");
    assert_eq!(n["ip"], b_ip.as_str());
    assert!(fetch(&rb, &outside).await.is_none(), "B has no internet");
    assert!(fetch(&ra, &outside).await.is_some(), "A has");
    assert!(fetch(&ra, &b_url).await.is_none(), "default deny");

    // A live change through the API; a bad one is refused and changes nothing.
    let path = format!("/workspace/{b_id}/network");
    let (st, e) = s
        .call("PATCH", &path, Some(json!({"egress": ["bad host name"]})))
        .await;
    assert_eq!(
        (st, e["details"]["field"].clone()),
        (422, json!("config.network_config.egress"))
    );
    let (st, n) = s
        .call("PATCH", &path, Some(json!({"private_link_ids": [a_id]})))
        .await;
    assert_eq!(st, 200, "{n}");
    assert_eq!(n["private_links"][0]["ip"], a_ip.as_str(), "{n}");
    assert!(
        fetch(&ra, &b_url).await.is_some_and(|b| b.contains("hi-b")),
        "B links A"
    );
    // The same through PUT /workspace/:id (config merged): also at once.
    let (st, e) = s
        .call(
            "PUT",
            &format!("/workspace/{b_id}"),
            Some(json!({"config": {"egress": [net.addr(2)]}})),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert!(
        fetch(&rb, &outside).await.is_some(),
        "an explicit egress entry is allowed"
    );
    let (st, n) = s.call("PATCH", &path, Some(json!({"egress": []}))).await;
    assert_eq!(st, 200, "{n}");
    assert_eq!(
        n["private_links"][0]["ip"],
        a_ip.as_str(),
        "links kept: {n}"
    );
    assert!(fetch(&rb, &outside).await.is_none(), "back to no internet");
    for (body, status) in [
        (json!({"public_access": true}), 422),
        (
            json!({"outbound_mode": "custom", "custom_proxy": {"host": "1.2.3.4", "port": 3128}}),
            501,
        ),
    ] {
        let (st, e) = s.call("PATCH", &path, Some(body)).await;
        assert_eq!(st, status, "{e}");
    }

    // An outbound IP of this host is honoured (SNAT); another address is refused.
    let (st, e) = s
        .call(
            "POST",
            &format!("/workspace/{a_id}/network/ip"),
            Some(json!({"ip": "198.51.100.200"})),
        )
        .await;
    assert_eq!(st, 422, "{e}");
    let (st, n) = s
        .call(
            "POST",
            &format!("/workspace/{a_id}/network/ip"),
            Some(json!({"ip": net.addr(3)})),
        )
        .await;
    assert_eq!(st, 200, "{n}");
    assert_eq!(
        fetch(&ra, &outside).await.unwrap_or_default().trim(),
        format!("outside:{}", net.addr(3))
    );

    // kill -9: the rules hold while the server is down.
    s.kill9();
    assert!(
        fetch(&rb, &outside).await.is_none(),
        "B still has no internet"
    );
    assert!(fetch(&ra, &b_url).await.is_some(), "A still reaches B");
    // Lose A's rules and leave a stale one behind; the restart rebuilds and cleans.
    let a_idx = firewall_index(&a_id).expect("A has a firewall record");
    warren_netpolicy::nft::run_nft(&warren_netpolicy::nft::removal_script(a_idx)).unwrap();
    let stale = 65001;
    warren_netpolicy::nft::run_nft(&format!(
        "{}{}",
        warren_netpolicy::nft::skeleton(None),
        warren_netpolicy::nft::workspace_script(
            &warren_netpolicy::Attachment {
                index: stale,
                tap: format!("wt{stale}"),
                host_ip: "10.99.0.1".parse().unwrap(),
                guest_ip: "10.99.0.2".parse().unwrap(),
                pool: "10.99.0.0/16".into(),
            },
            &warren_netpolicy::NetworkPolicy::default()
                .compile()
                .unwrap()
        )
    ))
    .unwrap();
    assert!(warren_netpolicy::nft::indices_in_table().contains(&stale));

    let s = start_server(data.path(), &format!("{}:53", net.addr(2)));
    cleanup.track(&s);
    let t0 = Instant::now();
    while !warren_netpolicy::nft::indices_in_table().contains(&a_idx) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "A's rules never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !warren_netpolicy::nft::indices_in_table().contains(&stale),
        "rules of no workspace are removed at start"
    );
    s.ready(&a_id, 120).await;
    s.ready(&b_id, 120).await;
    let (ra, rb) = (s.agent(&a_id).await, s.agent(&b_id).await);
    assert_eq!(
        fetch(&ra, &outside).await.unwrap_or_default().trim(),
        format!("outside:{}", net.addr(3)),
        "A's outbound IP is back"
    );
    assert!(
        fetch(&rb, &outside).await.is_none(),
        "B still has no internet"
    );
    assert!(fetch(&ra, &b_url).await.is_some(), "A still reaches B");

    // Delete: the rules go with the workspaces.
    let b_idx = firewall_index(&b_id).expect("B has a firewall record");
    for id in [&a_id, &b_id] {
        let (st, _) = s.call("DELETE", &format!("/workspace/{id}"), None).await;
        assert_eq!(st, 202);
    }
    let t0 = Instant::now();
    loop {
        let left = warren_netpolicy::nft::indices_in_table();
        if !left.contains(&a_idx) && !left.contains(&b_idx) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "rules left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(firewall_index(&a_id).is_none() && firewall_index(&b_id).is_none());
}
