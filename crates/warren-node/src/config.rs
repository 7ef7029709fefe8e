//! The node's configuration: one typed struct.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use warren_vmm::AccelChoice;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// Workspaces' disks, run directories and logs.
    pub data_dir: PathBuf,
    /// Downloaded and built artifacts that can be rebuilt: kernel, initramfs, images.
    pub cache_dir: PathBuf,
    /// Host-wide runtime state (address leases); on tmpfs, so a host reboot clears it
    /// together with the taps it describes.
    pub run_dir: PathBuf,
    pub qemu_binary: PathBuf,
    pub accel: AccelChoice,
    /// The statically linked guest agent that becomes /init.
    pub agent_binary: PathBuf,
    /// Which guest kernel to boot: `auto` (ours, built by scripts/build-kernel.sh, when
    /// it is built with ACPI; else Debian's), `debian`, `minimal`, or a vmlinux path.
    pub kernel: String,
    /// A kernel given by path is PVM-capable (only then may a PVM /dev/kvm be used).
    pub kernel_pvm_capable: bool,
    /// Addresses for workspaces: each gets a /30 (host end .1, guest .2).
    pub network_cidr: String,
    /// Upstream servers of Warren's DNS resolver (`ip` or `ip:port`), which answers
    /// each workspace on its tap's host address; empty: the host's /etc/resolv.conf.
    #[serde(alias = "dns_servers")]
    pub dns_upstream: Vec<String>,
    /// The interface workspaces' internet traffic leaves by (masquerade);
    /// `None`: any interface that is not a workspace's tap.
    pub uplink: Option<String>,
    pub debian_mirror: String,
    /// Upper bounds a workspace may ask for.
    pub max_cpus: u32,
    pub max_memory_mb: u32,
    pub max_disk_mb: u64,
    /// How long to wait for a booting agent.
    pub boot_timeout_secs: u64,
    /// Keep kernel messages on the boot log.
    pub verbose_kernel: bool,
    /// Start workspaces by restoring a booted template of their image (see
    /// `warren_node::template`); `false`: every boot is a cold boot.
    pub templates: bool,
    /// Encrypt new workspaces' writable disks (AES-256-XTS, per-workspace key).
    pub encrypt_disks: bool,
    /// The master key wrapping the disks' keys (64 hex digits, mode 0600). `None`:
    /// `data_dir/master.key`, created on first use. A path given here must exist.
    pub master_key_file: Option<PathBuf>,
    /// Confine each VMM: own uid, chroot, mount namespace, cgroup, seccomp
    /// (see `warren_vmm::confine`).
    pub confine_vmms: bool,
    /// First uid/gid of the range VMMs run under (one per lease index).
    pub vmm_uid_base: u32,
    /// Hard CPU quota per vCPU, percent of one host CPU.
    pub cpu_quota_pct: u32,
    /// Memory a VMM may use beyond its guest's RAM before the host kills it.
    pub vmm_memory_overhead_mb: u32,
    /// Writable disk limits per workspace (QEMU block throttling): I/O operations and
    /// bytes per second, reads and writes together; 0: unlimited.
    pub disk_iops_limit: u64,
    pub disk_bps_limit: u64,
    /// Workspaces to keep booted ahead of demand, per shape (see `warren_node::warm`);
    /// empty: none. Filled by `Node::fill_warm`.
    pub warm_pool: Vec<crate::warm::WarmSpec>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: "/var/lib/warren".into(),
            cache_dir: "/var/cache/warren".into(),
            run_dir: "/run/warren".into(),
            qemu_binary: "qemu-system-x86_64".into(),
            accel: AccelChoice::Auto,
            agent_binary: default_agent_path(),
            kernel: "auto".into(),
            kernel_pvm_capable: false,
            network_cidr: "10.88.0.0/16".into(),
            dns_upstream: Vec::new(),
            uplink: None,
            debian_mirror: "http://deb.debian.org/debian".into(),
            max_cpus: 16,
            max_memory_mb: 65536,
            max_disk_mb: 1 << 20,
            boot_timeout_secs: 60,
            verbose_kernel: false,
            templates: true,
            encrypt_disks: true,
            master_key_file: None,
            confine_vmms: true,
            vmm_uid_base: 3_000_000,
            cpu_quota_pct: 100,
            vmm_memory_overhead_mb: 384,
            disk_iops_limit: 0,
            disk_bps_limit: 0,
            warm_pool: Vec::new(),
        }
    }
}

impl NodeConfig {
    /// Where the master key lives (see [`NodeConfig::master_key_file`]).
    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }
}

/// `$WARREN_AGENT`, else /usr/local/lib/warren/warren-agent (where scripts/setup.sh
/// installs it). Not "beside the executable": in a cargo target directory that is the
/// dynamically linked debug build, which cannot be a VM's /init.
pub fn default_agent_path() -> PathBuf {
    std::env::var_os("WARREN_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/local/lib/warren/warren-agent".into())
}
