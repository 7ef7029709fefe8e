//! `GET /metrics`: the guest's own counters, for the control plane's stats (it turns
//! two samples into rates): CPU ticks from /proc/stat, memory from /proc/meminfo,
//! disk bytes from /proc/diskstats (whole virtio disks), network bytes from
//! /proc/net/dev (every interface but lo).

use axum::Json;
use serde::Serialize;

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Cpu {
    /// Ticks spent not idle (user, nice, system, irq, softirq, steal), all CPUs.
    pub busy_ticks: u64,
    pub total_ticks: u64,
    pub cpus: u32,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Io {
    pub read_bytes: u64,
    pub write_bytes: u64,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Net {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Metrics {
    pub success: bool,
    pub cpu: Cpu,
    pub memory: Memory,
    pub disk: Io,
    pub network: Net,
    pub uptime_ms: u64,
}

pub fn parse_stat(text: &str) -> Cpu {
    let mut cpu = Cpu::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("cpu") => {
                let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal (guest time is in user)
                let get = |i: usize| v.get(i).copied().unwrap_or(0);
                let idle = get(3) + get(4);
                let total: u64 = (0..8).map(get).sum();
                cpu.total_ticks = total;
                cpu.busy_ticks = total.saturating_sub(idle);
            }
            Some(name) if name.starts_with("cpu") => cpu.cpus += 1,
            _ => {}
        }
    }
    cpu
}

pub fn parse_meminfo(text: &str) -> Memory {
    let kb = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    let total = kb("MemTotal:").unwrap_or(0);
    let available = kb("MemAvailable:").or_else(|| kb("MemFree:")).unwrap_or(0);
    Memory {
        total_bytes: total,
        available_bytes: available,
        used_bytes: total.saturating_sub(available),
    }
}

/// Whole disks only (`vda`, `sda`, `nvme0n1`), not their partitions.
pub fn parse_diskstats(text: &str) -> Io {
    let mut io = Io::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = f.get(2) else { continue };
        let whole = (name.starts_with("vd") || name.starts_with("sd") || name.starts_with("xvd"))
            && !name.ends_with(|c: char| c.is_ascii_digit())
            || (name.starts_with("nvme") && !name.contains('p'));
        if !whole {
            continue;
        }
        let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        io.read_bytes += n(5) * 512;
        io.write_bytes += n(9) * 512;
    }
    io
}

pub fn parse_net_dev(text: &str) -> Net {
    let mut net = Net::default();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        net.rx_bytes += f.first().copied().unwrap_or(0);
        net.tx_bytes += f.get(8).copied().unwrap_or(0);
    }
    net
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn sample() -> Metrics {
    Metrics {
        success: true,
        cpu: parse_stat(&read("/proc/stat")),
        memory: parse_meminfo(&read("/proc/meminfo")),
        disk: parse_diskstats(&read("/proc/diskstats")),
        network: parse_net_dev(&read("/proc/net/dev")),
        uptime_ms: crate::time::boottime_ms(),
    }
}

pub async fn handler() -> Json<Metrics> {
    Json(
        tokio::task::spawn_blocking(sample)
            .await
            .unwrap_or_else(|_| Metrics {
                success: false,
                cpu: Cpu::default(),
                memory: Memory::default(),
                disk: Io::default(),
                network: Net::default(),
                uptime_ms: 0,
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let cpu = parse_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\ncpu1 1 2 3\nintr 5\n");
        assert_eq!(
            cpu,
            Cpu {
                busy_ticks: 150,
                total_ticks: 1000,
                cpus: 2
            }
        );
        let m = parse_meminfo("MemTotal:  1000 kB\nMemFree: 100 kB\nMemAvailable:   400 kB\n");
        assert_eq!(m.total_bytes, 1_024_000);
        assert_eq!(m.used_bytes, 600 * 1024);
        let d = parse_diskstats(
            " 254 0 vda 10 0 8 0 20 0 16 0 0 0 0\n 254 1 vda1 10 0 8 0 20 0 16 0 0 0 0\n 7 0 loop0 1 0 100 0 0 0 0 0 0 0 0\n",
        );
        assert_eq!(
            d,
            Io {
                read_bytes: 8 * 512,
                write_bytes: 16 * 512
            }
        );
        let n = parse_net_dev(
            "Inter-|\n face |\n    lo: 500 1 0 0 0 0 0 0 500 1 0 0 0 0 0 0\n  eth0: 1000 5 0 0 0 0 0 0 2000 6 0 0 0 0 0 0\n",
        );
        assert_eq!(
            n,
            Net {
                rx_bytes: 1000,
                tx_bytes: 2000
            }
        );
        let s = sample();
        assert!(s.cpu.total_ticks > 0 && s.memory.total_bytes > 0);
    }
}
