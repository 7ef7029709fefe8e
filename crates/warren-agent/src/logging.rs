//! `tracing` to stderr: the serial console in the guest (the host's boot log), the
//! terminal under `serve`. `WARREN_AGENT_LOG` sets the level (default `info`).

use tracing_subscriber::filter::LevelFilter;

pub fn init() {
    let level = std::env::var("WARREN_AGENT_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
