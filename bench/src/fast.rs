//! Fast start and saved state, measured in one run against a cold boot:
//! * create -> first exec result from a template vs. cold boot, p50/p95;
//! * pause to disk (save + VMM exit) and resume from disk -> first exec result;
//! * memory pause/resume -> first exec result;
//! * user snapshot (memory and a sparse copy of the disk) of that workspace, and its
//!   restore in place until the first exec answers.

use crate::{pct, spec};
use std::time::{Duration, Instant};
use warren_node::{BootReport, Node, NodeConfig, RunningWorkspace};
use warren_protocol::runtime::{ExecMode, ExecRequest};
use warren_sdk::RuntimeClient;

async fn exec_true(ws: &RunningWorkspace) -> anyhow::Result<()> {
    let rt = RuntimeClient::new(&ws.api_url(), &ws.api_token)?;
    let r = rt
        .exec(&ExecRequest {
            cmd: vec!["true".into()],
            exec_mode: Some(ExecMode::Direct),
            ..ExecRequest::default()
        })
        .await?;
    anyhow::ensure!(r.exit_code == Some(0), "exec failed: {r:?}");
    Ok(())
}

async fn create_exec(node: &Node, image: &str, memory_mb: u32) -> anyhow::Result<f64> {
    Ok(create_exec_report(node, image, memory_mb).await?.0)
}

/// create -> first exec result: (total ms, the create's report, the exec's ms).
async fn create_exec_report(
    node: &Node,
    image: &str,
    memory_mb: u32,
) -> anyhow::Result<(f64, BootReport, f64)> {
    let t0 = Instant::now();
    let ws = node
        .create(&spec(image, memory_mb), &warren_images::NoProgress)
        .await?;
    let t = Instant::now();
    exec_true(&ws).await?;
    let exec_ms = t.elapsed().as_secs_f64() * 1000.0;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let report = ws.report.clone();
    node.destroy(ws, Duration::ZERO).await?;
    Ok((ms, report, exec_ms))
}

fn node(cfg: &NodeConfig, templates: bool) -> anyhow::Result<(Node, tempfile::TempDir)> {
    let data = tempfile::tempdir()?;
    let node = Node::new(NodeConfig {
        data_dir: data.path().to_path_buf(),
        templates,
        ..cfg.clone()
    })?;
    Ok((node, data))
}

fn line(name: &str, v: &mut [f64]) -> (f64, f64) {
    let (p50, p95) = (pct(v, 50.0), pct(v, 95.0));
    println!("  {name:<46} p50 {p50:>6.0} ms   p95 {p95:>6.0} ms");
    (p50, p95)
}

pub async fn bench(
    base: &NodeConfig,
    image: &str,
    memory_mb: u32,
    runs: usize,
) -> anyhow::Result<()> {
    println!(
        "\n## fast start and saved state ({image}, {memory_mb} MiB, kernel {}, {runs} runs each, same run)",
        base.kernel
    );
    let (cold, _d1) = node(base, false)?;
    let (warm, _d2) = node(base, true)?;
    // Templates and a warm pool of one VM of the measured shape (see warren_node::warm).
    let shape = spec(image, memory_mb);
    let (pooled, _d3) = node(
        &NodeConfig {
            warm_pool: vec![warren_node::WarmSpec {
                image: image.into(),
                cpus: shape.cpus,
                memory_mb,
                disk_size_mb: shape.disk_size_mb,
                count: 1,
                die_with_owner: shape.die_with_owner,
            }],
            ..base.clone()
        },
        true,
    )?;
    // Image, guest assets and the template are built outside the measurement.
    create_exec(&cold, image, memory_mb).await?;
    let t = Instant::now();
    create_exec(&warm, image, memory_mb).await?;
    println!(
        "  first create with templates on (builds the template if missing): {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let mut c = Vec::new();
    let mut w = Vec::new();
    let mut p = Vec::new();
    let mut fills = Vec::new();
    let mut reports = Vec::new();
    let mut pool_reports = Vec::new();
    let mut pool_execs = Vec::new();
    let mut execs = Vec::new();
    // Interleaved, so all see the same machine load. The pool is refilled before each
    // of its creates (outside the measurement; the refill is timed on its own): what
    // a create sees when creates come no faster than the pool refills.
    for _ in 0..runs {
        c.push(create_exec(&cold, image, memory_mb).await?);
        let (ms, r, exec_ms) = create_exec_report(&warm, image, memory_mb).await?;
        w.push(ms);
        reports.push(r);
        execs.push(exec_ms);
        let t = Instant::now();
        anyhow::ensure!(
            pooled.fill_warm().await? == 1,
            "the warm pool did not refill"
        );
        fills.push(t.elapsed().as_secs_f64() * 1000.0);
        let (ms, r, exec_ms) = create_exec_report(&pooled, image, memory_mb).await?;
        pool_execs.push(exec_ms);
        anyhow::ensure!(
            r.engine.contains("warm pool"),
            "a pooled create did not take the warm VM: {}",
            r.engine
        );
        p.push(ms);
        pool_reports.push(r);
    }
    pooled.drain_warm().await;
    let (cold50, _) = line("cold boot: create -> first exec result", &mut c);
    let (tpl50, _) = line("template: create -> first exec result", &mut w);
    let (pool50, _) = line("warm pool: create -> first exec result", &mut p);
    line(
        "warm pool refill (template restore, boot, warm-up)",
        &mut fills,
    );
    println!(
        "  template / cold p50: {:.3}; warm pool / cold p50: {:.3} (target <= 0.200)",
        tpl50 / cold50,
        pool50 / cold50
    );
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "  warm pool create, mean ms: adopt (policy, identity, command) {:.0}, first exec {:.0}",
        mean(&pool_reports.iter().map(|r| r.total_ms).collect::<Vec<_>>()),
        mean(&pool_execs),
    );
    let m = |f: &dyn Fn(&BootReport) -> f64| {
        reports.iter().map(f).sum::<f64>() / reports.len().max(1) as f64
    };
    // The guest's part of Boot -> Ready is measured on its clock (config received ->
    // API up); the rest of the host's Boot -> Ready is the wait for the guest to read
    // its Boot.
    let guest = |r: &BootReport| {
        r.guest
            .api_ready_ms
            .saturating_sub(r.guest.config_received_ms) as f64
    };
    println!(
        "  template create, mean ms: host prep {:.0} (disk {:.0}, network {:.0}), restore {:.0}, \
         Boot -> Ready {:.0} (Boot reaching the agent {:.0}; guest: disk + root {:.0}, network {:.0}, \
         API {:.0}), first exec {:.0}; engine {}",
        m(&|r| r.image_ms + r.guest_assets_ms + r.disk_ms + r.network_ms),
        m(&|r| r.disk_ms),
        m(&|r| r.network_ms),
        m(&|r| r.vmm_start_ms),
        m(&|r| r.guest_boot_ms),
        m(&|r| (r.guest_boot_ms - guest(r)).max(0.0)),
        m(&|r| r
            .guest
            .root_mounted_ms
            .saturating_sub(r.guest.config_received_ms) as f64),
        m(&|r| r.guest.network_ms.saturating_sub(r.guest.root_mounted_ms) as f64),
        m(&|r| r.guest.api_ready_ms.saturating_sub(r.guest.network_ms) as f64),
        execs.iter().sum::<f64>() / execs.len().max(1) as f64,
        reports.first().map(|r| r.engine.as_str()).unwrap_or("-"),
    );

    // Pause to disk and back, on one workspace that has touched memory.
    let ws = warm
        .create(&spec(image, memory_mb), &warren_images::NoProgress)
        .await?;
    let rt = RuntimeClient::new(&ws.api_url(), &ws.api_token)?;
    // ~100 MiB of guest memory in use (tmpfs in the page cache), so the save is real.
    rt.exec(&ExecRequest {
        cmd: vec!["dd if=/dev/urandom of=/dev/shm/fill bs=1M count=100 2>/dev/null; sync".into()],
        exec_mode: Some(ExecMode::Shell),
        ..ExecRequest::default()
    })
    .await?;
    let id = ws.id.clone();
    let mut ws = Some(ws);
    let (mut save, mut resume, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
    let mut resume_parts = Vec::new();
    for _ in 0..runs.clamp(1, 10) {
        let t = Instant::now();
        let r = warm
            .suspend(ws.take().expect("running"))
            .await
            .map_err(|(e, _)| e)?;
        save.push(t.elapsed().as_secs_f64() * 1000.0);
        sizes.push(r.state_bytes as f64 / (1 << 20) as f64);
        let t = Instant::now();
        let (w2, r) = warm
            .resume_suspended(&warren_node::WorkspaceSpec {
                id: Some(id.clone()),
                persistent: true,
                ..spec(image, memory_mb)
            })
            .await?;
        let te = Instant::now();
        exec_true(&w2).await?;
        resume_parts.push((
            r.restore_ms,
            r.agent_ms,
            te.elapsed().as_secs_f64() * 1000.0,
        ));
        resume.push(t.elapsed().as_secs_f64() * 1000.0);
        ws = Some(w2);
    }
    let ws = ws.expect("running");
    println!(
        "  pause to disk of a {memory_mb} MiB workspace with ~100 MiB in use: state {:.0} MiB",
        sizes.iter().cloned().fold(0.0, f64::max)
    );
    line("pause to disk (save state, VMM gone)", &mut save);
    let (res50, _) = line("resume from disk -> first exec result", &mut resume);
    let n = resume_parts.len().max(1) as f64;
    println!(
        "  resume from disk, mean ms: load state {:.0}, agent answers {:.0}, first exec {:.0}",
        resume_parts.iter().map(|p| p.0).sum::<f64>() / n,
        resume_parts.iter().map(|p| p.1).sum::<f64>() / n,
        resume_parts.iter().map(|p| p.2).sum::<f64>() / n,
    );
    println!(
        "  resume from disk / template create p50: {:.3} (target <= 1.0)",
        res50 / tpl50
    );
    let mut mem = Vec::new();
    for _ in 0..runs.clamp(1, 10) {
        ws.vm.pause().await?;
        let t = Instant::now();
        ws.vm.resume().await?;
        exec_true(&ws).await?;
        mem.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    line("resume from memory pause -> first exec result", &mut mem);
    let mut snap = Vec::new();
    for _ in 0..runs.clamp(1, 10) {
        let t = Instant::now();
        warm.snapshot(&ws).await?;
        snap.push(t.elapsed().as_secs_f64() * 1000.0);
        ws.vm.resume().await?;
    }
    line("snapshot (memory + disk copy, vCPUs stopped)", &mut snap);
    let mut restore = Vec::new();
    let mut ws = Some(ws);
    for _ in 0..runs.clamp(1, 10) {
        let t = Instant::now();
        let w2 = warm
            .restore_snapshot(
                ws.take(),
                &warren_node::WorkspaceSpec {
                    id: Some(id.clone()),
                    persistent: true,
                    ..spec(image, memory_mb)
                },
            )
            .await?;
        exec_true(&w2).await?;
        restore.push(t.elapsed().as_secs_f64() * 1000.0);
        ws = Some(w2);
    }
    line(
        "restore the snapshot (in place) -> first exec result",
        &mut restore,
    );
    let ws = ws.expect("running");
    warm.destroy(ws, Duration::ZERO).await?;
    Ok(())
}
