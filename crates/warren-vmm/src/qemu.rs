//! The QEMU `microvm` engine.
//!
//! One QEMU process per VM: virtio-mmio devices (found by the guest through ACPI),
//! virtio-blk disks told apart by serial, virtio-net on a host tap, and a virtio-serial
//! port for the agent's control channel (the host has no vhost-vsock). The guest's serial
//! console goes to a log file; QMP on a Unix socket controls the VM. The accelerator
//! flags are the only difference between KVM and TCG.

use crate::qmp::Qmp;
use crate::{io_err, Accel, Result, Vm, VmExit, VmSpec, Vmm, VmmError};
use async_trait::async_trait;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::watch;

use warren_protocol::control::PORT_NAME as AGENT_PORT_NAME;

const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct QemuVmm {
    pub binary: PathBuf,
    /// How each VMM is confined (see [`crate::confine`]); `None`: not at all.
    pub confine: Option<crate::confine::ConfineSetup>,
}

impl QemuVmm {
    pub fn new(binary: PathBuf) -> Result<Self> {
        let found = if binary.components().count() > 1 {
            binary.is_file()
        } else {
            which(&binary).is_some()
        };
        if !found {
            return Err(VmmError::BinaryMissing(binary));
        }
        Ok(QemuVmm {
            binary,
            confine: None,
        })
    }

    /// Confine every VMM started from now on (own uid, chroot, mount namespace,
    /// cgroup with limits, seccomp).
    pub fn with_confinement(mut self, policy: crate::confine::ConfinePolicy) -> Self {
        self.confine = Some(crate::confine::ConfineSetup::new(policy));
        self
    }

    async fn spawn(&self, spec: &VmSpec, incoming: bool) -> Result<QemuVm> {
        for (what, p) in [
            ("kernel", Some(&spec.kernel)),
            ("initramfs", spec.initramfs.as_ref()),
        ] {
            if let Some(p) = p {
                if !p.is_file() {
                    return Err(VmmError::Missing {
                        what,
                        path: p.clone(),
                    });
                }
            }
        }
        for d in &spec.disks {
            if !d.path.exists() {
                return Err(VmmError::Missing {
                    what: "disk",
                    path: d.path.clone(),
                });
            }
        }
        std::fs::create_dir_all(&spec.run_dir)
            .map_err(io_err(format!("create {}", spec.run_dir.display())))?;
        let qmp_path = qmp_socket(spec);
        let _ = std::fs::remove_file(&qmp_path);
        let _ = std::fs::remove_file(&spec.control_socket);
        let log_path = spec.run_dir.join("vmm.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io_err(format!("create {}", log_path.display())))?;
        let log2 = log.try_clone().map_err(io_err("dup log"))?;

        let mut args = qemu_args(spec);
        let confinement = match &self.confine {
            Some(c) => Some(c.prepare(spec)?),
            None => None,
        };
        let confined = match &confinement {
            Some(c) => {
                args.extend(c.qemu_args());
                Some(c.pre_exec()?)
            }
            None => None,
        };
        if incoming {
            if loads_into_shared_file(spec) || spec.hold_for_control {
                // A loader (see `loads_into_shared_file`): its vCPUs never run; or
                // they run once the host is listening (`load_state`).
                args.push("-S".into());
            }
            args.push("-incoming".into());
            args.push("defer".into());
            // A restored VM goes on with the same boot log: append, do not truncate.
            for a in args
                .iter_mut()
                .filter(|a| a.starts_with("file,id=console,"))
            {
                a.push_str(",append=on");
            }
        }
        let mut keys = spec.disks.iter().filter_map(|d| d.key.as_ref());
        let stdin = match (keys.next(), keys.next()) {
            (None, _) => std::process::Stdio::null(),
            (Some(key), None) => key_pipe(key.expose().as_bytes())?,
            (Some(_), Some(_)) => {
                return Err(VmmError::Invalid(
                    "at most one disk of a VM can be encrypted by the VMM".into(),
                ))
            }
        };
        let mut cmd = Command::new(&self.binary);
        cmd.args(&args)
            .stdin(stdin)
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false);
        let die_with_parent = spec.die_with_parent;
        // SAFETY: only async-signal-safe calls (setsid, prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Its own session: a terminal's Ctrl-C reaches us, not the VMM, so we
                // can shut the guest down in order.
                libc::setsid();
                if die_with_parent {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                }
                if let Some(c) = &confined {
                    c.run()?;
                }
                Ok(())
            });
        }
        tracing::debug!(workspace = %spec.id, args = ?args, "starting qemu");
        let mut child = cmd
            .spawn()
            .map_err(io_err(format!("start {}", self.binary.display())))?;
        let pid = child.id();

        // Wait for QMP to answer, or for QEMU to die trying.
        let started = Instant::now();
        let qmp = loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(VmmError::StartFailed {
                    status: st.to_string(),
                    log: tail(&log_path, 2000),
                });
            }
            if qmp_path.exists() {
                match Qmp::connect(&qmp_path).await {
                    Ok(q) => break q,
                    Err(e) if started.elapsed() > START_TIMEOUT => return Err(e),
                    Err(_) => {}
                }
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.start_kill();
                return Err(VmmError::StartTimeout(START_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };

        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(st) => {
                    use std::os::unix::process::ExitStatusExt;
                    VmExit {
                        code: st.code(),
                        signal: st.signal(),
                    }
                }
                Err(_) => VmExit {
                    code: None,
                    signal: None,
                },
            };
            if let Some(c) = confinement {
                c.remove();
            }
            let _ = tx.send(Some(exit));
        });
        Ok(QemuVm {
            pid,
            qmp,
            exit: rx,
            ignore_shared: spec.memory_file.as_ref().is_some_and(|m| m.shared),
        })
    }
}

#[async_trait]
impl Vmm for QemuVmm {
    fn name(&self) -> &'static str {
        "qemu-microvm"
    }

    async fn boot(&self, spec: &VmSpec) -> Result<Box<dyn Vm>> {
        Ok(Box::new(self.spawn(spec, false).await?))
    }

    async fn restore(&self, spec: &VmSpec, snapshot: &Path) -> Result<Box<dyn Vm>> {
        // Opened here and handed over as an fd: the VMM needs no shell (`exec:cat`)
        // and no access to the path (it may run confined).
        let file = std::fs::File::open(snapshot).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmmError::Missing {
                what: "snapshot",
                path: snapshot.to_path_buf(),
            },
            _ => io_err(format!("open {}", snapshot.display()))(e),
        })?;
        let vm = self.spawn(spec, true).await?;
        if let Err(e) = load_state(&vm, spec, &snapshot.display().to_string(), file.into()).await {
            let _ = vm.kill().await;
            return Err(e);
        }
        Ok(Box::new(vm))
    }

    async fn restore_from(
        &self,
        spec: &VmSpec,
        input: std::os::fd::OwnedFd,
        what: &str,
    ) -> Result<Box<dyn Vm>> {
        let vm = match self.spawn(spec, true).await {
            Ok(vm) => vm,
            Err(e) => {
                // Our copy closes here: whoever feeds the pipe sees it end.
                drop(input);
                return Err(e);
            }
        };
        if let Err(e) = load_state(&vm, spec, what, input).await {
            let _ = vm.kill().await;
            return Err(e);
        }
        Ok(Box::new(vm))
    }

    async fn attach(&self, spec: &VmSpec, pid: u32) -> Result<Box<dyn Vm>> {
        let exit = watch_foreign_pid(pid)?;
        let qmp = Qmp::connect(&qmp_socket(spec)).await?;
        Ok(Box::new(QemuVm {
            pid: Some(pid),
            qmp,
            exit,
            ignore_shared: spec.memory_file.as_ref().is_some_and(|m| m.shared),
        }))
    }
}

/// Watch a process that is not our child: a pidfd becomes readable when it exits.
/// Its exit status belongs to its parent, so we only learn that it ended.
fn watch_foreign_pid(pid: u32) -> Result<watch::Receiver<Option<VmExit>>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open returns a new fd or -1; we take ownership of it.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return Err(VmmError::Io {
            context: format!("watch VMM process {pid}"),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the pidfd and nothing else closes it while registered.
    let afd = unsafe { tokio::io::unix::AsyncFd::register(fd) }
        .map_err(|e| io_err("register pidfd")(std::io::Error::from(e)))?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let _ = afd.readable().await;
        let _ = tx.send(Some(VmExit {
            code: None,
            signal: None,
        }));
    });
    Ok(rx)
}

/// Feed a saved state (an open file or a pipe's read end) into a VMM started with
/// `-incoming defer`, and let the guest run.
async fn load_state(
    vm: &QemuVm,
    spec: &VmSpec,
    snapshot: &str,
    file: std::os::fd::OwnedFd,
) -> Result<()> {
    // A clone maps a file whose RAM the state leaves out; a loader gets RAM in the
    // stream (from a VM whose RAM was its own) and writes it into its file.
    if spec.memory_file.is_some() && !loads_into_shared_file(spec) {
        set_ignore_shared(&vm.qmp, true).await?;
    }
    use std::os::fd::AsFd;
    let sent = vm.qmp.send_fd("warren-in", file.as_fd()).await;
    // Only the VMM's copy stays open (a pipe's writer sees EPIPE if it dies).
    drop(file);
    sent?;
    vm.qmp
        .execute("migrate-incoming", Some(json!({ "uri": "fd:warren-in" })))
        .await?;
    // The destination leaves `inmigrate` once the state is loaded.
    loop {
        let st = vm.qmp.execute("query-status", None).await?;
        let status = st.get("status").and_then(|s| s.as_str()).unwrap_or("");
        match status {
            "inmigrate" => tokio::time::sleep(Duration::from_millis(1)).await,
            "running" => break,
            "paused" | "postmigrate" | "prelaunch" | "restore-vm" => {
                if status == "restore-vm" {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                if loads_into_shared_file(spec) {
                    break;
                }
                if spec.hold_for_control {
                    wait_for_control(&vm.qmp, Duration::from_secs(3)).await?;
                }
                vm.qmp.execute("cont", None).await?;
                break;
            }
            other => {
                return Err(VmmError::Qmp(format!(
                    "restore from {} ended in state {other}; VMM log: {}",
                    snapshot,
                    tail(&spec.run_dir.join("vmm.log"), 1000)
                )));
            }
        }
    }
    Ok(())
}

/// Wait until a client is connected to the agent's chardev (QEMU names a socket
/// chardev without one `disconnected:...`); after `limit`, go on regardless.
async fn wait_for_control(qmp: &Qmp, limit: Duration) -> Result<()> {
    let t0 = std::time::Instant::now();
    loop {
        let list = qmp.execute("query-chardev", None).await?;
        let connected = list.as_array().is_some_and(|l| {
            l.iter().any(|c| {
                c.get("label").and_then(|v| v.as_str()) == Some("agent")
                    && c.get("filename")
                        .and_then(|v| v.as_str())
                        .is_some_and(|f| !f.starts_with("disconnected:"))
            })
        });
        if connected {
            return Ok(());
        }
        if t0.elapsed() >= limit {
            tracing::warn!("nobody connected to the control channel; running the VM anyway");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A VM restored into a *shared* memory file is a loader: the saved state (with its
/// RAM) is loaded into the file and the VM stays paused, its vCPUs never run. Saving
/// it then writes device state only; VMs that map the file private and load that
/// state share the file's pages copy-on-write (forks, `warren_node::fork`).
fn loads_into_shared_file(spec: &VmSpec) -> bool {
    spec.memory_file.as_ref().is_some_and(|m| m.shared)
}

pub struct QemuVm {
    pid: Option<u32>,
    qmp: Qmp,
    exit: watch::Receiver<Option<VmExit>>,
    /// RAM is a shared file (a template being built): snapshots leave it out.
    ignore_shared: bool,
}

/// Leave file-backed (shared) RAM out of the migration stream, or not. Both ends must
/// agree (the stream carries the capability), so a save sets it either way: a VM
/// restored from a template has it on from its load, yet its own RAM is private and
/// must be saved whole.
async fn set_ignore_shared(qmp: &Qmp, on: bool) -> Result<()> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [ { "capability": "x-ignore-shared", "state": on } ] })),
    )
    .await
    .map(|_| ())
}

#[async_trait]
impl Vm for QemuVm {
    fn pid(&self) -> Option<u32> {
        self.pid
    }

    async fn pause(&self) -> Result<()> {
        self.qmp.execute("stop", None).await.map(|_| ())
    }

    async fn resume(&self) -> Result<()> {
        self.qmp.execute("cont", None).await.map(|_| ())
    }

    async fn snapshot(&self, path: &Path) -> Result<()> {
        use std::os::fd::AsFd;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io_err(format!("create {}", path.display())))?;
        let copy = file
            .as_fd()
            .try_clone_to_owned()
            .map_err(io_err(format!("dup {}", path.display())))?;
        self.snapshot_to(copy).await?;
        file.sync_all()
            .map_err(io_err(format!("sync {}", path.display())))
    }

    async fn snapshot_to(&self, out: std::os::fd::OwnedFd) -> Result<()> {
        use std::os::fd::AsFd;
        let file = out;
        self.qmp.execute("stop", None).await?;
        set_ignore_shared(&self.qmp, self.ignore_shared).await?;
        // No throttling: the guest is stopped, the file is local.
        self.qmp
            .execute(
                "migrate-set-parameters",
                Some(json!({ "max-bandwidth": 64u64 << 30 })),
            )
            .await?;
        let sent = self.qmp.send_fd("warren-out", file.as_fd()).await;
        // Only the VMM's copy stays open: a pipe's reader sees end of file when the
        // VMM closes it at the end of the migration.
        drop(file);
        sent?;
        if let Err(e) = self
            .qmp
            .execute("migrate", Some(json!({ "uri": "fd:warren-out" })))
            .await
        {
            // A migration that never started leaves the fd with the VMM: close it,
            // or a pipe's reader would wait for an end of file that never comes.
            let _ = self
                .qmp
                .execute("closefd", Some(json!({ "fdname": "warren-out" })))
                .await;
            return Err(e);
        }
        loop {
            let st = self.qmp.execute("query-migrate", None).await?;
            match st.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                "completed" => break,
                "failed" | "cancelled" => {
                    let why = st
                        .get("error-desc")
                        .and_then(|s| s.as_str())
                        .unwrap_or("no reason given");
                    return Err(VmmError::Qmp(format!("snapshot failed: {why}")));
                }
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        Ok(())
    }

    async fn kill(&self) -> Result<()> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        if let Some(pid) = self.pid {
            // SAFETY: signalling our own child; it is reaped by the exit watcher so the
            // pid cannot have been reused before `exit` is set.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        self.wait().await.map(|_| ())
    }

    async fn wait(&self) -> Result<VmExit> {
        let mut rx = self.exit.clone();
        let v = rx
            .wait_for(|v| v.is_some())
            .await
            .map_err(|_| VmmError::Qmp("exit watcher ended".into()))?;
        Ok(v.clone().unwrap_or(VmExit {
            code: None,
            signal: None,
        }))
    }
}

pub fn qmp_socket(spec: &VmSpec) -> PathBuf {
    spec.run_dir.join("qmp.sock")
}

/// A pipe holding `key`, its writing end closed: the VMM reads the key from it
/// and then sees end of file. A key is far below a pipe's buffer, so writing
/// cannot block.
fn key_pipe(key: &[u8]) -> Result<std::process::Stdio> {
    use std::io::Write;
    let (reader, mut writer) = std::io::pipe().map_err(io_err("create the key pipe"))?;
    writer
        .write_all(key)
        .map_err(io_err("write the key pipe"))?;
    drop(writer);
    Ok(reader.into())
}

/// The QEMU command line for `spec` (without the binary).
pub fn qemu_args(spec: &VmSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("warren-{},debug-threads=on", spec.id)]);
    let acpi = if spec.acpi { "on" } else { "off" };
    // The backend takes the id of microvm's default RAM ("microvm.ram"): a migration
    // stream names its RAM blocks, so a VM started from a template can be saved and
    // restored later without one (pause to disk of a clone).
    let mem_backend = match &spec.memory_file {
        Some(m) => {
            push(&[
                "-object",
                &format!(
                    "memory-backend-file,id=microvm.ram,size={}M,mem-path={},share={}",
                    spec.memory_mb,
                    m.path.to_string_lossy(),
                    if m.shared { "on" } else { "off" }
                ),
            ]);
            ",memory-backend=microvm.ram"
        }
        None => "",
    };
    push(&[
        "-M",
        &format!("microvm,x-option-roms=off,isa-serial=on,rtc=on,pic=off,acpi={acpi}{mem_backend}"),
    ]);
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
    }
    push(&[
        "-smp",
        &spec.cpus.to_string(),
        "-m",
        &spec.memory_mb.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        &spec.kernel.to_string_lossy(),
        "-append",
        &spec.cmdline,
    ]);
    if let Some(i) = &spec.initramfs {
        push(&["-initrd", &i.to_string_lossy()]);
    }
    push(&[
        "-chardev",
        &format!(
            "file,id=console,path={}",
            spec.console_log.to_string_lossy()
        ),
        "-serial",
        "chardev:console",
        "-qmp",
        &format!(
            "unix:{},server=on,wait=off",
            qmp_socket(spec).to_string_lossy()
        ),
    ]);
    for (i, d) in spec.disks.iter().enumerate() {
        let mut drive = format!(
            "id=disk{i},file={},format={},if=none,aio=threads,discard=unmap",
            d.path.to_string_lossy(),
            d.format
        );
        if d.key.is_some() {
            // The secret object is read from the VMM's standard input (`spawn`)
            // while it starts, before it chroots.
            push(&[
                "-object",
                &format!("secret,id=disk{i}-key,file=/dev/stdin,format=raw"),
            ]);
            drive.push_str(&format!(",encrypt.key-secret=disk{i}-key"));
        }
        if d.read_only {
            drive.push_str(",readonly=on");
        } else {
            // Keep the file open read-write for the VM's whole life. With QEMU's
            // default (auto-read-only) the file is reopened by name when a migration
            // stops writes (saving state) or starts them (restoring): a confined VMM,
            // chrooted, can no longer open it by name.
            drive.push_str(",file.auto-read-only=off");
        }
        push(&[
            "-drive",
            &drive,
            "-device",
            &format!("virtio-blk-device,drive=disk{i},serial={}", d.serial),
        ]);
    }
    if let Some(n) = &spec.net {
        push(&[
            "-netdev",
            &format!("tap,id=net0,ifname={},script=no,downscript=no", n.tap),
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={}", n.mac),
        ]);
    }
    // Free page reporting: the guest hands pages it no longer uses back to the host
    // (ballooning without a manager); deflate-on-oom lets it take them back first.
    // Not for RAM mapped from a template file: QEMU 7.2 discards reported pages of a
    // file-backed block by punching holes in the file even when it is mapped private,
    // which would zero the shared template under every other clone. Template and
    // clones agree (both have a memory file), so their device states match.
    push(&[
        "-device",
        if spec.memory_file.is_some() {
            "virtio-balloon-device,deflate-on-oom=on"
        } else {
            "virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on"
        },
    ]);
    push(&[
        "-device",
        "virtio-serial-device,max_ports=2",
        "-chardev",
        &format!(
            "socket,id=agent,path={},server=on,wait=off",
            spec.control_socket.to_string_lossy()
        ),
        "-device",
        &format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}"),
    ]);
    a
}

fn tail(path: &Path, max: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let start = s.len().saturating_sub(max);
    s.get(start..).unwrap_or("").trim().to_string()
}

fn which(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskSpec, NetSpec};

    fn spec() -> VmSpec {
        VmSpec {
            id: "ws_test".into(),
            run_dir: "/run/w".into(),
            kernel: "/k/vmlinux".into(),
            initramfs: Some("/k/initrd".into()),
            cmdline: "console=ttyS0 quiet".into(),
            cpus: 2,
            memory_mb: 256,
            disks: vec![DiskSpec {
                path: "/img/root.ext4".into(),
                read_only: true,
                serial: "warren-image".into(),
                format: "raw".into(),
                key: None,
            }],
            net: Some(NetSpec {
                tap: "wt0".into(),
                mac: "02:00:0a:58:00:02".into(),
            }),
            control_socket: "/run/w/agent.sock".into(),
            console_log: "/run/w/console.log".into(),
            accel: Accel::Tcg,
            acpi: true,
            die_with_parent: false,
            memory_file: None,
            hold_for_control: false,
        }
    }

    #[test]
    fn accel_flags_are_the_only_difference() {
        let mut s = spec();
        let tcg = qemu_args(&s);
        s.accel = Accel::Kvm;
        let kvm = qemu_args(&s);
        let diff: Vec<_> = tcg.iter().zip(&kvm).filter(|(a, b)| a != b).collect();
        assert_eq!(
            diff,
            vec![
                (&"tcg".to_string(), &"kvm".to_string()),
                (&"max".to_string(), &"host".to_string())
            ]
        );
    }

    /// An encrypted disk's key reaches QEMU on standard input only: the command
    /// line names the secret object, never the key.
    #[test]
    fn a_disk_key_is_never_on_the_command_line() {
        let mut s = spec();
        s.disks.push(DiskSpec {
            path: "/run/w/data.ext4".into(),
            read_only: false,
            serial: "warren-data".into(),
            format: "qcow2".into(),
            key: Some(warren_protocol::control::Secret::new("0123abcd".into())),
        });
        let a = qemu_args(&s).join(" ");
        assert!(a.contains("-object secret,id=disk1-key,file=/dev/stdin,format=raw"));
        assert!(a.contains(
            "format=qcow2,if=none,aio=threads,discard=unmap,encrypt.key-secret=disk1-key"
        ));
        assert!(!a.contains("0123abcd"));
    }

    #[test]
    fn devices_are_wired() {
        let a = qemu_args(&spec()).join(" ");
        assert!(a.contains("-append console=ttyS0 quiet"));
        assert!(a.contains("format=raw,if=none,aio=threads,discard=unmap,readonly=on"));
        assert!(a.contains("virtio-blk-device,drive=disk0,serial=warren-image"));
        assert!(a.contains("tap,id=net0,ifname=wt0,script=no,downscript=no"));
        assert!(a.contains("virtserialport,chardev=agent,name=org.warren.agent"));
        assert!(a.contains("-no-reboot"));
    }

    #[test]
    fn missing_binary_is_named() {
        let e = QemuVmm::new("/nonexistent/qemu".into()).unwrap_err();
        assert!(e.to_string().contains("apt-get install qemu-system-x86"));
    }
}
