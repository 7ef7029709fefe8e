//! `warren`: runs workspaces (standalone or as a server) and is a client of the server.

mod client;
mod output;
mod run;
mod server;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use warren_node::NodeConfig;
use warren_vmm::AccelChoice;

#[derive(Parser)]
#[command(
    name = "warren",
    version,
    about = "Self-hostable cloud workspaces on microVMs"
)]
struct Cli {
    /// Log more (repeat for more detail). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Where a node keeps its state; shared by the commands that run workspaces locally.
#[derive(clap::Args, Clone, Debug)]
pub struct NodeArgs {
    /// Workspaces' disks, logs and state.
    #[arg(long, env = "WARREN_DATA_DIR", default_value = "/var/lib/warren")]
    pub data_dir: PathBuf,
    /// Kernel, initramfs and image cache.
    #[arg(long, env = "WARREN_CACHE_DIR", default_value = "/var/cache/warren")]
    pub cache_dir: PathBuf,
    /// auto (KVM when usable, else TCG), kvm or tcg.
    #[arg(long, env = "WARREN_ACCEL", default_value = "auto", value_parser = parse_accel)]
    pub accel: AccelChoice,
    /// The QEMU binary.
    #[arg(long, env = "WARREN_QEMU", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// The statically linked guest agent.
    #[arg(long, env = "WARREN_AGENT")]
    pub agent: Option<PathBuf>,
    /// Guest kernel: auto (our minimal kernel when scripts/build-kernel.sh has built it,
    /// else Debian's), debian, minimal, or the path of a vmlinux with everything built in.
    #[arg(long, env = "WARREN_KERNEL", default_value = "auto")]
    pub kernel: String,
    /// Address pool for workspaces (each gets a /30).
    #[arg(long, env = "WARREN_NETWORK_CIDR", default_value = "10.88.0.0/16")]
    pub network_cidr: String,
    /// Upstream DNS servers of Warren's resolver (ip or ip:port, comma separated);
    /// default: the host's /etc/resolv.conf.
    #[arg(long, env = "WARREN_DNS_UPSTREAM", value_delimiter = ',')]
    pub dns_upstream: Vec<String>,
    /// Interface workspaces' internet traffic leaves by (default: any but the taps).
    #[arg(long, env = "WARREN_UPLINK")]
    pub uplink: Option<String>,
    /// The master key wrapping workspaces' disk keys (64 hex digits, mode 0600);
    /// default DATA_DIR/master.key, created on first start. Keep a copy elsewhere:
    /// without it no encrypted disk can be opened.
    #[arg(long, env = "WARREN_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Hard CPU quota of a workspace's VMM per vCPU, in percent of one host CPU.
    #[arg(long, env = "WARREN_CPU_QUOTA_PCT", default_value_t = 100)]
    pub cpu_quota_pct: u32,
    /// Each workspace's writable disk: at most this many I/O operations per second
    /// (0: unlimited).
    #[arg(long, env = "WARREN_DISK_IOPS_LIMIT", default_value_t = 0)]
    pub disk_iops_limit: u64,
    /// Each workspace's writable disk: at most this many bytes per second (0:
    /// unlimited).
    #[arg(long, env = "WARREN_DISK_BPS_LIMIT", default_value_t = 0)]
    pub disk_bps_limit: u64,
    /// Start workspaces from a booted template of their image (true), or always boot
    /// cold (false).
    #[arg(long, env = "WARREN_TEMPLATES", default_value_t = true, action = clap::ArgAction::Set)]
    pub templates: bool,
}

impl NodeArgs {
    pub fn config(&self) -> NodeConfig {
        let mut c = NodeConfig {
            data_dir: self.data_dir.clone(),
            cache_dir: self.cache_dir.clone(),
            accel: self.accel,
            qemu_binary: self.qemu.clone(),
            kernel: self.kernel.clone(),
            network_cidr: self.network_cidr.clone(),
            dns_upstream: self.dns_upstream.clone(),
            uplink: self.uplink.clone(),
            master_key_file: self.master_key_file.clone(),
            cpu_quota_pct: self.cpu_quota_pct,
            disk_iops_limit: self.disk_iops_limit,
            disk_bps_limit: self.disk_bps_limit,
            templates: self.templates,
            ..NodeConfig::default()
        };
        if let Some(a) = &self.agent {
            c.agent_binary = a.clone();
        }
        c
    }
}

fn parse_accel(s: &str) -> Result<AccelChoice, String> {
    match s {
        "auto" => Ok(AccelChoice::Auto),
        "kvm" => Ok(AccelChoice::Kvm),
        "tcg" => Ok(AccelChoice::Tcg),
        other => Err(format!("{other:?}: use auto, kvm or tcg")),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Boot a workspace, run a command in it, stream its output, exit with its code, and
    /// destroy the workspace. Needs no server.
    Run(run::RunArgs),
    /// Build (or fetch) an image into the local cache.
    #[command(name = "image-build")]
    ImageBuild {
        /// A catalog name, an OCI layout or docker-save tarball path, or a registry
        /// reference.
        reference: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Run the server: REST API, node agent and data-plane gateway.
    Server(server::ServerArgs),
    /// Rotate the master key: re-wrap every workspace's disk key under a new one
    /// (run it while the server is stopped).
    #[command(name = "rotate-master-key")]
    RotateMasterKey {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Manage workspaces on a server.
    Workspace {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        cmd: client::WorkspaceCmd,
    },
    /// Run a command in a workspace on a server (same as `workspace exec`).
    Exec {
        #[command(flatten)]
        conn: client::Conn,
        #[command(flatten)]
        args: client::ExecArgs,
    },
    /// Files in a workspace on a server (same as `workspace files`).
    #[command(subcommand_value_name = "ACTION")]
    Files {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        cmd: client::FilesCmd,
    },
}

fn main() {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::ImageBuild { reference, node } => run::image_build(&reference, &node).await,
            Command::Server(args) => server::server(args).await,
            Command::RotateMasterKey { node } => {
                let n = warren_node::keys::rotate_master_key(&node.config())?;
                eprintln!("warren: master key rotated; {n} workspace keys re-wrapped");
                Ok(0)
            }
            Command::Workspace { conn, cmd } => client::workspace(&conn, cmd).await,
            Command::Exec { conn, args } => client::exec(&conn, args).await,
            Command::Files { conn, cmd } => client::files(&conn, cmd).await,
        }
    });
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("warren: {e:#}");
            std::process::exit(1);
        }
    }
}
