//! warren-node
