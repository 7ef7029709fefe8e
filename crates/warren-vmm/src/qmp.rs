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
        let mut c = self.inner.lock().await;
        let id = c.next_id;
        c.next_id += 1;
        let mut msg = json!({ "execute": cmd, "id": id });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        c.writer
            .write_all(line.as_bytes())
            .await
            .map_err(io_err("write QMP command"))?;
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
