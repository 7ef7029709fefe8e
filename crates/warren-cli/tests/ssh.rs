//! The SSH gateway through `warren server` (the binary), one real VM and OpenSSH's own
//! clients: `ssh -tt` drives a login shell on a PTY (a command's output, the PTY's
//! size, the exit status), `ssh CMD` runs a command, `scp` copies a file both ways
//! (bytes compared), `sftp -b` runs mkdir/put/ls/get/rename/rm/rmdir, `ssh -L`
//! forwards a local port to a server listening on the VM's loopback (curl through it)
//! and refuses a destination outside the workspace; a wrong key, an unknown
//! workspace and a workspace with SSH disabled are refused.

mod common;
#[path = "support/internet.rs"]
mod internet;
#[path = "support/server.rs"]
mod server;

use common::{keygen, loud_opts, opts};
use serde_json::json;
use server::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Gw {
    port: u16,
    id: String,
}

impl Gw {
    fn target(&self) -> String {
        format!("{}@127.0.0.1", self.id)
    }

    /// `ssh [extra] id@host [CMD]` with `input` on stdin: (exit code, stdout, stderr).
    fn ssh(&self, key: &Path, extra: &[&str], cmd: Option<&str>, input: &[u8]) -> Out {
        let mut c = Command::new("ssh");
        c.args(["-p", &self.port.to_string()])
            .args(opts(key))
            .args(extra)
            .arg(self.target());
        if let Some(cmd) = cmd {
            c.arg(cmd);
        }
        run(c, input)
    }

    /// `sftp -b BATCH id@host`: (exit code, stdout, stderr).
    fn sftp_batch(&self, key: &Path, batch: &Path) -> Out {
        let mut c = Command::new("sftp");
        c.args(["-P", &self.port.to_string()])
            .args(opts(key))
            .arg("-b")
            .arg(batch)
            .arg(self.target());
        run(c, b"")
    }
}

struct Out {
    code: i32,
    out: String,
    err: String,
}

fn run(mut c: Command, input: &[u8]) -> Out {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run an OpenSSH client (scripts/install-deps.sh installs openssh-client)");
    let mut w = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Write from a thread: a client may not read its input before it has connected.
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    Out {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the `ssh -L` client however the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(port: u16) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_gateway_shell_exec_scp_sftp_and_forwarding() {
    let data = tempfile::tempdir().unwrap();
    let cleanup = KillVmsOnPanic::new(data.path(), internet::release_leases_of);
    let s = Server::start_with(
        data.path(),
        &[
            "--edge-addr",
            "127.0.0.1:0",
            "--ssh-addr",
            "127.0.0.1:0",
            "--kernel",
            "debian",
        ],
    );
    cleanup.track(&s);
    let ssh_addr: SocketAddr = s
        .ssh
        .unwrap_or_else(|| panic!("no ssh gateway: {}", s.log()));

    // A web server on the VM's loopback only: reachable through the agent alone.
    let (st, w) = s
        .call(
            "POST",
            "/workspace",
            Some(json!({
                "image": "busybox", "memory_mb": 256, "disk_size_mb": 128,
                "config": {"cmd": "mkdir -p /www; echo hello-through-the-tunnel > /www/index.html; \
                                   httpd -f -p 127.0.0.1:9090 -h /www"}
            })),
        )
        .await;
    assert_eq!(st, 201, "{w}");
    let id = w["workspace"]["id"].as_str().unwrap().to_string();
    s.ready(&id, 180).await;
    let gw = Gw {
        port: ssh_addr.port(),
        id: id.clone(),
    };

    let (good, good_pub) = keygen(data.path(), "good");
    let (bad, _) = keygen(data.path(), "bad");
    let base = format!("/workspace/{id}/ssh");
    let (st, b) = s
        .call(
            "POST",
            &format!("{base}/key"),
            Some(json!({"public_key": good_pub})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    // SSH not enabled yet: refused, and nothing runs.
    let r = gw.ssh(&good, &[], Some("echo no"), b"");
    assert_eq!((r.code, r.out.as_str()), (255, ""), "{}", r.err);

    let (st, b) = s.call("POST", &format!("{base}/enable"), None).await;
    assert_eq!(st, 200, "{b}");
    let c = &b["connection"];
    let port = gw.port;
    assert_eq!(c["command"], format!("ssh -p {port} {id}@127.0.0.1"), "{b}");
    assert_eq!(
        c["scp_upload"],
        format!("scp -P {port} <local file> {id}@127.0.0.1:<remote path>"),
        "{b}"
    );
    assert_eq!(
        c["scp_download"],
        format!("scp -P {port} {id}@127.0.0.1:<remote path> <local file>"),
        "{b}"
    );

    // Exec without a PTY: output, stderr, exit code; no terminal.
    let r = gw.ssh(
        &good,
        &[],
        Some("echo hi-$((1+2)); echo oops >&2; tty; exit 3"),
        b"",
    );
    assert_eq!(r.code, 3, "{} / {}", r.out, r.err);
    assert!(r.out.starts_with("hi-3\n"), "{}", r.out);
    assert!(r.out.contains("not a tty"), "{}", r.out);
    assert!(r.err.contains("oops"), "{}", r.err);

    // A login shell on a PTY, typed into: the PTY is a real terminal of the size asked
    // for (ssh -tt with no terminal of its own asks for none: 80x24), the command's
    // output comes back, and `exit 5` is the session's exit status.
    let r = gw.ssh(
        &good,
        &["-tt"],
        None,
        b"echo pty-$((6*7)); tty; stty size; exit 5\n",
    );
    assert_eq!(r.code, 5, "{} / {}", r.out, r.err);
    assert!(r.out.contains("pty-42"), "{}", r.out);
    assert!(r.out.contains("/dev/pts/"), "{}", r.out);
    assert!(r.out.contains("24 80"), "{}", r.out);
    // A shell without a PTY (`ssh -T`, no command): a login shell reading the input.
    let r = gw.ssh(&good, &["-T"], None, b"echo no-pty-$((2+2)); tty; exit 7\n");
    assert_eq!(r.code, 7, "{} / {}", r.out, r.err);
    assert!(r.out.contains("no-pty-4"), "{}", r.out);
    assert!(r.out.contains("not a tty"), "{}", r.out);
    // On a real terminal (util-linux `script` gives ssh one): its size goes out in
    // pty-req, and a resize as window-change reaches the shell's PTY.
    let winch = data.path().join("winch.sh");
    std::fs::write(&winch, WINCH).unwrap();
    let line = format!(
        "sh {} -p {port} {} {}",
        winch.display(),
        opts(&good).join(" "),
        gw.target()
    );
    let mut c = Command::new("script");
    c.args(["-qec", &line, "/dev/null"]);
    let r = run(c, b"");
    assert!(r.out.contains("ssh-exit=6"), "{} / {}", r.out, r.err);
    let first = r.out.find("30 100");
    let second = r.out.find("40 120");
    assert!(
        first.is_some() && second.is_some() && first < second,
        "sizes: {}",
        r.out
    );
    // A command on a PTY.
    let r = gw.ssh(&good, &["-tt"], Some("tty; exit 4"), b"");
    assert_eq!(r.code, 4, "{} / {}", r.out, r.err);
    assert!(r.out.contains("/dev/pts/"), "{}", r.out);

    // scp (the sftp protocol) up and down: the same bytes.
    let blob: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let up = data.path().join("up.bin");
    std::fs::write(&up, &blob).unwrap();
    let mut c = Command::new("scp");
    c.args(["-P", &port.to_string()])
        .args(opts(&good))
        .arg(&up)
        .arg(format!("{}:/tmp/up.bin", gw.target()));
    let r = run(c, b"");
    assert_eq!(r.code, 0, "scp up: {}", r.err);
    let r = gw.ssh(&good, &[], Some("wc -c < /tmp/up.bin"), b"");
    assert_eq!(r.out.trim(), "300000", "{}", r.err);
    let down = data.path().join("down.bin");
    let mut c = Command::new("scp");
    c.args(["-P", &port.to_string()])
        .args(opts(&good))
        .arg(format!("{}:/tmp/up.bin", gw.target()))
        .arg(&down);
    let r = run(c, b"");
    assert_eq!(r.code, 0, "scp down: {}", r.err);
    assert!(
        std::fs::read(&down).unwrap() == blob,
        "scp down: other bytes"
    );
    // Onto an existing, longer file (scp opens it without truncating): replaced.
    let small = data.path().join("small.txt");
    std::fs::write(&small, b"small file\n").unwrap();
    let mut c = Command::new("scp");
    c.args(["-P", &port.to_string()])
        .args(opts(&good))
        .arg(&small)
        .arg(format!("{}:/tmp/up.bin", gw.target()));
    let r = run(c, b"");
    assert_eq!(r.code, 0, "scp over a file: {}", r.err);
    let r = gw.ssh(&good, &[], Some("cat /tmp/up.bin"), b"");
    assert_eq!(r.out, "small file\n");

    // sftp in batch mode.
    let got = data.path().join("got.bin");
    let batch = data.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "mkdir /tmp/sd\nput {} /tmp/sd/f.bin\nls -l /tmp/sd\nget /tmp/sd/f.bin {}\n\
             rename /tmp/sd/f.bin /tmp/sd/g.bin\nls /tmp/sd\nrm /tmp/sd/g.bin\nrmdir /tmp/sd\n",
            up.display(),
            got.display()
        ),
    )
    .unwrap();
    let r = gw.sftp_batch(&good, &batch);
    assert_eq!(r.code, 0, "sftp: {} / {}", r.out, r.err);
    assert!(r.out.contains("f.bin"), "{}", r.out);
    assert!(r.out.contains("300000"), "ls -l shows the size: {}", r.out);
    assert!(r.out.contains("g.bin"), "{}", r.out);
    assert!(
        std::fs::read(&got).unwrap() == blob,
        "sftp get: other bytes"
    );
    let r = gw.ssh(&good, &[], Some("test -e /tmp/sd"), b"");
    assert_eq!(r.code, 1, "rmdir left /tmp/sd");
    // More entries than one readdir answer carries (128): all of them, once.
    let r = gw.ssh(
        &good,
        &[],
        Some("mkdir /tmp/many && cd /tmp/many && for i in $(seq 300); do : > f$i; done"),
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.err);
    std::fs::write(&batch, "ls /tmp/many\n").unwrap();
    let r = gw.sftp_batch(&good, &batch);
    assert_eq!(r.code, 0, "{}", r.err);
    let names = r
        .out
        .split_whitespace()
        .filter(|w| w.starts_with("/tmp/many/f"))
        .count();
    assert_eq!(names, 300, "{}", r.out);
    // A failing command in batch mode fails the batch, with the agent's reason.
    std::fs::write(&batch, "get /tmp/nonexistent.bin\n").unwrap();
    let r = gw.sftp_batch(&good, &batch);
    assert_ne!(r.code, 0, "{}", r.out);
    assert!(r.err.contains("nonexistent"), "{}", r.err);

    // ssh -L to the VM's loopback web server; curl through it.
    let t0 = Instant::now();
    let (lport, refused_port) = (free_port(), free_port());
    let mut c = Command::new("ssh");
    c.args(["-p", &port.to_string()])
        .args(loud_opts(&good))
        .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("127.0.0.1:{lport}:localhost:9090"))
        .arg("-L")
        .arg(format!("127.0.0.1:{refused_port}:198.51.100.7:80"))
        .arg(gw.target())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut fwd = Child(c.spawn().expect("ssh -L"));
    while TcpStream::connect(("127.0.0.1", lport)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "ssh -L never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut body = String::new();
    // httpd starts with the workspace: give it a moment.
    for _ in 0..50 {
        let (code, b) = curl(lport);
        body = b;
        if code == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(body.trim(), "hello-through-the-tunnel");
    // Twice, to see a second channel work after the first closed.
    assert_eq!(curl(lport).1.trim(), "hello-through-the-tunnel");
    // Outside the workspace: the channel is refused, curl gets nothing.
    let (code, b) = curl(refused_port);
    assert_ne!(code, 0, "{b}");
    let _ = fwd.0.kill();
    let out = fwd.0.wait_with_output_ref();
    assert!(
        out.contains("administratively prohibited"),
        "ssh -L stderr: {out}"
    );

    // Refused: a wrong key, an unknown workspace, SSH disabled.
    let r = gw.ssh(&bad, &[], Some("echo no"), b"");
    assert_eq!((r.code, r.out.as_str()), (255, ""), "a wrong key got in");
    let other = Gw {
        port,
        id: "ws_nosuch".into(),
    };
    assert_eq!(other.ssh(&good, &[], Some("echo no"), b"").code, 255);
    let (st, b) = s.call("POST", &format!("{base}/disable"), None).await;
    assert_eq!((st, b["ssh_enabled"].as_bool()), (200, Some(false)), "{b}");
    let r = gw.ssh(&good, &[], Some("echo no"), b"");
    assert_eq!(
        (r.code, r.out.as_str()),
        (255, ""),
        "SSH disabled but a login worked"
    );
    let r = gw.sftp_batch(&good, &batch);
    assert_ne!(r.code, 0, "sftp with SSH disabled");
    assert!(r.err.contains("Permission denied"), "{}", r.err);

    s.delete_and_wait(&id, 60).await;
}

/// ssh on `script`'s terminal at 100x30; after 3 s (ssh has long sent its pty-req),
/// the terminal becomes 120x40 and ssh gets SIGWINCH (again each second, until it
/// exits). The remote command prints the size, waits for it to change, prints it
/// again and exits 6.
/// `stty` may set columns and rows in two steps, so the remote side can see a size
/// in between: it waits for the final one.
const WINCH: &str = r#"stty cols 100 rows 30
ssh -t "$@" 'stty size; i=0; while [ "$(stty size)" != "40 120" ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i+1)); done; stty size; exit 6' </dev/tty &
pid=$!
sleep 3
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  stty cols 120 rows 40 </dev/tty
  kill -WINCH $pid 2>/dev/null || break
  sleep 1
done
wait $pid
echo "ssh-exit=$?"
"#;

trait StderrOf {
    fn wait_with_output_ref(&mut self) -> String;
}

impl StderrOf for std::process::Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read;
        let _ = self.wait();
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}
