//! The node agent: one per host.
//!
//! [`Node`] turns a [`WorkspaceSpec`] into a running microVM and tears it down again:
//! it resolves the image ([`warren_images`]), prepares the guest kernel and initramfs
//! ([`warren_guest`]), creates the writable disk ([`disk`]), leases an address and a tap
//! ([`net`]) with its firewall policy and DNS resolver ([`warren_netpolicy`]), boots the VM through the [`warren_vmm::Vmm`] boundary, and hands the agent
//! its identity over the control channel ([`control`]). Whatever a workspace had on the
//! host is listed in its run directory and lease, so [`reconcile`] can remove what
//! belongs to no live owner after a crash.

pub mod config;
pub mod control;
pub mod disk;
pub mod fork;
pub mod keys;
pub mod net;
pub mod overlay;
pub mod reconcile;
pub mod sealed;
pub mod snapshot;
pub mod suspend;
pub mod template;
pub mod warm;
pub mod workspace;

pub use config::NodeConfig;
pub use warm::{WarmSpec, WarmStatus};
pub use workspace::{BootReport, Node, RunningWorkspace, WorkspaceSpec};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Image(#[from] warren_images::ImageError),
    #[error(transparent)]
    Guest(#[from] warren_guest::GuestError),
    #[error(transparent)]
    Vmm(#[from] warren_vmm::VmmError),
    #[error("no free address left in {0}: delete workspaces or widen network.cidr")]
    AddressesExhausted(String),
    #[error("network setup failed: {0}")]
    Network(String),
    #[error("disk setup failed: {0}")]
    Disk(String),
    #[error("key management: {0}")]
    Kms(#[from] warren_kms::KmsError),
    #[error("saved VM state unusable: {0}")]
    SavedState(String),
    #[error("the workspace's agent did not become ready: {0}")]
    Boot(String),
    #[error("the workspace's agent did not become ready within {0:?}; boot log: {1}")]
    BootTimeout(std::time::Duration, String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<warren_netpolicy::NetError> for NodeError {
    fn from(e: warren_netpolicy::NetError) -> Self {
        match e {
            warren_netpolicy::NetError::Policy(p) => NodeError::Invalid {
                field: p.field,
                reason: p.reason,
            },
            other => NodeError::Network(other.to_string()),
        }
    }
}

impl From<warren_netpolicy::PolicyError> for NodeError {
    fn from(p: warren_netpolicy::PolicyError) -> Self {
        NodeError::Invalid {
            field: p.field,
            reason: p.reason,
        }
    }
}

pub type Result<T> = std::result::Result<T, NodeError>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Io { context, source }
}
