//! Creating and destroying workspace VMs on this host.

use crate::config::NodeConfig;
use crate::control::ControlChannel;
use crate::net::{Lease, NetPool};
use crate::{disk, io_err, NodeError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Mutex, OnceCell};
use tracing::Instrument;
use warren_guest::{GuestAssets, GuestKernel};
use warren_images::{Image, ImageStore, ImageStoreConfig, Progress};
use warren_netpolicy::{Compiled, NetworkPolicy, Resolver, ResolverSpec};
use warren_protocol::control::{
    BootConfig, BootTimings, DataDisk, EncryptedDisk, GuestMessage, HostMessage, NetworkConfig,
    Secret, DATA_DISK_SERIAL, IMAGE_DISK_SERIAL,
};
use warren_protocol::runtime::API_PORT;
use warren_vmm::{qemu::QemuVmm, Accel, DiskSpec, NetSpec, Vm, VmSpec, Vmm};

/// What the caller wants booted.
#[derive(Debug, Clone)]
pub struct WorkspaceSpec {
    /// `None`: a fresh id.
    pub id: Option<String>,
    pub image: String,
    pub cpus: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u64,
    pub env: Vec<(String, String)>,
    /// Run at boot; `None`: nothing (the workspace waits for exec).
    pub cmd: Option<Vec<String>>,
    /// Keep the disk and the address when the VM stops (permanent workspaces);
    /// `false`: the workspace is meant to be destroyed when it stops.
    pub persistent: bool,
    /// Kill the VM when this process dies (standalone `warren run`).
    pub die_with_owner: bool,
    /// What the workspace may send and receive (default: see [`NetworkPolicy`]).
    pub network: NetworkPolicy,
    /// Managed workloads the agent starts at boot (`BootConfig::workloads`).
    pub workloads: Vec<serde_json::Value>,
}

impl Default for WorkspaceSpec {
    fn default() -> Self {
        WorkspaceSpec {
            id: None,
            image: "debian-12".into(),
            cpus: 1,
            memory_mb: 512,
            disk_size_mb: 1024,
            env: Vec::new(),
            cmd: None,
            persistent: false,
            die_with_owner: false,
            network: NetworkPolicy::default(),
            workloads: Vec::new(),
        }
    }
}

/// Where the time of a boot went, host and guest side.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BootReport {
    pub accel: String,
    pub accel_reason: String,
    pub engine: String,
    pub image_ms: f64,
    pub guest_assets_ms: f64,
    pub disk_ms: f64,
    pub network_ms: f64,
    /// Spawning the VMM until its QMP socket answers.
    pub vmm_start_ms: f64,
    /// VMM started until the agent said it is ready.
    pub guest_boot_ms: f64,
    pub total_ms: f64,
    /// The guest's own timeline (ms since its kernel started).
    pub guest: BootTimings,
}

/// Marker written into a workspace's run directory; names the process that owns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub workspace_id: String,
    pub owner_pid: u32,
    pub vmm_pid: Option<u32>,
    pub lease_index: u32,
}

pub const OWNER_FILE: &str = "owner.json";
/// What starting or adopting the workspace again needs (mode 0600: holds its token).
pub const RECORD_FILE: &str = "workspace.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    pub id: String,
    pub lease_index: u32,
    pub api_token: String,
    pub persistent: bool,
}

pub(crate) fn read_record(dir: &std::path::Path) -> Option<WorkspaceRecord> {
    std::fs::read(dir.join(RECORD_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

pub(crate) fn write_record(dir: &std::path::Path, rec: &WorkspaceRecord) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(".workspace.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("write workspace record"))?;
    std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(rec).unwrap_or_default())
        .map_err(io_err("write workspace record"))?;
    f.sync_all().map_err(io_err("sync workspace record"))?;
    std::fs::rename(&tmp, dir.join(RECORD_FILE)).map_err(io_err("write workspace record"))
}

pub struct RunningWorkspace {
    pub id: String,
    pub image: Image,
    pub guest_ip: std::net::Ipv4Addr,
    pub api_token: String,
    pub run_dir: PathBuf,
    pub report: BootReport,
    pub vm: Box<dyn Vm>,
    pub control: ControlChannel,
    pub events: Mutex<mpsc::UnboundedReceiver<GuestMessage>>,
    pub(crate) lease: Lease,
    pub(crate) net: WorkspaceNet,
}

/// A running workspace's network policy and its DNS resolver (stopped on drop).
pub(crate) struct WorkspaceNet {
    policy: std::sync::Mutex<NetworkPolicy>,
    compiled: Arc<std::sync::RwLock<Compiled>>,
    _resolver: Option<Resolver>,
}

impl RunningWorkspace {
    /// Base URL of the agent's runtime API.
    pub fn api_url(&self) -> String {
        format!("http://{}:{}", self.guest_ip, API_PORT)
    }

    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }

    /// The host end of the workspace's tap (its gateway and DNS resolver).
    pub fn host_ip(&self) -> std::net::Ipv4Addr {
        self.lease.host_ip
    }

    /// The tap device on the host.
    pub fn tap(&self) -> &str {
        &self.lease.record.tap
    }

    /// The network policy in force.
    pub fn network(&self) -> NetworkPolicy {
        self.net
            .policy
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

pub struct Node {
    pub config: NodeConfig,
    images: ImageStore,
    vmm: Arc<dyn Vmm>,
    accel: Accel,
    accel_reason: String,
    pool: NetPool,
    guest: OnceCell<GuestAssets>,
    dns_upstreams: Vec<std::net::SocketAddr>,
    /// Wraps and unwraps the disks' data keys; `None`: encryption off and no keys.
    kms: Option<Arc<dyn warren_kms::KeyManager>>,
    /// How VMMs are confined (their cgroups and jails); `None`: not at all.
    confine: Option<warren_vmm::confine::ConfineSetup>,
    /// Workspaces booted ahead of demand (see crate::warm).
    pub(crate) warm: crate::warm::WarmPool,
}

impl Node {
    /// Check the host (VMM binary, accelerator, address pool) and set up directories.
    /// Nothing slow happens here: the kernel and images are prepared on first use.
    pub fn new(config: NodeConfig) -> Result<Self> {
        // First: a missing or wrong master key stops us before anything is touched.
        let kms = crate::keys::open_key_manager(&config)?;
        let mut vmm = QemuVmm::new(config.qemu_binary.clone())?;
        let confine = config.confine_vmms.then(|| {
            warren_vmm::confine::ConfineSetup::new(warren_vmm::confine::ConfinePolicy {
                uid_base: config.vmm_uid_base,
                jail_root: config.run_dir.join("jail"),
                cpu_quota_pct: config.cpu_quota_pct,
                memory_overhead_mb: config.vmm_memory_overhead_mb,
                disk_iops: config.disk_iops_limit,
                disk_bps: config.disk_bps_limit,
                ..Default::default()
            })
        });
        vmm.confine = confine.clone();
        if let Some(c) = &confine {
            let n = c.sweep();
            if n > 0 {
                tracing::info!(removed = n, "removed cgroups and jails of gone VMMs");
            }
        }
        let (accel, accel_reason) = warren_vmm::detect_accel(
            config.accel,
            config.kernel.starts_with('/') && config.kernel_pvm_capable,
        )?;
        tracing::info!(%accel, reason = %accel_reason, "accelerator");
        for d in [&config.data_dir, &config.cache_dir, &config.run_dir] {
            std::fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
        }
        let mut pool = NetPool::new(&config.network_cidr, &config.run_dir)?;
        pool.set_uplink(config.uplink.clone())?;
        pool.set_data_dir(&config.data_dir);
        let dns_upstreams = warren_netpolicy::dns::upstreams(&config.dns_upstream)?;
        let images = ImageStore::new(ImageStoreConfig {
            cache_dir: config.cache_dir.clone(),
            debian_mirror: config.debian_mirror.clone(),
            ..ImageStoreConfig::default()
        })?;
        Ok(Node {
            config,
            images,
            vmm: Arc::new(vmm),
            accel,
            accel_reason,
            pool,
            guest: OnceCell::new(),
            dns_upstreams,
            kms,
            confine,
            warm: Default::default(),
        })
    }

    pub fn accel(&self) -> (Accel, &str) {
        (self.accel, &self.accel_reason)
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn pool(&self) -> &NetPool {
        &self.pool
    }

    /// The VMM engine (for saved-state restores in [`crate::suspend`]).
    pub(crate) fn engine(&self) -> &Arc<dyn Vmm> {
        &self.vmm
    }

    /// The key manager (for sealing saved memory in [`crate::suspend`]).
    pub(crate) fn kms(&self) -> Option<&Arc<dyn warren_kms::KeyManager>> {
        self.kms.as_ref()
    }

    /// Check a spec against the node's limits before anything is allocated.
    pub fn validate(&self, spec: &WorkspaceSpec) -> Result<()> {
        let c = &self.config;
        let bad = |field, reason: String| Err(NodeError::Invalid { field, reason });
        if spec.cpus == 0 || spec.cpus > c.max_cpus {
            return bad(
                "cpus",
                format!("{} is out of range 1-{}", spec.cpus, c.max_cpus),
            );
        }
        if spec.memory_mb < 128 || spec.memory_mb > c.max_memory_mb {
            return bad(
                "memory_mb",
                format!("{} is out of range 128-{}", spec.memory_mb, c.max_memory_mb),
            );
        }
        if spec.disk_size_mb < 64 || spec.disk_size_mb > c.max_disk_mb {
            return bad(
                "disk_size_mb",
                format!("{} is out of range 64-{}", spec.disk_size_mb, c.max_disk_mb),
            );
        }
        for (k, _) in &spec.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return bad("env", format!("{k:?} is not a valid variable name"));
            }
        }
        if let Some(id) = &spec.id {
            if !valid_id(id) {
                return bad("id", format!("{id:?}: use 3-40 of a-z, 0-9, '_' and '-'"));
            }
        }
        spec.network.compile()?;
        Ok(())
    }

    /// Apply a workspace's policy to its tap and start its DNS resolver: before the VM
    /// runs, so the guest is never unfiltered.
    pub(crate) fn attach_network(
        &self,
        id: &str,
        lease: &Lease,
        policy: &NetworkPolicy,
    ) -> Result<WorkspaceNet> {
        let compiled = policy.compile()?;
        self.pool
            .firewall()
            .apply(id, &self.pool.attachment(lease), policy)?;
        let compiled = Arc::new(std::sync::RwLock::new(compiled));
        let resolver = match Resolver::spawn(ResolverSpec {
            workspace_id: id.to_string(),
            index: lease.record.index,
            listen: lease.host_ip,
            policy: compiled.clone(),
            upstreams: self.dns_upstreams.clone(),
            firewall: self.pool.firewall().clone(),
        }) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver for this workspace");
                None
            }
        };
        Ok(WorkspaceNet {
            policy: std::sync::Mutex::new(policy.clone()),
            compiled,
            _resolver: resolver,
        })
    }

    /// Change a running workspace's network policy at once (one atomic firewall
    /// transaction; the resolver follows). A bad policy changes nothing.
    pub fn set_network(&self, ws: &RunningWorkspace, policy: &NetworkPolicy) -> Result<()> {
        let _span = tracing::info_span!("workspace", workspace_id = %ws.id).entered();
        let compiled = policy.compile()?;
        self.pool
            .firewall()
            .apply(&ws.id, &self.pool.attachment(&ws.lease), policy)?;
        match ws.net.compiled.write() {
            Ok(mut c) => *c = compiled,
            Err(p) => *p.into_inner() = compiled,
        }
        match ws.net.policy.lock() {
            Ok(mut p) => *p = policy.clone(),
            Err(p) => *p.into_inner() = policy.clone(),
        }
        Ok(())
    }

    /// The kernel and initramfs, prepared once per process.
    pub async fn guest_assets(&self) -> Result<&GuestAssets> {
        self.guest
            .get_or_try_init(|| async {
                let cfg = self.config.clone();
                tokio::task::spawn_blocking(move || prepare_guest(&cfg))
                    .await
                    .map_err(|e| NodeError::Boot(format!("guest preparation panicked: {e}")))?
            })
            .await
    }

    /// Boot a new workspace and wait until its agent serves the runtime API.
    /// On failure everything allocated so far is released.
    pub async fn create(
        &self,
        spec: &WorkspaceSpec,
        progress: &dyn Progress,
    ) -> Result<RunningWorkspace> {
        self.validate(spec)?;
        // A warm VM (see crate::warm) when one was reserved under this id or, with no
        // id given, one of this shape is idle.
        if let Some(warm) = self.take_warm(spec) {
            let span = tracing::info_span!("workspace", workspace_id = %warm.id);
            match self.adopt_warm(warm, spec, progress).instrument(span).await {
                Ok(ws) => return Ok(ws),
                Err(e) => tracing::warn!(error = %e, "warm VM not usable; starting another way"),
            }
        }
        let id = spec.id.clone().unwrap_or_else(new_workspace_id);
        let span = tracing::info_span!("workspace", workspace_id = %id);
        self.boot(id, spec, progress, true).instrument(span).await
    }

    /// Boot a workspace that exists on this node (stopped, or left by a crash) with its
    /// disk and, if it is still free, its address. A workspace unknown here is created.
    pub async fn start(
        &self,
        spec: &WorkspaceSpec,
        progress: &dyn Progress,
    ) -> Result<RunningWorkspace> {
        self.validate(spec)?;
        let id = spec.id.clone().ok_or(NodeError::Invalid {
            field: "id",
            reason: "start needs the workspace id".into(),
        })?;
        let fresh = !self.workspace_dir(&id).join("data.ext4").exists();
        let span = tracing::info_span!("workspace", workspace_id = %id);
        self.boot(id, spec, progress, fresh).instrument(span).await
    }

    /// How the guest is to open workspace `id`'s writable disk. With `create` (a size
    /// in MiB) the disk is made first: encrypted under a fresh data key, whose wrapped
    /// form is stored beside it, when encryption is on. An existing disk with a
    /// wrapped key is opened with that key (unwrapped here, in memory only); one
    /// without (made with encryption off) is plain ext4.
    pub fn data_disk(&self, id: &str, create: Option<u64>) -> Result<DataDisk> {
        let dir = self.workspace_dir(id);
        let disk_path = dir.join("data.ext4");
        let key_path = dir.join(crate::keys::KEY_FILE);
        let key = match (create, &self.kms) {
            (Some(size_mb), Some(kms)) if self.config.encrypt_disks => {
                let key = warren_kms::DataKey::generate();
                warren_kms::write_wrapped(&key_path, &kms.wrap(&key, id)?)?;
                if let Err(e) = disk::create_encrypted_disk(&disk_path, size_mb, &key) {
                    let _ = warren_kms::destroy_wrapped(&key_path);
                    return Err(e);
                }
                tracing::debug!(size_mb, cipher = disk::CIPHER, "encrypted disk created");
                key
            }
            (Some(size_mb), _) => {
                disk::create_plain_disk(&disk_path, size_mb)?;
                return Ok(DataDisk::Ext4);
            }
            (None, _) if !key_path.exists() => return Ok(DataDisk::Ext4),
            (None, None) => {
                return Err(NodeError::Disk(format!(
                    "{} is encrypted but no master key is loaded",
                    disk_path.display()
                )))
            }
            (None, Some(kms)) => kms.unwrap(&warren_kms::read_wrapped(&key_path)?, id)?,
        };
        Ok(DataDisk::Encrypted(EncryptedDisk {
            cipher: disk::CIPHER.into(),
            key_hex: Secret::new(key.to_hex().to_string()),
            sector_size: disk::SECTOR as u32,
        }))
    }

    /// Wrap workspace `from`'s data key for workspace `to` as well: a fork's child
    /// gets its own KMS record of its parent's key (see crate::fork). `false`: `from`
    /// has no key (a plain disk).
    pub(crate) fn share_key(&self, from: &str, to: &str) -> Result<bool> {
        let src = self.workspace_dir(from).join(crate::keys::KEY_FILE);
        if !src.exists() {
            return Ok(false);
        }
        let kms = self.kms.as_ref().ok_or_else(|| {
            NodeError::Disk(format!(
                "{} is encrypted but no master key is loaded",
                src.display()
            ))
        })?;
        let key = kms.unwrap(&warren_kms::read_wrapped(&src)?, from)?;
        let dst = self.workspace_dir(to).join(crate::keys::KEY_FILE);
        warren_kms::write_wrapped(&dst, &kms.wrap(&key, to)?)?;
        Ok(true)
    }

    /// Give fork child `id` an overlay key of its own (wrapped into its
    /// `overlay.key`) and return its passphrase; `None` with disk encryption off.
    pub(crate) fn new_overlay_key(&self, id: &str) -> Result<Option<Secret>> {
        let Some(kms) = self.kms.as_ref().filter(|_| self.config.encrypt_disks) else {
            return Ok(None);
        };
        let key = warren_kms::DataKey::generate();
        let path = self.workspace_dir(id).join(crate::keys::OVERLAY_KEY_FILE);
        warren_kms::write_wrapped(&path, &kms.wrap(&key, &crate::keys::overlay_context(id))?)?;
        Ok(Some(Secret::new(
            crate::overlay::passphrase(&key).to_string(),
        )))
    }

    /// The passphrase of workspace `id`'s overlay (a fork child's own writes),
    /// unwrapped here, in memory only; `None` for a disk without one.
    pub(crate) fn overlay_key(&self, id: &str) -> Result<Option<Secret>> {
        let path = self.workspace_dir(id).join(crate::keys::OVERLAY_KEY_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let kms = self.kms.as_ref().ok_or_else(|| {
            NodeError::Disk(format!(
                "{} exists but no master key is loaded",
                path.display()
            ))
        })?;
        let key = kms.unwrap(
            &warren_kms::read_wrapped(&path)?,
            &crate::keys::overlay_context(id),
        )?;
        Ok(Some(Secret::new(
            crate::overlay::passphrase(&key).to_string(),
        )))
    }

    /// Crypto-erasure: destroy workspace `id`'s wrapped data key, so its disk (and
    /// any copy of it) is unreadable. Returns whether it had one.
    pub fn erase_key(&self, id: &str) -> Result<bool> {
        let erased = crate::keys::destroy_keys(&self.workspace_dir(id))?;
        if erased {
            tracing::info!(workspace_id = %id, "data key destroyed (crypto-erasure)");
        }
        Ok(erased)
    }

    pub fn workspace_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("workspaces").join(id)
    }

    /// Does this node hold a disk for `id`?
    pub fn exists(&self, id: &str) -> bool {
        self.workspace_dir(id).join("data.ext4").exists()
    }

    async fn boot(
        &self,
        id: String,
        spec: &WorkspaceSpec,
        progress: &dyn Progress,
        fresh: bool,
    ) -> Result<RunningWorkspace> {
        let t0 = Instant::now();
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
        let image = self.images.resolve(&spec.image, progress).await?;
        let image_ms = ms(t0);
        let t = Instant::now();
        let assets = self.guest_assets().await?.clone();
        let guest_assets_ms = ms(t);

        let run_dir = self.workspace_dir(&id);
        if fresh && run_dir.exists() {
            return Err(NodeError::Invalid {
                field: "id",
                reason: format!("a workspace named {id} already exists on this node"),
            });
        }
        let previous = if fresh { None } else { read_record(&run_dir) };
        let mut cleanup = Cleanup {
            pool: &self.pool,
            run_dir: fresh.then(|| run_dir.clone()),
            lease: None,
            tap: None,
            rules: None,
        };
        if fresh {
            create_run_dir(&run_dir, &id)?;
        }

        let t = Instant::now();
        if !fresh {
            // A bigger disk_size_mb (the resources API) grows the file; the guest grows
            // its file system at boot. Never shrinks.
            let disk = run_dir.join("data.ext4");
            if crate::fork::data_disk_format(&run_dir) == "qcow2" {
                // A fork child's overlay: its size is in its header, not its length.
                let key = self.overlay_key(&id)?;
                crate::overlay::grow(
                    &disk,
                    key.as_ref().map(|k| k.expose().as_bytes()),
                    spec.disk_size_mb << 20,
                )?;
            } else {
                disk::grow_at_least(&disk, spec.disk_size_mb)?;
            }
        }
        let data_disk = self.data_disk(&id, fresh.then_some(spec.disk_size_mb))?;
        let disk_ms = ms(t);

        let t = Instant::now();
        let lease = self.pool.reserve(
            &id,
            previous.as_ref().map(|r| r.lease_index),
            spec.persistent,
        )?;
        if fresh || !spec.persistent {
            cleanup.lease = Some(lease.record.clone());
        }
        self.pool.create_tap(&lease)?;
        cleanup.tap = Some(lease.record.tap.clone());
        cleanup.rules = Some(lease.record.index);
        let net = self.attach_network(&id, &lease, &spec.network)?;
        let network_ms = ms(t);
        let record = WorkspaceRecord {
            id: id.clone(),
            lease_index: lease.record.index,
            api_token: previous
                .map(|r| r.api_token)
                .unwrap_or_else(|| random_hex(32)),
            persistent: spec.persistent,
        };
        write_record(&run_dir, &record)?;
        write_owner(&run_dir, &id, None, lease.record.index)?;

        let vm_spec = self.vm_spec(&id, spec, &image, &assets, &lease)?;
        let t = Instant::now();
        // From the template when there is one (see crate::template), else cold.
        let (vm, cloned) = match self.start_from_template(&vm_spec).await {
            Ok(Some(vm)) => (vm, true),
            Ok(None) => (self.vmm.boot(&vm_spec).await?, false),
            Err(e) => {
                tracing::warn!(error = %e, "template start failed; booting cold");
                (self.vmm.boot(&vm_spec).await?, false)
            }
        };
        let vmm_start_ms = ms(t);
        write_owner(&run_dir, &id, vm.pid(), lease.record.index)?;
        let mut killer = KillOnDrop(Some(&*vm));

        let t_boot = Instant::now();
        let (control, mut events) =
            ControlChannel::connect(&vm_spec.control_socket, &id, vm.pid()).await?;
        let mut env: BTreeMap<String, String> = image.config.env.iter().cloned().collect();
        env.extend(spec.env.iter().cloned());
        let boot = BootConfig {
            workspace_id: id.clone(),
            hostname: id.replace('_', "-"),
            network: Some(NetworkConfig {
                mac: lease.mac.clone(),
                address: lease.guest_ip.to_string(),
                prefix_len: lease.prefix_len,
                gateway: lease.host_ip.to_string(),
                // Warren's resolver on the tap's host end (see warren_netpolicy::dns).
                dns: vec![lease.host_ip.to_string()],
                mtu: 1500,
                set_mac: cloned,
            }),
            env,
            cmd: spec.cmd.clone(),
            workdir: image.config.working_dir.clone(),
            user: image.config.user.clone(),
            api_token: record.api_token.clone(),
            api_port: API_PORT,
            clock_unix_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            entropy_hex: random_hex(64),
            data_disk,
            workloads: spec.workloads.clone(),
        };
        control
            .send(&HostMessage::Boot {
                config: Box::new(boot),
            })
            .await?;

        let timeout = Duration::from_secs(self.config.boot_timeout_secs);
        let console = vm_spec.console_log.clone();
        let guest = tokio::select! {
            r = wait_ready(&mut events) => r.map_err(|e| {
                NodeError::Boot(format!("{e}; boot log: {}", tail(&console)))
            })?,
            exit = vm.wait() => {
                let why = match exit {
                    Ok(x) => format!("the VM exited during boot ({x:?})"),
                    Err(e) => e.to_string(),
                };
                return Err(NodeError::Boot(format!("{why}; boot log: {}", tail(&console))));
            }
            _ = tokio::time::sleep(timeout) => {
                return Err(NodeError::BootTimeout(timeout, tail(&console)));
            }
        };
        let guest_boot_ms = ms(t_boot);
        killer.0 = None;
        drop(killer);
        let report = BootReport {
            accel: self.accel.to_string(),
            accel_reason: self.accel_reason.clone(),
            engine: if cloned {
                format!("{} (template)", self.vmm.name())
            } else {
                self.vmm.name().into()
            },
            image_ms,
            guest_assets_ms,
            disk_ms,
            network_ms,
            vmm_start_ms,
            guest_boot_ms,
            total_ms: ms(t0),
            guest,
        };
        tracing::info!(ip = %lease.guest_ip, total_ms = report.total_ms, "workspace ready");
        cleanup.disarm();
        Ok(RunningWorkspace {
            id,
            image,
            guest_ip: lease.guest_ip,
            api_token: record.api_token,
            run_dir,
            report,
            vm,
            control,
            events: Mutex::new(events),
            lease,
            net,
        })
    }

    pub(crate) fn vm_spec(
        &self,
        id: &str,
        spec: &WorkspaceSpec,
        image: &Image,
        assets: &GuestAssets,
        lease: &Lease,
    ) -> Result<VmSpec> {
        let run_dir = self.workspace_dir(id);
        let overlay_key = self.overlay_key(id)?;
        Ok(VmSpec {
            id: id.to_string(),
            run_dir: run_dir.clone(),
            kernel: assets.vmlinux.clone(),
            initramfs: Some(assets.initramfs.clone()),
            cmdline: warren_guest::kernel_cmdline(&warren_guest::CmdlineOptions {
                tsc_khz: warren_guest::cmdline::host_tsc_khz(),
                extra: Vec::new(),
                verbose: self.config.verbose_kernel,
            }),
            cpus: spec.cpus,
            memory_mb: spec.memory_mb,
            disks: vec![
                DiskSpec {
                    path: image.rootfs.clone(),
                    read_only: true,
                    serial: IMAGE_DISK_SERIAL.into(),
                    format: "raw".into(),
                    key: None,
                },
                DiskSpec {
                    path: run_dir.join("data.ext4"),
                    read_only: false,
                    serial: DATA_DISK_SERIAL.into(),
                    // A fork's disk is a qcow2 overlay (see crate::fork).
                    format: crate::fork::data_disk_format(&run_dir),
                    key: overlay_key,
                },
            ],
            net: Some(NetSpec {
                tap: lease.record.tap.clone(),
                mac: lease.mac.clone(),
            }),
            control_socket: run_dir.join("agent.sock"),
            console_log: run_dir.join("console.log"),
            accel: self.accel,
            acpi: assets.needs_acpi,
            die_with_parent: spec.die_with_owner,
            memory_file: None,
            hold_for_control: false,
        })
    }

    /// Power the VM off (asking the guest first when `grace` is non-zero, then killing
    /// it) and remove its tap. The disk and the address reservation stay, so
    /// [`Node::start`] brings the same workspace back.
    pub async fn stop(&self, ws: RunningWorkspace, grace: Duration) -> Result<()> {
        let span = tracing::info_span!("workspace", workspace_id = %ws.id);
        async {
            power_off(&ws, grace).await?;
            if let Some(c) = &self.confine {
                // An adopted VMM is not our child: nobody else sees it end.
                c.remove_leftovers(&ws.id);
            }
            crate::net::delete_tap(&ws.lease.record.tap);
            self.pool.remove_rules(ws.lease.record.index);
            for f in ["agent.sock", "qmp.sock"] {
                let _ = std::fs::remove_file(ws.run_dir.join(f));
            }
            write_owner(&ws.run_dir, &ws.id, None, ws.lease.record.index)?;
            tracing::info!("workspace stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Power the VM off and remove everything the workspace had on this host.
    pub async fn destroy(&self, ws: RunningWorkspace, grace: Duration) -> Result<()> {
        let span = tracing::info_span!("workspace", workspace_id = %ws.id);
        async {
            power_off(&ws, grace).await?;
            self.erase_key(&ws.id)?;
            if let Some(c) = &self.confine {
                c.remove_leftovers(&ws.id);
            }
            self.pool.release(&ws.lease.record);
            std::fs::remove_dir_all(&ws.run_dir)
                .map_err(io_err(format!("remove {}", ws.run_dir.display())))?;
            self.collect_forks();
            tracing::info!("workspace destroyed");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Remove a workspace that is not running: its disk, files and address.
    /// Removing one this node does not know is not an error (deletes are retried).
    pub fn remove(&self, id: &str) -> Result<()> {
        if self.forget_reserved(id) {
            tracing::info!(workspace_id = %id, "removing a reserved warm VM");
        }
        let dir = self.workspace_dir(id);
        if let Some(r) = read_record(&dir) {
            if let Some(l) = self.pool.held(id, r.lease_index) {
                self.pool.release(&l.record);
            }
        }
        if let Some(pid) = read_owner(&dir).and_then(|o| o.vmm_pid) {
            if crate::reconcile::is_our_vmm(pid, id) {
                // SAFETY: the VMM whose command line names this workspace.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        self.erase_key(id)?;
        if let Some(c) = &self.confine {
            c.remove_leftovers(id);
        }
        let r = match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("remove {}", dir.display()))(e)),
        };
        // The base of the fork it came from goes with its last child.
        self.collect_forks();
        r
    }

    /// Take over a workspace whose VM is still running from before this process
    /// started (a server restart). `None` if its VM is not running.
    pub async fn adopt(&self, spec: &WorkspaceSpec) -> Result<Option<RunningWorkspace>> {
        let id = spec.id.clone().ok_or(NodeError::Invalid {
            field: "id",
            reason: "adopt needs the workspace id".into(),
        })?;
        let dir = self.workspace_dir(&id);
        let (Some(rec), Some(owner)) = (read_record(&dir), read_owner(&dir)) else {
            return Ok(None);
        };
        let Some(pid) = owner
            .vmm_pid
            .filter(|p| crate::reconcile::is_our_vmm(*p, &id))
        else {
            return Ok(None);
        };
        let Some(mut lease) = self.pool.held(&id, rec.lease_index) else {
            // Its address went to another workspace: it cannot be reached as it is.
            return Ok(None);
        };
        let image = self
            .images
            .resolve(&spec.image, &warren_images::NoProgress)
            .await?;
        let assets = self.guest_assets().await?.clone();
        let vm_spec = self.vm_spec(&id, spec, &image, &assets, &lease)?;
        let vm = self.vmm.attach(&vm_spec, pid).await?;
        let (control, events) =
            ControlChannel::connect(&vm_spec.control_socket, &id, Some(pid)).await?;
        self.pool.claim(&lease.record)?;
        // The lease is ours now: releasing it later must match the claimed owner.
        lease.record.owner_pid = std::process::id();
        let net = self.attach_network(&id, &lease, &spec.network)?;
        write_owner(&dir, &id, Some(pid), lease.record.index)?;
        tracing::info!(workspace_id = %id, vmm_pid = pid, "adopted running workspace");
        Ok(Some(RunningWorkspace {
            id,
            image,
            guest_ip: lease.guest_ip,
            api_token: rec.api_token,
            run_dir: dir,
            report: BootReport::default(),
            vm,
            control,
            events: Mutex::new(events),
            lease,
            net,
        }))
    }
}

async fn power_off(ws: &RunningWorkspace, grace: Duration) -> Result<()> {
    if !grace.is_zero() && ws.control.send(&HostMessage::Shutdown).await.is_ok() {
        if let Ok(Some(_)) = ws.vm.wait_timeout(grace).await {
            tracing::debug!("guest powered off");
        }
    }
    ws.vm.kill().await?;
    Ok(())
}

pub(crate) async fn wait_ready(
    events: &mut mpsc::UnboundedReceiver<GuestMessage>,
) -> Result<BootTimings> {
    while let Some(m) = events.recv().await {
        match m {
            GuestMessage::Ready { timings } => return Ok(timings),
            GuestMessage::BootFailed { error } => {
                return Err(NodeError::Boot(format!("the agent reported: {error}")))
            }
            GuestMessage::Hello { agent_version, .. } => {
                tracing::debug!(agent_version, "agent said hello")
            }
            other => tracing::debug!(?other, "guest message during boot"),
        }
    }
    Err(NodeError::Boot("the control channel closed".into()))
}

fn prepare_guest(cfg: &NodeConfig) -> Result<GuestAssets> {
    let minimal = cfg
        .cache_dir
        .join(warren_guest::kernel::MINIMAL_KERNEL_PATH);
    let kernel = match cfg.kernel.as_str() {
        "debian" => GuestKernel::debian(&warren_guest::DEBIAN_CLOUD_KERNEL, &cfg.cache_dir)?,
        "minimal" => match GuestKernel::minimal(minimal.clone()) {
            Some(k) => k,
            None => {
                return Err(NodeError::Invalid {
                    field: "kernel",
                    reason: format!(
                        "the minimal kernel is not built ({} is missing): run scripts/build-kernel.sh, or use --kernel debian",
                        minimal.display()
                    ),
                })
            }
        },
        // Our minimal kernel when it is built with ACPI (it boots in about half the
        // time); otherwise Debian's. A build without ACPI (an older config) boots with
        // acpi=off and cannot power itself off, so it is used only when asked for.
        "auto" => match GuestKernel::minimal(minimal) {
            Some(k) if k.needs_acpi => k,
            _ => GuestKernel::debian(&warren_guest::DEBIAN_CLOUD_KERNEL, &cfg.cache_dir)?,
        },
        path if path.starts_with('/') => {
            let p = PathBuf::from(path);
            if !p.is_file() {
                return Err(NodeError::Invalid {
                    field: "kernel",
                    reason: format!("{path} does not exist"),
                });
            }
            GuestKernel::custom("custom", p)
        }
        other => {
            return Err(NodeError::Invalid {
                field: "kernel",
                reason: format!(
                    "{other:?}: use auto, minimal, debian or an absolute path to a vmlinux"
                ),
            })
        }
    };
    let initramfs = warren_guest::build_initramfs(&kernel, &cfg.agent_binary, &cfg.cache_dir)?;
    Ok(GuestAssets {
        vmlinux: kernel.vmlinux,
        initramfs,
        kernel_release: kernel.release,
        needs_acpi: kernel.needs_acpi,
    })
}

/// Releases what a failed boot allocated (a fresh workspace's directory and address;
/// always the tap).
pub(crate) struct Cleanup<'a> {
    pub(crate) pool: &'a NetPool,
    pub(crate) run_dir: Option<PathBuf>,
    pub(crate) lease: Option<crate::net::LeaseRecord>,
    pub(crate) tap: Option<String>,
    /// Lease index whose firewall rules to remove.
    pub(crate) rules: Option<u32>,
}

impl Cleanup<'_> {
    pub(crate) fn disarm(&mut self) {
        self.run_dir = None;
        self.lease = None;
        self.tap = None;
        self.rules = None;
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.tap.take() {
            crate::net::delete_tap(&t);
        }
        if let Some(i) = self.rules.take() {
            self.pool.remove_rules(i);
        }
        if let Some(l) = self.lease.take() {
            self.pool.release(&l);
        }
        if let Some(d) = self.run_dir.take() {
            let _ = crate::keys::destroy_keys(&d);
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Kills a VM whose boot failed before it is dropped.
pub(crate) struct KillOnDrop<'a>(pub(crate) Option<&'a dyn Vm>);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(vm) = self.0 {
            if let Some(pid) = vm.pid() {
                // SAFETY: signalling the VMM child we started; it has not been reaped
                // while `vm` (which owns its exit watcher) is alive.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

pub(crate) fn write_owner(
    dir: &std::path::Path,
    id: &str,
    vmm_pid: Option<u32>,
    idx: u32,
) -> Result<()> {
    let rec = OwnerRecord {
        workspace_id: id.into(),
        owner_pid: std::process::id(),
        vmm_pid,
        lease_index: idx,
    };
    let body = serde_json::to_vec_pretty(&rec).unwrap_or_default();
    // Atomic: another process's reconcile may read it at any moment.
    let tmp = dir.join(".owner.json.tmp");
    std::fs::write(&tmp, body).map_err(io_err("write owner record"))?;
    std::fs::rename(&tmp, dir.join(OWNER_FILE)).map_err(io_err("write owner record"))
}

/// Create a workspace's run directory with its owner record already inside, so no
/// other process's reconcile ever sees it without an owner: build it under a
/// dot-name and rename it into place.
pub(crate) fn create_run_dir(run_dir: &std::path::Path, id: &str) -> Result<()> {
    let parent = run_dir.parent().unwrap_or(run_dir);
    std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    let tmp = parent.join(format!(".new-{id}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    write_owner(&tmp, id, None, 0)?;
    if let Err(e) = std::fs::rename(&tmp, run_dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(NodeError::Invalid {
            field: "id",
            reason: format!("cannot create {}: {e}", run_dir.display()),
        });
    }
    Ok(())
}

pub(crate) fn read_owner(dir: &std::path::Path) -> Option<OwnerRecord> {
    std::fs::read(dir.join(OWNER_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

pub(crate) fn tail(p: &std::path::Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let start = s.len().saturating_sub(1500);
    let t = s.get(start..).unwrap_or("").trim();
    if t.is_empty() {
        "(empty)".into()
    } else {
        t.to_string()
    }
}

pub fn valid_id(id: &str) -> bool {
    (3..=40).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub fn new_workspace_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    use rand::Rng;
    let mut r = rand::thread_rng();
    let s: String = (0..12)
        .map(|_| ALPHABET[r.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("ws_{s}")
}

pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let id = new_workspace_id();
        assert!(valid_id(&id), "{id}");
        assert!(!valid_id("A"));
        assert!(!valid_id("ws/../x"));
    }
}
