//! `warren workspace ...`, `warren exec`, `warren files`: a client of `warren server`.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use warren_protocol::runtime::{ExecMode, ExecRequest};
use warren_sdk::{ControlClient, Power};

/// How to reach the server and who we are.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// The server's API URL.
    #[arg(
        long,
        env = "WARREN_URL",
        default_value = "http://127.0.0.1:8484",
        global = true
    )]
    pub url: String,
    #[arg(long, env = "WARREN_CLIENT_ID", global = true)]
    pub client_id: Option<String>,
    #[arg(
        long,
        env = "WARREN_CLIENT_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub client_secret: Option<String>,
    /// Read credentials from DATA_DIR/credentials.json when not given otherwise.
    #[arg(
        long = "data-dir",
        env = "WARREN_DATA_DIR",
        default_value = "/var/lib/warren",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Conn {
    fn client(&self) -> anyhow::Result<ControlClient> {
        let (id, secret) = match (&self.client_id, &self.client_secret) {
            (Some(i), Some(s)) => (i.clone(), s.clone()),
            _ => {
                let p = self.data_dir.join("credentials.json");
                let v: Value = serde_json::from_slice(&std::fs::read(&p).with_context(|| {
                    format!(
                        "no credentials: pass --client-id/--client-secret, set WARREN_CLIENT_ID/WARREN_CLIENT_SECRET, or make {} readable",
                        p.display()
                    )
                })?)
                .with_context(|| format!("{} is not JSON", p.display()))?;
                match (v["client_id"].as_str(), v["client_secret"].as_str()) {
                    (Some(i), Some(s)) => (i.to_string(), s.to_string()),
                    _ => bail!("{} lacks client_id or client_secret", p.display()),
                }
            }
        };
        Ok(ControlClient::new(&self.url, &id, &secret)?)
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum WorkspaceCmd {
    /// Create a workspace and wait until it is ready.
    Create(CreateArgs),
    /// List workspaces.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 1)]
        page: u32,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one workspace.
    Get {
        id: String,
    },
    /// Change name, slug or config (JSON, merged).
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        slug: Option<String>,
        /// A JSON object merged into the config, e.g. '{"ttl":"1h"}'.
        #[arg(long)]
        config: Option<String>,
    },
    /// Delete (completes in the background).
    Delete {
        id: String,
    },
    Start {
        id: String,
    },
    Stop {
        id: String,
    },
    Restart {
        id: String,
    },
    /// Fork a running workspace: COUNT new workspaces, each a copy of it now (files,
    /// processes, memory) with its own id, address and tokens.
    Fork {
        id: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Children are named NAME-1, NAME-2, ...
        #[arg(long)]
        name: Option<String>,
    },
    /// Freeze the VM, memory kept.
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Run a command in the workspace; exits with its exit code.
    Exec(ExecArgs),
    /// Files in the workspace.
    #[command(subcommand)]
    Files(FilesCmd),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub slug: Option<String>,
    /// permanent or temporary.
    #[arg(long)]
    pub mode: Option<String>,
    #[arg(long)]
    pub cpus: Option<u32>,
    #[arg(long = "memory-mb")]
    pub memory_mb: Option<u32>,
    #[arg(long = "disk-mb")]
    pub disk_mb: Option<u64>,
    /// KEY=VALUE, repeatable.
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Shell command run at boot.
    #[arg(long)]
    pub cmd: Option<String>,
    /// e.g. 30m, 1h, or seconds.
    #[arg(long)]
    pub ttl: Option<String>,
    /// stop, pause or remove.
    #[arg(long = "ttl-action")]
    pub ttl_action: Option<String>,
    #[arg(long = "remove-on-exit")]
    pub remove_on_exit: bool,
    #[arg(long = "idempotency-key")]
    pub idempotency_key: Option<String>,
    /// Return as soon as the server accepted the request.
    #[arg(long = "no-wait")]
    pub no_wait: bool,
    /// Seconds to wait for readiness.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    pub id: String,
    /// The command and its arguments (one argument with shell syntax runs in sh).
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum FilesCmd {
    /// Upload a local file.
    Put {
        id: String,
        local: PathBuf,
        remote: String,
    },
    /// Download a file (to stdout without LOCAL).
    Get {
        id: String,
        remote: String,
        local: Option<PathBuf>,
    },
    /// List a directory.
    Ls {
        id: String,
        #[arg(default_value = "/")]
        path: String,
    },
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

fn print_workspace(w: &Value) {
    let rows = [
        ("id", &w["id"]),
        ("name", &w["name"]),
        ("slug", &w["slug"]),
        ("status", &w["status"]),
        ("ready", &w["ready"]),
        ("mode", &w["mode"]),
        ("image", &w["image"]),
        ("cpus", &w["resources"]["cpus"]),
        ("memory_mb", &w["resources"]["memory_mb"]),
        ("disk_size_mb", &w["resources"]["disk_size_mb"]),
        ("internal_ip", &w["internal_ip"]),
        ("provisioning", &w["provisioning"]["state"]),
        ("ttl", &w["lifecycle"]["ttl"]),
        ("ttl_expires_at", &w["lifecycle"]["ttl_expires_at"]),
        ("created_at", &w["created_at"]),
    ];
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|(k, v)| vec![format!("{k}:"), s(v)])
        .collect();
    print_table(&table);
    if let Some(e) = w["provisioning"]["error"].as_object() {
        println!(
            "error: {} {}",
            s(&e["code"].clone()),
            s(&e["message"].clone())
        );
    }
}

fn emit(conn: &Conn, v: &Value, human: impl FnOnce(&Value)) {
    if conn.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        human(v);
    }
}

pub async fn workspace(conn: &Conn, cmd: WorkspaceCmd) -> anyhow::Result<i32> {
    let c = conn.client()?;
    match cmd {
        WorkspaceCmd::Create(a) => {
            let mut config = serde_json::Map::new();
            if !a.env.is_empty() {
                config.insert("env".into(), json!(a.env));
            }
            if let Some(x) = a.cmd {
                config.insert("cmd".into(), json!(x));
            }
            if let Some(x) = a.ttl {
                config.insert("ttl".into(), json!(x));
            }
            if let Some(x) = a.ttl_action {
                config.insert("ttl_action".into(), json!(x));
            }
            if a.remove_on_exit {
                config.insert("remove_on_exit".into(), json!(true));
            }
            let mut body = json!({
                "wait_ready": !a.no_wait,
                "ready_timeout_seconds": a.timeout,
                "config": config,
            });
            for (k, v) in [
                ("image", a.image.map(Value::from)),
                ("name", a.name.map(Value::from)),
                ("slug", a.slug.map(Value::from)),
                ("mode", a.mode.map(Value::from)),
                ("cpus", a.cpus.map(Value::from)),
                ("memory_mb", a.memory_mb.map(Value::from)),
                ("disk_size_mb", a.disk_mb.map(Value::from)),
                ("idempotency_key", a.idempotency_key.map(Value::from)),
            ] {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            let r = c.create(&body).await?;
            emit(conn, &r, |r| print_workspace(&r["workspace"]));
            if r["workspace"]["provisioning"]["state"] == "failed" {
                return Ok(1);
            }
        }
        WorkspaceCmd::List {
            status,
            page,
            limit,
        } => {
            let r = c.list(page, limit, status.as_deref()).await?;
            emit(conn, &r, |r| {
                let mut rows = vec![[
                    "ID",
                    "NAME",
                    "STATUS",
                    "IMAGE",
                    "CPUS",
                    "MEMORY_MB",
                    "IP",
                    "CREATED",
                ]
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()];
                for w in r["workspaces"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        s(&w["id"]),
                        s(&w["name"]),
                        s(&w["status"]),
                        s(&w["image"]),
                        s(&w["resources"]["cpus"]),
                        s(&w["resources"]["memory_mb"]),
                        s(&w["internal_ip"]),
                        s(&w["created_at"]),
                    ]);
                }
                print_table(&rows);
            });
        }
        WorkspaceCmd::Get { id } => {
            let r = c.get(&id).await?;
            emit(conn, &r, |r| print_workspace(&r["workspace"]));
        }
        WorkspaceCmd::Update {
            id,
            name,
            slug,
            config,
        } => {
            let mut body = json!({});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if let Some(sl) = slug {
                body["slug"] = json!(sl);
            }
            if let Some(cfg) = config {
                body["config"] = serde_json::from_str(&cfg).context("--config is not JSON")?;
            }
            let r = c.update(&id, &body).await?;
            emit(conn, &r, |r| print_workspace(&r["workspace"]));
        }
        WorkspaceCmd::Delete { id } => {
            let r = c.delete(&id).await?;
            emit(conn, &r, |r| println!("{}: deletion accepted", s(&r["id"])));
        }
        WorkspaceCmd::Start { id } => power(conn, &c, &id, Power::Start).await?,
        WorkspaceCmd::Stop { id } => power(conn, &c, &id, Power::Stop).await?,
        WorkspaceCmd::Restart { id } => power(conn, &c, &id, Power::Restart).await?,
        WorkspaceCmd::Fork { id, count, name } => {
            let r = c.fork(&id, count, name.as_deref()).await?;
            emit(conn, &r, |r| {
                for w in r["workspaces"].as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}\t{}\t{}",
                        s(&w["id"]),
                        s(&w["name"]),
                        s(&w["internal_ip"]),
                        s(&w["status"])
                    );
                }
            });
        }
        WorkspaceCmd::Pause { id } => power(conn, &c, &id, Power::Pause).await?,
        WorkspaceCmd::Resume { id } => power(conn, &c, &id, Power::Resume).await?,
        WorkspaceCmd::Exec(a) => return exec(conn, a).await,
        WorkspaceCmd::Files(f) => return files(conn, f).await,
    }
    Ok(0)
}

async fn power(conn: &Conn, c: &ControlClient, id: &str, p: Power) -> anyhow::Result<()> {
    let r = c.power(id, p).await?;
    emit(conn, &r, |r| {
        println!("{}: {}", s(&r["workspace"]["id"]), s(&r["status"]))
    });
    Ok(())
}

pub async fn exec(conn: &Conn, a: ExecArgs) -> anyhow::Result<i32> {
    let rt = conn.client()?.runtime(&a.id).await?;
    let req = ExecRequest {
        cmd: a.cmd,
        exec_mode: Some(ExecMode::Auto),
        // An empty stdin, so commands that read it see EOF instead of waiting.
        stdin: Some(String::new()),
        ..ExecRequest::default()
    };
    let exit = rt
        .exec_stream(&req, crate::output::print_exec_event)
        .await?;
    if let Some(e) = exit.error {
        eprintln!("warren: {e}");
    }
    Ok(exit.exit_code)
}

pub async fn files(conn: &Conn, f: FilesCmd) -> anyhow::Result<i32> {
    let c = conn.client()?;
    match f {
        FilesCmd::Put { id, local, remote } => {
            let data =
                std::fs::read(&local).with_context(|| format!("read {}", local.display()))?;
            let r = c.runtime(&id).await?.upload(&remote, data).await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{} ({} bytes)", r.path, r.size);
            }
        }
        FilesCmd::Get { id, remote, local } => {
            let data = c.runtime(&id).await?.download(&remote).await?;
            match local {
                Some(p) => {
                    std::fs::write(&p, &data).with_context(|| format!("write {}", p.display()))?
                }
                None => std::io::stdout().lock().write_all(&data)?,
            }
        }
        FilesCmd::Ls { id, path } => {
            let r = c.runtime(&id).await?.list(&path).await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let mut rows = vec![vec!["TYPE".to_string(), "SIZE".into(), "NAME".into()]];
                for e in &r.entries {
                    rows.push(vec![
                        format!("{:?}", e.kind).to_lowercase(),
                        e.size.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                        e.name.clone(),
                    ]);
                }
                print_table(&rows);
            }
        }
    }
    Ok(0)
}
