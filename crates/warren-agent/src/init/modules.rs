//! Loading the kernel modules listed in `/etc/warren/modules` with `finit_module`.
//!
//! Format: one absolute path to a `.ko` (optionally compressed) per line, in load order,
//! optionally followed by a space and module parameters. Blank lines and lines starting
//! with `#` are ignored. Like modprobe, `module.param=value` words of the kernel command
//! line are passed to the module they name.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

pub const MODULES_LIST: &str = "/etc/warren/modules";

/// `MODULE_INIT_COMPRESSED_FILE`: let the kernel (6.4+) decompress.
const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    pub path: String,
    pub params: String,
}

pub fn parse_list(text: &str) -> Vec<ModuleSpec> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((path, params)) => ModuleSpec {
                path: path.to_string(),
                params: params.trim().to_string(),
            },
            None => ModuleSpec {
                path: l.to_string(),
                params: String::new(),
            },
        })
        .collect()
}

/// The module name of a `.ko` path (`/x/virtio-net.ko.xz` -> `virtio_net`).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split('.').next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Parameters for `module` found on the kernel command line (`module.param=value`).
pub fn cmdline_params(cmdline: &str, module: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| {
            let (name, param) = w.split_once('.')?;
            (name.replace('-', "_") == module && param.contains('=')).then(|| param.to_string())
        })
        .collect()
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    pub already: usize,
    pub failed: Vec<String>,
}

fn load_one(m: &ModuleSpec) -> Result<bool, String> {
    let file = File::open(&m.path).map_err(|e| format!("{}: {e}", m.path))?;
    let params =
        CString::new(m.params.as_str()).map_err(|_| format!("{}: NUL in params", m.path))?;
    let compressed = [".xz", ".zst", ".gz"].iter().any(|s| m.path.ends_with(s));
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    // SAFETY: finit_module(fd, const char *params, int flags) with a valid fd and string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        Ok(false)
    } else {
        Err(format!("{}: {err}", m.path))
    }
}

/// Load every module of the list at `list` (a missing list means none).
pub fn load_all(list: &Path) -> LoadReport {
    let mut report = LoadReport::default();
    let Ok(text) = std::fs::read_to_string(list) else {
        return report;
    };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for mut m in parse_list(&text) {
        let extra = cmdline_params(&cmdline, &module_name(&m.path));
        if !extra.is_empty() {
            if !m.params.is_empty() {
                m.params.push(' ');
            }
            m.params.push_str(&extra.join(" "));
        }
        match load_one(&m) {
            Ok(true) => report.loaded += 1,
            Ok(false) => report.already += 1,
            Err(e) => report.failed.push(e),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_module_list() {
        let text = "# virtio first\n\
            /lib/modules/6.1/kernel/virtio.ko\n\
            \n   \n\
            /lib/modules/6.1/kernel/virtio_console.ko.xz\n\
            /lib/modules/6.1/kernel/loop.ko  max_loop=8 max_part=2 \n\
              # indented comment\n";
        let l = parse_list(text);
        assert_eq!(
            l,
            vec![
                ModuleSpec {
                    path: "/lib/modules/6.1/kernel/virtio.ko".into(),
                    params: "".into()
                },
                ModuleSpec {
                    path: "/lib/modules/6.1/kernel/virtio_console.ko.xz".into(),
                    params: "".into()
                },
                ModuleSpec {
                    path: "/lib/modules/6.1/kernel/loop.ko".into(),
                    params: "max_loop=8 max_part=2".into()
                },
            ]
        );
        assert!(parse_list("").is_empty());
    }

    #[test]
    fn kernel_cmdline_params() {
        assert_eq!(module_name("/lib/m/virtio-net.ko.xz"), "virtio_net");
        assert_eq!(module_name("overlay.ko"), "overlay");
        let cmdline = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 overlay.metacopy=N quiet";
        assert_eq!(
            cmdline_params(cmdline, "virtio_mmio"),
            vec!["device=4K@0xd0000000:5".to_string()]
        );
        assert_eq!(cmdline_params(cmdline, "overlay"), vec!["metacopy=N"]);
        assert!(cmdline_params(cmdline, "virtio_blk").is_empty());
    }

    #[test]
    fn missing_files_are_reported_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let list = d.path().join("modules");
        std::fs::write(&list, "/no/such/module.ko\n").unwrap();
        let r = load_all(&list);
        assert_eq!(r.loaded, 0);
        assert_eq!(r.failed.len(), 1);
        assert!(r.failed[0].contains("/no/such/module.ko"));
        assert!(load_all(&d.path().join("absent")).failed.is_empty());
    }
}
