//! Becoming a workspace (`HostMessage::Adopt`): this VM was booted ahead of demand into
//! the host's warm pool, with its own disk, key, address and API token already, and
//! now becomes the workspace someone created. What the pool could not know is taken
//! here: the hostname and base environment, then (by the caller) the command and the
//! workloads. The clock is stepped and the RNG reseeded, as after any wait.

use super::system;
use crate::workspace::Workspace;
use std::path::Path;
use warren_protocol::control::AdoptIdentity;

/// Apply `id` to the system and to `ws` (shared with the runtime API). Returns what
/// went wrong but did not stop it.
pub fn become_workspace(id: &AdoptIdentity, ws: &Workspace) -> Vec<String> {
    system::resumed(id.clock_unix_ns, &id.entropy_hex);
    let problems = system::set_hostname(Path::new("/"), &id.hostname);
    ws.set_env(id.env.clone(), &id.hostname);
    tracing::info!(workspace_id = %id.workspace_id, "adopted: now {}", id.hostname);
    problems
}
