//! A minimal QMP client: the dozen commands the driver needs, over the VMM's Unix
//! socket. (A full QAPI binding would be a large dependency for this.)

use crate::{io_err, Result, VmmError};
use serde_json::{json, Value};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

pub struct Qmp {
    inner: Mutex<Conn>,
}

struct Conn {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
}

impl Qmp {
    /// Connect, read the greeting and enter command mode.
    pub async fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(io_err(format!("connect QMP {}", path.display())))?;
        let (r, w) = stream.into_split();
        let mut conn = Conn {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
        };
        let greeting = conn.read_msg().await?;
        if greeting.get("QMP").is_none() {
            return Err(VmmError::Qmp(format!("unexpected greeting {greeting}")));
        }
        let q = Qmp {
            inner: Mutex::new(conn),
        };
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    /// Run one command and return its `return` value.
    pub async fn execute(&self, cmd: &str, args: Option<Value>) -> Result<Value> {
        self.execute_inner(cmd, args, None).await
    }

    /// Run one command with a file descriptor attached (SCM_RIGHTS), as `getfd` and
    /// `add-fd` expect. This is how a confined VMM (no shell, no view of our paths)
    /// gets migration streams: `getfd` names the fd, `migrate fd:NAME` uses it.
    pub async fn execute_with_fd(
        &self,
        cmd: &str,
        args: Option<Value>,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Value> {
        self.execute_inner(cmd, args, Some(fd)).await
    }

    /// Hand `fd` to the VMM under `name` (QMP `getfd`); it keeps its own copy.
    pub async fn send_fd(&self, name: &str, fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
        self.execute_with_fd("getfd", Some(json!({ "fdname": name })), fd)
            .await
            .map(|_| ())
    }

    async fn execute_inner(
        &self,
        cmd: &str,
        args: Option<Value>,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<Value> {
        let mut c = self.inner.lock().await;
        let id = c.next_id;
        c.next_id += 1;
        let mut msg = json!({ "execute": cmd, "id": id });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        match fd {
            None => c
                .writer
                .write_all(line.as_bytes())
                .await
                .map_err(io_err("write QMP command"))?,
            Some(fd) => {
                let stream: &UnixStream = c.writer.as_ref();
                loop {
                    stream
                        .writable()
                        .await
                        .map_err(io_err("write QMP command"))?;
                    match stream.try_io(tokio::io::Interest::WRITABLE, || {
                        send_with_fd(stream, line.as_bytes(), fd)
                    }) {
                        Ok(n) if n == line.len() => break,
                        Ok(n) => {
                            // The fd went with the first byte; the rest is plain data.
                            c.writer
                                .write_all(&line.as_bytes()[n..])
                                .await
                                .map_err(io_err("write QMP command"))?;
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(io_err("send fd over QMP")(e)),
                    }
                }
            }
        }
        loop {
            let v = c.read_msg().await?;
            if v.get("event").is_some() {
                tracing::debug!(event = %v, "qmp event");
                continue;
            }
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(err) = v.get("error") {
                let desc = err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(VmmError::Qmp(format!("{cmd}: {desc}")));
            }
            return Ok(v.get("return").cloned().unwrap_or(Value::Null));
        }
    }
}

/// One `sendmsg` of `data` carrying `fd` as SCM_RIGHTS ancillary data.
fn send_with_fd(
    stream: &UnixStream,
    data: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut cbuf = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&cbuf));
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `cbuf`, which is large enough for one cmsghdr with
    // one int (checked above); CMSG_FIRSTHDR/CMSG_DATA stay inside it.
    let n = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::c_int, raw);
        libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Conn {
    async fn read_msg(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(io_err("read QMP"))?;
        if n == 0 {
            return Err(VmmError::Qmp("connection closed by the VMM".into()));
        }
        serde_json::from_str(&line).map_err(|e| VmmError::Qmp(format!("bad QMP message: {e}")))
    }
}
