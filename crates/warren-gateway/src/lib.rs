//! The data-plane gateway.
//!
//! Clients call the runtime API of a workspace (exec, exec stream, files, health, ...)
//! at the gateway address with `Authorization: Bearer <gateway JWT>` (or `?token=` for
//! clients that cannot set headers). The JWT ([`tokens`]) names the workspace and
//! expires on its own; the gateway checks it, looks the workspace up in the state
//! store (address, current agent token, whether runtime API access is enabled, the
//! token generation so a rotation revokes older tokens), and forwards the request to
//! `http://<internal_ip>:9990` with the agent's own token ([`proxy`]). Bodies stream
//! both ways; WebSocket upgrades (`/ws`) are spliced through ([`tunnel`]).

pub mod proxy;
pub mod tokens;
pub mod tunnel;

pub use proxy::{router, GatewayState};
pub use tokens::{Claims, GatewayKeys, TokenError};
