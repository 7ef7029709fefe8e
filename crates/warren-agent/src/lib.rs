//! `warren-agent`: PID 1 of every Warren workspace VM, and the runtime API server.
//!
//! Modes:
//! * `init` — when started as PID 1 (or as `/init`, or with the `init` argument): mounts
//!   the basics, loads kernel modules, talks to the host over the virtio-serial control
//!   port, builds and switches into the workspace root, configures the network and
//!   serves the runtime API. See [`init`].
//! * `serve` — `warren-agent serve --listen ADDR --token TOKEN [--workdir DIR]`: only the
//!   runtime API, on an ordinary host (used by the integration tests).
//!
//! The binary (`main.rs`) has no Rust `main`: std's pre-main runtime setup aborts the
//! process when fds 0-2 are closed and `/dev/null` cannot be opened, which is exactly
//! the situation of an init started from an initramfs without `/dev/console`. Aborting
//! PID 1 panics the kernel, so the binary takes over the C `main` and [`stdio`] repairs
//! fds 0-2 itself.

pub mod api;
pub mod control;
pub mod error;
pub mod exec;
pub mod files;
pub mod init;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod reaper;
pub mod replay;
pub mod search;
pub mod stdio;
pub mod stream;
pub mod tasks;
pub mod term;
pub mod time;
pub mod transfer;
pub mod watchers;
pub mod workloads;
pub mod workspace;
pub mod ws;

use std::ffi::c_int;
use std::net::SocketAddr;
use std::path::PathBuf;

const USAGE: &str = "usage:
  warren-agent                 run as the VM's init (when PID 1 or invoked as /init)
  warren-agent init            same, explicitly
  warren-agent serve --listen ADDR --token TOKEN [--workdir DIR]
                               serve the runtime API only (token may also come from
                               WARREN_AGENT_TOKEN)
  warren-agent --version";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Mode {
    Init,
    Serve(ServeArgs),
    Version,
}

#[derive(Debug, PartialEq)]
struct ServeArgs {
    listen: SocketAddr,
    token: String,
    workdir: Option<PathBuf>,
}

fn parse_args(args: &[String], is_pid1: bool) -> Result<Mode, String> {
    let argv0 = args.first().map(String::as_str).unwrap_or("");
    let rest = args.get(1..).unwrap_or(&[]);
    let first = rest.first().map(String::as_str);
    match first {
        Some("serve") => parse_serve(rest.get(1..).unwrap_or(&[])).map(Mode::Serve),
        Some("init") => Ok(Mode::Init),
        Some("--version") | Some("-V") => Ok(Mode::Version),
        Some("--help") | Some("-h") | Some("help") => Err(String::new()),
        // The kernel passes unknown `key` (no `=`) cmdline words to init as arguments:
        // as PID 1 ignore them.
        _ if is_pid1 || argv0 == "/init" || argv0.ends_with("/init") => Ok(Mode::Init),
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("no command given and not running as PID 1".into()),
    }
}

fn parse_serve(args: &[String]) -> Result<ServeArgs, String> {
    let mut listen = None;
    let mut token = std::env::var("WARREN_AGENT_TOKEN").ok();
    let mut workdir = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{key} needs a value")),
            }
        };
        match key {
            "--listen" => {
                let v = value()?;
                listen = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {v:?}: {e} (want IP:PORT)"))?,
                );
            }
            "--token" => token = Some(value()?),
            "--workdir" => workdir = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let listen = listen.ok_or("serve needs --listen IP:PORT")?;
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or("serve needs --token (or WARREN_AGENT_TOKEN)")?;
    Ok(ServeArgs {
        listen,
        token,
        workdir,
    })
}

/// Dispatch on the command line; returns the process exit code (never, as init).
pub fn real_main(args: Vec<String>) -> c_int {
    let is_pid1 = std::process::id() == 1;
    match parse_args(&args, is_pid1) {
        Ok(Mode::Init) => init::run(),
        Ok(Mode::Version) => {
            stdio::fill_missing(&["/dev/null"]);
            println!("warren-agent {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Ok(Mode::Serve(serve)) => {
            stdio::fill_missing(&["/dev/null"]);
            logging::init();
            match api::serve_blocking(serve.listen, serve.token, serve.workdir) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("warren-agent: {e}");
                    1
                }
            }
        }
        Err(msg) => {
            stdio::fill_missing(&["/dev/null"]);
            if !msg.is_empty() {
                eprintln!("warren-agent: {msg}");
            }
            eprintln!("{USAGE}");
            if msg.is_empty() {
                0
            } else {
                2
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn pid1_or_init_name_means_init() {
        assert_eq!(parse_args(&s(&["/init"]), false), Ok(Mode::Init));
        assert_eq!(parse_args(&s(&["warren-agent"]), true), Ok(Mode::Init));
        // Kernel cmdline leftovers passed to init are ignored.
        assert_eq!(parse_args(&s(&["/init", "quiet"]), false), Ok(Mode::Init));
        assert_eq!(parse_args(&s(&["x", "init"]), false), Ok(Mode::Init));
        assert!(parse_args(&s(&["warren-agent"]), false).is_err());
    }

    #[test]
    fn serve_arguments() {
        let m = parse_args(
            &s(&[
                "a",
                "serve",
                "--listen",
                "127.0.0.1:80",
                "--token=t",
                "--workdir",
                "/w",
            ]),
            false,
        );
        assert_eq!(
            m,
            Ok(Mode::Serve(ServeArgs {
                listen: "127.0.0.1:80".parse().unwrap(),
                token: "t".into(),
                workdir: Some("/w".into()),
            }))
        );
        assert!(parse_args(
            &s(&["a", "serve", "--listen", "nope", "--token", "t"]),
            false
        )
        .is_err());
        assert!(parse_args(&s(&["a", "serve", "--bogus"]), false).is_err());
    }
}
