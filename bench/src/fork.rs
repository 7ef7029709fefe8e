//! Fork of N: one running workspace (with some memory of its own in use) forked into
//! N children (`warren_node::Node::fork`). Prints the wall time from the request
//! until every child has answered an exec, how long the parent's vCPUs stood still,
//! and the host memory the children take (PSS: pages shared copy-on-write with the
//! fork's memory file count once, split between the children).

use crate::{pct, pss_kib, spec};
use std::time::{Duration, Instant};
use warren_node::{Node, NodeConfig, RunningWorkspace, WorkspaceSpec};
use warren_protocol::runtime::{ExecMode, ExecRequest};
use warren_sdk::RuntimeClient;

async fn sh(ws: &RunningWorkspace, script: &str) -> anyhow::Result<()> {
    let rt = RuntimeClient::new(&ws.api_url(), &ws.api_token)?;
    let r = rt
        .exec(&ExecRequest {
            cmd: vec![script.into()],
            exec_mode: Some(ExecMode::Shell),
            ..ExecRequest::default()
        })
        .await?;
    anyhow::ensure!(r.exit_code == Some(0), "exec failed: {r:?}");
    Ok(())
}

pub async fn bench(
    base: &NodeConfig,
    image: &str,
    memory_mb: u32,
    count: usize,
) -> anyhow::Result<()> {
    println!("\n## fork of {count} ({image}, {memory_mb} MiB, templates on)");
    let data = tempfile::tempdir()?;
    let node = Node::new(NodeConfig {
        data_dir: data.path().to_path_buf(),
        templates: true,
        ..base.clone()
    })?;
    let parent = node
        .create(&spec(image, memory_mb), &warren_images::NoProgress)
        .await?;
    // Some state worth sharing: 32 MiB in tmpfs and a file on the disk.
    sh(
        &parent,
        "dd if=/dev/urandom of=/tmp/blob bs=1M count=32 2>/dev/null; echo x > /root/f",
    )
    .await?;
    let specs: Vec<WorkspaceSpec> = (0..count)
        .map(|_| WorkspaceSpec {
            id: Some(warren_node::workspace::new_workspace_id()),
            ..spec(image, memory_mb)
        })
        .collect();
    let t0 = Instant::now();
    let (kids, report) = node.fork(&parent, &specs).await?;
    let forked_ms = t0.elapsed().as_secs_f64() * 1000.0;
    for k in &kids {
        sh(k, "test -f /root/f && test -s /tmp/blob").await?;
    }
    let all_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let mut child_ms = report.child_ms.clone();
    let pss: Vec<u64> = kids
        .iter()
        .filter_map(|k| k.vm.pid().and_then(pss_kib))
        .collect();
    let parent_pss = parent.vm.pid().and_then(pss_kib).unwrap_or(0);
    println!("  fork of {count} -> every child answered exec       {all_ms:>7.0} ms");
    println!(
        "    node.fork returned after                        {forked_ms:>7.0} ms ({} memory)",
        if report.shared_memory {
            "shared copy-on-write"
        } else {
            "copied per child"
        }
    );
    println!(
        "    parent's vCPUs stopped                          {:>7.0} ms (disk copy {:.0} ms, memory {:.0} ms)",
        report.parent_paused_ms, report.disk_copy_ms, report.memory_ms
    );
    println!(
        "    per child (restore + new identity)              p50 {:>5.0} ms   p95 {:>5.0} ms",
        pct(&mut child_ms, 50.0),
        pct(&mut child_ms, 95.0)
    );
    println!(
        "    host memory: children PSS total {} MiB (mean {} MiB each), parent PSS {} MiB",
        pss.iter().sum::<u64>() / 1024,
        pss.iter().sum::<u64>() / 1024 / pss.len().max(1) as u64,
        parent_pss / 1024
    );
    for k in kids {
        node.destroy(k, Duration::ZERO).await?;
    }
    node.destroy(parent, Duration::ZERO).await?;
    Ok(())
}
