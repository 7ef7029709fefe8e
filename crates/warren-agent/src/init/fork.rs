//! Becoming a fork (`HostMessage::Fork`): this VM is a copy of another running
//! workspace's memory, with its processes, page cache and mounted disks. What makes a
//! workspace itself is replaced here: hostname, address and MAC, the runtime API's
//! token, the clock, the RNG state and the boot id.

use super::system;
use crate::api::ApiToken;
use crate::net;
use std::path::Path;
use std::time::Duration;
use warren_protocol::control::ForkIdentity;

/// The file bound over the kernel's boot id (on /run, a tmpfs).
const BOOT_ID_FILE: &str = "/run/warren/boot_id";
const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Apply `id`. The RNG is reseeded first, so nothing after (the boot id included)
/// is drawn from the parent's state. Returns a description of what failed.
pub fn become_fork(id: &ForkIdentity, token: Option<&ApiToken>) -> Result<(), String> {
    system::resumed(id.clock_unix_ns, &id.entropy_hex);
    // The token first: from here on the parent's token no longer opens this copy.
    if let Some(t) = token {
        t.set(id.api_token.expose());
    }
    let mut problems = system::set_hostname(Path::new("/"), &id.hostname);
    let dev = net::reconfigure(&id.network, Duration::from_secs(2))
        .map_err(|e| format!("network: {e}"))?;
    if !id.network.dns.is_empty() {
        if let Err(e) = net::write_resolv_conf(Path::new("/"), &id.network.dns) {
            problems.push(format!("/etc/resolv.conf: {e}"));
        }
    }
    set_boot_id(&id.boot_id)?;
    for p in &problems {
        tracing::warn!("fork: {p}");
    }
    tracing::info!(
        workspace_id = %id.workspace_id,
        "forked: now {} on {dev} {}/{}",
        id.hostname,
        id.network.address,
        id.network.prefix_len
    );
    Ok(())
}

/// The kernel draws its boot id once and never lets it change, and the parent's may
/// have been read already: bind a file with the new one over it. Every process sees
/// the same mount namespace as PID 1, so every later read gets the new id.
fn set_boot_id(uuid: &str) -> Result<(), String> {
    let valid = uuid.len() == 36
        && uuid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    if !valid {
        return Err(format!("boot id {uuid:?} is not a UUID"));
    }
    let _ = std::fs::create_dir_all("/run/warren");
    std::fs::write(BOOT_ID_FILE, format!("{uuid}\n"))
        .map_err(|e| format!("write {BOOT_ID_FILE}: {e}"))?;
    // A fork of a fork: drop the binding of the generation before.
    let _ = nix::mount::umount2(KERNEL_BOOT_ID, nix::mount::MntFlags::MNT_DETACH);
    nix::mount::mount(
        Some(BOOT_ID_FILE),
        KERNEL_BOOT_ID,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind {BOOT_ID_FILE} over {KERNEL_BOOT_ID}: {e}"))
}
