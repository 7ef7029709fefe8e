//! Choosing the accelerator.
//!
//! Hardware KVM needs VMX or SVM. A host whose /dev/kvm is PVM (a nested guest with the
//! `kvm_pvm` module) runs only PVM-enabled guest kernels, which no Debian package is: a
//! stock kernel hangs or dies with an emulation failure there. So `auto` picks KVM only
//! when the CPU has VMX/SVM and /dev/kvm opens, or when /dev/kvm is PVM and the guest
//! kernel is declared PVM-capable; otherwise QEMU's TCG.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// What the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVirt {
    pub dev_kvm_usable: bool,
    pub cpu_has_vmx_or_svm: bool,
    pub kvm_is_pvm: bool,
}

impl HostVirt {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_has_vmx_or_svm = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        let dev_kvm_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let kvm_is_pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
        HostVirt {
            dev_kvm_usable,
            cpu_has_vmx_or_svm,
            kvm_is_pvm,
        }
    }
}

/// Decide the accelerator and say why.
pub fn decide(
    choice: AccelChoice,
    host: &HostVirt,
    kernel_pvm_capable: bool,
) -> std::result::Result<(Accel, String), String> {
    let kvm_ok = host.dev_kvm_usable
        && ((host.cpu_has_vmx_or_svm && !host.kvm_is_pvm)
            || (host.kvm_is_pvm && kernel_pvm_capable));
    let why_not = if !host.dev_kvm_usable {
        "/dev/kvm cannot be opened".to_string()
    } else if host.kvm_is_pvm && !kernel_pvm_capable {
        "/dev/kvm is PVM (kvm_pvm), which boots only PVM-enabled guest kernels, and this guest kernel is not one".to_string()
    } else {
        "the CPU has no VMX/SVM".to_string()
    };
    match choice {
        AccelChoice::Tcg => Ok((Accel::Tcg, "TCG requested".into())),
        AccelChoice::Kvm if kvm_ok => Ok((Accel::Kvm, "KVM requested".into())),
        AccelChoice::Kvm => Err(why_not),
        AccelChoice::Auto if kvm_ok => Ok((
            Accel::Kvm,
            if host.kvm_is_pvm {
                "PVM with a PVM-capable guest kernel".into()
            } else {
                "hardware virtualisation (VMX/SVM)".into()
            },
        )),
        AccelChoice::Auto => Ok((Accel::Tcg, format!("TCG, because {why_not}"))),
    }
}

/// Probe the host and decide.
pub fn detect_accel(
    choice: AccelChoice,
    kernel_pvm_capable: bool,
) -> crate::Result<(Accel, String)> {
    decide(choice, &HostVirt::probe(), kernel_pvm_capable).map_err(crate::VmmError::KvmUnavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HW: HostVirt = HostVirt {
        dev_kvm_usable: true,
        cpu_has_vmx_or_svm: true,
        kvm_is_pvm: false,
    };
    const PVM: HostVirt = HostVirt {
        dev_kvm_usable: true,
        cpu_has_vmx_or_svm: false,
        kvm_is_pvm: true,
    };
    const NONE: HostVirt = HostVirt {
        dev_kvm_usable: false,
        cpu_has_vmx_or_svm: false,
        kvm_is_pvm: false,
    };

    #[test]
    fn hardware_kvm_is_used() {
        assert_eq!(decide(AccelChoice::Auto, &HW, false).unwrap().0, Accel::Kvm);
    }

    #[test]
    fn pvm_needs_a_pvm_kernel() {
        let (a, why) = decide(AccelChoice::Auto, &PVM, false).unwrap();
        assert_eq!(a, Accel::Tcg);
        assert!(why.contains("PVM"), "{why}");
        assert_eq!(decide(AccelChoice::Auto, &PVM, true).unwrap().0, Accel::Kvm);
        assert!(decide(AccelChoice::Kvm, &PVM, false).is_err());
    }

    #[test]
    fn no_kvm_falls_back_or_refuses() {
        assert_eq!(
            decide(AccelChoice::Auto, &NONE, false).unwrap().0,
            Accel::Tcg
        );
        assert!(decide(AccelChoice::Kvm, &NONE, false)
            .unwrap_err()
            .contains("/dev/kvm"));
        assert_eq!(decide(AccelChoice::Tcg, &HW, false).unwrap().0, Accel::Tcg);
    }
}
