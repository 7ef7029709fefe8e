//! `warren run` against real microVMs (TCG on hosts without hardware KVM).

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(data: &std::path::Path, image: &str, extra: &[&str], cmd: &[&str]) -> std::process::Output {
    let mut c = warren(data);
    c.args([
        "run",
        "--image",
        image,
        "--memory-mb",
        "256",
        "--disk-mb",
        "128",
    ]);
    c.args(extra).arg("--").args(cmd);
    c.output().expect("run warren")
}

#[test]
fn stdout_stderr_and_exit_code() {
    let data = tempfile::tempdir().unwrap();
    let out = run(
        data.path(),
        "busybox",
        &[],
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"],
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr\n"));
    assert_nothing_left(data.path(), &[]);
}

#[test]
fn env_and_cwd_reach_the_command() {
    let data = tempfile::tempdir().unwrap();
    let out = run(
        data.path(),
        "busybox",
        &[
            "--env",
            "GREETING=hello world",
            "-e",
            "EMPTY=",
            "--cwd",
            "/tmp",
        ],
        &["sh", "-c", "echo \"$GREETING|$EMPTY|$(pwd)|$(hostname)\""],
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = s.trim().split('|').collect();
    assert_eq!(parts[..3], ["hello world", "", "/tmp"], "{s}");
    assert!(
        parts[3].starts_with("ws-"),
        "hostname is the workspace id: {s}"
    );
}

#[test]
fn ten_megabytes_of_output_arrive_intact() {
    let data = tempfile::tempdir().unwrap();
    // The guest writes 10 MiB of random bytes to stdout and their sha256 to stderr.
    let out = run(
        data.path(),
        "busybox",
        &[],
        &[
            "sh",
            "-c",
            "head -c 10485760 /dev/urandom > /tmp/blob && cat /tmp/blob && sha256sum /tmp/blob >&2",
        ],
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 10 << 20);
    let guest_sum = String::from_utf8_lossy(&out.stderr);
    assert!(
        guest_sum.contains(&sha256_hex(&out.stdout)),
        "host and guest checksums differ: {guest_sum}"
    );
}

#[test]
fn stdin_is_empty_so_readers_end() {
    let data = tempfile::tempdir().unwrap();
    let out = run(
        data.path(),
        "busybox",
        &["--timeout", "60"],
        &["sh", "-c", "cat; echo done"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
}

#[test]
fn a_command_that_does_not_exist_is_127() {
    let data = tempfile::tempdir().unwrap();
    let out = run(data.path(), "busybox", &[], &["/no/such/program"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/program"));
}

#[test]
fn guest_poweroff_is_noticed_and_cleaned_up() {
    let data = tempfile::tempdir().unwrap();
    let t = Instant::now();
    // `poweroff` only signals PID 1 and returns; the sleep keeps the command running
    // until the VM is gone, as any real workload would be.
    let out = run(
        data.path(),
        "busybox",
        &[],
        &["sh", "-c", "poweroff; sleep 60"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("VM ended"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(60));
    assert_nothing_left(data.path(), &[]);
}

#[test]
fn a_killed_vmm_is_noticed_and_cleaned_up() {
    let data = tempfile::tempdir().unwrap();
    // Wait for the command to be running, then kill -9 its VMM.
    let child = start_long_command(data.path());
    let pid = vmm_pids(data.path());
    assert_eq!(pid.len(), 1, "one VMM for this test: {pid:?}");
    Command::new("kill")
        .args(["-9", &pid[0].to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("VM ended"));
    assert_nothing_left(data.path(), &[]);
}

#[test]
fn a_killed_warren_run_leaves_nothing_after_reconcile() {
    let data = tempfile::tempdir().unwrap();
    let mut child = start_long_command(data.path());
    child.kill().unwrap();
    child.wait().unwrap();
    // The VMM dies with its owner.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vmm_pids(data.path()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(vmm_pids(data.path()).is_empty(), "VMM outlived warren run");
    // The next start reconciles what the dead owner left (run dir, lease, tap).
    assert!(data.path().join("workspaces").read_dir().unwrap().count() > 0);
    let out = run(data.path(), "busybox", &[], &["true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left(data.path(), &[]);
}

#[test]
fn bad_input_is_refused_before_anything_is_allocated() {
    let data = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--image", "no-such-image-anywhere!"],
            "no-such-image-anywhere!",
        ),
        (&["--image", "busybox", "--cpus", "0"], "cpus"),
        (&["--image", "busybox", "--cpus", "1000"], "cpus"),
        (&["--image", "busybox", "--memory-mb", "16"], "memory_mb"),
        (
            &["--image", "busybox", "--kernel", "/nonexistent/vmlinux"],
            "/nonexistent/vmlinux",
        ),
        (
            &["--image", "busybox", "--qemu", "/nonexistent/qemu"],
            "qemu-system-x86",
        ),
        (
            &["--image", "busybox", "--agent", "/nonexistent/agent"],
            "agent",
        ),
    ];
    for (args, needle) in cases {
        let out = warren(data.path())
            .arg("run")
            .args(*args)
            .args(["--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(needle),
            "{args:?}: error does not name {needle:?}: {err}"
        );
        assert_nothing_left(data.path(), &[]);
    }
}

#[test]
fn a_corrupt_image_tarball_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let bad = data.path().join("broken.tar");
    std::fs::write(&bad, b"this is not a tar archive at all, just some bytes").unwrap();
    let out = run(data.path(), bad.to_str().unwrap(), &[], &["true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.tar"), "{err}");
    assert_nothing_left(data.path(), &[]);
}

#[test]
fn oci_whiteout_removes_the_file() {
    let data = tempfile::tempdir().unwrap();
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let l1 = tar_layer(&[
        ("bin", 0o755, None),
        ("bin/busybox", 0o755, Some(&busybox)),
        ("bin/sh", 0o777, Some(b"->busybox")),
        ("bin/ls", 0o777, Some(b"->busybox")),
        ("bin/cat", 0o777, Some(b"->busybox")),
        ("data", 0o755, None),
        ("data/deleted.txt", 0o644, Some(b"gone")),
        ("data/kept.txt", 0o644, Some(b"kept")),
        ("tmp", 0o1777, None),
    ]);
    let l2 = tar_layer(&[
        ("data/.wh.deleted.txt", 0o644, Some(b"")),
        ("data/added.txt", 0o644, Some(b"added")),
    ]);
    let layout = data.path().join("layout");
    write_oci_layout(
        &layout,
        &[l1, l2],
        serde_json::json!({"config": {"Env": ["FROM_IMAGE=yes", "PATH=/bin"], "WorkingDir": "/data"}}),
    );
    let out = run(
        data.path(),
        layout.to_str().unwrap(),
        &[],
        &["sh", "-c", "ls; echo $FROM_IMAGE; cat kept.txt"],
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "added.txt\nkept.txt\nyes\nkept"
    );
}

#[test]
fn both_guest_kernels_boot() {
    let data = tempfile::tempdir().unwrap();
    for (kernel, release) in [("debian", "6.1.0-56-cloud-amd64"), ("minimal", "6.1.")] {
        let out = run(
            data.path(),
            "busybox",
            &["--kernel", kernel],
            &["uname", "-r"],
        );
        assert!(
            out.status.success(),
            "{kernel}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = String::from_utf8_lossy(&out.stdout);
        assert!(got.starts_with(release), "{kernel} booted {got}");
        if kernel == "minimal" {
            assert!(!got.contains("cloud"), "{kernel} booted {got}");
        }
    }
}

/// A guest that powers itself off without the agent (`poweroff -f`: straight to the
/// kernel) ends its VM under every kernel, so the host sees the VM end instead of a
/// hung guest. Each run is bounded: a hang fails the test rather than stalling it.
#[test]
fn a_guest_poweroff_ends_the_vm_with_either_kernel() {
    let data = tempfile::tempdir().unwrap();
    for kernel in ["auto", "debian", "minimal"] {
        let mut c = warren(data.path());
        c.args([
            "run",
            "--image",
            "busybox",
            "--memory-mb",
            "256",
            "--disk-mb",
            "128",
            "--kernel",
            kernel,
            "--",
            "poweroff",
            "-f",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("run warren");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{kernel}: the VM did not end after the guest powered off");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!status.success(), "{kernel}: {err}");
        assert!(err.contains("VM ended"), "{kernel}: {err}");
    }
}

#[test]
fn debian_12_boots() {
    let data = tempfile::tempdir().unwrap();
    let out = run(
        data.path(),
        "debian-12",
        &[],
        &["cat", "/etc/debian_version"],
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("12."));
}

/// `warren run` of a command that runs for minutes, returned once it has started.
fn start_long_command(data: &std::path::Path) -> std::process::Child {
    let mut child = warren(data)
        .args([
            "run",
            "--image",
            "busybox",
            "--memory-mb",
            "256",
            "--disk-mb",
            "128",
            "--",
        ])
        .args(["sh", "-c", "echo started; sleep 600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    let stdout = child.stdout.as_mut().unwrap();
    std::io::Read::read_exact(stdout, &mut first).unwrap();
    assert_eq!(&first, b"started\n");
    child
}

/// VMM processes whose command line names this test's data dir.
fn vmm_pids(data: &std::path::Path) -> Vec<u32> {
    let marker = data.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let c = std::fs::read(e.path().join("cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c);
            (c.contains("qemu-system") && c.contains(&marker)).then_some(pid)
        })
        .collect()
}
