//! warren-guest
