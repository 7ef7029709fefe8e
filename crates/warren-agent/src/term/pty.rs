//! Starting a process on a fresh pseudo-terminal.
//!
//! `nix::pty::openpty` (nix is already a dependency, so this costs no new crate): the
//! child gets the slave as fds 0-2, becomes a session leader and takes the slave as
//! its controlling terminal (`TIOCSCTTY`), so job control, `^C` and `SIGWINCH` work.
//! The master stays with the agent, non-blocking, driven by tokio's `AsyncFd`.

use crate::reaper::{Reaper, Spawned};
use crate::workspace::Credentials;
use nix::pty::{openpty, Winsize};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use tokio::io::unix::AsyncFd;

/// The agent's end of a pseudo-terminal.
pub struct Master {
    fd: AsyncFd<OwnedFd>,
}

fn winsize(cols: u16, rows: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Open a pty of `cols`x`rows` and start `cmd` on it (stdio replaced by the slave).
pub fn spawn(
    reaper: &Reaper,
    mut cmd: Command,
    cols: u16,
    rows: u16,
    user: Option<Credentials>,
) -> io::Result<(Master, Spawned)> {
    let pty = openpty(&winsize(cols, rows), None).map_err(io::Error::from)?;
    let slave = pty.slave;
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: between fork and exec only async-signal-safe syscalls, on memory
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // fd 0 is the slave by now: make it the controlling terminal.
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(u) = &user {
                if libc::setgroups(u.groups.len(), u.groups.as_ptr()) < 0
                    || libc::setgid(u.gid) < 0
                    || libc::setuid(u.uid) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let spawned = reaper.spawn(&mut cmd)?;
    // The parent's copies of the slave live in `cmd`: drop them so the master reads EIO
    // once the last process holding the slave is gone.
    drop(cmd);
    let master = pty.master;
    nix::fcntl::fcntl(
        master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(io::Error::from)?;
    // SAFETY: an OwnedFd stays open and is the same fd for as long as the AsyncFd
    // owns it.
    let fd = unsafe { AsyncFd::register(master) }.map_err(|e| io::Error::other(e.to_string()))?;
    Ok((Master { fd }, spawned))
}

impl Master {
    /// Read some output. `Ok(0)` once no process holds the slave any more (EIO).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Write all of `data` (the terminal's input).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                nix::unistd::write(fd.get_ref().as_fd(), data).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Set the window size; the kernel signals the foreground process group.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let ws = winsize(cols, rows);
        // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid.
        let r = unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
