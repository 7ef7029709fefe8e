//! The guest kernel command line, in one place.
//!
//! Each parameter and why:
//! * `console=ttyS0`: the serial console is the workspace's boot log.
//! * `reboot=t panic=-1`: a guest reboot or panic ends the VM at once (QEMU runs with
//!   `-no-reboot`), so the host notices instead of the guest looping.
//! * `tsc_early_khz=`: under TCG the kernel can hang forever calibrating the TSC against
//!   the PIT (seen in 20-50% of boots); giving the host's TSC rate avoids it.
//! * `8250.nr_uarts=1 i8042.* `: no probing for serial ports and a keyboard that do not
//!   exist.
//! * `cryptomgr.notests random.trust_cpu=on mitigations=off audit=0 lsm=capability
//!   no_timer_check`: skip boot-time work a disposable guest gains nothing from; the host
//!   also hands the guest fresh entropy over the control channel. `mitigations=off` is
//!   about the guest's own processes attacking each other; isolation between workspaces
//!   is the hypervisor's job.
//! * `pci=off`: `microvm` has no PCI bus; devices are virtio-mmio, found through ACPI
//!   (which must stay on: this kernel lacks VIRTIO_MMIO_CMDLINE_DEVICES).
//! * `quiet`: printk to the serial port costs real time under TCG.

/// Options that vary per host or per boot.
#[derive(Debug, Clone)]
pub struct CmdlineOptions {
    /// The host's TSC frequency in kHz.
    pub tsc_khz: u64,
    /// Extra parameters, appended last.
    pub extra: Vec<String>,
    /// Keep kernel messages on the console (debugging).
    pub verbose: bool,
}

pub const BASE_PARAMS: &[&str] = &[
    "console=ttyS0",
    "reboot=t",
    "panic=-1",
    "8250.nr_uarts=1",
    "i8042.noaux",
    "i8042.nokbd",
    "i8042.nopnp",
    "i8042.dumbkbd",
    "cryptomgr.notests",
    "random.trust_cpu=on",
    "mitigations=off",
    "audit=0",
    "lsm=capability",
    "pci=off",
    "no_timer_check",
];

pub fn kernel_cmdline(opts: &CmdlineOptions) -> String {
    let mut parts: Vec<String> = BASE_PARAMS.iter().map(|s| s.to_string()).collect();
    parts.push(format!("tsc_early_khz={}", opts.tsc_khz));
    if !opts.verbose {
        parts.push("quiet".into());
    }
    parts.extend(opts.extra.iter().cloned());
    parts.join(" ")
}

/// The host's TSC rate in kHz, read from /proc/cpuinfo (`cpu MHz`); 2 GHz if unknown.
pub fn host_tsc_khz() -> u64 {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0) as u64)
        .filter(|khz| *khz > 0)
        .unwrap_or(2_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_has_tsc_and_console() {
        let c = kernel_cmdline(&CmdlineOptions {
            tsc_khz: 2596124,
            extra: vec!["foo=1".into()],
            verbose: false,
        });
        assert!(c.starts_with("console=ttyS0 "));
        assert!(c.contains(" tsc_early_khz=2596124 "));
        assert!(c.ends_with(" quiet foo=1"));
    }

    #[test]
    fn tsc_is_read() {
        assert!(host_tsc_khz() > 100_000);
    }
}
