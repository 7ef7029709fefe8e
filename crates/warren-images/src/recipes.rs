//! Building catalog images from Debian packages: `busybox` from the `busybox-static` .deb,
//! the others with `debootstrap --variant=minbase`.
//!
//! A recipe image's digest is a hash of the recipe (a version constant, the suite, the package
//! list, the runtime config and, for busybox, the .deb's sha256), so an image is rebuilt only
//! when its recipe changes.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::catalog::{CatalogEntry, Recipe};
use crate::digest::{sha256_file, sha256_of};
use crate::error::{ImageError, IoContext};
use crate::progress::Progress;

/// Bump when a recipe's output changes in a way its inputs do not capture.
pub(crate) const RECIPE_VERSION: u32 = 2;

const BUSYBOX_PACKAGE: &str = "busybox-static";

/// A downloaded .deb.
#[derive(Debug, Clone)]
pub(crate) struct Deb {
    pub path: PathBuf,
    /// `sha256:<hex>`.
    pub sha256: String,
}

/// The recipe digest: everything that determines the image's content.
pub(crate) fn recipe_digest(entry: &CatalogEntry, suite: &str, deb: Option<&Deb>) -> String {
    let mut s = format!(
        "warren-recipe v{RECIPE_VERSION}\nname {}\nsuite {suite}\n",
        entry.name
    );
    match &entry.recipe {
        Recipe::Busybox => s.push_str("recipe busybox\n"),
        Recipe::Debootstrap { packages, extra } => {
            let mut p = packages.clone();
            p.sort();
            s.push_str(&format!(
                "recipe debootstrap minbase\npackages {}\nextra {}\n",
                p.join(","),
                extra.join(",")
            ));
        }
    }
    if let Some(d) = deb {
        s.push_str(&format!("deb {}\n", d.sha256));
    }
    s.push_str(&format!(
        "config {}\n",
        serde_json::to_string(&entry.config).unwrap_or_default()
    ));
    sha256_of(s.as_bytes())
}

fn run(what: &str, cmd: &mut Command) -> Result<std::process::Output, ImageError> {
    let program = cmd.get_program().to_string_lossy().to_string();
    let out = cmd
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::build(what, format!("cannot run {program}: {e}")))?;
    Ok(out)
}

/// The candidate version's sha256 according to the local apt lists, if apt knows it.
fn apt_candidate_sha256(package: &str) -> Option<String> {
    let out = run(
        "apt metadata",
        Command::new("apt-cache").args(["show", "--no-all-versions", package]),
    )
    .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("SHA256: "))
        .map(|h| format!("sha256:{}", h.trim()))
}

fn cached_debs(dir: &Path, package: &str) -> Vec<PathBuf> {
    let mut v: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
        })
        .map(|e| {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, e.path())
        })
        .collect();
    v.sort();
    v.into_iter().rev().map(|(_, p)| p).collect()
}

/// Find the busybox-static .deb: reuse a cached one matching apt's candidate, otherwise
/// `apt-get download` it (running `apt-get update` once if apt has no lists yet). Offline
/// with a cached .deb, the newest cached one is used.
pub(crate) fn busybox_deb(debs_dir: &Path, progress: &dyn Progress) -> Result<Deb, ImageError> {
    let what = "the busybox image";
    let candidate = apt_candidate_sha256(BUSYBOX_PACKAGE);
    let cached = cached_debs(debs_dir, BUSYBOX_PACKAGE);
    if let Some(want) = &candidate {
        for p in &cached {
            if sha256_file(p)? == *want {
                return Ok(Deb {
                    path: p.clone(),
                    sha256: want.clone(),
                });
            }
        }
    }
    progress.phase(&format!("apt-get download {BUSYBOX_PACKAGE}"));
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".download-{}-", std::process::id()))
        .tempdir_in(debs_dir)
        .ctx("create a temporary directory in", debs_dir)?;
    let download = || {
        run(
            what,
            Command::new("apt-get")
                .args(["download", "-q", BUSYBOX_PACKAGE])
                .current_dir(tmp.path()),
        )
    };
    let mut out = download()?;
    if !out.status.success() {
        tracing::info!("apt-get download failed; running apt-get update once and retrying");
        progress.phase("apt-get update");
        let upd = run(what, Command::new("apt-get").args(["update", "-q"]))?;
        if upd.status.success() {
            progress.phase(&format!("apt-get download {BUSYBOX_PACKAGE}"));
            out = download()?;
        }
    }
    if !out.status.success() {
        if let Some(p) = cached.first() {
            tracing::warn!(deb = %p.display(), "apt-get download failed; using the cached .deb");
            return Ok(Deb {
                path: p.clone(),
                sha256: sha256_file(p)?,
            });
        }
        return Err(ImageError::build(
            what,
            format!(
                "`apt-get download {BUSYBOX_PACKAGE}` failed: {}. Check that the Debian mirror in \
                 /etc/apt/sources.list is reachable and run `apt-get update`",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let got = fs::read_dir(tmp.path())
        .ctx("list", tmp.path())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().map(|x| x == "deb").unwrap_or(false))
        .ok_or_else(|| ImageError::build(what, "apt-get download succeeded but left no .deb"))?;
    let sha256 = sha256_file(&got)?;
    if let Some(want) = &candidate {
        if *want != sha256 {
            return Err(ImageError::corrupt(
                format!("downloaded {}", got.display()),
                format!(
                    "hashes to {sha256} but apt's lists say {want}; run apt-get update and retry"
                ),
            ));
        }
    }
    let file_name = got
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "busybox-static.deb".into());
    let dest = debs_dir.join(file_name);
    fs::rename(&got, &dest).ctx("move into place", &dest)?;
    Ok(Deb { path: dest, sha256 })
}

fn write_file(p: &Path, content: &str, mode: u32) -> Result<(), ImageError> {
    fs::write(p, content).ctx("write", p)?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).ctx("chmod", p)
}

fn mkdirs(root: &Path, dirs: &[(&str, u32)]) -> Result<(), ImageError> {
    for (d, mode) in dirs {
        let p = root.join(d);
        fs::create_dir_all(&p).ctx("create directory", &p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).ctx("chmod", &p)?;
    }
    Ok(())
}

/// Populate `staging` with a busybox root file system from `deb`.
pub(crate) fn build_busybox(
    staging: &Path,
    deb: &Deb,
    scratch: &Path,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let what = "the busybox image";
    progress.phase("unpacking busybox-static");
    let x = scratch.join("deb");
    fs::create_dir_all(&x).ctx("create directory", &x)?;
    let out = run(what, Command::new("dpkg").arg("-x").arg(&deb.path).arg(&x))?;
    if !out.status.success() {
        return Err(ImageError::build(
            what,
            format!(
                "dpkg -x {} failed: {}; delete the file so it is downloaded again",
                deb.path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let bin = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| x.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            ImageError::build(
                what,
                format!("{} contains no busybox binary", deb.path.display()),
            )
        })?;

    mkdirs(
        staging,
        &[
            ("bin", 0o755),
            ("sbin", 0o755),
            ("usr/bin", 0o755),
            ("usr/sbin", 0o755),
            ("etc", 0o755),
            ("proc", 0o555),
            ("sys", 0o555),
            ("dev", 0o755),
            ("run", 0o755),
            ("tmp", 0o1777),
            ("root", 0o700),
            ("home", 0o755),
            ("var/log", 0o755),
            ("var/tmp", 0o1777),
        ],
    )?;
    let dest = staging.join("bin/busybox");
    fs::copy(&bin, &dest).ctx("copy busybox to", &dest)?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).ctx("chmod", &dest)?;

    let out = run(what, Command::new(&dest).arg("--list-full"))?;
    if !out.status.success() {
        return Err(ImageError::build(
            what,
            format!(
                "busybox --list-full failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let mut n = 0;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        let link = staging.join(applet);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).ctx("create directory", parent)?;
        }
        if fs::symlink_metadata(&link).is_ok() {
            continue;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link).ctx("create symlink", &link)?;
        n += 1;
    }
    if fs::symlink_metadata(staging.join("bin/sh")).is_err() {
        return Err(ImageError::build(
            what,
            "busybox does not provide sh (no bin/sh applet)",
        ));
    }
    tracing::debug!(applets = n, "busybox applets linked");

    let etc = staging.join("etc");
    write_file(
        &etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    write_file(&etc.join("group"), "root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    write_file(
        &etc.join("hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    write_file(&etc.join("resolv.conf"), "", 0o644)?;
    Ok(())
}

/// Run `cmd`, appending its output to `log` and turning lines that `phase_of` recognises
/// into progress phases. Returns whether it succeeded and its last lines.
fn run_logged(
    cmd: &mut Command,
    log: &mut fs::File,
    progress: &dyn Progress,
    phase_of: fn(&str) -> Option<String>,
) -> Result<(bool, String), std::io::Error> {
    cmd.env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    // stderr goes through a helper thread; both end up in the log, stdout drives progress.
    let stderr = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    let err_thread = std::thread::spawn(move || {
        if let Some(e) = stderr {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                let _ = tx2.send(line);
            }
        }
    });
    let stdout = child.stdout.take();
    let out_thread = std::thread::spawn(move || {
        if let Some(o) = stdout {
            for line in BufReader::new(o).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }
    });
    let mut tail: VecDeque<String> = VecDeque::new();
    for line in rx {
        let _ = writeln!(log, "{line}");
        if let Some(p) = phase_of(&line) {
            progress.phase(&p);
        }
        tail.push_back(line);
        if tail.len() > 25 {
            tail.pop_front();
        }
    }
    let _ = err_thread.join();
    let _ = out_thread.join();
    let status = child.wait()?;
    Ok((status.success(), Vec::from(tail).join("\n")))
}

fn debootstrap_phase(line: &str) -> Option<String> {
    line.strip_prefix("I: ")
        .map(|m| format!("debootstrap: {m}"))
}

fn apt_phase(line: &str) -> Option<String> {
    line.strip_prefix("Setting up ")
        .or_else(|| line.strip_prefix("Unpacking "))
        .map(|m| format!("apt-get install: {}", m.split(' ').next().unwrap_or(m)))
}

/// Mount /proc in the new root for package scripts; `unmount_below` takes it down.
fn mount_proc(root: &Path) {
    let target = root.join("proc");
    let (Ok(src), Ok(tgt)) = (
        std::ffi::CString::new("proc"),
        std::ffi::CString::new(target.as_os_str().as_encoded_bytes()),
    ) else {
        return;
    };
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not mount /proc in the new root; continuing without");
    }
}

/// Populate `staging` with `debootstrap --variant=minbase SUITE` plus `packages` (via
/// `--include`), then `extra` with `apt-get install --no-install-recommends` inside it:
/// apt orders big dependency graphs (npm's) correctly, debootstrap does not.
pub(crate) fn build_debootstrap(
    staging: &Path,
    suite: &str,
    mirror: &str,
    packages: &[String],
    extra: &[String],
    log_path: &Path,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let what = format!(
        "the debootstrap image ({suite} + {})",
        packages
            .iter()
            .chain(extra)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut log = fs::File::create(log_path).ctx("create", log_path)?;
    progress.phase(&format!("debootstrap {suite} (this takes a few minutes)"));
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase");
    if !packages.is_empty() {
        cmd.arg(format!("--include={}", packages.join(",")));
    }
    cmd.arg(suite).arg(staging).arg(mirror);
    let (ok, tail) = run_logged(&mut cmd, &mut log, progress, debootstrap_phase).map_err(|e| {
        ImageError::build(
            &what,
            format!("cannot run debootstrap ({e}); install it with apt-get install debootstrap"),
        )
    })?;
    unmount_below(staging);
    if !ok {
        let dlog = staging.join("debootstrap/debootstrap.log");
        let extra_log = fs::read_to_string(&dlog)
            .ok()
            .map(|s| {
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(15)..].join("\n")
            })
            .unwrap_or_default();
        return Err(ImageError::build(
            what,
            format!(
                "debootstrap failed. Last output:\n{tail}\n{extra_log}\nCheck that the mirror \
                 {mirror} is reachable and the package names exist in {suite}"
            ),
        ));
    }

    if !extra.is_empty() {
        progress.phase(&format!("apt-get install {}", extra.join(" ")));
        // No services may start inside the build (postgresql's postinst tries to).
        let policy = staging.join("usr/sbin/policy-rc.d");
        write_file(&policy, "#!/bin/sh\nexit 101\n", 0o755)?;
        let resolv = staging.join("etc/resolv.conf");
        if fs::metadata(&resolv).is_err() {
            let _ = fs::remove_file(&resolv);
            let _ = fs::copy("/etc/resolv.conf", &resolv);
        }
        mount_proc(staging);
        let apt = |args: &[&str], log: &mut fs::File| {
            let mut c = Command::new("chroot");
            c.arg(staging)
                .arg("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("PATH", crate::catalog::STANDARD_PATH);
            run_logged(&mut c, log, progress, apt_phase)
        };
        let result = apt(&["update", "-q"], &mut log).and_then(|(ok, tail)| {
            if !ok {
                return Ok((false, tail));
            }
            let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
            args.extend(extra.iter().map(|s| s.as_str()));
            apt(&args, &mut log)
        });
        unmount_below(staging);
        let _ = fs::remove_file(&policy);
        match result {
            Ok((true, _)) => {}
            Ok((false, tail)) => {
                return Err(ImageError::build(
                    what,
                    format!(
                        "apt-get install in the new root failed. Last output:\n{tail}\nCheck \
                         that the mirror {mirror} is reachable and the packages exist in {suite}"
                    ),
                ))
            }
            Err(e) => {
                return Err(ImageError::build(
                    what,
                    format!("cannot run chroot apt-get ({e})"),
                ))
            }
        }
    }
    progress.phase("cleaning apt caches");
    clean_debian_root(staging)?;
    Ok(())
}

fn remove_children(dir: &Path, keep: &[&str]) -> Result<(), ImageError> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if keep.iter().any(|k| e.file_name() == *k) {
            continue;
        }
        let p = e.path();
        let r = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.ctx("remove", &p)?;
    }
    Ok(())
}

/// Drop caches and host-specific files from a freshly bootstrapped root.
fn clean_debian_root(root: &Path) -> Result<(), ImageError> {
    remove_children(&root.join("var/cache/apt/archives"), &["partial", "lock"])?;
    if let Ok(rd) = fs::read_dir(root.join("var/cache/apt")) {
        for e in rd.flatten() {
            if e.path().extension().map(|x| x == "bin").unwrap_or(false) {
                fs::remove_file(e.path()).ctx("remove", e.path())?;
            }
        }
    }
    remove_children(&root.join("var/lib/apt/lists"), &["partial", "lock"])?;
    remove_children(
        &root.join("var/cache/debconf"),
        &["config.dat", "templates.dat", "passwords.dat"],
    )?;
    for f in [
        "var/cache/debconf/config.dat-old",
        "var/cache/debconf/templates.dat-old",
        "var/log/bootstrap.log",
    ] {
        let _ = fs::remove_file(root.join(f));
    }
    let resolv = root.join("etc/resolv.conf");
    let _ = fs::remove_file(&resolv);
    write_file(&resolv, "# written by the workspace at boot\n", 0o644)?;
    write_file(&root.join("etc/hostname"), "warren\n", 0o644)?;
    let mid = root.join("etc/machine-id");
    if mid.exists() {
        write_file(&mid, "", 0o444)?;
    }
    // Keep later `apt-get install` in the workspace from filling the overlay with .debs.
    let conf = root.join("etc/apt/apt.conf.d/90warren-clean");
    if conf.parent().map(|p| p.is_dir()).unwrap_or(false) {
        write_file(
            &conf,
            "APT::Keep-Downloaded-Packages \"false\";\nDPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb || true\"; };\n",
            0o644,
        )?;
    }
    Ok(())
}

/// Detach every mount at or below `dir` (left by an interrupted debootstrap), deepest first,
/// so that removing the staging tree never descends into the host's /proc or /sys.
pub(crate) fn unmount_below(dir: &Path) {
    let Ok(canon) = fs::canonicalize(dir) else {
        return;
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&canon))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: `c` is a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            tracing::warn!(mount = %p.display(), error = %std::io::Error::last_os_error(), "could not unmount");
        } else {
            tracing::info!(mount = %p.display(), "unmounted leftover mount in staging");
        }
    }
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::builtin;

    #[test]
    fn digests_depend_on_recipe_inputs() {
        let cat = builtin();
        let debian = cat
            .iter()
            .find(|e| e.name == "debian-12")
            .expect("debian-12");
        let python = cat
            .iter()
            .find(|e| e.name == "python-3.11")
            .expect("python");
        let a = recipe_digest(debian, "bookworm", None);
        assert_eq!(a, recipe_digest(debian, "bookworm", None));
        assert_ne!(a, recipe_digest(debian, "trixie", None));
        assert_ne!(a, recipe_digest(python, "bookworm", None));
        let bb = cat.iter().find(|e| e.name == "busybox").expect("busybox");
        let d1 = Deb {
            path: "x".into(),
            sha256: sha256_of(b"1"),
        };
        let d2 = Deb {
            path: "x".into(),
            sha256: sha256_of(b"2"),
        };
        assert_ne!(
            recipe_digest(bb, "bookworm", Some(&d1)),
            recipe_digest(bb, "bookworm", Some(&d2))
        );
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
