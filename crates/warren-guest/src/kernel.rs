//! The guest kernel: a pinned Debian package, fetched once and cached.

use crate::modules::GUEST_MODULES;
use crate::{io_err, sha256_file, GuestError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A Debian kernel package pinned by version and checksum.
#[derive(Debug, Clone, Copy)]
pub struct KernelPin {
    pub package: &'static str,
    pub version: &'static str,
    pub sha256: &'static str,
    /// `uname -r` of the kernel, the directory name under /lib/modules.
    pub release: &'static str,
}

/// The default guest kernel: Debian 12's cloud kernel (virtio, ext4, PVH entry).
pub const DEBIAN_CLOUD_KERNEL: KernelPin = KernelPin {
    package: "linux-image-6.1.0-56-cloud-amd64",
    version: "6.1.192-2",
    sha256: "e7d02b943971edcb8790e256c02cfab3bca6c3d37c1bf25392a57c71300615ee",
    release: "6.1.0-56-cloud-amd64",
};

/// Where scripts/build-kernel.sh leaves Warren's minimal kernel, under the cache dir
/// (a link to the build of the current config).
pub const MINIMAL_KERNEL_PATH: &str = "kernel-custom/current/vmlinux";

/// A kernel ready to boot: its ELF image and the modules the guest needs.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub release: String,
    pub vmlinux: PathBuf,
    /// `(path inside the initramfs, host file)` for each module, in load order.
    pub modules: Vec<(String, PathBuf)>,
    /// Debian's kernel lacks VIRTIO_MMIO_CMDLINE_DEVICES, so under `microvm` it finds
    /// the virtio devices only through ACPI. Our own kernel has it and boots with ACPI
    /// off (faster).
    pub needs_acpi: bool,
}

impl GuestKernel {
    /// A kernel the user built with everything built in (no modules).
    pub fn custom(release: &str, vmlinux: PathBuf) -> Self {
        GuestKernel {
            release: release.to_string(),
            vmlinux,
            modules: Vec::new(),
            needs_acpi: false,
        }
    }

    /// Warren's minimal kernel as scripts/build-kernel.sh leaves it: `vmlinux` with the
    /// `config` it was built from beside it. Builds whose config has ACPI and PCI find
    /// their devices through microvm's ACPI tables and can power off, reboot and panic
    /// out of the VM, so they boot with ACPI on; older builds (ACPI without PCI, which
    /// cannot load those tables) boot with `acpi=off` as before. `None`: not built.
    pub fn minimal(vmlinux: PathBuf) -> Option<Self> {
        if !vmlinux.is_file() {
            return None;
        }
        let config = vmlinux
            .parent()
            .map(|d| std::fs::read_to_string(d.join("config")).unwrap_or_default())
            .unwrap_or_default();
        let has = |opt: &str| config.lines().any(|l| l.trim() == format!("{opt}=y"));
        Some(GuestKernel {
            release: "minimal".to_string(),
            vmlinux,
            modules: Vec::new(),
            needs_acpi: has("CONFIG_ACPI") && has("CONFIG_PCI"),
        })
    }

    /// Fetch (once) and return the pinned Debian kernel under `cache_dir/kernel/`.
    pub fn debian(pin: &KernelPin, cache_dir: &Path) -> Result<Self, GuestError> {
        let dir = cache_dir
            .join("kernel")
            .join(format!("{}-{}", pin.release, &pin.sha256[..12]));
        let done = dir.join("complete");
        if !done.exists() {
            fetch(pin, &dir)?;
        }
        let mod_root = dir.join("modules");
        let mut modules = Vec::new();
        for m in GUEST_MODULES {
            let host = mod_root.join(m);
            if !host.exists() {
                return Err(GuestError::ModuleMissing {
                    module: m.to_string(),
                    dir: mod_root.clone(),
                });
            }
            modules.push((format!("lib/modules/{}/kernel/{}", pin.release, m), host));
        }
        Ok(GuestKernel {
            release: pin.release.to_string(),
            vmlinux: dir.join("vmlinux"),
            modules,
            needs_acpi: true,
        })
    }
}

fn fetch(pin: &KernelPin, dir: &Path) -> Result<(), GuestError> {
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    // Serialise concurrent fetches (parallel tests, two `warren run`s).
    let _lock = crate::initramfs::FileLock::acquire(&parent.join(".fetch.lock"))?;
    if dir.join("complete").exists() {
        return Ok(());
    }
    tracing::info!(
        package = pin.package,
        version = pin.version,
        "fetching guest kernel"
    );
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(parent)
        .map_err(io_err("create temp dir"))?;
    let spec = format!("{}={}", pin.package, pin.version);
    let out = Command::new("apt-get")
        .args(["download", "-q", &spec])
        .current_dir(work.path())
        .output()
        .map_err(|e| GuestError::Fetch {
            package: spec.clone(),
            reason: format!("cannot run apt-get: {e}"),
        })?;
    if !out.status.success() {
        return Err(GuestError::Fetch {
            package: spec,
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let deb = std::fs::read_dir(work.path())
        .map_err(io_err("list download dir"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| GuestError::Fetch {
            package: spec.clone(),
            reason: "apt-get download produced no .deb".into(),
        })?;
    let actual = sha256_file(&deb)?;
    if actual != pin.sha256 {
        return Err(GuestError::Checksum {
            package: spec,
            expected: pin.sha256.into(),
            actual,
        });
    }
    let unpacked = work.path().join("x");
    let st = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .status()
        .map_err(io_err("run dpkg -x"))?;
    if !st.success() {
        return Err(GuestError::Fetch {
            package: spec,
            reason: "dpkg -x failed".into(),
        });
    }
    let stage = work.path().join("stage");
    std::fs::create_dir_all(stage.join("modules")).map_err(io_err("create stage"))?;
    let bz = unpacked.join(format!("boot/vmlinuz-{}", pin.release));
    crate::vmlinux::extract_vmlinux(&bz, &stage.join("vmlinux"))?;
    std::fs::copy(&bz, stage.join("vmlinuz")).map_err(io_err("copy vmlinuz"))?;
    // Keep every module of the package (not just today's list), so changing
    // GUEST_MODULES never needs a new download.
    let src_mods = unpacked.join(format!("lib/modules/{}/kernel", pin.release));
    std::fs::remove_dir(stage.join("modules")).map_err(io_err("prepare module dir"))?;
    std::fs::rename(&src_mods, stage.join("modules")).map_err(io_err("stage modules"))?;
    std::fs::write(stage.join("complete"), format!("{spec} {actual}\n"))
        .map_err(io_err("write marker"))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err("remove stale kernel dir"))?;
    }
    std::fs::rename(&stage, dir).map_err(io_err(format!("install {}", dir.display())))?;
    Ok(())
}
