//! Power-off: tell the host, stop every process, flush the disks, power off.

use crate::control::ControlTx;
use crate::init::mounts;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};
use warren_protocol::control::GuestMessage;

const PF_KTHREAD: u64 = 0x0020_0000;

/// Parse `/proc/<pid>/stat` and tell whether it is a user-space process.
pub fn is_user_process(stat: &str) -> bool {
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    // Fields after the command: state ppid pgrp session tty_nr tpgid flags ...
    let flags = stat[close + 1..]
        .split_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(PF_KTHREAD);
    flags & PF_KTHREAD == 0
}

/// How many user-space processes other than us exist.
fn other_processes() -> usize {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter_map(|de| de.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| is_user_process(&s))
                .unwrap_or(false)
        })
        .count()
}

async fn wait_for_others(limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if other_processes() == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    other_processes() == 0
}

/// Stop everything and power off. Never returns.
pub async fn poweroff(control: &ControlTx, data: Option<&OwnedFd>, reason: &str) -> ! {
    tracing::info!("powering off: {reason}");
    control
        .send_and_wait(&GuestMessage::ShuttingDown, Duration::from_secs(1))
        .await;
    // kill(-1) reaches every process except PID 1 itself; the reaper collects them.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    if !wait_for_others(Duration::from_secs(2)).await {
        tracing::info!("processes still running after SIGTERM; sending SIGKILL");
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        wait_for_others(Duration::from_secs(1)).await;
    }
    nix::unistd::sync();
    mounts::remount_readonly(data);
    nix::unistd::sync();
    tracing::info!("power off");
    control
        .send_and_wait(&GuestMessage::Halted, Duration::from_secs(1))
        .await;
    // Reboot, not power off: the host runs QEMU with -no-reboot, so a reboot ends the
    // VM where the kernel can reboot; powering off needs ACPI, which the minimal guest
    // kernel (acpi=off) lacks. Where neither works, the host ends the VM on `Halted`.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    super::idle_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_threads_are_not_user_processes() {
        // kthreadd: flags 2129984 = 0x208040 (PF_KTHREAD set)
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        let user = "812 (my (odd) prog) S 1 812 812 0 -1 4194560 120 0 0 0 1 0 0 0 20 0 1 0";
        assert!(!is_user_process(kthread));
        assert!(is_user_process(user));
        assert!(!is_user_process("garbage"));
    }
}
