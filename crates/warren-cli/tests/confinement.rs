//! The VMM process's confinement and a workspace's hard limits, read from /proc and
//! the cgroup files while a real VM runs: own uid, mount namespace, empty chroot,
//! cgroup, seccomp; a CPU-bound guest held to its quota; disk bandwidth throttled;
//! freed guest memory returned to the host (free page reporting); an OOM inside the
//! guest kills inside the guest only; a full disk fails writes in the guest only.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use warren_node::{Node, WorkspaceSpec};
use warren_protocol::runtime::{ExecMode, ExecRequest};
use warren_sdk::RuntimeClient;

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        cmd: vec![cmd.into()],
        exec_mode: Some(ExecMode::Shell),
        ..ExecRequest::default()
    }
}

async fn run(rt: &RuntimeClient, cmd: &str) -> (i32, String) {
    let t = rt.exec(&sh(cmd)).await.unwrap();
    (
        t.exit_code.unwrap_or(-1),
        format!(
            "{}{}",
            t.stdout.unwrap_or_default(),
            t.stderr.unwrap_or_default()
        ),
    )
}

fn status_field(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// The cgroup directories of `pid` for `cpu` and `memory` (v1), or its unified one.
fn cgroup_dirs(pid: u32) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let find = |ctrl: &str| {
        text.lines().find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, c, path) = (p.next()?, p.next()?, p.next()?);
            c.split(',').any(|x| x == ctrl).then(|| path.to_string())
        })
    };
    match (find("cpu"), find("memory")) {
        (Some(c), Some(m)) => (
            Path::new("/sys/fs/cgroup/cpu").join(c.trim_start_matches('/')),
            Path::new("/sys/fs/cgroup/memory").join(m.trim_start_matches('/')),
        ),
        _ => {
            let u = text
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .expect("a cgroup");
            let d = Path::new("/sys/fs/cgroup").join(u.trim_start_matches('/'));
            (d.clone(), d)
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmm_is_confined_and_the_guest_is_held_to_its_limits() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = node_config(data.path());
    cfg.cpu_quota_pct = 50;
    cfg.disk_bps_limit = 8 << 20;
    // A cold boot: only VMs whose RAM is not a template's file report free pages
    // (see warren_node::template); the confinement is the same for both.
    cfg.templates = false;
    let node = Node::new(cfg.clone()).unwrap();
    let spec = WorkspaceSpec {
        image: "busybox".into(),
        cpus: 1,
        memory_mb: 256,
        disk_size_mb: 64,
        persistent: true,
        ..WorkspaceSpec::default()
    };
    let ws = node
        .create(&spec, &warren_images::NoProgress)
        .await
        .unwrap();
    let id = ws.id.clone();
    let pid = ws.vm.pid().unwrap();
    let guard = KillOnPanic(pid);
    let rt = RuntimeClient::new(&ws.api_url(), &ws.api_token).unwrap();

    // Its own unprivileged uid (the range base + its lease index), no capabilities.
    let index: u32 = ws.tap().strip_prefix("wt").unwrap().parse().unwrap();
    let uid = cfg.vmm_uid_base + index;
    let ids = format!("{uid}\t{uid}\t{uid}\t{uid}");
    assert_eq!(status_field(pid, "Uid"), ids);
    assert_eq!(status_field(pid, "Gid"), ids);
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    // QEMU's seccomp filter (mode 2), no way back to privileges.
    assert_eq!(status_field(pid, "Seccomp"), "2");
    // Two filters: ours (installed before exec) and QEMU's -sandbox.
    assert_eq!(status_field(pid, "Seccomp_filters"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // Its own mount namespace, chrooted into an empty directory of its own.
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_ne!(ns(&pid.to_string()), ns("self"));
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert_eq!(root, cfg.run_dir.join("jail").join(&id));
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    // No host device but its tap (and /dev/kvm when it uses KVM).
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(t) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = t.to_string_lossy().to_string();
        let ok = t.starts_with("socket:")
            || t.starts_with("pipe:")
            || t.starts_with("anon_inode:")
            || ["/dev/null", "/dev/net/tun", "/dev/kvm"].contains(&t.as_str())
            // A workspace started from a template maps its RAM file copy-on-write.
            || t.starts_with("/dev/shm/warren-templates/")
            || t.starts_with(&data.path().display().to_string())
            || t.starts_with(&cache_dir().display().to_string());
        assert!(ok, "the VMM holds {t}");
    }
    // Its own cgroup, with the limits.
    let (cpu_cg, mem_cg) = cgroup_dirs(pid);
    assert!(cpu_cg.ends_with(format!("warren/{id}")), "{cpu_cg:?}");
    assert!(mem_cg.ends_with(format!("warren/{id}")), "{mem_cg:?}");
    let mem_limit = ((256 + cfg.vmm_memory_overhead_mb as u64) << 20).to_string();
    let v1 = cpu_cg.join("cpu.cfs_quota_us").exists();
    if v1 {
        assert_eq!(read(&cpu_cg.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&cpu_cg.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&mem_cg.join("memory.limit_in_bytes")), mem_limit);
    } else {
        assert_eq!(read(&cpu_cg.join("cpu.max")), "50000 100000");
        assert_eq!(read(&mem_cg.join("memory.max")), mem_limit);
    }
    let throttled = |d: &Path| -> u64 {
        read(&d.join("cpu.stat"))
            .lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .unwrap()
            .parse()
            .unwrap()
    };

    // A CPU-bound guest: the VMM gets at most its quota (half a CPU) and is throttled.
    let (code, out) = run(
        &rt,
        "sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $! > /tmp/busy.pid",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (t0, th0, c0) = (Instant::now(), throttled(&cpu_cg), cpu_ticks(pid));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let used = (cpu_ticks(pid) - c0) as f64 / hz / t0.elapsed().as_secs_f64();
    assert!(
        used < 0.6,
        "the VMM used {used:.2} CPUs with a quota of 0.5"
    );
    assert!(throttled(&cpu_cg) > th0, "never throttled: used {used:.2}");
    let (code, out) = run(&rt, "kill $(cat /tmp/busy.pid)").await;
    assert_eq!(code, 0, "{out}");

    // Ballooning (free page reporting): memory the guest touched and freed goes back
    // to the host within seconds.
    let (code, out) = run(&rt, "dd if=/dev/zero of=/dev/null bs=150M count=1 2>&1").await;
    assert_eq!(code, 0, "{out}");
    let peak = rss_kb(pid);
    let t0 = Instant::now();
    let mut low = peak;
    while t0.elapsed() < Duration::from_secs(15) && peak - low < 100 * 1024 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        low = low.min(rss_kb(pid));
    }
    assert!(
        peak - low >= 100 * 1024,
        "the VMM kept the guest's freed memory: RSS {peak} kB -> {low} kB"
    );

    // OOM inside the guest: the kernel there kills the hog; the VM and agent live on.
    let (code, out) = run(&rt, "tail /dev/zero").await;
    assert_ne!(code, 0, "the memory hog survived: {out}");
    let (code, out) = run(&rt, "dmesg | grep -c 'Out of memory'").await;
    assert_eq!(code, 0, "no OOM kill in the guest: {out}");
    assert!(node_vmm_alive(pid), "the VMM died with the guest's OOM");
    assert_eq!(run(&rt, "echo alive").await.1, "alive\n");

    // The writable disk is throttled to 8 MiB/s: 24 MiB take 3 s at least.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(&format!("drive.disk1.throttling.bps-total={}", 8 << 20)),
        "{cmdline}"
    );
    let t0 = Instant::now();
    let (code, out) = run(
        &rt,
        "dd if=/dev/zero of=/root/t bs=1M count=24 conv=fsync 2>&1; rm /root/t",
    )
    .await;
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{out}");
    assert!(
        took >= 2.7,
        "24 MiB written in {took:.2} s at a limit of 8 MiB/s"
    );

    // A full disk: writes fail in the guest, the disk file keeps its size.
    let disk = data.path().join("workspaces").join(&id).join("data.ext4");
    let (code, out) = run(&rt, "dd if=/dev/zero of=/root/fill bs=1M 2>&1; sync").await;
    assert!(out.contains("No space left on device"), "{code} {out}");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 64 << 20);
    let (code, out) = run(&rt, "dd if=/dev/zero of=/root/more bs=1M count=1 2>&1").await;
    assert_ne!(code, 0, "a write to a full disk succeeded: {out}");
    assert!(out.contains("No space left on device"), "{out}");
    let (code, out) = run(
        &rt,
        "rm /root/fill && echo more > /root/more.txt && cat /root/more.txt",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "more\n"));
    assert!(node_vmm_alive(pid));

    std::mem::forget(guard);
    node.destroy(ws, Duration::ZERO).await.unwrap();
    // The cgroup and the jail go with the VMM.
    let t0 = Instant::now();
    while cpu_cg.exists() && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!cpu_cg.exists() && !mem_cg.exists(), "cgroup left");
    assert!(!root.exists(), "jail left");
    assert_nothing_left(data.path(), &[id]);
}

fn rss_kb(pid: u32) -> u64 {
    status_field(pid, "VmRSS")
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

fn node_vmm_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map(|c| c.contains("qemu-system"))
        .unwrap_or(false)
}

/// A failing test must not leave its VM running.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        // SAFETY: signalling the VMM this test started.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}
