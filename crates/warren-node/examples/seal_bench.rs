//! What sealing saved memory costs: pause to disk and resume from disk of one
//! workspace with ~100 MiB of guest memory in use, on a node with disk encryption
//! (memory sealed, the default) and one without (memory saved in the clear, the
//! path every freeze took before sealing), interleaved in one run.
//!
//! `WARREN_AGENT=... cargo run --release -p warren-node --example seal_bench [runs]`

use std::time::{Duration, Instant};
use warren_node::{Node, NodeConfig, WorkspaceSpec};

fn p50(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `seal_bench crypto`: the sealing alone, 256 MiB memory to a file and back.
fn crypto_only() {
    let data = vec![0x5au8; 256 << 20];
    let key = warren_kms::DataKey::generate();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let p = dir.path().join("s");
    let mut f = std::fs::File::create(&p).unwrap();
    let t = Instant::now();
    warren_node::sealed::seal(&data[..], &mut f, &key, "x").unwrap();
    let seal = t.elapsed().as_secs_f64();
    let t = Instant::now();
    warren_node::sealed::open(&p, &key, "x")
        .unwrap()
        .unseal(std::io::sink())
        .unwrap();
    let unseal = t.elapsed().as_secs_f64();
    println!(
        "seal 256 MiB: {:.0} ms ({:.0} MiB/s, incl. write + fsync); unseal: {:.0} ms ({:.0} MiB/s)",
        seal * 1000.0,
        256.0 / seal,
        unseal * 1000.0,
        256.0 / unseal
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("crypto") {
        return crypto_only();
    }
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let agent = std::env::var_os("WARREN_AGENT").expect("set WARREN_AGENT");
    let mut nodes = Vec::new();
    for encrypt in [true, false] {
        let data = tempfile::tempdir().unwrap();
        let node = Node::new(NodeConfig {
            data_dir: data.path().to_path_buf(),
            cache_dir: "/var/cache/warren".into(),
            kernel: "auto".into(),
            agent_binary: agent.clone().into(),
            encrypt_disks: encrypt,
            ..NodeConfig::default()
        })
        .unwrap();
        let spec = WorkspaceSpec {
            image: "busybox".into(),
            memory_mb: 256,
            disk_size_mb: 256,
            die_with_owner: true,
            persistent: true,
            // ~100 MiB of guest memory in use (tmpfs), so the save is real.
            cmd: Some(vec![
                "sh".into(),
                "-c".into(),
                "dd if=/dev/urandom of=/dev/shm/fill bs=1M count=100 2>/dev/null; sleep 100000"
                    .into(),
            ]),
            ..WorkspaceSpec::default()
        };
        let ws = node
            .create(&spec, &warren_images::NoProgress)
            .await
            .unwrap();
        nodes.push((
            encrypt,
            node,
            data,
            spec,
            Some(ws),
            Vec::new(),
            Vec::new(),
            0u64,
        ));
    }
    // Let both guests fill their memory.
    tokio::time::sleep(Duration::from_secs(20)).await;
    for _ in 0..runs {
        for (_, node, _, spec, ws, save, resume, bytes) in nodes.iter_mut() {
            let w = ws.take().unwrap();
            let id = w.id.clone();
            let t = Instant::now();
            let r = node.suspend(w).await.map_err(|(e, _)| e).unwrap();
            save.push(t.elapsed().as_secs_f64() * 1000.0);
            *bytes = r.state_bytes;
            let t = Instant::now();
            let (w, rep) = node
                .resume_suspended(&WorkspaceSpec {
                    id: Some(id),
                    ..spec.clone()
                })
                .await
                .unwrap();
            resume.push(t.elapsed().as_secs_f64() * 1000.0);
            eprintln!(
                "resume: restore {:.0} ms, agent {:.0} ms",
                rep.restore_ms, rep.agent_ms
            );
            *ws = Some(w);
        }
    }
    for (encrypt, node, _data, _, ws, save, resume, bytes) in nodes.iter_mut() {
        println!(
            "{:<28} state {:>4} MiB  pause to disk p50 {:>5.0} ms  resume from disk (agent answers) p50 {:>5.0} ms",
            if *encrypt { "sealed (disk encrypted)" } else { "plain (encryption off)" },
            *bytes >> 20,
            p50(save),
            p50(resume),
        );
        if let Some(w) = ws.take() {
            let _ = node.destroy(w, Duration::ZERO).await;
        }
    }
}
