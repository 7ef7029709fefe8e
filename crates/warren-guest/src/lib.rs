//! Guest assets prepared by the host before a workspace VM boots.
//!
//! * [`kernel`]: the pinned Debian kernel package, fetched with `apt-get download`,
//!   verified against its sha256, unpacked with `dpkg -x` into a cache (nothing is
//!   installed into the host's /boot), and its `vmlinux` extracted ([`vmlinux`]) so QEMU
//!   can boot the ELF through its PVH entry, which is faster than the bzImage path.
//! * [`initramfs`]: a newc archive holding our agent as `/init` and exactly the kernel
//!   modules the guest needs ([`modules::GUEST_MODULES`], loaded in that order).
//! * [`cmdline`]: the kernel command line, in one place.

pub mod cmdline;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod vmlinux;

use std::path::PathBuf;

pub use cmdline::{kernel_cmdline, CmdlineOptions};
pub use initramfs::{build_initramfs, FileLock};
pub use kernel::{GuestKernel, KernelPin, DEBIAN_CLOUD_KERNEL};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("could not fetch kernel package {package}: {reason}. Check that apt-get can reach a Debian mirror (run `apt-get update`), or point guest.kernel at a kernel you built")]
    Fetch { package: String, reason: String },
    #[error("kernel package {package} has sha256 {actual}, expected {expected}: refusing to use it (a mirror serving another build, or a corrupt download)")]
    Checksum {
        package: String,
        expected: String,
        actual: String,
    },
    #[error("no LZ4-compressed payload found in {0}: not a Debian x86 bzImage of the pinned kind")]
    NoPayload(PathBuf),
    #[error("corrupt kernel payload in {path}: {reason}")]
    CorruptPayload { path: PathBuf, reason: String },
    #[error("guest agent binary not found at {0}: build it with `scripts/build-agent.sh` (a statically linked warren-agent) or set WARREN_AGENT")]
    AgentMissing(PathBuf),
    #[error("the guest agent {0} is not a statically linked executable (it would fail as the VM's /init): use the one scripts/build.sh builds, target/x86_64-unknown-linux-gnu/agent/warren-agent")]
    AgentNotStatic(PathBuf),
    #[error("kernel module {module} missing from {dir}")]
    ModuleMissing { module: String, dir: PathBuf },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestError {
    let context = context.into();
    move |source| GuestError::Io { context, source }
}

/// Everything QEMU needs to boot a guest.
#[derive(Debug, Clone)]
pub struct GuestAssets {
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_release: String,
    /// The kernel finds its devices only through ACPI (see `GuestKernel::needs_acpi`).
    pub needs_acpi: bool,
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &std::path::Path) -> Result<String, GuestError> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(format!("read {}", path.display())))?;
    Ok(hex::encode(h.finalize()))
}
