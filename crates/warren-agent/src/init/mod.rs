//! `init` mode: the agent as PID 1 of a workspace VM.
//!
//! Order: API file systems and console, kernel modules (synchronously, before anything
//! else opens files or starts threads); then, in the async runtime: the child reaper,
//! the control port, the image mounted read-only (no secret: a template is saved after
//! it), `Hello` -> `Boot`, clock and entropy, the writable disk and overlay,
//! switch_root, hostname, network, the runtime API (`Ready`), the workspace command.
//! Afterwards the control loop answers pings and handles power-off. A failure before
//! `Ready` is reported as `BootFailed` and the VM stays up: PID 1 never exits.

mod adopt;
mod cmd;
mod fork;

/// Label of the workload that runs a supervised workspace command (set by the host).
pub const CMD_WORKLOAD_LABEL: &str = "warren.cmd";
pub mod dm;
pub mod modules;
pub mod mounts;
mod shutdown;
mod system;

use crate::api::{self, AppState};
use crate::control::{self, ControlTx};
use crate::net::{self, NetError};
use crate::reaper::Reaper;
use crate::time::boottime_ms;
use crate::workspace::{resolve_user_in, UserError, Workspace};
use mounts::MountError;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use warren_protocol::control::{
    BootConfig, BootTimings, DataDisk, GuestMessage, HostMessage, PROTOCOL_VERSION,
};

/// How long to wait for devices (the control port, disks, the NIC) to show up.
const DEVICE_WAIT: Duration = Duration::from_secs(2);
const BOOT_LOG: &str = "/run/warren/boot.log";
/// The cipher the host encrypts data disks with (`warren_node::disk::CIPHER`),
/// instantiated before `Hello` (see [`dm::warm_crypt`]).
const WARM_CIPHER: &str = "aes-xts-plain64";
/// Workload log files (rotated), in the workspace's writable layer.
const WORKLOAD_LOGS: &str = "/var/log/warren/workloads";
/// Workload definitions, saved so they start again at the next boot.
const WORKLOAD_STATE: &str = "/var/lib/warren/workloads.json";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}")]
    Mount(#[from] MountError),
    #[error("network: {0}")]
    Net(#[from] NetError),
    #[error("workspace user: {0}")]
    User(#[from] UserError),
    #[error("cannot start the child reaper: {0}")]
    Reaper(std::io::Error),
    #[error("runtime API: cannot listen on 0.0.0.0:{port}: {err}")]
    Bind { port: u16, err: std::io::Error },
}

/// Block forever (PID 1 must not exit).
pub fn idle_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// PID 1 hit a bug it cannot recover from: flush the disks and end the VM rather than
/// panic the kernel or hang.
pub fn panic_poweroff() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    idle_forever()
}

/// One short line per boot step, to the console and later to [`BOOT_LOG`].
#[derive(Default)]
struct BootLog {
    lines: Vec<String>,
}

impl BootLog {
    fn step(&mut self, msg: impl AsRef<str>) {
        let line = format!("[{:>6} ms] {}", boottime_ms(), msg.as_ref());
        tracing::info!("{line}");
        self.lines.push(line);
    }

    fn save(&self) {
        let _ = std::fs::create_dir_all("/run/warren");
        let _ = std::fs::write(BOOT_LOG, self.lines.join("\n") + "\n");
    }
}

/// Entry of `init` mode. Never returns.
pub fn run() -> ! {
    let mut timings = BootTimings {
        agent_start_ms: boottime_ms(),
        ..Default::default()
    };
    // Nothing may open a file before fds 0-2 exist, and /dev/console needs /dev.
    let mount_problems = mounts::mount_api_filesystems();
    crate::stdio::console();
    crate::logging::init();
    let mut log = BootLog::default();
    log.step(format!(
        "warren-agent {} starting as init (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    ));
    for p in &mount_problems {
        tracing::warn!("{p}");
    }
    log.step("api file systems mounted");

    let report = modules::load_all(Path::new(modules::MODULES_LIST));
    timings.modules_loaded_ms = boottime_ms();
    for f in &report.failed {
        tracing::error!("kernel module {f}");
    }
    log.step(format!(
        "kernel modules: {} loaded, {} already present, {} failed",
        report.loaded,
        report.already,
        report.failed.len()
    ));

    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async_main(timings, log)),
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}; idling");
            idle_forever()
        }
    }
}

/// Power-off requests from inside the guest: busybox `poweroff` (SIGUSR2), `halt`
/// (SIGUSR1) and `reboot` (SIGTERM). The host runs QEMU with -no-reboot, so all of them
/// end the VM.
struct PowerSignals {
    sigs: Vec<(Signal, &'static str)>,
}

impl PowerSignals {
    fn new() -> PowerSignals {
        let mut sigs = Vec::new();
        for (kind, name) in [
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::user_defined1(), "SIGUSR1"),
            (SignalKind::user_defined2(), "SIGUSR2"),
        ] {
            match signal(kind) {
                Ok(s) => sigs.push((s, name)),
                Err(e) => tracing::warn!("cannot handle {name}: {e}"),
            }
        }
        PowerSignals { sigs }
    }

    async fn recv(&mut self) -> &'static str {
        if self.sigs.is_empty() {
            return std::future::pending().await;
        }
        let futs = self
            .sigs
            .iter_mut()
            .map(|(s, name)| {
                let name = *name;
                Box::pin(async move {
                    s.recv().await;
                    name
                })
            })
            .collect::<Vec<_>>();
        futures_util::future::select_all(futs).await.0
    }
}

/// The next host message; pends forever once there is no channel.
async fn next_message(rx: &mut Option<mpsc::Receiver<HostMessage>>) -> HostMessage {
    if let Some(r) = rx.as_mut() {
        if let Some(m) = r.recv().await {
            return m;
        }
        tracing::warn!("control channel reader ended");
        *rx = None;
    }
    std::future::pending().await
}

/// What a successful boot hands to the steady state.
struct Booted {
    listener: tokio::net::TcpListener,
    workspace: Workspace,
}

async fn async_main(mut timings: BootTimings, mut log: BootLog) -> ! {
    let mut signals = PowerSignals::new();
    let reaper = Reaper::start();
    let (tx, mut rx) = match tokio::task::block_in_place(|| control::open(DEVICE_WAIT)) {
        Ok(port) => {
            log.step(format!("control port {}", port.path.display()));
            (port.tx, Some(port.rx))
        }
        Err(e) => {
            tracing::error!("{e}; cannot receive a boot configuration");
            (ControlTx::disconnected(), None)
        }
    };
    // Everything that holds no secret of a workspace happens before `Hello`, so a
    // template (saved when it says hello) has it done: the image is mounted and its
    // first binaries are in the page cache.
    // Before the image is mounted: dm cannot claim a device a file system holds.
    if let Some(image) = mounts::image_device() {
        match tokio::task::block_in_place(|| dm::warm_crypt(WARM_CIPHER, &image)) {
            Ok(()) => log.step(format!("dm-crypt warmed ({WARM_CIPHER})")),
            Err(e) => tracing::info!("dm-crypt warm-up: {e}"),
        }
    }
    match tokio::task::block_in_place(|| mounts::premount_image(DEVICE_WAIT)) {
        Ok(summary) => log.step(summary),
        Err(e) => tracing::warn!("image: {e} (trying again at boot)"),
    }
    tx.send(&GuestMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    });

    let mut data_fd: Option<OwnedFd> = None;
    let mut config = loop {
        tokio::select! {
            msg = next_message(&mut rx) => match msg {
                HostMessage::Boot { config } => break config,
                HostMessage::Ping { id } => tx.send(&GuestMessage::Pong { id }),
                // A template restored into a clone: its Boot follows and sets both.
                HostMessage::Resume { .. } => {}
                // Only a booted workspace is forked.
                HostMessage::Fork { .. } => tx.send(&GuestMessage::BootFailed {
                    error: "fork of a VM that has not booted".into(),
                }),
                HostMessage::Adopt { .. } => tx.send(&GuestMessage::BootFailed {
                    error: "adopt of a VM that has not booted".into(),
                }),
                HostMessage::Shutdown => shutdown::poweroff(&tx, None, "asked by the host").await,
                HostMessage::CmdExitSeen => {}
            },
            name = signals.recv() => shutdown::poweroff(&tx, None, name).await,
        }
    };
    timings.config_received_ms = boottime_ms();
    log.step(format!("boot config received for {}", config.workspace_id));

    let result = match reaper {
        Ok(r) => boot(&config, &mut timings, &mut log, &mut data_fd)
            .await
            .map(|b| (b, r)),
        Err(e) => Err(InitError::Reaper(e)),
    };
    // The disk key is in the kernel now; drop (and wipe) our copy.
    config.data_disk = DataDisk::Ext4;
    let mut api_token: Option<api::ApiToken> = None;
    // What a warm VM needs to become a workspace (`HostMessage::Adopt`).
    let mut adoptable: Option<(Arc<Workspace>, Reaper, Arc<crate::workloads::Workloads>)> = None;
    match result {
        Ok((booted, reaper)) => {
            let ws = Arc::new(booted.workspace);
            let state = AppState::new(
                &config.api_token,
                (*ws).clone(),
                reaper.clone(),
                Some(PathBuf::from(WORKLOAD_LOGS)),
                Some(PathBuf::from(WORKLOAD_STATE)),
            );
            let workloads = state.workloads.clone();
            api_token = Some(state.token.clone());
            adoptable = Some((ws.clone(), reaper.clone(), workloads.clone()));
            tokio::spawn(async move {
                if let Err(e) = api::serve(booted.listener, state).await {
                    tracing::error!("runtime API server stopped: {e}");
                }
            });
            tx.send(&GuestMessage::Ready {
                timings: timings.clone(),
            });
            log.step(format!(
                "ready: runtime API on port {} (boot took {} ms)",
                config.api_port,
                timings.api_ready_ms.saturating_sub(timings.agent_start_ms)
            ));
            log.save();
            if let Some(argv) = config.cmd.clone() {
                cmd::start(ws, reaper, argv, tx.clone());
            }
            // A supervised workspace command (the host made `cmd` with a restart
            // policy a workload with this label): its final exit is the command's.
            let mut exits = workloads.exits();
            let cmd_tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    match exits.recv().await {
                        Ok(e)
                            if e.labels
                                .get(CMD_WORKLOAD_LABEL)
                                .is_some_and(|v| v == "true") =>
                        {
                            tracing::info!(
                                exit_code = e.exit_code,
                                "supervised workspace command ended"
                            );
                            let cmd_tx = cmd_tx.clone();
                            tokio::spawn(async move {
                                cmd::report_exit(&cmd_tx, e.exit_code).await;
                            });
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
            // Workloads saved by earlier boots and those of the boot configuration.
            workloads.restore(&config.workloads);
            log.step(format!("workloads: {} defined", workloads.list().len()));
        }
        Err(e) => {
            tracing::error!("boot failed: {e}");
            log.step(format!("boot failed: {e}"));
            log.save();
            tx.send(&GuestMessage::BootFailed {
                error: e.to_string(),
            });
        }
    }

    loop {
        tokio::select! {
            msg = next_message(&mut rx) => match msg {
                HostMessage::Ping { id } => tx.send(&GuestMessage::Pong { id }),
                HostMessage::Shutdown => {
                    shutdown::poweroff(&tx, data_fd.as_ref(), "asked by the host").await
                }
                HostMessage::Boot { .. } => tracing::warn!("ignoring a second boot config"),
                HostMessage::CmdExitSeen => cmd::exit_seen(),
                HostMessage::Resume { clock_unix_ns, entropy_hex } => {
                    system::resumed(clock_unix_ns, &entropy_hex)
                }
                HostMessage::Fork { identity } => {
                    let r = tokio::task::block_in_place(|| {
                        fork::become_fork(&identity, api_token.as_ref())
                    });
                    if let Err(error) = r {
                        tracing::error!("fork: {error}");
                        tx.send(&GuestMessage::BootFailed { error });
                    }
                }
                HostMessage::Adopt { identity } => match &adoptable {
                    Some((ws, reaper, workloads)) => {
                        let problems = tokio::task::block_in_place(|| {
                            adopt::become_workspace(&identity, ws)
                        });
                        for p in problems {
                            tracing::warn!("adopt: {p}");
                        }
                        // Applied: said before anything of the workspace runs, so
                        // the host sees its command's exit after this.
                        tx.send(&GuestMessage::Pong { id: identity.ack });
                        if let Some(argv) = identity.cmd.clone() {
                            cmd::start(ws.clone(), reaper.clone(), argv, tx.clone());
                        }
                        // A warm VM's disk is new: it has no saved workloads, so this
                        // adds only the creator's.
                        workloads.restore(&identity.workloads);
                    }
                    None => tx.send(&GuestMessage::BootFailed {
                        error: "adopt of a VM whose boot failed".into(),
                    }),
                },
            },
            name = signals.recv() => shutdown::poweroff(&tx, data_fd.as_ref(), name).await,
        }
    }
}

async fn boot(
    config: &BootConfig,
    timings: &mut BootTimings,
    log: &mut BootLog,
    data_fd: &mut Option<OwnedFd>,
) -> Result<Booted, InitError> {
    if let Err(e) = system::set_clock(config.clock_unix_ns) {
        tracing::warn!("{e}");
    }
    match system::add_entropy(&config.entropy_hex) {
        Ok(n) => log.step(format!("clock set; {n} bytes of host entropy added")),
        Err(e) => tracing::warn!("entropy: {e}"),
    }

    let root =
        tokio::task::block_in_place(|| mounts::prepare_root(&config.data_disk, DEVICE_WAIT))?;
    log.step(&root.summary);
    *data_fd = root.data;
    let t = std::time::Instant::now();
    tokio::task::block_in_place(|| mounts::switch_root(Path::new(mounts::ROOT_DIR)))?;
    log.step(format!("switch_root took {} ms", t.elapsed().as_millis()));
    timings.root_mounted_ms = boottime_ms();
    log.step("switched into the workspace root");

    for p in system::set_hostname(Path::new("/"), &config.hostname) {
        tracing::warn!("hostname: {p}");
    }

    if let Err(e) = net::loopback_up() {
        tracing::warn!("lo: {e}");
    }
    if let Some(n) = &config.network {
        let dev = tokio::task::block_in_place(|| net::configure(n, DEVICE_WAIT))?;
        if !n.dns.is_empty() {
            if let Err(e) = net::write_resolv_conf(Path::new("/"), &n.dns) {
                tracing::warn!("/etc/resolv.conf: {e}");
            }
        }
        log.step(format!(
            "network: {dev} {}/{} via {} mtu {}",
            n.address, n.prefix_len, n.gateway, n.mtu
        ));
    }
    timings.network_ms = boottime_ms();

    let user = match config
        .user
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        Some(spec) => Some(resolve_user_in(spec, Path::new("/"))?),
        None => None,
    };
    let workdir = config
        .workdir
        .as_deref()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from);
    if let Some(w) = &workdir {
        if !w.exists() {
            if let Err(e) = std::fs::create_dir_all(w) {
                tracing::warn!("workdir {}: {e}", w.display());
            }
        }
    }
    let workspace = Workspace::new(Default::default(), workdir, user);
    workspace.set_env(config.env.clone(), &config.hostname);

    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], config.api_port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| InitError::Bind {
            port: config.api_port,
            err,
        })?;
    timings.api_ready_ms = boottime_ms();
    Ok(Booted {
        listener,
        workspace,
    })
}
