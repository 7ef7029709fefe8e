//! The host <-> guest control channel: newline-delimited JSON over the virtio-serial
//! port named [`PORT_NAME`].
//!
//! The port is driven by two plain threads with blocking I/O, which suits a character
//! device whose peer comes and goes: while the host end is closed a read returns 0 (we
//! retry after a pause) and a write blocks until the host connects (so queued messages
//! are delivered late rather than lost). Write errors are never fatal.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use warren_protocol::control::{encode, BootConfig, GuestMessage, HostMessage, PORT_NAME};

/// Longest line accepted from the host (a boot config is a few KiB).
const MAX_LINE: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no virtio-serial port named {name:?} under /sys/class/virtio-ports after {waited:?} (is virtio_console loaded and the port attached?)")]
    NotFound { name: String, waited: Duration },
    #[error("cannot open {path}: {err}")]
    Open { path: PathBuf, err: io::Error },
}

/// The virtio-ports directory name (e.g. `vport0p1`) of the port called `name`.
pub fn find_port(class_dir: &Path, name: &str) -> Option<String> {
    let mut found: Vec<String> = std::fs::read_dir(class_dir)
        .ok()?
        .flatten()
        .filter(|de| {
            std::fs::read_to_string(de.path().join("name"))
                .map(|n| n.trim() == name)
                .unwrap_or(false)
        })
        .map(|de| de.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found.into_iter().next()
}

struct Outgoing {
    line: Vec<u8>,
    written: Option<oneshot::Sender<()>>,
}

/// Sending half; cheap to clone.
#[derive(Clone)]
pub struct ControlTx {
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl ControlTx {
    /// Queue a message (never blocks, never fails loudly).
    pub fn send(&self, msg: &GuestMessage) {
        let _ = self.tx.send(Outgoing {
            line: encode(msg),
            written: None,
        });
    }

    /// Queue a message and wait up to `timeout` for it to be written to the port.
    pub async fn send_and_wait(&self, msg: &GuestMessage, timeout: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        if self
            .tx
            .send(Outgoing {
                line: encode(msg),
                written: Some(done),
            })
            .is_err()
        {
            return false;
        }
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(())))
    }

    /// A sender whose messages go nowhere (no port).
    pub fn disconnected() -> ControlTx {
        let (tx, _) = mpsc::unbounded_channel();
        ControlTx { tx }
    }
}

pub struct ControlPort {
    pub tx: ControlTx,
    pub rx: mpsc::Receiver<HostMessage>,
    pub path: PathBuf,
}

/// Find and open the control port, waiting up to `wait` for it to appear.
pub fn open(wait: Duration) -> Result<ControlPort, ControlError> {
    let class_dir = Path::new("/sys/class/virtio-ports");
    let start = Instant::now();
    let dev = loop {
        if let Some(name) = find_port(class_dir, PORT_NAME) {
            let dev = PathBuf::from("/dev").join(name);
            if dev.exists() {
                break dev;
            }
        }
        if start.elapsed() >= wait {
            return Err(ControlError::NotFound {
                name: PORT_NAME.into(),
                waited: wait,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&dev)
        .map_err(|err| ControlError::Open {
            path: dev.clone(),
            err,
        })?;
    let writer = file.try_clone().map_err(|err| ControlError::Open {
        path: dev.clone(),
        err,
    })?;

    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::channel(16);
    let spawned = std::thread::Builder::new()
        .name("control-writer".into())
        .spawn(move || write_loop(writer, out_rx))
        .and_then(|_| {
            std::thread::Builder::new()
                .name("control-reader".into())
                .spawn(move || read_loop(file, in_tx))
        });
    if let Err(err) = spawned {
        return Err(ControlError::Open { path: dev, err });
    }
    Ok(ControlPort {
        tx: ControlTx { tx: out_tx },
        rx: in_rx,
        path: dev,
    })
}

fn write_loop(mut port: File, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(msg) = rx.blocking_recv() {
        let mut off = 0;
        let mut failures = 0u32;
        while off < msg.line.len() {
            match port.write(&msg.line[off..]) {
                Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!("control port write: {e}");
                    }
                    // Give up on this message after ~10 s of errors.
                    if failures > 50 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        if let Some(done) = msg.written {
            let _ = done.send(());
        }
    }
}

/// Decode one host message.
///
/// `HostMessage` is internally tagged, so serde first buffers each message in its
/// generic `Content` type, which cannot hold every value a config may carry (it has no
/// 128-bit integers: the first QEMU boot of this agent failed on a then-u128
/// `clock_unix_ns`). `Boot`, the one message with a large payload, is decoded straight
/// from a `serde_json::Value` instead.
pub fn decode_host_message(text: &str) -> Result<HostMessage, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    // `Adopt` carries workloads (arbitrary JSON) too.
    if value.get("type").and_then(|t| t.as_str()) == Some("adopt") {
        let identity = value
            .get("identity")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        return Ok(HostMessage::Adopt {
            identity: Box::new(serde_json::from_value(identity)?),
        });
    }
    if value.get("type").and_then(|t| t.as_str()) == Some("boot") {
        let config = value
            .get("config")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let config: BootConfig = serde_json::from_value(config)?;
        return Ok(HostMessage::Boot {
            config: Box::new(config),
        });
    }
    serde_json::from_value(value)
}

/// Split complete lines off `buf`, parsing each as a host message.
pub fn take_lines(buf: &mut Vec<u8>) -> Vec<Result<HostMessage, String>> {
    let mut out = Vec::new();
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        out.push(decode_host_message(text).map_err(|e| format!("{e}: {text:.200}")));
    }
    if buf.len() > MAX_LINE {
        out.push(Err(format!("dropping a line longer than {MAX_LINE} bytes")));
        buf.clear();
    }
    out
}

/// Pauses between reads while the host end is not connected: 2 ms for the first
/// second (a VM restored from a template or from disk runs a moment before the host
/// connects and sends its `Boot` or `Resume`, which must not wait out a long sleep;
/// `poll` cannot help, the port reports a hangup at once), then 200 ms (a host that is
/// away for long costs the guest little).
fn reconnect_backoff(misses: u32) -> Duration {
    if misses < 500 {
        Duration::from_millis(2)
    } else {
        Duration::from_millis(200)
    }
}

fn read_loop(mut port: File, tx: mpsc::Sender<HostMessage>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut misses = 0u32;
    loop {
        match port.read(&mut chunk) {
            // The host end is not connected: poll again shortly.
            Ok(0) => {
                std::thread::sleep(reconnect_backoff(misses));
                misses = misses.saturating_add(1);
            }
            Ok(n) => {
                misses = 0;
                buf.extend_from_slice(&chunk[..n]);
                for msg in take_lines(&mut buf) {
                    match msg {
                        Ok(m) => {
                            if tx.blocking_send(m).is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!("control port: ignoring bad message: {e}"),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("control port read: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_named_port() {
        let d = tempfile::tempdir().unwrap();
        for (dir, name) in [("vport0p0", "other"), ("vport0p1", PORT_NAME)] {
            std::fs::create_dir(d.path().join(dir)).unwrap();
            std::fs::write(d.path().join(dir).join("name"), format!("{name}\n")).unwrap();
        }
        std::fs::create_dir(d.path().join("vport0p2")).unwrap(); // no name file
        assert_eq!(find_port(d.path(), PORT_NAME).as_deref(), Some("vport0p1"));
        assert_eq!(find_port(d.path(), "missing"), None);
    }

    #[test]
    fn decodes_boot() {
        let config = BootConfig {
            workspace_id: "ws".into(),
            hostname: "h".into(),
            network: None,
            env: Default::default(),
            cmd: Some(vec!["sh".into()]),
            workdir: None,
            user: None,
            api_token: "t".into(),
            api_port: 9990,
            clock_unix_ns: 1_790_000_000_123_456_789,
            entropy_hex: "00".into(),
            data_disk: Default::default(),
            workloads: vec![serde_json::json!({"name": "w", "cmd": ["true"]})],
        };
        let msg = HostMessage::Boot {
            config: Box::new(config),
        };
        let line = String::from_utf8(encode(&msg)).unwrap();
        assert_eq!(decode_host_message(line.trim()).unwrap(), msg);
        assert_eq!(
            decode_host_message(r#"{"type":"ping","id":1}"#).unwrap(),
            HostMessage::Ping { id: 1 }
        );
        assert!(decode_host_message(r#"{"type":"boot"}"#).is_err());
    }

    #[test]
    fn backoff_starts_short_and_is_capped() {
        assert_eq!(reconnect_backoff(0), Duration::from_millis(2));
        assert_eq!(reconnect_backoff(499), Duration::from_millis(2));
        assert_eq!(reconnect_backoff(500), Duration::from_millis(200));
        assert_eq!(reconnect_backoff(u32::MAX), Duration::from_millis(200));
    }

    #[test]
    fn splits_lines() {
        let mut buf = b"{\"type\":\"ping\",\"id\":3}\n\n{\"type\":\"shut".to_vec();
        let msgs = take_lines(&mut buf);
        assert_eq!(msgs, vec![Ok(HostMessage::Ping { id: 3 })]);
        buf.extend_from_slice(b"down\"}\nnot json\n");
        let msgs = take_lines(&mut buf);
        assert_eq!(msgs[0], Ok(HostMessage::Shutdown));
        assert!(msgs[1].is_err());
        assert!(buf.is_empty());
    }
}
