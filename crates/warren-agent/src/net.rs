//! Guest network setup with plain ioctls (the image may have no `ip` binary): loopback
//! up, the host-attached NIC (found by MAC) addressed and up, a default route, and
//! `/etc/resolv.conf`.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};
use warren_protocol::control::NetworkConfig;

const SIOCADDRT: libc::c_ulong = 0x890B;
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891C;
const SIOCSIFMTU: libc::c_ulong = 0x8922;
const SIOCSIFHWADDR: libc::c_ulong = 0x8924;
const RTF_UP: u16 = 0x0001;
const RTF_GATEWAY: u16 = 0x0002;
const RTF_HOST: u16 = 0x0004;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid {what} {value:?}")]
    Invalid { what: &'static str, value: String },
    #[error("no network interface with MAC {0} under /sys/class/net")]
    NoInterface(String),
    #[error("{op} on {dev}: {err}")]
    Ioctl {
        op: &'static str,
        dev: String,
        err: std::io::Error,
    },
    #[error("socket: {0}")]
    Socket(std::io::Error),
}

/// `struct ifreq` (40 bytes on 64-bit Linux): name plus a union we use as sockaddr, int
/// (MTU) or short (flags).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(dev: &str) -> IfReq {
        let mut name = [0u8; libc::IFNAMSIZ];
        for (d, s) in name.iter_mut().zip(dev.bytes().take(libc::IFNAMSIZ - 1)) {
            *d = s;
        }
        IfReq {
            name,
            data: [0; 24],
        }
    }

    fn set_addr(&mut self, ip: Ipv4Addr) {
        self.data[..16].copy_from_slice(&sockaddr_in(ip));
    }
}

/// `struct sockaddr_in` as bytes.
fn sockaddr_in(ip: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    b[4..8].copy_from_slice(&ip.octets());
    b
}

/// `struct rtentry` for x86_64 / aarch64 glibc.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: [u8; 16],
    rt_gateway: [u8; 16],
    rt_genmask: [u8; 16],
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_tos: libc::c_uchar,
    rt_class: libc::c_uchar,
    rt_pad4: [libc::c_short; 3],
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

struct Sock(OwnedFd);

impl Sock {
    fn new() -> Result<Sock, NetError> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(NetError::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh socket we own.
        Ok(Sock(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl<T>(
        &self,
        req: libc::c_ulong,
        arg: &mut T,
        op: &'static str,
        dev: &str,
    ) -> Result<(), NetError> {
        // SAFETY: `arg` points to a properly sized, initialised struct for `req`.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), req as _, arg as *mut T) };
        if r < 0 {
            return Err(NetError::Ioctl {
                op,
                dev: dev.to_string(),
                err: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn up(&self, dev: &str) -> Result<(), NetError> {
        let mut r = IfReq::new(dev);
        self.ioctl(SIOCGIFFLAGS, &mut r, "SIOCGIFFLAGS", dev)?;
        let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | (libc::IFF_UP as i16);
        r.data[..2].copy_from_slice(&flags.to_ne_bytes());
        self.ioctl(SIOCSIFFLAGS, &mut r, "SIOCSIFFLAGS", dev)
    }
}

/// Netmask for a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let p = u32::from(prefix.min(32));
    Ipv4Addr::from(if p == 0 { 0 } else { u32::MAX << (32 - p) })
}

/// Whether `gw` is inside `addr/prefix`.
pub fn same_subnet(addr: Ipv4Addr, gw: Ipv4Addr, prefix: u8) -> bool {
    let m = u32::from(netmask(prefix));
    u32::from(addr) & m == u32::from(gw) & m
}

/// Interface name under `class_dir` whose `address` is `mac` (case-insensitive).
pub fn find_interface(class_dir: &Path, mac: &str) -> Option<String> {
    let want = mac.trim().to_ascii_lowercase();
    std::fs::read_dir(class_dir).ok()?.flatten().find_map(|de| {
        let a = std::fs::read_to_string(de.path().join("address")).ok()?;
        (a.trim().to_ascii_lowercase() == want)
            .then(|| de.file_name().to_string_lossy().into_owned())
    })
}

/// The one ethernet interface (type 1, not loopback) under `class_dir`, if exactly one.
pub fn only_ethernet(class_dir: &Path) -> Option<String> {
    let eth: Vec<String> = std::fs::read_dir(class_dir)
        .ok()?
        .flatten()
        .filter(|de| {
            std::fs::read_to_string(de.path().join("type")).is_ok_and(|t| t.trim() == "1")
                && de.file_name() != "lo"
        })
        .map(|de| de.file_name().to_string_lossy().into_owned())
        .collect();
    (eth.len() == 1).then(|| eth[0].clone())
}

/// Give `dev` the MAC address `mac` (`aa:bb:cc:dd:ee:ff`).
fn set_mac(dev: &str, mac: &str) -> Result<(), NetError> {
    let bytes: Vec<u8> = mac
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    if bytes.len() != 6 {
        return Err(NetError::Invalid {
            what: "mac",
            value: mac.to_string(),
        });
    }
    let sock = Sock::new()?;
    let mut r = IfReq::new(dev);
    // struct sockaddr { sa_family_t sa_family = ARPHRD_ETHER; char sa_data[14]; }
    r.data[..2].copy_from_slice(&1u16.to_ne_bytes());
    r.data[2..8].copy_from_slice(&bytes);
    sock.ioctl(SIOCSIFHWADDR, &mut r, "SIOCSIFHWADDR", dev)
}

fn parse_ip(what: &'static str, v: &str) -> Result<Ipv4Addr, NetError> {
    v.trim().parse().map_err(|_| NetError::Invalid {
        what,
        value: v.to_string(),
    })
}

fn add_route(
    sock: &Sock,
    dst: Ipv4Addr,
    mask: Ipv4Addr,
    gw: Option<Ipv4Addr>,
    dev: &str,
) -> Result<(), NetError> {
    let mut devname: Vec<u8> = dev.bytes().chain(std::iter::once(0)).collect();
    let mut flags = RTF_UP;
    if gw.is_some() {
        flags |= RTF_GATEWAY;
    }
    if mask == Ipv4Addr::BROADCAST {
        flags |= RTF_HOST;
    }
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(dst),
        rt_gateway: sockaddr_in(gw.unwrap_or(Ipv4Addr::UNSPECIFIED)),
        rt_genmask: sockaddr_in(mask),
        rt_flags: flags,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_tos: 0,
        rt_class: 0,
        rt_pad4: [0; 3],
        rt_metric: 0,
        rt_dev: devname.as_mut_ptr().cast(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    match sock.ioctl(SIOCADDRT, &mut rt, "SIOCADDRT", dev) {
        Err(NetError::Ioctl { err, .. }) if err.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Bring up `lo`.
pub fn loopback_up() -> Result<(), NetError> {
    Sock::new()?.up("lo")
}

/// Configure the NIC described by `cfg`, waiting up to `wait` for it to appear.
/// Returns the interface name.
pub fn configure(cfg: &NetworkConfig, wait: Duration) -> Result<String, NetError> {
    let addr = parse_ip("address", &cfg.address)?;
    let gw = parse_ip("gateway", &cfg.gateway)?;
    if cfg.prefix_len > 32 {
        return Err(NetError::Invalid {
            what: "prefix_len",
            value: cfg.prefix_len.to_string(),
        });
    }
    let class = Path::new("/sys/class/net");
    let start = Instant::now();
    if cfg.set_mac && find_interface(class, &cfg.mac).is_none() {
        if let Some(dev) = only_ethernet(class) {
            set_mac(&dev, &cfg.mac)?;
        }
    }
    let dev = loop {
        if let Some(d) = find_interface(class, &cfg.mac) {
            break d;
        }
        if start.elapsed() >= wait {
            return Err(NetError::NoInterface(cfg.mac.clone()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let sock = Sock::new()?;
    let mut r = IfReq::new(&dev);
    let mtu = i32::try_from(cfg.mtu).unwrap_or(1500);
    r.data[..4].copy_from_slice(&mtu.to_ne_bytes());
    sock.ioctl(SIOCSIFMTU, &mut r, "SIOCSIFMTU", &dev)?;
    let mut r = IfReq::new(&dev);
    r.set_addr(addr);
    sock.ioctl(SIOCSIFADDR, &mut r, "SIOCSIFADDR", &dev)?;
    let mut r = IfReq::new(&dev);
    r.set_addr(netmask(cfg.prefix_len));
    sock.ioctl(SIOCSIFNETMASK, &mut r, "SIOCSIFNETMASK", &dev)?;
    sock.up(&dev)?;
    if !same_subnet(addr, gw, cfg.prefix_len) {
        // e.g. a /32 address: reach the gateway on-link first.
        add_route(&sock, gw, Ipv4Addr::BROADCAST, None, &dev)?;
    }
    add_route(
        &sock,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Some(gw),
        &dev,
    )?;
    Ok(dev)
}

/// Give a running guest another address (a forked VM): take its ethernet link down,
/// which drops the routes of the old address, then configure it as at boot.
pub fn reconfigure(cfg: &NetworkConfig, wait: Duration) -> Result<String, NetError> {
    if let Some(dev) = only_ethernet(Path::new("/sys/class/net")) {
        let sock = Sock::new()?;
        let mut r = IfReq::new(&dev);
        sock.ioctl(SIOCGIFFLAGS, &mut r, "SIOCGIFFLAGS", &dev)?;
        let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) & !(libc::IFF_UP as i16);
        r.data[..2].copy_from_slice(&flags.to_ne_bytes());
        sock.ioctl(SIOCSIFFLAGS, &mut r, "SIOCSIFFLAGS", &dev)?;
    }
    configure(cfg, wait)
}

/// `/etc/resolv.conf` contents for `dns`.
pub fn resolv_conf(dns: &[String]) -> String {
    dns.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| format!("nameserver {}\n", s.trim()))
        .collect()
}

/// Write `/etc/resolv.conf` under `root` (replacing a symlink such as systemd's stub).
pub fn write_resolv_conf(root: &Path, dns: &[String]) -> std::io::Result<()> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    let path = etc.join("resolv.conf");
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&path)?;
    }
    std::fs::write(&path, resolv_conf(dns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }

    #[test]
    fn masks_and_subnets() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(30), Ipv4Addr::new(255, 255, 255, 252));
        let a = Ipv4Addr::new(10, 88, 0, 2);
        assert!(same_subnet(a, Ipv4Addr::new(10, 88, 0, 1), 24));
        assert!(!same_subnet(a, Ipv4Addr::new(10, 88, 0, 1), 32));
    }

    #[test]
    fn finds_interface_by_mac() {
        let d = tempfile::tempdir().unwrap();
        for (n, mac) in [("lo", "00:00:00:00:00:00"), ("eth0", "AA:BB:cc:00:11:22")] {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(
            find_interface(d.path(), "aa:bb:CC:00:11:22").as_deref(),
            Some("eth0")
        );
        assert_eq!(find_interface(d.path(), "aa:aa:aa:aa:aa:aa"), None);
    }

    #[test]
    fn resolv() {
        assert_eq!(
            resolv_conf(&["1.1.1.1".into(), " ".into(), "8.8.8.8".into()]),
            "nameserver 1.1.1.1\nnameserver 8.8.8.8\n"
        );
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/nowhere", d.path().join("etc/resolv.conf")).unwrap();
        write_resolv_conf(d.path(), &["9.9.9.9".into()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("etc/resolv.conf")).unwrap(),
            "nameserver 9.9.9.9\n"
        );
    }
}
