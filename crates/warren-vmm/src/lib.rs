//! The VMM driver boundary.
//!
//! Callers (the node agent) describe a VM with a [`VmSpec`] and drive it through the
//! [`Vmm`] and [`Vm`] traits; nothing outside this crate knows QEMU's command line or
//! QMP. QEMU's `microvm` machine ([`qemu::QemuVmm`]) is the engine we ship; a Firecracker
//! or Cloud Hypervisor driver implements the same two traits.

pub mod accel;
pub mod confine;
pub mod qemu;
pub mod qmp;

use async_trait::async_trait;
use std::path::PathBuf;
use std::time::Duration;

pub use accel::{detect_accel, Accel, AccelChoice};

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("the VMM binary {0} was not found: install it (Debian: apt-get install qemu-system-x86) or set vmm.qemu_binary")]
    BinaryMissing(PathBuf),
    #[error("{what} not found at {path}")]
    Missing { what: &'static str, path: PathBuf },
    #[error("the VMM process exited during start-up ({status}); its log says: {log}")]
    StartFailed { status: String, log: String },
    #[error("the VMM did not open its control socket within {0:?}")]
    StartTimeout(Duration),
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("invalid VM spec: {0}")]
    Invalid(String),
    #[error("hardware KVM was requested but {0}")]
    KvmUnavailable(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, VmmError>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
    let context = context.into();
    move |source| VmmError::Io { context, source }
}

/// A disk attached as virtio-blk.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    /// Serial the guest sees in /sys/block/vdX/serial; how the agent tells disks apart.
    pub serial: String,
    /// `raw` or `qcow2`.
    pub format: String,
    /// The passphrase of a qcow2 image's LUKS encryption (a fork child's overlay).
    /// The engine hands it to the VMM on its standard input, never in a file or on
    /// a command line; at most one disk of a VM has one.
    pub key: Option<warren_protocol::control::Secret>,
}

/// A network interface backed by a host tap device.
#[derive(Debug, Clone, PartialEq)]
pub struct NetSpec {
    pub tap: String,
    pub mac: String,
}

/// Guest RAM backed by a file instead of anonymous memory (templates and their
/// clones, see `warren_node::template`).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryFile {
    /// The file (on tmpfs, e.g. /dev/shm) holding guest RAM.
    pub path: PathBuf,
    /// `true`: writes go to the file (the template being built). `false`: the file is
    /// mapped private copy-on-write: the clone reads the template's pages lazily and its
    /// writes stay its own; the file never changes.
    pub shared: bool,
}

/// Everything an engine needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Workspace id, for logs and process names.
    pub id: String,
    /// A directory the engine owns for this VM: sockets, logs, state.
    pub run_dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u32,
    pub memory_mb: u32,
    pub disks: Vec<DiskSpec>,
    pub net: Option<NetSpec>,
    /// Host end of the guest agent's control channel (a Unix socket the engine creates).
    pub control_socket: PathBuf,
    /// Where the guest's serial console is written.
    pub console_log: PathBuf,
    pub accel: Accel,
    /// Describe devices to the guest through ACPI. Kernels without
    /// VIRTIO_MMIO_CMDLINE_DEVICES (Debian's) need it; with it off, QEMU lists the
    /// virtio-mmio devices on the kernel command line instead, which boots faster.
    pub acpi: bool,
    /// Kill the VMM when the process that started it dies (standalone `warren run`).
    pub die_with_parent: bool,
    /// Guest RAM from a file; `None`: anonymous memory. With a file, snapshots leave
    /// its RAM out (QEMU's `x-ignore-shared`): they hold device state only, and a
    /// restore must map the same file.
    pub memory_file: Option<MemoryFile>,
    /// Restored from saved state, the vCPUs start only once the host is connected to
    /// the control channel (waited for a few seconds at most): the guest may send at
    /// once what it had queued when it was saved, and QEMU drops what a guest sends
    /// while nobody is connected.
    pub hold_for_control: bool,
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq)]
pub struct VmExit {
    /// The VMM's exit code, or `None` if a signal ended it.
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// An engine that can start VMs.
#[async_trait]
pub trait Vmm: Send + Sync {
    /// Which engine this is, for logs and the workspace's info.
    fn name(&self) -> &'static str;
    /// Boot a fresh VM.
    async fn boot(&self, spec: &VmSpec) -> Result<Box<dyn Vm>>;
    /// Start a VM from a snapshot taken by [`Vm::snapshot`] with the same spec shape.
    async fn restore(&self, spec: &VmSpec, snapshot: &std::path::Path) -> Result<Box<dyn Vm>>;
    /// Start a VM from a saved state read from `input` (typically the read end of a
    /// pipe the caller feeds, e.g. while decrypting a sealed file); `what` names the
    /// source in errors. The guest runs once the state is loaded.
    async fn restore_from(
        &self,
        spec: &VmSpec,
        input: std::os::fd::OwnedFd,
        what: &str,
    ) -> Result<Box<dyn Vm>>;
    /// Take control of a VM this engine started earlier (from another process, e.g.
    /// before a restart of the server), given its VMM pid.
    async fn attach(&self, spec: &VmSpec, pid: u32) -> Result<Box<dyn Vm>>;
}

/// A running (or paused) VM.
#[async_trait]
pub trait Vm: Send + Sync {
    /// The VMM process id.
    fn pid(&self) -> Option<u32>;
    /// Freeze the vCPUs; memory stays resident.
    async fn pause(&self) -> Result<()>;
    async fn resume(&self) -> Result<()>;
    /// Save memory and device state to `path` (the VM is paused while saving and stays
    /// paused after). The VMM never opens the path itself: it gets an open fd.
    async fn snapshot(&self, path: &std::path::Path) -> Result<()>;
    /// Save memory and device state into `out` (a file or the write end of a pipe the
    /// caller drains); the VMM closes its copy when the save ends, so a pipe's reader
    /// sees end of file. The VM is paused while saving and stays paused after.
    async fn snapshot_to(&self, out: std::os::fd::OwnedFd) -> Result<()>;
    /// Ask the VMM to exit now (no guest cooperation).
    async fn kill(&self) -> Result<()>;
    /// Wait until the VMM process has exited.
    async fn wait(&self) -> Result<VmExit>;
    /// [`Vm::wait`] with a deadline; `None` if it is still running.
    async fn wait_timeout(&self, timeout: Duration) -> Result<Option<VmExit>> {
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }
}
