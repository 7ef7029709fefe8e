//! Template start: boot once, restore many times.
//!
//! A cold boot under TCG costs well over a second (kernel, module loading). A
//! *template* is a VM booted once per (image file, kernel, initramfs with its agent,
//! command line, vCPUs, memory, disk size, accelerator) up to the point where the
//! agent has loaded its modules, opened the control port and said `Hello`: nothing of
//! a workspace is known yet (no disk opened, no key, no address, no token). Its RAM is
//! a file on tmpfs (`memory-backend-file`, `share=on`), and its device state is saved
//! with `x-ignore-shared`, so the saved state is a few dozen KiB.
//!
//! A workspace then starts by mapping that file *private* (copy-on-write: pages are
//! read lazily from the shared file, writes stay the clone's own, the file never
//! changes), loading the device state, and handing the agent its identity (`Boot`:
//! disk, key, IP and MAC, hostname, env, tokens, cmd, clock, fresh entropy), exactly
//! as on a cold boot. The agent steps the clock, mixes the entropy in and reseeds its
//! CRNG, and gives the NIC the workspace's MAC (`NetworkConfig::set_mac`: the saved
//! NIC carries the template's). `/proc/sys/kernel/random/boot_id` is drawn on first
//! read, after the reseed, so every clone has its own.
//!
//! Templates live in `/dev/shm/warren-templates/<key>/` (`memory`, `state`,
//! `template.json`); a host reboot clears them and the next start rebuilds. Any
//! failure falls back to a cold boot. Files QEMU must open are opened before it
//! confines itself (`-chroot`), and the state is handed over as an fd.

use crate::workspace::Node;
use crate::{io_err, NodeError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use warren_protocol::control::GuestMessage;
use warren_vmm::{MemoryFile, NetSpec, Vm, VmSpec};

/// Where templates are kept: tmpfs, so clones read their pages from memory.
pub const TEMPLATE_ROOT: &str = "/dev/shm/warren-templates";

/// A built template.
#[derive(Debug, Clone)]
pub struct Template {
    pub key: String,
    pub dir: PathBuf,
}

impl Template {
    pub fn memory(&self) -> PathBuf {
        self.dir.join("memory")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
}

/// What a template was built from, and how long that took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub inputs: String,
    pub boot_ms: f64,
    pub save_ms: f64,
    pub state_bytes: u64,
}

/// One build at a time per key, in this process.
static BUILDS: LazyLock<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

/// FNV-1a, 64 bit: a stable name for a template's inputs.
fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Everything in `spec` that shapes the VM, as one string. Paths of the kernel,
/// initramfs and image name their content (the caches key them by digest or by the
/// agent's identity), so a changed image, kernel or agent is a new template.
pub fn inputs(spec: &VmSpec) -> String {
    let disks: Vec<String> = spec
        .disks
        .iter()
        .map(|d| {
            let size = std::fs::metadata(&d.path).map(|m| m.len()).unwrap_or(0);
            // The writable disk differs per workspace: only its size matters (the guest
            // probed the device's capacity while the template booted).
            let name = if d.read_only {
                d.path.display().to_string()
            } else {
                "rw".into()
            };
            format!("{name}:{}:{}:{}:{size}", d.serial, d.format, d.read_only)
        })
        .collect();
    // The device models (QEMU's -device drivers and options that shape guest-visible
    // state), so a changed device set is a new template.
    let probe = VmSpec {
        memory_file: Some(MemoryFile {
            path: "/".into(),
            shared: false,
        }),
        ..spec.clone()
    };
    let args = warren_vmm::qemu::qemu_args(&probe);
    let devices: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "-device")
        .map(|w| w[1].split(",drive=").next().unwrap_or(""))
        .map(|d| d.split(",netdev=").next().unwrap_or(""))
        .collect();
    format!(
        "v3|{}|{}|{:?}|{}|{}|{}|{}|{}|{}",
        devices.join(";"),
        spec.kernel.display(),
        spec.initramfs,
        spec.cmdline,
        spec.cpus,
        spec.memory_mb,
        disks.join(","),
        spec.accel,
        spec.acpi
    )
}

fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(io_err("run ip"))?;
    if !out.status.success() {
        return Err(NodeError::Network(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A tap the template's NIC is attached to while it boots (the NIC's saved state must
/// match a clone's, which has a tap); never up, never addressed.
struct TemplateTap(String);

static TAPS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl TemplateTap {
    /// `wtp<pid>x<n>`: the builder's pid in the name, so a crash's leftover can be told
    /// apart from a live build.
    fn create() -> Result<TemplateTap> {
        let n = TAPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000;
        let name = format!("wtp{}x{n}", std::process::id());
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"])?;
        Ok(TemplateTap(name))
    }
}

impl Drop for TemplateTap {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", "dev", &self.0]);
    }
}

/// How many templates to keep on tmpfs: each holds the pages its guest touched while
/// booting (tens of MiB); the least recently used go first.
pub const KEEP_TEMPLATES: usize = 8;

fn touch(p: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(p) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Keep the `keep` most recently used templates (and always `current`). Clones
/// running from an evicted one keep their mapping; the next start builds it again.
fn evict_old_templates(keep: usize, current: &Path) {
    let Ok(rd) = std::fs::read_dir(TEMPLATE_ROOT) else {
        return;
    };
    let mut all: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let m = std::fs::metadata(e.path().join("template.json"))
                .and_then(|m| m.modified())
                .ok()?;
            Some((m, e.path()))
        })
        .collect();
    all.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, p) in all.into_iter().skip(keep) {
        if p != current {
            tracing::info!(template = %p.display(), "evicting an unused template");
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Remove template builds whose builder process is gone (a crash or kill mid-build):
/// their directories (`.build-<key>-<pid>`) and taps. Returns what was removed.
pub fn clean_interrupted_builds() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(TEMPLATE_ROOT) else {
        return removed;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(".build-")
            .and_then(|r| r.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !crate::reconcile::pid_alive(pid) && std::fs::remove_dir_all(e.path()).is_ok() {
            removed.push(name);
        }
    }
    for e in std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("wtp")
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !crate::reconcile::pid_alive(pid) && ip(&["link", "del", "dev", &name]).is_ok() {
            removed.push(name);
        }
    }
    removed
}

impl Node {
    /// The template for `spec` (a workspace's VM), built now if there is none.
    pub async fn template_for(&self, spec: &VmSpec) -> Result<Template> {
        let inputs = inputs(spec);
        let key = format!("{:016x}", fnv64(&inputs));
        let dir = Path::new(TEMPLATE_ROOT).join(&key);
        let t = Template {
            key: key.clone(),
            dir: dir.clone(),
        };
        let ready = |t: &Template| {
            t.memory().is_file() && t.state().is_file() && t.dir.join("template.json").is_file()
        };
        if ready(&t) {
            touch(&t.dir.join("template.json"));
            return Ok(t);
        }
        let lock = {
            let mut m = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(key.clone()).or_default().clone()
        };
        let _g = lock.lock().await;
        if ready(&t) {
            return Ok(t);
        }
        let span = tracing::info_span!("template", key = %key);
        let _e = span.enter();
        tracing::info!(%inputs, "building a template");
        self.build_template(spec, &inputs, &dir).await?;
        evict_old_templates(KEEP_TEMPLATES, &dir);
        Ok(t)
    }

    async fn build_template(&self, ws_spec: &VmSpec, inputs: &str, dir: &Path) -> Result<()> {
        let root = Path::new(TEMPLATE_ROOT);
        std::fs::create_dir_all(root).map_err(io_err(format!("create {}", root.display())))?;
        let build = root.join(format!(
            ".build-{}-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("t"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&build);
        std::fs::create_dir_all(&build).map_err(io_err(format!("create {}", build.display())))?;
        let r = self.build_in(ws_spec, inputs, &build).await;
        if let Err(e) = r {
            let _ = std::fs::remove_dir_all(&build);
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&build, dir).map_err(io_err(format!("keep {}", dir.display())))
    }

    async fn build_in(&self, ws_spec: &VmSpec, inputs: &str, build: &Path) -> Result<()> {
        let t0 = Instant::now();
        // A stand-in for the workspace's writable disk: same size, never mounted.
        let dummy = build.join("disk.raw");
        let mut disks = ws_spec.disks.clone();
        for d in disks.iter_mut().filter(|d| !d.read_only) {
            let size = std::fs::metadata(&d.path).map(|m| m.len()).unwrap_or(0);
            let f = std::fs::File::create(&dummy).map_err(io_err("create template disk"))?;
            f.set_len(size).map_err(io_err("size template disk"))?;
            d.path = dummy.clone();
        }
        let tap = TemplateTap::create()?;
        let key = fnv64(inputs);
        let spec = VmSpec {
            id: format!("tpl-{:08x}", key as u32),
            run_dir: build.to_path_buf(),
            disks,
            net: Some(NetSpec {
                tap: tap.0.clone(),
                // Not any workspace's: every clone is handed its own (`set_mac`).
                mac: "02:57:52:ff:ff:fe".into(),
            }),
            control_socket: build.join("agent.sock"),
            console_log: build.join("console.log"),
            // A builder that dies mid-build takes its VM along: nothing else would
            // ever end it (its run directory is not a workspace's).
            die_with_parent: true,
            memory_file: Some(MemoryFile {
                path: build.join("memory"),
                shared: true,
            }),
            ..ws_spec.clone()
        };
        let vm = self.engine().boot(&spec).await?;
        let r = async {
            let (_control, mut events) =
                crate::control::ControlChannel::connect(&spec.control_socket, &spec.id, vm.pid())
                    .await?;
            let timeout = Duration::from_secs(self.config.boot_timeout_secs);
            let hello = tokio::time::timeout(timeout, async {
                while let Some(m) = events.recv().await {
                    if matches!(m, GuestMessage::Hello { .. }) {
                        return true;
                    }
                }
                false
            })
            .await;
            if !matches!(hello, Ok(true)) {
                return Err(NodeError::Boot(format!(
                    "the template's agent never said hello; boot log: {}",
                    crate::workspace::tail(&spec.console_log)
                )));
            }
            let boot_ms = t0.elapsed().as_secs_f64() * 1000.0;
            // The agent now waits for its Boot: freeze it there. The host end of the
            // control port stays connected while saving, so the guest sees no hangup.
            let t = Instant::now();
            vm.snapshot(&build.join("state")).await?;
            let save_ms = t.elapsed().as_secs_f64() * 1000.0;
            let info = TemplateInfo {
                inputs: inputs.to_string(),
                boot_ms,
                save_ms,
                state_bytes: std::fs::metadata(build.join("state"))
                    .map(|m| m.len())
                    .unwrap_or(0),
            };
            tracing::info!(?info, "template built");
            std::fs::write(
                build.join("template.json"),
                serde_json::to_vec_pretty(&info).unwrap_or_default(),
            )
            .map_err(io_err("write template.json"))
        }
        .await;
        let _ = vm.kill().await;
        for f in ["disk.raw", "agent.sock", "qmp.sock"] {
            let _ = std::fs::remove_file(build.join(f));
        }
        r
    }

    /// Start `spec`'s VM from its template (built first if needed). `None`: templates
    /// are off. The caller boots cold when this fails.
    pub(crate) async fn start_from_template(&self, spec: &VmSpec) -> Result<Option<Box<dyn Vm>>> {
        if !self.config.templates {
            return Ok(None);
        }
        let t = self.template_for(spec).await?;
        let clone = VmSpec {
            memory_file: Some(MemoryFile {
                path: t.memory(),
                shared: false,
            }),
            ..spec.clone()
        };
        match self.engine().restore(&clone, &t.state()).await {
            Ok(vm) => Ok(Some(vm)),
            Err(e) => {
                // A template that cannot be restored is dropped: the next start builds
                // it again instead of failing the same way.
                tracing::warn!(key = %t.key, error = %e, "dropping a template that does not restore");
                let _ = std::fs::remove_dir_all(&t.dir);
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::control::{DATA_DISK_SERIAL, IMAGE_DISK_SERIAL};
    use warren_vmm::{Accel, DiskSpec, NetSpec};

    fn spec(dir: &Path) -> VmSpec {
        VmSpec {
            id: "ws_a".into(),
            run_dir: dir.join("ws_a"),
            kernel: "/cache/kernels/k-1/vmlinux".into(),
            initramfs: Some("/cache/initramfs/agent-1.cpio".into()),
            cmdline: "console=ttyS0".into(),
            cpus: 1,
            memory_mb: 256,
            disks: vec![
                DiskSpec {
                    path: "/cache/images/sha256-aaa/rootfs.ext4".into(),
                    read_only: true,
                    serial: IMAGE_DISK_SERIAL.into(),
                    format: "raw".into(),
                    key: None,
                },
                DiskSpec {
                    path: dir.join("ws_a/data.ext4"),
                    read_only: false,
                    serial: DATA_DISK_SERIAL.into(),
                    format: "raw".into(),
                    key: None,
                },
            ],
            net: Some(NetSpec {
                tap: "wt1".into(),
                mac: "02:57:52:00:00:01".into(),
            }),
            control_socket: dir.join("ws_a/agent.sock"),
            console_log: dir.join("ws_a/console.log"),
            accel: Accel::Tcg,
            acpi: false,
            die_with_parent: false,
            memory_file: None,
            hold_for_control: false,
        }
    }

    /// A changed image, kernel or agent (each named by its content in the caches),
    /// command line or shape is a new template; what differs per workspace (its id,
    /// run directory, disk file, tap, MAC) is not.
    #[test]
    fn templates_are_keyed_by_what_shapes_the_guest() {
        let d = tempfile::tempdir().unwrap();
        let base = inputs(&spec(d.path()));
        type Change = Box<dyn Fn(&mut VmSpec)>;
        let changed: Vec<(&str, Change)> = vec![
            (
                "kernel",
                Box::new(|s| s.kernel = "/cache/kernels/k-2/vmlinux".into()),
            ),
            (
                "agent",
                Box::new(|s| s.initramfs = Some("/cache/initramfs/agent-2.cpio".into())),
            ),
            (
                "image",
                Box::new(|s| s.disks[0].path = "/cache/images/sha256-bbb/rootfs.ext4".into()),
            ),
            ("cmdline", Box::new(|s| s.cmdline.push_str(" quiet"))),
            ("cpus", Box::new(|s| s.cpus = 2)),
            ("memory", Box::new(|s| s.memory_mb = 512)),
            ("accel", Box::new(|s| s.accel = Accel::Kvm)),
        ];
        for (what, f) in changed {
            let mut s = spec(d.path());
            f(&mut s);
            assert_ne!(inputs(&s), base, "a changed {what} kept the template");
        }
        let mut s = spec(d.path());
        s.id = "ws_b".into();
        s.run_dir = d.path().join("ws_b");
        s.disks[1].path = d.path().join("ws_b/data.ext4");
        s.net = Some(NetSpec {
            tap: "wt2".into(),
            mac: "02:57:52:00:00:02".into(),
        });
        s.control_socket = d.path().join("ws_b/agent.sock");
        s.console_log = d.path().join("ws_b/console.log");
        assert_eq!(inputs(&s), base, "another workspace of the same shape");
    }
}
