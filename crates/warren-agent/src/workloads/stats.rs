//! CPU and memory of a process, from `/proc/<pid>/stat` and `/proc/<pid>/statm`.

use std::time::Instant;

/// CPU ticks (user + system) used so far by `pid`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: fields after its ')' are fixed.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is index 0, utime index 11, stime index 12.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU use between two samples.
pub struct CpuMeter {
    last: Option<(Instant, u64)>,
}

impl CpuMeter {
    pub fn new() -> CpuMeter {
        CpuMeter { last: None }
    }

    /// Percent of one CPU used by `pid` since the previous sample (0 the first time).
    pub fn sample(&mut self, pid: Option<u32>) -> f64 {
        let now = Instant::now();
        let Some(ticks) = pid.and_then(cpu_ticks) else {
            self.last = None;
            return 0.0;
        };
        let pct = match self.last {
            Some((t, prev)) if ticks >= prev => {
                let secs = now.duration_since(t).as_secs_f64();
                if secs > 0.0 {
                    (ticks - prev) as f64 / ticks_per_second() / secs * 100.0
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        self.last = Some((now, ticks));
        (pct * 10.0).round() / 10.0
    }
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(rss_bytes(me).unwrap() > 0);
        assert_eq!(cpu_ticks(u32::MAX), None);
    }
}
