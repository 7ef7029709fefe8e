//! Small pieces of system state from the boot config: clock, entropy, hostname.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `RNDADDENTROPY` = `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG` = `_IO('R', 0x07)`: reseed the CRNG from the pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Set CLOCK_REALTIME to `unix_ns`.
pub fn set_clock(unix_ns: u64) -> Result<(), String> {
    let secs =
        i64::try_from(unix_ns / 1_000_000_000).map_err(|_| "clock out of range".to_string())?;
    let nanos = (unix_ns % 1_000_000_000) as i64;
    let ts = nix::sys::time::TimeSpec::new(secs, nanos);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
        .map_err(|e| format!("clock_settime: {e}"))
}

/// After a restore from saved state: step the clock, reseed the RNG.
pub fn resumed(clock_unix_ns: u64, entropy_hex: &str) {
    if let Err(e) = set_clock(clock_unix_ns) {
        tracing::warn!("resume: {e}");
    }
    if let Err(e) = add_entropy(entropy_hex) {
        tracing::warn!("resume: entropy: {e}");
    }
    tracing::info!("restored from saved state: clock stepped, RNG reseeded");
}

/// Decode hex (case-insensitive, whitespace ignored).
pub fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 == 1 {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16);
            let lo = (p[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
                _ => Err("invalid hex digit".to_string()),
            }
        })
        .collect()
}

/// Mix `entropy_hex` into the kernel RNG, crediting it when the kernel lets us.
/// Returns how many bytes were added.
pub fn add_entropy(entropy_hex: &str) -> Result<usize, String> {
    let bytes = decode_hex(entropy_hex)?;
    if bytes.is_empty() {
        return Ok(0);
    }
    let mut f = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len() + 3);
    let bits = i32::try_from(bytes.len() * 8).unwrap_or(i32::MAX);
    let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(&bytes);
    info.resize(8 + bytes.len().div_ceil(4) * 4, 0);
    // SAFETY: `info` is a complete rand_pool_info with buf_size bytes of data.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if r < 0 {
        // Not credited, but still mixed in.
        f.write_all(&bytes)
            .map_err(|e| format!("write /dev/urandom: {e}"))?;
    }
    // Reseed now: a VM restored from a template or a snapshot shares its CRNG state
    // with every other copy until the kernel reseeds on its own schedule.
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) };
    if r < 0 {
        tracing::debug!("RNDRESEEDCRNG: {}", std::io::Error::last_os_error());
    }
    Ok(bytes.len())
}

/// `/etc/hosts` with a `127.0.1.1 <hostname>` line (and localhost lines if missing).
pub fn hosts_with(existing: &str, hostname: &str) -> String {
    let mut out = String::new();
    let has_localhost = existing.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.next() == Some("127.0.0.1") && f.any(|n| n == "localhost")
    });
    if !has_localhost {
        out.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    }
    for l in existing.lines() {
        // Replace an older 127.0.1.1 line.
        if l.split_whitespace().next() == Some("127.0.1.1") {
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(&format!("127.0.1.1\t{hostname}\n"));
    out
}

/// Set the hostname and record it in /etc/hostname and /etc/hosts (when writable).
pub fn set_hostname(root: &Path, hostname: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if hostname.is_empty() {
        return problems;
    }
    if let Err(e) = nix::unistd::sethostname(hostname) {
        problems.push(format!("sethostname: {e}"));
    }
    let etc = root.join("etc");
    let _ = std::fs::create_dir_all(&etc);
    if let Err(e) = std::fs::write(etc.join("hostname"), format!("{hostname}\n")) {
        problems.push(format!("/etc/hostname: {e}"));
    }
    let hosts = etc.join("hosts");
    let existing = std::fs::read_to_string(&hosts).unwrap_or_default();
    if let Err(e) = std::fs::write(&hosts, hosts_with(&existing, hostname)) {
        problems.push(format!("/etc/hosts: {e}"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex() {
        assert_eq!(decode_hex("00ff10Ab").unwrap(), vec![0, 255, 16, 171]);
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
        assert!(decode_hex("").unwrap().is_empty());
    }

    #[test]
    fn hosts_file() {
        let h = hosts_with("", "ws1");
        assert!(h.contains("127.0.0.1\tlocalhost"));
        assert!(h.ends_with("127.0.1.1\tws1\n"));
        let h = hosts_with("127.0.0.1 localhost\n127.0.1.1 old\n10.0.0.1 db\n", "ws2");
        assert_eq!(h, "127.0.0.1 localhost\n10.0.0.1 db\n127.0.1.1\tws2\n");
    }
}
