//! The SSH gateway: `ssh -p PORT <workspace id>@<host> [CMD]`.
//!
//! The user name names the workspace. Authentication is the public key or password
//! set through `/workspace/:id/ssh` (and SSH must be enabled there). Everything runs
//! through the workspace's agent, so the image needs no sshd:
//! * a command without a PTY (`exec`) through `POST /exec/stream`, its stdout and
//!   stderr streamed back, the channel's input fed to its stdin (`POST
//!   /exec/:id/input`), its exit code returned;
//! * a login shell or a command on a PTY (`pty-req` + `shell`/`exec`, `window-change`)
//!   through an agent terminal ([`shell`]);
//! * the `sftp` subsystem, and so OpenSSH's `scp` (which speaks sftp), on the agent's
//!   files API ([`sftp`]);
//! * local port forwarding (`ssh -L`, `direct-tcpip`) to the workspace's own ports
//!   through the agent's `/tunnel` ([`forward`]).
//!
//! Remote forwarding (`-R`), agent and X11 forwarding and other subsystems are refused.

mod forward;
mod sftp;
mod shell;

use crate::seal::MasterKey;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, CryptoVec};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use warren_protocol::runtime::{ExecMode, ExecRequest, API_PORT};
use warren_state::{ObservedState, Store};

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh: {0}")]
    Russh(#[from] russh::Error),
    #[error("host key: {0}")]
    Key(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// PBKDF2-HMAC-SHA256 iterations for SSH passwords.
const PBKDF2_ROUNDS: u32 = 100_000;

/// `pbkdf2-sha256$<rounds>$<salt hex>$<hash hex>`.
pub fn hash_password(password: &str) -> String {
    use rand::RngCore;
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(PBKDF2_ROUNDS).unwrap_or(std::num::NonZeroU32::MIN),
        &salt,
        password.as_bytes(),
        &mut out,
    );
    format!(
        "pbkdf2-sha256${PBKDF2_ROUNDS}${}${}",
        hex::encode(salt),
        hex::encode(out)
    )
}

pub fn verify_password(stored: &str, password: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [scheme, rounds, salt, hash] = parts.as_slice() else {
        return false;
    };
    if *scheme != "pbkdf2-sha256" {
        return false;
    }
    let (Some(rounds), Ok(salt), Ok(hash)) = (
        rounds
            .parse::<u32>()
            .ok()
            .and_then(std::num::NonZeroU32::new),
        hex::decode(salt),
        hex::decode(hash),
    ) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

/// An OpenSSH public key line (`ssh-ed25519 AAAA... comment`), checked.
pub fn parse_public_key(line: &str) -> Option<PublicKey> {
    PublicKey::from_openssh(line.trim()).ok()
}

/// The gateway's host key (`DATA/edge/ssh_host_ed25519.sealed`), created once.
pub fn host_key(dir: &Path, master: &MasterKey) -> Result<PrivateKey, SshError> {
    let path = dir.join("ssh_host_ed25519.sealed");
    if let Ok(sealed) = std::fs::read(&path) {
        let pem = master
            .open(&sealed)
            .map_err(|e| SshError::Key(e.to_string()))?;
        return PrivateKey::from_openssh(&pem).map_err(|e| SshError::Key(e.to_string()));
    }
    let key = PrivateKey::random(&mut rand::rngs::OsRng, russh::keys::Algorithm::Ed25519)
        .map_err(|e| SshError::Key(e.to_string()))?;
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| SshError::Key(e.to_string()))?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(&path, master.seal(pem.as_bytes()))?;
    Ok(key)
}

/// Serve SSH on `listener` forever.
pub async fn serve(
    store: Store,
    key: PrivateKey,
    listener: tokio::net::TcpListener,
) -> Result<(), SshError> {
    let config = Arc::new(russh::server::Config {
        keys: vec![key],
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        inactivity_timeout: Some(Duration::from_secs(3600)),
        methods: russh::MethodSet::from(
            &[russh::MethodKind::PublicKey, russh::MethodKind::Password][..],
        ),
        ..Default::default()
    });
    let mut server = Gateway { store };
    use russh::server::Server as _;
    server.run_on_socket(config, &listener).await?;
    Ok(())
}

struct Gateway {
    store: Store,
}

impl russh::server::Server for Gateway {
    type Handler = Conn;
    fn new_client(&mut self, peer: Option<SocketAddr>) -> Conn {
        Conn {
            store: self.store.clone(),
            peer,
            workspace: None,
            channels: HashMap::new(),
            ptys: HashMap::new(),
            stdin: HashMap::new(),
            terms: HashMap::new(),
        }
    }
}

struct Conn {
    store: Store,
    peer: Option<SocketAddr>,
    /// The authenticated workspace.
    workspace: Option<String>,
    /// Session channels not yet running anything (the sftp subsystem takes its own).
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// The PTY asked for on a channel, before its shell or command starts.
    ptys: HashMap<ChannelId, shell::Pty>,
    /// Stdin of each running command (`None`: end of input).
    stdin: HashMap<ChannelId, tokio::sync::mpsc::UnboundedSender<Option<Vec<u8>>>>,
    /// Input (keys, resizes) of each running PTY session.
    terms: HashMap<ChannelId, tokio::sync::mpsc::UnboundedSender<shell::Input>>,
}

impl Conn {
    /// The workspace named by `user` if SSH is enabled for it.
    async fn ssh_of(&self, user: &str) -> Option<warren_state::EdgeSsh> {
        let w = self.store.workspace(user).await.ok().flatten()?;
        let s = self.store.edge_ssh(&w.id).await.ok().flatten()?;
        s.enabled.then_some(s)
    }

    fn accepted(&mut self, user: &str, how: &str) -> Auth {
        tracing::info!(workspace_id = user, peer = ?self.peer, how, "ssh login");
        self.workspace = Some(user.to_string());
        Auth::Accept
    }
}

fn refused() -> Auth {
    Auth::Reject {
        proceed_with_methods: None,
        partial_success: false,
    }
}

impl russh::server::Handler for Conn {
    type Error = SshError;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        key: &PublicKey,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.ssh_of(user).await {
            Some(s) if key_matches(&s, key) => Auth::Accept,
            _ => refused(),
        })
    }

    async fn auth_publickey(&mut self, user: &str, key: &PublicKey) -> Result<Auth, Self::Error> {
        Ok(match self.ssh_of(user).await {
            Some(s) if key_matches(&s, key) => self.accepted(user, "publickey"),
            _ => refused(),
        })
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(match self.ssh_of(user).await {
            Some(s)
                if s.password_hash
                    .as_deref()
                    .is_some_and(|h| verify_password(h, password)) =>
            {
                self.accepted(user, "password")
            }
            _ => refused(),
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if self.workspace.is_none() {
            return Ok(false);
        }
        self.channels.insert(channel.id(), channel);
        Ok(true)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.ptys
            .insert(channel, shell::Pty::new(term, col_width, row_height));
        session.channel_success(channel)?;
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.terms.get(&channel) {
            let (cols, rows) = shell::dims(col_width, row_height);
            let _ = tx.send(shell::Input::Resize(cols, rows));
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        if let Some(pty) = self.ptys.remove(&channel) {
            return self.start_pty(channel, pty, Some(command), session);
        }
        let Some(id) = self.workspace.clone() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        // Input now reaches the command through `data` below, not the channel object.
        self.channels.remove(&channel);
        session.channel_success(channel)?;
        let handle = session.handle();
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.stdin.insert(channel, tx);
        tokio::spawn(async move {
            let code = run(&store, &id, command, &handle, channel, rx).await;
            let _ = handle.exit_status_request(channel, code).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.ptys.remove(&channel) {
            Some(pty) => self.start_pty(channel, pty, None, session),
            // `ssh -T host`: a login shell reading the channel as its stdin.
            None => {
                self.exec_request(channel, shell::LOGIN_SHELL.as_bytes(), session)
                    .await
            }
        }
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.stdin.get(&channel) {
            let _ = tx.send(Some(data.to_vec()));
        } else if let Some(tx) = self.terms.get(&channel) {
            let _ = tx.send(shell::Input::Data(data.to_vec()));
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A PTY session ignores the end of input, as sshd does: the shell ends when
        // the user exits it (or the channel closes).
        if let Some(tx) = self.stdin.remove(&channel) {
            let _ = tx.send(None);
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        self.ptys.remove(&channel);
        self.stdin.remove(&channel);
        // Dropping the input ends the PTY session, which closes its agent terminal.
        self.terms.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(id), true) = (self.workspace.clone(), name == "sftp") else {
            return refuse(
                channel,
                session,
                &format!("the {name:?} subsystem is not offered (only sftp)"),
            );
        };
        let Some(ch) = self.channels.remove(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let agent = match Agent::of(&self.store, &id).await {
            Ok(a) => a,
            Err(msg) => return refuse(channel, session, &msg),
        };
        session.channel_success(channel)?;
        tracing::info!(workspace_id = %id, "sftp session");
        // The sftp server runs on one end of a pipe, the channel is spliced to the
        // other: when the server is done (the client closed its end), the session
        // ends with exit status 0, which `scp` checks.
        let (ours, theirs) = tokio::io::duplex(256 << 10);
        russh_sftp::server::run(theirs, sftp::Sftp::new(agent)).await;
        let handle = session.handle();
        tokio::spawn(async move {
            let mut ours = ours;
            let mut stream = ch.into_stream();
            let r = tokio::io::copy_bidirectional(&mut ours, &mut stream).await;
            let _ = handle
                .exit_status_request(channel, if r.is_ok() { 0 } else { 1 })
                .await;
            let _ = handle.eof(channel).await;
            drop(stream);
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(id) = self.workspace.clone() else {
            return Ok(false);
        };
        let agent = match Agent::of(&self.store, &id).await {
            Ok(a) => a,
            Err(msg) => {
                tracing::info!(workspace_id = %id, "port forward refused: {msg}");
                return Ok(false);
            }
        };
        let Some((host, port)) = forward::target(&agent, host_to_connect, port_to_connect) else {
            // OpenSSH shows "open failed: administratively prohibited".
            tracing::info!(
                workspace_id = %id, host = host_to_connect, port = port_to_connect,
                "port forward refused: only the workspace's own addresses (localhost or its IP) are reachable"
            );
            return Ok(false);
        };
        tokio::spawn(forward::tunnel(agent, host, port, channel));
        Ok(true)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Remote forwarding (-R) would publish a host port: not offered.
        Ok(false)
    }
}

impl Conn {
    /// Run a login shell (`command` None) or a command on an agent terminal of the
    /// PTY's size.
    fn start_pty(
        &mut self,
        channel: ChannelId,
        pty: shell::Pty,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), SshError> {
        let Some(id) = self.workspace.clone() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        self.channels.remove(&channel);
        session.channel_success(channel)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.terms.insert(channel, tx);
        let handle = session.handle();
        let store = self.store.clone();
        tokio::spawn(async move {
            let code = match Agent::of(&store, &id).await {
                Ok(agent) => shell::run(&agent, &pty, command, &handle, channel, rx).await,
                Err(msg) => {
                    let _ = handle
                        .extended_data(channel, 1, CryptoVec::from(format!("warren: {msg}\r\n")))
                        .await;
                    Some(255)
                }
            };
            if let Some(code) = code {
                let _ = handle.exit_status_request(channel, code).await;
            }
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }
}

/// Refuse a channel request, saying why on stderr.
fn refuse(channel: ChannelId, session: &mut Session, why: &str) -> Result<(), SshError> {
    let msg = format!("warren: {why}\r\n");
    session.extended_data(channel, 1, CryptoVec::from(msg.into_bytes()))?;
    session.channel_failure(channel)?;
    session.exit_status_request(channel, 1)?;
    session.close(channel)?;
    Ok(())
}

/// How the gateway reaches one running workspace's agent.
#[derive(Clone)]
pub(crate) struct Agent {
    /// The workspace's internal IP.
    pub ip: String,
    /// `http://<ip>:<port>`.
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Agent {
    /// The agent of workspace `id` (woken first if it sleeps on idle), or why it
    /// cannot be reached.
    pub async fn of(store: &Store, id: &str) -> Result<Agent, String> {
        let ws = awake(store, id).await?;
        let (ObservedState::Running, Some(ip), Some(token)) = (
            ws.observed_state,
            ws.internal_ip.as_deref(),
            ws.agent_token.as_deref(),
        ) else {
            return Err(format!(
                "workspace {id} is {}: start it first",
                ws.observed_state
            ));
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Agent {
            ip: ip.to_string(),
            base: format!("http://{ip}:{API_PORT}"),
            token: token.to_string(),
            http,
        })
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// A WebSocket to the agent at `path` (with its query).
    pub async fn websocket(
        &self,
        path: &str,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        String,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://{}:{API_PORT}{path}", self.ip);
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        let auth = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| "the agent token is not a valid header".to_string())?;
        req.headers_mut().insert("authorization", auth);
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err(format!("the agent answered {}: {body}", resp.status()))
            }
            Err(e) => Err(format!("the agent is unreachable: {e}")),
        }
    }
}

fn key_matches(s: &warren_state::EdgeSsh, key: &PublicKey) -> bool {
    s.public_key
        .as_deref()
        .and_then(parse_public_key)
        .is_some_and(|k| k.key_data() == key.key_data())
}

/// Workspace `id`; one asleep on idle (frozen, or stopped by its policy) is woken
/// first, as a request to its public URL or through the gateway would: an SSH
/// session is traffic too.
async fn awake(store: &Store, id: &str) -> Result<warren_state::Workspace, String> {
    let ws = match store.workspace(id).await {
        Ok(Some(w)) => w,
        _ => return Err(format!("workspace {id} does not exist")),
    };
    crate::wake::wake_if_asleep(store, ws, API_PORT)
        .await
        .map_err(|p| p.message)
}

/// Run `command` in the workspace through its agent; the exit code.
async fn run(
    store: &Store,
    id: &str,
    command: String,
    handle: &russh::server::Handle,
    channel: ChannelId,
    mut stdin: tokio::sync::mpsc::UnboundedReceiver<Option<Vec<u8>>>,
) -> u32 {
    let say = |msg: String| async move {
        let _ = handle
            .extended_data(
                channel,
                1,
                CryptoVec::from(format!("warren: {msg}\r\n").into_bytes()),
            )
            .await;
    };
    let ws = match awake(store, id).await {
        Ok(w) => w,
        Err(e) => {
            say(e).await;
            return 255;
        }
    };
    let (ObservedState::Running, Some(ip), Some(token)) = (
        ws.observed_state,
        ws.internal_ip.as_deref(),
        ws.agent_token.as_deref(),
    ) else {
        say(format!(
            "workspace {id} is {}: start it first",
            ws.observed_state
        ))
        .await;
        return 255;
    };
    let rt = match warren_sdk::RuntimeClient::new(&format!("http://{ip}:{API_PORT}"), token) {
        Ok(r) => r,
        Err(e) => {
            say(e.to_string()).await;
            return 255;
        }
    };
    let req = ExecRequest {
        cmd: vec![command],
        exec_mode: Some(ExecMode::Shell),
        ..ExecRequest::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let base = format!("http://{ip}:{API_PORT}");
    let token = token.to_string();
    let forward = async {
        while let Some(ev) = rx.recv().await {
            match ev {
                // The task exists: pump the channel's input into its stdin (an empty
                // body closes it).
                warren_sdk::ExecEvent::TaskId(task) => {
                    let url = format!("{base}/exec/{task}/input");
                    let token = token.clone();
                    let mut stdin =
                        std::mem::replace(&mut stdin, tokio::sync::mpsc::unbounded_channel().1);
                    tokio::spawn(async move {
                        let http = reqwest::Client::new();
                        loop {
                            let chunk = stdin.recv().await.flatten();
                            let end = chunk.is_none();
                            let r = http
                                .post(&url)
                                .bearer_auth(&token)
                                .body(chunk.unwrap_or_default())
                                .send()
                                .await;
                            if end || r.is_err() {
                                break;
                            }
                        }
                    });
                }
                warren_sdk::ExecEvent::Stdout(b) => {
                    let _ = handle.data(channel, CryptoVec::from(b)).await;
                }
                warren_sdk::ExecEvent::Stderr(b) => {
                    let _ = handle.extended_data(channel, 1, CryptoVec::from(b)).await;
                }
                _ => {}
            }
        }
    };
    let exec = async move {
        let r = rt.exec_stream(&req, move |ev| {
            let _ = tx.send(ev);
        });
        r.await
    };
    let (r, ()) = tokio::join!(exec, forward);
    match r {
        Ok(exit) => u32::try_from(exit.exit_code).unwrap_or(255),
        Err(e) => {
            say(format!("the workspace's agent failed: {e}")).await;
            255
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_keys() {
        let h = hash_password("s3cret");
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3cret!"));
        assert!(!verify_password("garbage", "s3cret"));
        assert!(parse_public_key("not a key").is_none());
        let d = tempfile::tempdir().unwrap();
        let m = MasterKey::load_or_create(&d.path().join("m")).unwrap();
        let k = host_key(d.path(), &m).unwrap();
        let again = host_key(d.path(), &m).unwrap();
        assert_eq!(k.public_key(), again.public_key());
        let line = k.public_key().to_openssh().unwrap();
        assert!(parse_public_key(&line).is_some());
    }
}
