//! The SSH gateway: `ssh -p PORT <workspace id>@<host> CMD`.
//!
//! The user name names the workspace. Authentication is the public key or password
//! set through `/workspace/:id/ssh` (and SSH must be enabled there). A command
//! (`exec`) runs through the workspace's agent (`POST /exec/stream`), its stdout and
//! stderr streamed back on the channel, the channel's input fed to its stdin
//! (`POST /exec/:id/input`), and its exit code returned, so the image needs no sshd. Interactive shells (PTY), the sftp subsystem (and so scp) and port
//! forwarding are not built yet: the channel request is refused with a message saying
//! so.

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
            stdin: HashMap::new(),
        }
    }
}

struct Conn {
    store: Store,
    peer: Option<SocketAddr>,
    /// The authenticated workspace.
    workspace: Option<String>,
    /// Stdin of each running command (`None`: end of input).
    stdin: HashMap<ChannelId, tokio::sync::mpsc::UnboundedSender<Option<Vec<u8>>>>,
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
        _channel: Channel<Msg>,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.workspace.is_some())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(id) = self.workspace.clone() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let command = String::from_utf8_lossy(data).into_owned();
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

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.stdin.get(&channel) {
            let _ = tx.send(Some(data.to_vec()));
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.stdin.remove(&channel) {
            let _ = tx.send(None);
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        not_built(channel, session, "interactive shells")
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        not_built(
            channel,
            session,
            &format!("the {name} subsystem (sftp, scp)"),
        )
    }
}

/// Refuse a channel request the gateway cannot serve yet, saying so on stderr.
fn not_built(channel: ChannelId, session: &mut Session, what: &str) -> Result<(), SshError> {
    let msg = format!(
        "warren: {what} through the SSH gateway are not implemented yet; run commands with `ssh ... CMD`\r\n"
    );
    session.extended_data(channel, 1, CryptoVec::from(msg.into_bytes()))?;
    session.channel_failure(channel)?;
    session.exit_status_request(channel, 1)?;
    session.close(channel)?;
    Ok(())
}

fn key_matches(s: &warren_state::EdgeSsh, key: &PublicKey) -> bool {
    s.public_key
        .as_deref()
        .and_then(parse_public_key)
        .is_some_and(|k| k.key_data() == key.key_data())
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
    let ws = match store.workspace(id).await {
        Ok(Some(w)) => w,
        _ => {
            say(format!("workspace {id} does not exist")).await;
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
