//! The kernel modules a workspace guest loads, in load order (dependencies first).
//!
//! The Debian cloud kernel builds these as modules (ext4 and the 8250 console are built
//! in). This list is the only place that names them: the initramfs builder copies exactly
//! these files and writes the same order to `/etc/warren/modules` for the agent.

/// Paths relative to `/lib/modules/<release>/kernel/`.
pub const GUEST_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    // Free page reporting: idle guest memory goes back to the host.
    "drivers/virtio/virtio_balloon.ko",
    "drivers/block/virtio_blk.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/char/virtio_console.ko",
    "fs/overlayfs/overlay.ko",
    // The encrypted writable disk: dm-crypt with AES-XTS (aes itself is built in;
    // xts needs ecb).
    "drivers/md/dm-mod.ko",
    "drivers/md/dm-crypt.ko",
    "crypto/ecb.ko",
    "crypto/xts.ko",
];

/// Where the agent finds the module list inside the initramfs.
pub const MODULE_LIST_PATH: &str = "etc/warren/modules";
