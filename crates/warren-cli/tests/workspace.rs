//! Workspaces driven through the node agent and the runtime API, as the server will.

mod common;

use common::*;
use std::time::Duration;
use warren_node::{Node, WorkspaceSpec};
use warren_protocol::runtime::{ExecMode, ExecRequest, FileWriteRequest};
use warren_sdk::RuntimeClient;

fn spec() -> WorkspaceSpec {
    WorkspaceSpec {
        image: "busybox".into(),
        memory_mb: 256,
        disk_size_mb: 128,
        die_with_owner: true,
        ..WorkspaceSpec::default()
    }
}

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        cmd: vec![cmd.into()],
        exec_mode: Some(ExecMode::Shell),
        ..ExecRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_files_round_trip_byte_for_byte() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::new(node_config(data.path())).unwrap();
    let ws = node
        .create(&spec(), &warren_images::NoProgress)
        .await
        .unwrap();
    let rt = RuntimeClient::new(&ws.api_url(), &ws.api_token).unwrap();

    // Every byte value, then pseudo-random bytes: 1 MiB + 3.
    let mut blob: Vec<u8> = (0..=255u8).collect();
    let mut x: u32 = 12345;
    while blob.len() < (1 << 20) + 3 {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        blob.push((x >> 16) as u8);
    }
    let w = rt.upload("/root/dir/blob.bin", blob.clone()).await.unwrap();
    assert_eq!(w.size, blob.len() as u64);
    assert_eq!(rt.download("/root/dir/blob.bin").await.unwrap(), blob);
    // The guest sees the same bytes.
    let sum = rt.exec(&sh("sha256sum /root/dir/blob.bin")).await.unwrap();
    assert!(sum
        .stdout
        .unwrap_or_default()
        .starts_with(&sha256_hex(&blob)));
    // And a file the guest wrote comes back intact.
    rt.exec(&sh("printf '\\000\\001\\377tail' > /root/g.bin"))
        .await
        .unwrap();
    assert_eq!(
        rt.download("/root/g.bin").await.unwrap(),
        b"\x00\x01\xfftail"
    );

    let id = ws.id.clone();
    node.destroy(ws, Duration::ZERO).await.unwrap();
    assert_nothing_left(data.path(), &[id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workspaces_cannot_see_each_others_files() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::new(node_config(data.path())).unwrap();
    let s = spec();
    let (a, b) = tokio::join!(
        node.create(&s, &warren_images::NoProgress),
        node.create(&s, &warren_images::NoProgress)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.guest_ip, b.guest_ip);
    assert_ne!(a.api_token, b.api_token);
    let ra = RuntimeClient::new(&a.api_url(), &a.api_token).unwrap();
    let rb = RuntimeClient::new(&b.api_url(), &b.api_token).unwrap();

    ra.write(&FileWriteRequest {
        path: "/root/secret.txt".into(),
        content: "only in A".into(),
        ..FileWriteRequest::default()
    })
    .await
    .unwrap();
    assert_eq!(
        ra.read("/root/secret.txt").await.unwrap().content,
        "only in A"
    );
    let err = rb.read("/root/secret.txt").await.unwrap_err();
    assert!(err.to_string().contains("not_found"), "{err}");
    let ls = rb.exec(&sh("ls /root")).await.unwrap();
    assert_eq!(ls.stdout.as_deref(), Some(""));
    // A's token does not open B.
    let wrong = RuntimeClient::new(&b.api_url(), &a.api_token).unwrap();
    let err = wrong.exec(&sh("true")).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    let ids = vec![a.id.clone(), b.id.clone()];
    node.destroy(a, Duration::from_secs(5)).await.unwrap();
    node.destroy(b, Duration::ZERO).await.unwrap();
    assert_nothing_left(data.path(), &ids);
}
