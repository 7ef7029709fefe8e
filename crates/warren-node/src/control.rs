//! The host end of the agent's control channel (virtio-serial, JSON lines).
//!
//! QEMU holds the host side as a listening Unix socket. We connect right after the VMM
//! starts and send the boot configuration at once: until the guest opens its port,
//! QEMU leaves our bytes in the socket, so the configuration is waiting for the agent
//! the moment it looks, whatever the order of events.

use crate::{io_err, NodeError, Result};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Mutex};
use warren_protocol::control::{encode, GuestMessage, HostMessage};

pub struct ControlChannel {
    writer: Mutex<OwnedWriteHalf>,
}

impl ControlChannel {
    /// Connect to the VMM's socket; guest messages arrive on the returned receiver,
    /// which closes when the VM goes away. When the guest reports
    /// [`GuestMessage::Halted`], the VMM (`vmm_pid`, started for `workspace_id`) is
    /// told to exit: some guest kernels cannot end the VM themselves.
    pub async fn connect(
        path: &Path,
        workspace_id: &str,
        vmm_pid: Option<u32>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<GuestMessage>)> {
        let pid = Arc::new(OnceLock::new());
        if let Some(p) = vmm_pid {
            let _ = pid.set(p);
        }
        Self::connect_early(path, workspace_id, pid).await
    }

    /// [`ControlChannel::connect`] while the VMM is still starting (its pid set into
    /// `vmm_pid` once known): a VM restored from saved state may send what it had
    /// queued the moment it runs, and QEMU drops what a guest sends while nobody is
    /// connected, so the host connects before the restored guest is let run.
    pub async fn connect_early(
        path: &Path,
        workspace_id: &str,
        vmm_pid: Arc<OnceLock<u32>>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<GuestMessage>)> {
        let mut tries = 0;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if tries < 500 => {
                    tries += 1;
                    tracing::trace!(error = %e, "control socket not ready");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => return Err(io_err(format!("connect {}", path.display()))(e)),
            }
        };
        let (r, w) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let id = workspace_id.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<GuestMessage>(&line) {
                    Ok(m) => {
                        if m == GuestMessage::Halted {
                            end_vmm(vmm_pid.get().copied(), &id);
                        }
                        if tx.send(m).is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, line, "unreadable guest message"),
                }
            }
        });
        Ok((
            ControlChannel {
                writer: Mutex::new(w),
            },
            rx,
        ))
    }

    pub async fn send(&self, msg: &HostMessage) -> Result<()> {
        let mut w = self.writer.lock().await;
        let mut line = encode(msg);
        let r = w
            .write_all(&line)
            .await
            .map_err(|e| NodeError::Boot(format!("control channel write failed: {e}")));
        // A Boot message carries the disk key.
        zeroize::Zeroize::zeroize(&mut line);
        r
    }
}

/// SIGTERM the VMM of a guest that has halted (QEMU exits cleanly on it), after
/// checking the pid still names this workspace's VMM.
fn end_vmm(pid: Option<u32>, workspace_id: &str) {
    if let Some(pid) = pid.filter(|p| crate::reconcile::is_our_vmm(*p, workspace_id)) {
        tracing::debug!(workspace_id, pid, "guest halted; ending its VMM");
        // SAFETY: signalling the VMM process whose command line names this workspace.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
}
