//! Confining a VMM process, in the manner of Firecracker's jailer.
//!
//! Each QEMU runs
//! * in its own **cgroup** (`<warren's own cgroup>/warren/<workspace>`), which caps its
//!   CPU time (`cpu.max`, or `cpu.cfs_quota_us` on a cgroup v1 host) and its memory
//!   (`memory.max` / `memory.limit_in_bytes`: guest RAM plus the VMM's overhead). The
//!   child joins it between fork and exec, so it never runs unlimited;
//! * in its own **mount namespace** (private propagation), and **chrooted** into an
//!   empty directory of its own (`-chroot`) once it has opened its files: kernel,
//!   initramfs, disks, sockets, tap and (with KVM) /dev/kvm. After that it can open
//!   no file of the host at all;
//! * under its own **unprivileged uid/gid** (`-runas`), from a range reserved for VMMs
//!   (`uid_base` + the workspace's lease index, so no two VMMs share one), with no
//!   capabilities;
//! * under QEMU's **seccomp** filter (`-sandbox on,obsolete=deny,spawn=deny,
//!   resourcecontrol=deny`): no exec, no obsolete syscalls, no scheduler or
//!   affinity changes. `elevateprivileges` stays `allow` only because QEMU's own
//!   `-runas` needs setuid after the filter is in place; with no capabilities left,
//!   a set*id call can only drop privileges further.
//!
//! * under a **seccomp filter of ours**, installed before exec and stacked under
//!   QEMU's: the syscalls a VMM never makes (mounts, namespaces, modules, kexec,
//!   bpf, ptrace and cross-process memory access, keyrings, clock and host name
//!   changes, swap, reboot, raw I/O ports) fail with EPERM ([`DENIED_SYSCALLS`]).
//!   A deny list, not an allowlist: QEMU's needs vary with its devices and version,
//!   and a wrong allowlist kills a guest at some rare moment.
//!
//! A VMM that must die with its parent (`warren run`) keeps root (the kernel clears
//! the parent-death signal on a uid change) but gets everything else.

use crate::{io_err, Result, VmSpec, VmmError};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Syscalls no VMM of ours makes (after our pre-exec setup, which mounts): they fail
/// with EPERM. `chroot` and the set*id family stay: QEMU's `-chroot` and `-runas`.
pub const DENIED_SYSCALLS: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_userfaultfd,
    libc::SYS_uselib,
    libc::SYS_vhangup,
    libc::SYS_lookup_dcookie,
];

/// Our filter, compiled to BPF: [`DENIED_SYSCALLS`] fail with EPERM, all else is left
/// to QEMU's own filter.
pub fn vmm_filter() -> Result<seccompiler::BpfProgram> {
    let rules = DENIED_SYSCALLS.iter().map(|n| (*n, Vec::new())).collect();
    let bad = |e: seccompiler::BackendError| VmmError::Io {
        context: "build the VMM seccomp filter".into(),
        source: std::io::Error::other(e.to_string()),
    };
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        seccompiler::TargetArch::x86_64,
    )
    .map_err(bad)?;
    filter.try_into().map_err(bad)
}

/// What the node asks of every VMM it starts.
#[derive(Debug, Clone)]
pub struct ConfinePolicy {
    /// First uid (and gid) of the VMM range.
    pub uid_base: u32,
    /// Parent of the per-VM empty chroot directories.
    pub jail_root: PathBuf,
    /// QEMU's seccomp sandbox.
    pub seccomp: bool,
    /// Allow the VMM to start programs (`-sandbox spawn=allow`): only for `exec:`
    /// migration URIs, which Warren does not use (it hands the VMM an fd instead).
    pub allow_spawn: bool,
    /// Put each VMM in its own cgroup with CPU and memory limits.
    pub cgroups: bool,
    /// CPU quota per vCPU, in percent of one host CPU.
    pub cpu_quota_pct: u32,
    /// Memory the VMM may use beyond the guest's RAM, in MiB (QEMU itself, and
    /// under TCG its translation cache).
    pub memory_overhead_mb: u32,
    /// I/O operations per second on the writable disk (QEMU block throttling,
    /// reads and writes together); 0: unlimited.
    pub disk_iops: u64,
    /// Bytes per second on the writable disk; 0: unlimited.
    pub disk_bps: u64,
}

impl Default for ConfinePolicy {
    fn default() -> Self {
        ConfinePolicy {
            uid_base: 3_000_000,
            jail_root: "/run/warren/jail".into(),
            seccomp: true,
            allow_spawn: false,
            cgroups: true,
            cpu_quota_pct: 100,
            memory_overhead_mb: 384,
            disk_iops: 0,
            disk_bps: 0,
        }
    }
}

/// A policy and the host's cgroup hierarchy (found once).
#[derive(Debug, Clone)]
pub struct ConfineSetup {
    pub policy: ConfinePolicy,
    pub cgroups: Option<CgroupHost>,
}

impl ConfineSetup {
    pub fn new(policy: ConfinePolicy) -> ConfineSetup {
        let cgroups = if policy.cgroups {
            // Found and usable: a host where warren's cgroup cannot delegate (cgroup v2
            // with processes in it, a read-only mount) runs VMMs without limits, with a
            // warning, rather than failing every boot.
            let c = CgroupHost::detect().filter(|h| match h.prepare_base() {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set up VMM cgroups");
                    false
                }
            });
            match &c {
                Some(h) => tracing::info!(version = h.version(), ?h, "VMM cgroups"),
                None => tracing::warn!(
                    "no usable cgroup hierarchy (v2 with cpu and memory, or v1 cpu and \
                     memory): VMMs run without CPU and memory limits"
                ),
            }
            c
        } else {
            None
        };
        ConfineSetup { policy, cgroups }
    }

    pub fn prepare(&self, spec: &VmSpec) -> Result<Confinement> {
        self.policy.prepare(spec, self.cgroups.as_ref())
    }

    /// Remove workspace `id`'s jail directory and (empty) cgroup, if any are left:
    /// a VMM adopted after a restart is not our child, so nobody saw it exit.
    pub fn remove_leftovers(&self, id: &str) {
        let _ = std::fs::remove_dir(self.policy.jail_root.join(id));
        match &self.cgroups {
            Some(CgroupHost::V2 { base }) => {
                let _ = std::fs::remove_dir(base.join(id));
            }
            Some(CgroupHost::V1 { cpu, memory }) => {
                let _ = std::fs::remove_dir(cpu.join(id));
                let _ = std::fs::remove_dir(memory.join(id));
            }
            None => {}
        }
    }

    /// Remove what VMMs that are gone left behind (a killed server, a VMM adopted
    /// and stopped by another process, a killed `warren run`): cgroups with no
    /// process in them (the kernel refuses to remove others) and jails no process
    /// is chrooted in, both older than a minute so a VM being set up right now by
    /// another process keeps its own. Returns how many directories went.
    pub fn sweep(&self) -> usize {
        let old = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(60))
        };
        let mut n = 0;
        let bases: Vec<PathBuf> = match &self.cgroups {
            Some(CgroupHost::V2 { base }) => vec![base.clone()],
            Some(CgroupHost::V1 { cpu, memory }) => vec![cpu.clone(), memory.clone()],
            None => Vec::new(),
        };
        for base in bases {
            for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() && old(&p) && std::fs::remove_dir(&p).is_ok() {
                    n += 1;
                }
            }
        }
        let roots: std::collections::HashSet<PathBuf> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path().join("root")).ok())
            .collect();
        for e in std::fs::read_dir(&self.policy.jail_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = e.path();
            if old(&p) && !roots.contains(&p) && std::fs::remove_dir(&p).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// The cgroup of workspace `id` (to change its limits while it runs).
    pub fn cgroup(&self, id: &str) -> Option<VmCgroup> {
        match self.cgroups.as_ref()? {
            CgroupHost::V2 { base } => Some(VmCgroup {
                version: 2,
                dirs: vec![base.join(id)],
            }),
            CgroupHost::V1 { cpu, memory } => Some(VmCgroup {
                version: 1,
                dirs: vec![cpu.join(id), memory.join(id)],
            }),
        }
        .filter(|c| c.dirs.iter().all(|d| d.is_dir()))
    }
}

/// Which cgroup hierarchy the host has, found once at start.
#[derive(Debug, Clone, PartialEq)]
pub enum CgroupHost {
    /// Unified hierarchy with the cpu and memory controllers: `base` is the directory
    /// VMM cgroups go under.
    V2 { base: PathBuf },
    /// Legacy hierarchies: one directory per controller.
    V1 { cpu: PathBuf, memory: PathBuf },
}

/// The cgroup this process is in for `controller` (`""` for the unified one), from
/// /proc/self/cgroup.
fn own_cgroup(text: &str, controller: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_string())
    })
}

impl CgroupHost {
    /// cgroup v2 when /sys/fs/cgroup is the unified hierarchy with cpu and memory;
    /// else v1 when its cpu and memory hierarchies are mounted; else `None`.
    /// VMM cgroups nest under this process's own cgroup (`.../warren`), so a
    /// service manager's accounting and limits still cover them.
    pub fn detect() -> Option<CgroupHost> {
        Self::detect_in(
            Path::new("/sys/fs/cgroup"),
            &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        )
    }

    pub fn detect_in(root: &Path, self_cgroup: &str) -> Option<CgroupHost> {
        let rel = |p: String| p.trim_start_matches('/').to_string();
        if let Ok(c) = std::fs::read_to_string(root.join("cgroup.controllers")) {
            let has = |n| c.split_whitespace().any(|w| w == n);
            if has("cpu") && has("memory") {
                let own = own_cgroup(self_cgroup, "").map(rel).unwrap_or_default();
                return Some(CgroupHost::V2 {
                    base: root.join(own).join("warren"),
                });
            }
            return None;
        }
        let cpu = root.join("cpu");
        let memory = root.join("memory");
        if cpu.join("cpu.cfs_quota_us").exists() && memory.join("memory.limit_in_bytes").exists() {
            let own_cpu = own_cgroup(self_cgroup, "cpu").map(rel).unwrap_or_default();
            let own_mem = own_cgroup(self_cgroup, "memory")
                .map(rel)
                .unwrap_or_default();
            return Some(CgroupHost::V1 {
                cpu: cpu.join(own_cpu).join("warren"),
                memory: memory.join(own_mem).join("warren"),
            });
        }
        None
    }

    /// Create the directories VMM cgroups go in (and on v2 enable the cpu and memory
    /// controllers for them).
    pub fn prepare_base(&self) -> Result<()> {
        match self {
            CgroupHost::V2 { base } => {
                if let Some(parent) = base.parent() {
                    let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory");
                }
                std::fs::create_dir_all(base)
                    .map_err(io_err(format!("create {}", base.display())))?;
                write(&base.join("cgroup.subtree_control"), "+cpu +memory")
            }
            CgroupHost::V1 { cpu, memory } => {
                for d in [cpu, memory] {
                    std::fs::create_dir_all(d)
                        .map_err(io_err(format!("create {}", d.display())))?;
                }
                Ok(())
            }
        }
    }

    pub fn version(&self) -> u8 {
        match self {
            CgroupHost::V2 { .. } => 2,
            CgroupHost::V1 { .. } => 1,
        }
    }
}

/// One VMM's cgroup (one directory on v2, one per controller on v1).
#[derive(Debug, Clone, PartialEq)]
pub struct VmCgroup {
    pub version: u8,
    pub dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(io_err(format!("write {value:?} to {}", path.display())))
}

impl VmCgroup {
    /// Create (or reuse) the cgroup of workspace `id` under `host`.
    pub fn create(host: &CgroupHost, id: &str) -> Result<VmCgroup> {
        match host {
            CgroupHost::V2 { base } => {
                // Controllers must be enabled on every level above the VMM's cgroup.
                if let Some(parent) = base.parent() {
                    let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory");
                }
                std::fs::create_dir_all(base)
                    .map_err(io_err(format!("create {}", base.display())))?;
                write(&base.join("cgroup.subtree_control"), "+cpu +memory")?;
                let dir = base.join(id);
                std::fs::create_dir_all(&dir)
                    .map_err(io_err(format!("create {}", dir.display())))?;
                Ok(VmCgroup {
                    version: 2,
                    dirs: vec![dir],
                })
            }
            CgroupHost::V1 { cpu, memory } => {
                let mut dirs = Vec::new();
                for base in [cpu, memory] {
                    let dir = base.join(id);
                    std::fs::create_dir_all(&dir)
                        .map_err(io_err(format!("create {}", dir.display())))?;
                    dirs.push(dir);
                }
                Ok(VmCgroup { version: 1, dirs })
            }
        }
    }

    /// Set the hard limits: `cpu_pct` percent of one host CPU, `memory_mb` MiB (and
    /// no swap beyond it where the host accounts swap).
    pub fn set_limits(&self, cpu_pct: u64, memory_mb: u64) -> Result<()> {
        const PERIOD: u64 = 100_000;
        let quota = (cpu_pct * PERIOD / 100).max(1000);
        let bytes = (memory_mb << 20).to_string();
        match self.version {
            2 => {
                let d = &self.dirs[0];
                write(&d.join("cpu.max"), &format!("{quota} {PERIOD}"))?;
                write(&d.join("memory.max"), &bytes)?;
                if d.join("memory.swap.max").exists() {
                    write(&d.join("memory.swap.max"), "0")?;
                }
            }
            _ => {
                let (c, m) = (&self.dirs[0], &self.dirs[1]);
                write(&c.join("cpu.cfs_period_us"), &PERIOD.to_string())?;
                write(&c.join("cpu.cfs_quota_us"), &quota.to_string())?;
                // memsw must never be below the memory limit: lower it after, raise it
                // before.
                let memsw = m.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    let _ = std::fs::write(&memsw, &bytes);
                }
                write(&m.join("memory.limit_in_bytes"), &bytes)?;
                if memsw.exists() {
                    write(&memsw, &bytes)?;
                }
            }
        }
        Ok(())
    }

    /// The files a process joins the cgroup through.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Remove the cgroup (once its process has exited).
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Everything one VMM is confined with.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// `None`: the VMM keeps root (it must die with its parent).
    pub uid: Option<u32>,
    pub jail: PathBuf,
    pub cgroup: Option<VmCgroup>,
    pub seccomp: bool,
    pub allow_spawn: bool,
    /// `-set drive.<id>.throttling.*` for the writable disks.
    pub throttle: Vec<String>,
}

/// The lease index in a Warren tap name (`wt17` -> 17).
fn tap_index(spec: &VmSpec) -> Option<u32> {
    spec.net.as_ref()?.tap.strip_prefix("wt")?.parse().ok()
}

/// A stable number for a workspace id, for VMs without a lease.
fn id_hash(id: &str) -> u32 {
    // FNV-1a
    id.bytes().fold(0x811c9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x01000193)
    })
}

impl ConfinePolicy {
    /// The uid of `spec`'s VMM: `uid_base` + its lease index (unique on the host while
    /// the lease is held); VMs without a network get one from a hash of their id,
    /// above the lease range.
    pub fn uid_for(&self, spec: &VmSpec) -> u32 {
        match tap_index(spec) {
            Some(i) => self.uid_base + i,
            None => self.uid_base + 0x10000 + id_hash(&spec.id) % 0x10000,
        }
    }

    /// Create the VM's jail directory and cgroup (with its limits).
    pub fn prepare(&self, spec: &VmSpec, cgroups: Option<&CgroupHost>) -> Result<Confinement> {
        let jail = self.jail_root.join(&spec.id);
        std::fs::create_dir_all(&jail).map_err(io_err(format!("create {}", jail.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&jail, std::fs::Permissions::from_mode(0o555))
                .map_err(io_err(format!("chmod {}", jail.display())))?;
        }
        let cgroup = match (self.cgroups, cgroups) {
            (true, Some(host)) => {
                let cg = VmCgroup::create(host, &spec.id)?;
                cg.set_limits(
                    spec.cpus as u64 * self.cpu_quota_pct as u64,
                    spec.memory_mb as u64 + self.memory_overhead_mb as u64,
                )?;
                Some(cg)
            }
            _ => None,
        };
        // QEMU names the drives disk<i> (see qemu_args); the writable ones are limited.
        let mut throttle = Vec::new();
        for (i, _) in spec.disks.iter().enumerate().filter(|(_, d)| !d.read_only) {
            for (key, v) in [("iops-total", self.disk_iops), ("bps-total", self.disk_bps)] {
                if v > 0 {
                    throttle.push("-set".to_string());
                    throttle.push(format!("drive.disk{i}.throttling.{key}={v}"));
                }
            }
        }
        Ok(Confinement {
            throttle,
            uid: (!spec.die_with_parent).then(|| self.uid_for(spec)),
            jail,
            cgroup,
            seccomp: self.seccomp,
            allow_spawn: self.allow_spawn,
        })
    }
}

impl Confinement {
    /// QEMU's own part: seccomp, chroot, uid.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.seccomp {
            a.push("-sandbox".into());
            a.push(format!(
                "on,obsolete=deny,elevateprivileges={},spawn={},resourcecontrol=deny",
                if self.uid.is_some() { "allow" } else { "deny" },
                if self.allow_spawn { "allow" } else { "deny" },
            ));
        }
        a.push("-chroot".into());
        a.push(self.jail.to_string_lossy().into_owned());
        if let Some(u) = self.uid {
            a.push("-runas".into());
            a.push(format!("{u}:{u}"));
        }
        a.extend(self.throttle.iter().cloned());
        a
    }

    /// What the child does between fork and exec (see [`PreExec::run`]).
    pub fn pre_exec(&self) -> Result<PreExec> {
        let procs = self
            .cgroup
            .iter()
            .flat_map(|c| c.procs_files())
            .map(|p| {
                CString::new(p.to_string_lossy().into_owned()).map_err(|e| VmmError::Io {
                    context: "cgroup path".into(),
                    source: std::io::Error::other(e),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let filter = if self.seccomp {
            Some(vmm_filter()?)
        } else {
            None
        };
        Ok(PreExec { procs, filter })
    }

    /// Remove what [`ConfinePolicy::prepare`] made, once the VMM is gone.
    pub fn remove(&self) {
        if let Some(c) = &self.cgroup {
            c.remove();
        }
        let _ = std::fs::remove_dir(&self.jail);
    }
}

/// The in-child part of the confinement: only async-signal-safe calls, on data
/// prepared before fork.
pub struct PreExec {
    procs: Vec<CString>,
    filter: Option<seccompiler::BpfProgram>,
}

impl PreExec {
    /// Join the cgroup(s), enter a private mount namespace, install our seccomp
    /// filter (last: it denies the mount above).
    pub fn run(&self) -> std::io::Result<()> {
        // This process's pid in decimal, without allocating.
        // SAFETY: getpid has no preconditions.
        let mut pid = unsafe { libc::getpid() } as u32;
        let mut buf = [0u8; 12];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (pid % 10) as u8;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        for p in &self.procs {
            // SAFETY: a NUL-terminated path; the fd is closed below.
            let fd = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: writing from a live stack buffer to our fd.
            let n = unsafe { libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i) };
            let err = std::io::Error::last_os_error();
            // SAFETY: closing the fd we opened.
            unsafe { libc::close(fd) };
            if n < 0 {
                return Err(err);
            }
        }
        // SAFETY: plain syscalls on no memory of ours but static strings.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Nothing mounted in here reaches the host, nor the other way round.
            let root = b"/\0";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr().cast(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(f) = &self.filter {
            // prctl(NO_NEW_PRIVS) and seccomp(2) on the prepared program; no allocation.
            seccompiler::apply_filter(f).map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_cgroups() {
        let v1 = "9:name=systemd:/\n4:memory:/svc/x\n1:cpu,cpuacct:/svc\n0::/";
        assert_eq!(own_cgroup(v1, "memory").as_deref(), Some("/svc/x"));
        assert_eq!(own_cgroup(v1, "cpu").as_deref(), Some("/svc"));
        assert_eq!(own_cgroup(v1, "").as_deref(), Some("/"));
        assert_eq!(own_cgroup(v1, "pids"), None);
    }

    #[test]
    fn detects_v2_then_v1() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        assert_eq!(CgroupHost::detect_in(r, ""), None);
        std::fs::create_dir_all(r.join("cpu")).unwrap();
        std::fs::create_dir_all(r.join("memory")).unwrap();
        std::fs::write(r.join("cpu/cpu.cfs_quota_us"), "-1").unwrap();
        std::fs::write(r.join("memory/memory.limit_in_bytes"), "0").unwrap();
        assert_eq!(
            CgroupHost::detect_in(r, "4:memory:/a\n1:cpu:/\n"),
            Some(CgroupHost::V1 {
                cpu: r.join("cpu/warren"),
                memory: r.join("memory/a/warren"),
            })
        );
        // A unified hierarchy without the controllers is not usable...
        std::fs::write(r.join("cgroup.controllers"), "pids").unwrap();
        assert_eq!(CgroupHost::detect_in(r, "0::/"), None);
        // ... with them it wins.
        std::fs::write(r.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        assert_eq!(
            CgroupHost::detect_in(r, "0::/system.slice/warren.service\n"),
            Some(CgroupHost::V2 {
                base: r.join("system.slice/warren.service/warren")
            })
        );
    }

    #[test]
    fn sweep_removes_only_old_unused_dirs() {
        let d = tempfile::tempdir().unwrap();
        let jail_root = d.path().join("jail");
        let base = d.path().join("cg");
        for p in [
            jail_root.join("ws_old"),
            jail_root.join("ws_new"),
            base.join("ws_old"),
        ] {
            std::fs::create_dir_all(&p).unwrap();
        }
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for p in [jail_root.join("ws_old"), base.join("ws_old")] {
            std::fs::File::open(&p)
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
        let setup = ConfineSetup {
            policy: ConfinePolicy {
                jail_root: jail_root.clone(),
                ..Default::default()
            },
            cgroups: Some(CgroupHost::V2 { base: base.clone() }),
        };
        assert_eq!(setup.sweep(), 2);
        assert!(!jail_root.join("ws_old").exists());
        assert!(!base.join("ws_old").exists());
        assert!(
            jail_root.join("ws_new").exists(),
            "a VM being set up keeps its jail"
        );
    }

    #[test]
    fn an_unusable_base_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("file"), "").unwrap();
        let bad = CgroupHost::V2 {
            base: d.path().join("file/warren"),
        };
        assert!(bad.prepare_base().is_err());
        let ok = CgroupHost::V2 {
            base: d.path().join("warren"),
        };
        ok.prepare_base().unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("warren/cgroup.subtree_control")).unwrap(),
            "+cpu +memory"
        );
    }

    #[test]
    fn v2_limits_are_written() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("warren");
        let cg = VmCgroup::create(&CgroupHost::V2 { base: base.clone() }, "ws_a").unwrap();
        assert_eq!(
            std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap(),
            "+cpu +memory"
        );
        std::fs::write(cg.dirs[0].join("memory.swap.max"), "max").unwrap();
        cg.set_limits(150, 640).unwrap();
        let read = |f: &str| std::fs::read_to_string(cg.dirs[0].join(f)).unwrap();
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(read("memory.max"), (640u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(cg.procs_files(), [cg.dirs[0].join("cgroup.procs")]);
    }

    #[test]
    fn our_filter_denies_namespaces_and_mounts_but_not_work() {
        use std::os::unix::process::CommandExt;
        let run = |args: &[&str]| {
            let prog = vmm_filter().unwrap();
            let mut c = std::process::Command::new(args[0]);
            c.args(&args[1..]);
            // SAFETY: only prctl and seccomp(2) between fork and exec.
            unsafe {
                c.pre_exec(move || {
                    seccompiler::apply_filter(&prog)
                        .map_err(|e| std::io::Error::other(e.to_string()))
                });
            }
            c.output().unwrap()
        };
        assert!(run(&["true"]).status.success());
        let out = run(&["cat", "/proc/self/status"]);
        let status = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(status.contains("Seccomp:\t2"), "{status}");
        let out = run(&["unshare", "-m", "true"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Operation not permitted"), "{err}");
    }

    #[test]
    fn qemu_flags() {
        let c = Confinement {
            uid: Some(3_000_007),
            jail: "/run/warren/jail/ws_a".into(),
            cgroup: None,
            seccomp: true,
            allow_spawn: false,
            throttle: vec!["-set".into(), "drive.disk1.throttling.iops-total=50".into()],
        };
        assert_eq!(
            c.qemu_args().join(" "),
            "-sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny \
             -chroot /run/warren/jail/ws_a -runas 3000007:3000007 \
             -set drive.disk1.throttling.iops-total=50"
        );
        let root = Confinement { uid: None, ..c };
        assert!(root
            .qemu_args()
            .join(" ")
            .contains("elevateprivileges=deny"));
        assert!(!root.qemu_args().contains(&"-runas".to_string()));
    }
}
