//! Clocks and timestamps.

use chrono::{DateTime, SecondsFormat, Utc};
use std::time::SystemTime;

/// Milliseconds since the kernel started (CLOCK_BOOTTIME).
pub fn boottime_ms() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => {
            let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
            secs * 1000 + nanos / 1_000_000
        }
        Err(_) => 0,
    }
}

/// Now as RFC 3339 (UTC, milliseconds).
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A file time as RFC 3339 (UTC).
pub fn system_time_rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}
