//! Wire types shared by the host (node agent, gateway, CLI) and the in-guest agent.
//!
//! Two protocols live here:
//!
//! * [`control`]: newline-delimited JSON over the virtio-serial port named
//!   [`control::PORT_NAME`]. It carries the boot configuration into the guest and
//!   readiness, command exit and shutdown between host and guest. It works before the
//!   guest has a network and needs no kernel vhost support on the host.
//! * [`runtime`]: the HTTP runtime API the agent serves on [`runtime::API_PORT`],
//!   whose paths and fields follow the public Oblien runtime API.

pub mod control;
pub mod runtime;
