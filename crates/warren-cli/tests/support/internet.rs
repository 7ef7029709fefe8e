//! "The internet" for the networking tests: a network namespace reached from the host
//! through a veth pair, with an HTTP server and a DNS server inside. Its addresses are
//! TEST-NET ranges (public for `allow_internet`); nothing leaves this machine.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace standing in for the internet: `<prefix>.1` on the host's
/// veth end, `<prefix>.2` (HTTP on :8080, DNS on :53) and `<prefix>.4` inside.
pub struct Internet {
    pub ns: String,
    host_if: String,
    pub prefix: String,
}

impl Internet {
    pub fn new(tag: &str, prefix: &str) -> Internet {
        let pid = std::process::id();
        let ns = format!("wn{tag}{pid}");
        let host_if = format!("wh{tag}{pid}");
        let peer = format!("wp{tag}{pid}");
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &host_if]);
        ip(&["addr", "add", &format!("{prefix}.3/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        for a in [".2", ".4"] {
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{prefix}{a}/24"),
                "dev",
                &peer,
            ]);
        }
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        // So the namespace can try to reach workspaces directly (it must fail).
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "10.0.0.0/8",
            "via",
            &format!("{prefix}.1"),
        ]);
        let net = Internet {
            ns,
            host_if,
            prefix: prefix.to_string(),
        };
        net.serve_http();
        net.serve_dns();
        net
    }

    pub fn addr(&self, last: u8) -> String {
        format!("{}.{last}", self.prefix)
    }

    /// Run `f` on a thread that has entered the namespace (sockets it creates stay
    /// in the namespace).
    pub fn spawn_in<F: FnOnce() + Send + 'static>(&self, f: F) -> std::thread::JoinHandle<()> {
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let f_ns = std::fs::File::open(&path).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread with a namespace descriptor we hold.
            let r = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Can the namespace open a TCP connection to `addr`?
    pub fn connects_to(&self, addr: SocketAddr) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        self.spawn_in(move || {
            let ok = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok();
            let _ = tx.send(ok);
        })
        .join()
        .expect("join");
        rx.recv().unwrap_or(false)
    }

    /// GET / answers `outside:<peer address>`; GET /big answers 2 MiB; POST reads
    /// the body and answers its length.
    fn serve_http(&self) {
        self.spawn_in(|| {
            let l = TcpListener::bind("0.0.0.0:8080").expect("bind http");
            for c in l.incoming().flatten() {
                std::thread::spawn(move || handle_http(c));
            }
        });
    }

    /// api.example.test -> .2, other.example.test -> .4 (TTL 60), else NXDOMAIN.
    fn serve_dns(&self) {
        let prefix = self.prefix.clone();
        self.spawn_in(move || {
            let s = UdpSocket::bind("0.0.0.0:53").expect("bind dns");
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = s.recv_from(&mut buf) {
                let Some(q) = warren_netpolicy::dns::parse_query(&buf[..n]) else {
                    continue;
                };
                let ip: Option<Ipv4Addr> = match q.qname.as_str() {
                    "api.example.test" => format!("{prefix}.2").parse().ok(),
                    "other.example.test" => format!("{prefix}.4").parse().ok(),
                    _ => None,
                };
                let mut r =
                    warren_netpolicy::dns::empty_reply(&q, if ip.is_some() { 0 } else { 3 });
                if let (Some(ip), 1) = (ip, q.qtype) {
                    r[7] = 1;
                    r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
                    r.extend_from_slice(&60u32.to_be_bytes());
                    r.extend_from_slice(&4u16.to_be_bytes());
                    r.extend_from_slice(&ip.octets());
                }
                let _ = s.send_to(&r, peer);
            }
        });
    }
}

fn handle_http(mut c: TcpStream) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let peer = c
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut left = len;
    let mut chunk = vec![0u8; 65536];
    while left > 0 {
        match c.read(&mut chunk[..left.min(65536)]) {
            Ok(0) | Err(_) => return,
            Ok(n) => left -= n,
        }
    }
    let body: Vec<u8> = if head.starts_with("GET /big") {
        vec![b'x'; 2 << 20]
    } else if head.starts_with("POST") {
        format!("received:{len}\n").into_bytes()
    } else {
        format!("outside:{peer}\n").into_bytes()
    };
    let _ = write!(
        c,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(&body);
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// Release the host-wide leases (taps, firewall rules and records) owned by `pids`:
/// what a failed test leaves behind when its workspaces were persistent.
pub fn release_leases_of(pids: &[u32]) {
    let dir = std::path::Path::new("/run/warren/net/leases");
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let v: serde_json::Value = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let owned = v["owner_pid"]
            .as_u64()
            .is_some_and(|p| pids.contains(&(p as u32)));
        let Some(index) = v["index"].as_u64().filter(|_| owned) else {
            continue;
        };
        let index = index as u32;
        let _ = Command::new("ip")
            .args(["link", "del", &format!("wt{index}")])
            .output();
        let _ = warren_netpolicy::nft::run_nft(&format!(
            "{}{}",
            warren_netpolicy::nft::skeleton(None),
            warren_netpolicy::nft::removal_script(index)
        ));
        let _ = std::fs::remove_file(format!("/run/warren/net/policy/{index}.json"));
        let _ = std::fs::remove_file(e.path());
    }
}
