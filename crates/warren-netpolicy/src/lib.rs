//! Workspace networking policy on one host.
//!
//! * [`policy`]: what a workspace may send and receive ([`NetworkPolicy`]), checked
//!   into [`Compiled`] with errors naming the field;
//! * [`nft`]: the one nftables table Warren owns (`inet warren`), per-workspace chains
//!   and sets, every change one atomic `nft -f -` transaction ([`Firewall`]);
//! * [`dns`]: Warren's resolver, answering a workspace only for the names it may reach
//!   and pinning the answers into its firewall set for their TTL ([`Resolver`]).
//!
//! A crate of its own rather than modules of warren-node: it has no VM code, its unit
//! tests run without root, and the control plane uses the same validation
//! ([`NetworkPolicy::compile`]) without pulling in the node.

pub mod dns;
pub mod nft;
pub mod policy;

pub use dns::{Resolver, ResolverSpec};
pub use nft::{Attachment, Firewall, Record};
pub use policy::{Compiled, NetworkPolicy, PolicyError, MAX_RULES};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Policy(PolicyError),
    #[error("{0}")]
    Nft(String),
    #[error("network configuration: {0}")]
    Config(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, NetError>;
