//! Waking a workspace asleep on idle when a request reaches one of its public URLs.
//!
//! The control plane's idle loop (`warren_api::idle`) freezes a workspace with a
//! policy to disk, and stops it after `stop_after`. A request through the edge asks
//! for `running` (as the data-plane gateway does), the loop thaws or boots it, and the
//! request goes on once it runs; the client sees a slow answer, not an error.
//! A workspace its user stopped is not started by a public request.

use hyper::StatusCode;
use std::time::{Duration, Instant};
use warren_state::{DesiredState, ObservedState, Store, Workspace};

/// How long a request waits for a sleeping workspace (then 503 `waking`).
pub const WAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A problem to answer instead of forwarding.
#[derive(Debug)]
pub struct WakeProblem {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// Does the workspace's config turn sleeping on idle on (`idle.suspend_after` > 0)?
pub fn sleeps_on_idle(config: &serde_json::Value) -> bool {
    config
        .get("idle")
        .and_then(|i| i.get("suspend_after"))
        .and_then(serde_json::Value::as_u64)
        .is_some_and(|s| s > 0)
}

/// Is `w` asleep in a way a public request may wake: frozen by its policy, or
/// stopped by the system (after `stop_after`) rather than by its user?
pub fn asleep(w: &Workspace) -> bool {
    sleeps_on_idle(&w.config)
        && match w.observed_state {
            ObservedState::Paused => true,
            ObservedState::Stopped => {
                w.desired_state == DesiredState::Stopped && !w.user_requested_stop
            }
            _ => false,
        }
}

/// How long a request waits, after a stopped workspace booted again, for its app to
/// listen on the requested port (a frozen one was listening all along).
pub const APP_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Wait until something accepts connections on `ip:port` (at most `timeout`).
async fn wait_listening(ip: &str, port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let c = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((ip, port)),
        )
        .await;
        if matches!(c, Ok(Ok(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `w` itself when it is not asleep; else ask for `running` and wait until it runs
/// (and, when it had been stopped, until its app listens on `port`).
pub async fn wake_if_asleep(
    store: &Store,
    w: Workspace,
    port: u16,
) -> Result<Workspace, WakeProblem> {
    if !asleep(&w) {
        return Ok(w);
    }
    let cold = w.observed_state == ObservedState::Stopped;
    let err = |e: warren_state::StateError| WakeProblem {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "server_error",
        message: e.to_string(),
    };
    let id = w.id.clone();
    tracing::info!(workspace_id = %id, state = %w.observed_state, "edge: waking a sleeping workspace");
    store
        .set_desired(&id, DesiredState::Running, false)
        .await
        .map_err(err)?;
    let deadline = Instant::now() + WAKE_TIMEOUT;
    loop {
        match store.workspace(&id).await.map_err(err)? {
            Some(w) if w.observed_state == ObservedState::Running && w.internal_ip.is_some() => {
                if cold {
                    if let Some(ip) = w.internal_ip.as_deref() {
                        wait_listening(ip, port, APP_START_TIMEOUT).await;
                    }
                }
                return Ok(w);
            }
            Some(_) => {}
            None => {
                return Err(WakeProblem {
                    status: StatusCode::NOT_FOUND,
                    code: "not_found",
                    message: "the workspace is gone".into(),
                })
            }
        }
        if Instant::now() > deadline {
            return Err(WakeProblem {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "waking",
                message: format!("workspace {id} is waking from sleep; retry shortly"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
