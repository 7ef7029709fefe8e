//! Warren's boot benchmark. Prints figures; asserts nothing.
//!
//! * cold create -> first exec result: p50/p95 over N runs per image;
//! * where that time goes (VMM start, firmware + kernel to the agent's first
//!   instruction, module loading, boot config and root switch, network, API up, exec);
//! * host memory of one idle workspace (PSS of the VMM process; Warren runs no other
//!   per-workspace host process);
//! * wall time to boot K workspaces at once;
//! * fast start (template restore vs. cold boot), pause to disk and resume
//!   (see `fast.rs`).

mod fast;
mod fork;

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use warren_node::{BootReport, Node, NodeConfig, WorkspaceSpec};
use warren_protocol::runtime::{ExecMode, ExecRequest};
use warren_sdk::RuntimeClient;

#[derive(Parser)]
struct Args {
    /// Images to measure.
    #[arg(long, value_delimiter = ',', default_value = "busybox,debian-12")]
    images: Vec<String>,
    #[arg(long, default_value_t = 20)]
    runs: usize,
    #[arg(long, default_value_t = 10)]
    concurrent: usize,
    #[arg(long, default_value_t = 256)]
    memory_mb: u32,
    #[arg(long, env = "WARREN_CACHE_DIR", default_value = "/var/cache/warren")]
    cache_dir: PathBuf,
    #[arg(long, env = "WARREN_AGENT")]
    agent: Option<PathBuf>,
    /// Runs of the fast-start comparison (template vs. cold, pause to disk); 0 skips it.
    #[arg(long, default_value_t = 20)]
    fast_runs: usize,
    /// Guest kernels to measure and compare: minimal (scripts/build-kernel.sh builds
    /// it), debian, or paths; `none` runs only the fast-start section.
    #[arg(long, value_delimiter = ',', default_value = "minimal,debian")]
    kernels: Vec<String>,
    /// Children of the fork benchmark (fork of N); 0 skips it.
    #[arg(long, default_value_t = 10)]
    fork_count: usize,
    /// Guest memory of the forked workspace (and so of each child), MiB.
    #[arg(long, default_value_t = 256)]
    fork_memory_mb: u32,
}

struct Sample {
    total_ms: f64,
    exec_ms: f64,
    report: BootReport,
}

pub(crate) fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub(crate) fn spec(image: &str, memory_mb: u32) -> WorkspaceSpec {
    WorkspaceSpec {
        image: image.into(),
        memory_mb,
        disk_size_mb: 256,
        die_with_owner: true,
        ..WorkspaceSpec::default()
    }
}

async fn one(node: &Node, image: &str, memory_mb: u32) -> anyhow::Result<Sample> {
    let t0 = Instant::now();
    let ws = node
        .create(&spec(image, memory_mb), &warren_images::NoProgress)
        .await?;
    let t_exec = Instant::now();
    let rt = RuntimeClient::new(&ws.api_url(), &ws.api_token)?;
    let r = rt
        .exec(&ExecRequest {
            cmd: vec!["true".into()],
            exec_mode: Some(ExecMode::Direct),
            ..ExecRequest::default()
        })
        .await?;
    anyhow::ensure!(r.exit_code == Some(0), "exec failed: {r:?}");
    let exec_ms = t_exec.elapsed().as_secs_f64() * 1000.0;
    let total_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let report = ws.report.clone();
    node.destroy(ws, Duration::ZERO).await?;
    Ok(Sample {
        total_ms,
        exec_ms,
        report,
    })
}

fn pss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn bench_kernel(args: &Args, kernel: String) -> anyhow::Result<Vec<(String, f64)>> {
    let label = kernel.clone();
    let data = tempfile::tempdir()?;
    let mut cfg = NodeConfig {
        data_dir: data.path().to_path_buf(),
        cache_dir: args.cache_dir.clone(),
        kernel,
        // Cold boots here; templates are measured in `fast`.
        templates: false,
        ..NodeConfig::default()
    };
    if let Some(a) = &args.agent {
        cfg.agent_binary = a.clone();
    }
    let node = Node::new(cfg)?;
    let (accel, why) = node.accel();
    println!("\n## kernel: {label}\naccelerator: {accel} ({why})");
    let mut p50s = Vec::new();
    for image in &args.images {
        // Build the image and the guest assets outside the measurement.
        one(&node, image, args.memory_mb)
            .await
            .with_context(|| format!("warm-up boot of {image}"))?;
        let mut samples = Vec::new();
        for _ in 0..args.runs {
            samples.push(one(&node, image, args.memory_mb).await?);
        }
        let mut totals: Vec<f64> = samples.iter().map(|s| s.total_ms).collect();
        let p50 = pct(&mut totals, 50.0);
        let p95 = pct(&mut totals, 95.0);
        p50s.push((image.clone(), p50));
        println!(
            "\n### {image}: cold create -> first exec result, {} runs\np50 {p50:.0} ms   p95 {p95:.0} ms",
            args.runs
        );
        let r = |f: &dyn Fn(&Sample) -> f64| mean(samples.iter().map(f));
        let g = |f: &dyn Fn(&BootReport) -> f64| r(&|s: &Sample| f(&s.report));
        let vmm = g(&|b| b.vmm_start_ms);
        let boot = g(&|b| b.guest_boot_ms);
        let agent_start = g(&|b| b.guest.agent_start_ms as f64);
        let modules = g(&|b| (b.guest.modules_loaded_ms - b.guest.agent_start_ms) as f64);
        let config = g(&|b| {
            b.guest
                .root_mounted_ms
                .saturating_sub(b.guest.modules_loaded_ms) as f64
        });
        let net = g(&|b| b.guest.network_ms.saturating_sub(b.guest.root_mounted_ms) as f64);
        let api = g(&|b| b.guest.api_ready_ms.saturating_sub(b.guest.network_ms) as f64);
        let firmware = boot - g(&|b| b.guest.api_ready_ms as f64);
        let host_prep = g(&|b| b.image_ms + b.guest_assets_ms + b.disk_ms + b.network_ms);
        let exec = r(&|s| s.exec_ms);
        let total = r(&|s| s.total_ms);
        println!("breakdown (mean ms, share of the mean total {total:.0} ms):");
        for (name, v) in [
            ("host prep (image lookup, disk, tap)", host_prep),
            ("QEMU start (spawn -> QMP up)", vmm),
            ("firmware + channel latency", firmware),
            (
                "kernel init (to the agent's first instruction)",
                agent_start,
            ),
            ("module loading", modules),
            ("boot config + disks + overlay + switch root", config),
            ("network setup", net),
            ("API listener up", api),
            ("first exec (HTTP round trip, spawn `true`)", exec),
        ] {
            println!("  {name:<50} {v:>7.1}  {:>5.1}%", 100.0 * v / total);
        }
    }

    // Memory of one idle workspace.
    let image = args
        .images
        .first()
        .cloned()
        .unwrap_or_else(|| "busybox".into());
    let ws = node
        .create(&spec(&image, args.memory_mb), &warren_images::NoProgress)
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(pss) = ws.vm.pid().and_then(pss_kib) {
        println!(
            "\nidle {image} workspace ({} MiB guest): VMM PSS {:.1} MiB (no other per-workspace host process)",
            args.memory_mb,
            pss as f64 / 1024.0
        );
    }
    node.destroy(ws, Duration::ZERO).await?;

    // K at once.
    let t = Instant::now();
    let futs = (0..args.concurrent).map(|_| one(&node, &image, args.memory_mb));
    let results = futures::future::join_all(futs).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    println!(
        "{} {image} workspaces booted concurrently (create -> exec -> destroy): {:.0} ms wall, {ok}/{} ok",
        args.concurrent,
        t.elapsed().as_secs_f64() * 1000.0,
        args.concurrent
    );
    for r in results {
        r?;
    }
    Ok(p50s)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("# Warren boot benchmark");
    let mut all = Vec::new();
    // `--kernels none`: only the fast-start section.
    for k in args.kernels.iter().filter(|k| k.as_str() != "none") {
        all.push((k.clone(), bench_kernel(&args, k.clone()).await?));
    }
    if args.fast_runs > 0 {
        let data = tempfile::tempdir()?;
        let mut cfg = NodeConfig {
            data_dir: data.path().to_path_buf(),
            cache_dir: args.cache_dir.clone(),
            // What a server boots by default (today our minimal kernel when built).
            kernel: "auto".into(),
            ..NodeConfig::default()
        };
        if let Some(a) = &args.agent {
            cfg.agent_binary = a.clone();
        }
        let image = args
            .images
            .first()
            .cloned()
            .unwrap_or_else(|| "busybox".into());
        fast::bench(&cfg, &image, args.memory_mb, args.fast_runs).await?;
    }
    if args.fork_count > 0 {
        let data = tempfile::tempdir()?;
        let mut cfg = NodeConfig {
            data_dir: data.path().to_path_buf(),
            cache_dir: args.cache_dir.clone(),
            kernel: "auto".into(),
            ..NodeConfig::default()
        };
        if let Some(a) = &args.agent {
            cfg.agent_binary = a.clone();
        }
        let image = args
            .images
            .first()
            .cloned()
            .unwrap_or_else(|| "busybox".into());
        fork::bench(&cfg, &image, args.fork_memory_mb, args.fork_count).await?;
    }
    if all.len() > 1 {
        println!("\n## kernels compared (p50 cold create -> first exec result)");
        let (base_name, base) = &all[all.len() - 1];
        for (name, p50s) in &all {
            for ((img, p), (_, b)) in p50s.iter().zip(base.iter()) {
                println!(
                    "  {name:<10} {img:<12} {p:>6.0} ms   ratio to {base_name}: {:.2}",
                    p / b
                );
            }
        }
    }
    Ok(())
}
