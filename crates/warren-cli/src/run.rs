//! `warren run`: a one-shot workspace, standalone.

use crate::NodeArgs;
use anyhow::Context;
use std::time::Duration;
use warren_node::{Node, WorkspaceSpec};
use warren_protocol::runtime::{ExecMode, ExecRequest};
use warren_sdk::RuntimeClient;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Image: a catalog name (busybox, debian-12, python-3.11, node-18, postgres-15), an
    /// OCI layout or docker-save tarball, or a registry reference.
    #[arg(long, default_value = "debian-12")]
    pub image: String,
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    #[arg(long = "memory-mb", default_value_t = 512)]
    pub memory_mb: u32,
    #[arg(long = "disk-mb", default_value_t = 1024)]
    pub disk_mb: u64,
    /// KEY=VALUE, repeatable.
    #[arg(long = "env", short = 'e', value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory for the command.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Kill the command after this many seconds (exit code 124).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Print where boot time went, as JSON on stderr.
    #[arg(long)]
    pub timings: bool,
    #[command(flatten)]
    pub node: NodeArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty name"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let config = args.node.config();
    let node = Node::new(config).context("cannot set up this host to run workspaces")?;
    warren_node::reconcile::reconcile(
        &node.config.data_dir,
        node.pool(),
        warren_node::reconcile::Scope::Temporary,
        &|_| false,
    );
    let spec = WorkspaceSpec {
        image: args.image.clone(),
        cpus: args.cpus,
        memory_mb: args.memory_mb,
        disk_size_mb: args.disk_mb,
        env: args.env.clone(),
        die_with_owner: true,
        ..WorkspaceSpec::default()
    };
    node.validate(&spec)?;
    let progress = warren_images::BarProgress::new();
    let ws = tokio::select! {
        r = node.create(&spec, &progress) => r?,
        _ = tokio::signal::ctrl_c() => return Ok(130),
    };
    progress.finish("");
    if args.timings {
        eprintln!("{}", serde_json::to_string(&ws.report)?);
    }
    let client = RuntimeClient::new(&ws.api_url(), &ws.api_token)?;
    let req = ExecRequest {
        cmd: args.cmd.clone(),
        exec_mode: Some(ExecMode::Auto),
        timeout_seconds: args.timeout,
        cwd: args.cwd.clone(),
        // Streamed tasks keep stdin open for later input unless given one; a
        // one-shot command gets an empty stdin, so `cat` and friends see EOF.
        stdin: Some(String::new()),
        ..ExecRequest::default()
    };
    let result = tokio::select! {
        r = client.exec_stream(&req, crate::output::print_exec_event) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
        exit = ws.vm.wait() => {
            let _ = exit;
            Some(Err(warren_sdk::SdkError::Decode(format!(
                "the workspace's VM ended while the command ran; boot log: {}",
                ws.console_log().display()
            ))))
        }
    };
    // A stream cut off because the VM went away is the VM's story, not the HTTP one.
    let result = match result {
        Some(Err(e)) => match ws.vm.wait_timeout(Duration::from_secs(3)).await {
            Ok(Some(_)) => Some(Err(warren_sdk::SdkError::Decode(format!(
                "the workspace's VM ended while the command ran ({e}); boot log: {}",
                ws.console_log().display()
            )))),
            _ => Some(Err(e)),
        },
        other => other,
    };
    // A command killed because the guest powered off ends its stream like any other
    // exit; the guest said it was shutting down before it signalled its processes.
    let result = match result {
        Some(Ok(exit)) if guest_shutting_down(&ws).await => {
            Some(Err(warren_sdk::SdkError::Decode(format!(
                "the workspace's VM ended while the command ran (the guest powered off; the command's exit code was {})",
                exit.exit_code
            ))))
        }
        other => other,
    };
    let id = ws.id.clone();
    node.destroy(ws, Duration::ZERO)
        .await
        .with_context(|| format!("cleaning up workspace {id}"))?;
    match result {
        None => Ok(130),
        Some(Ok(exit)) => {
            if let Some(e) = exit.error {
                eprintln!("warren: {e}");
            }
            Ok(exit.exit_code)
        }
        Some(Err(e)) => Err(e.into()),
    }
}

pub async fn image_build(reference: &str, node: &NodeArgs) -> anyhow::Result<i32> {
    let node = Node::new(node.config())?;
    let progress = warren_images::BarProgress::new();
    let img = node.images().refresh(reference, &progress).await?;
    progress.finish("");
    println!("{} {} {}", img.reference, img.digest, img.rootfs.display());
    Ok(0)
}

async fn guest_shutting_down(ws: &warren_node::RunningWorkspace) -> bool {
    let mut events = ws.events.lock().await;
    while let Ok(m) = events.try_recv() {
        if m == warren_protocol::control::GuestMessage::ShuttingDown {
            return true;
        }
    }
    false
}
