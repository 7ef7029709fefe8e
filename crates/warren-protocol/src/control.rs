//! The host <-> guest control channel.
//!
//! Framing: one JSON object per line (`\n` terminated), UTF-8. The guest speaks first
//! ([`GuestMessage::Hello`]) as soon as it has opened the port; the host answers with
//! [`HostMessage::Boot`]; the guest applies it and sends [`GuestMessage::Ready`] once the
//! runtime API accepts connections (or [`GuestMessage::BootFailed`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Name of the virtio-serial port (`virtserialport,name=...`) that carries this protocol.
pub const PORT_NAME: &str = "org.warren.agent";

/// virtio-blk serial of the read-only image disk.
pub const IMAGE_DISK_SERIAL: &str = "warren-image";
/// virtio-blk serial of the workspace's writable disk.
pub const DATA_DISK_SERIAL: &str = "warren-data";

/// Version of this protocol; the guest reports it in `Hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Everything the guest needs to become one particular workspace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BootConfig {
    pub workspace_id: String,
    pub hostname: String,
    pub network: Option<NetworkConfig>,
    /// Environment for every process the agent starts (image env merged with the user's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The workspace's command, run once the agent is ready. `None`: none.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Working directory for `cmd` and for exec without a cwd (image WorkingDir).
    #[serde(default)]
    pub workdir: Option<String>,
    /// `user[:group]` from the image config (numeric or a name in the image's /etc/passwd).
    #[serde(default)]
    pub user: Option<String>,
    /// Raw runtime API token: requests must carry `Authorization: Bearer <token>`.
    pub api_token: String,
    /// TCP port of the runtime API.
    pub api_port: u16,
    /// Host wall clock at the time the config was sent, in Unix nanoseconds.
    pub clock_unix_ns: u64,
    /// Fresh entropy from the host, hex encoded, mixed into the guest's RNG.
    pub entropy_hex: String,
    /// How the writable disk is to be prepared.
    #[serde(default)]
    pub data_disk: DataDisk,
    /// Managed workloads to start at boot (`config.workloads` of the create request:
    /// objects with the fields of the runtime's `POST /workloads`; the agent validates
    /// them). They replace saved workloads of the same name.
    #[serde(default)]
    pub workloads: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DataDisk {
    /// A disk the host has formatted as ext4 (fresh or kept from an earlier boot).
    #[default]
    Ext4,
    /// No writable disk: the writable layer lives in guest RAM (tmpfs).
    Tmpfs,
    /// The writable disk is encrypted: the guest maps it with dm-crypt under this key
    /// and mounts the ext4 inside (the host formatted it, encrypted, in memory).
    Encrypted(EncryptedDisk),
}

/// How to open an encrypted writable disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EncryptedDisk {
    /// dm-crypt cipher spec, e.g. `aes-xts-plain64`.
    pub cipher: String,
    /// The workspace's data key, hex (for AES-256-XTS: 64 bytes, two 256-bit keys).
    pub key_hex: Secret,
    /// Encryption sector size in bytes (512).
    #[serde(default = "default_sector")]
    pub sector_size: u32,
}

fn default_sector() -> u32 {
    512
}

/// A secret string: never printed by `Debug`, wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkConfig {
    /// MAC address of the interface the host attached (`aa:bb:...`).
    pub mac: String,
    /// Guest address, e.g. `10.88.0.2`.
    pub address: String,
    pub prefix_len: u8,
    /// Default gateway (the host end of the tap).
    pub gateway: String,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// The interface may still carry another MAC (a VM restored from a template,
    /// whose NIC state was saved before this identity existed): take the only
    /// ethernet interface and give it `mac`.
    #[serde(default)]
    pub set_mac: bool,
}

fn default_mtu() -> u32 {
    1500
}

/// Milliseconds since the guest kernel started (CLOCK_BOOTTIME), at each boot step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BootTimings {
    /// The agent's `main` began (the kernel's own init took this long).
    pub agent_start_ms: u64,
    /// Kernel modules loaded.
    pub modules_loaded_ms: u64,
    /// Boot configuration received from the host.
    pub config_received_ms: u64,
    /// Root filesystem mounted and switched into.
    pub root_mounted_ms: u64,
    /// Network configured.
    pub network_ms: u64,
    /// Runtime API listening.
    pub api_ready_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    Hello {
        protocol_version: u32,
        agent_version: String,
    },
    Ready {
        timings: BootTimings,
    },
    BootFailed {
        error: String,
    },
    /// The workspace's `cmd` has exited. Repeated until the host answers
    /// `CmdExitSeen`, always with the same `report`: a random id drawn when the
    /// command ended, so the host records one exit once even when a freeze and thaw
    /// make it arrive twice.
    CmdExited {
        exit_code: i32,
        #[serde(default)]
        report: u64,
    },
    Pong {
        id: u64,
    },
    /// The guest is about to power off (asked by the host or by `poweroff` inside).
    ShuttingDown,
    /// Every process is gone and the disks are flushed and read-only: the host may
    /// end the VM now. Sent right before the guest asks its kernel to reboot, which
    /// not every kernel can do without ACPI, so the host does not rely on it.
    Halted,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    Boot {
        config: Box<BootConfig>,
    },
    Ping {
        id: u64,
    },
    /// Sync filesystems and power off.
    Shutdown,
    /// The host has recorded the workspace command's exit (`CmdExited`): the agent
    /// stops repeating it.
    CmdExitSeen,
    /// The VM was just restored from saved state (resume from disk, a snapshot): time
    /// went on outside it and its RNG state may be shared with other copies. The agent
    /// steps the clock to `clock_unix_ns` and reseeds its RNG with `entropy_hex`. The
    /// host follows it with a `Ping` and takes the `Pong` as "applied".
    Resume {
        clock_unix_ns: u64,
        #[serde(default)]
        entropy_hex: String,
    },
    /// The VM is a fork: a copy of another running workspace's memory, disks already
    /// mounted. The agent takes the new identity (hostname, address and MAC, API
    /// token, a fresh boot_id), steps the clock and reseeds its RNG. The host follows
    /// it with a `Ping`; the `Pong` means "applied", `BootFailed` that it was not.
    Fork {
        identity: Box<ForkIdentity>,
    },
    /// The VM was booted ahead of demand into the warm pool (its own disk, key,
    /// address and token already) and now becomes the workspace someone created: the
    /// agent steps the clock, reseeds its RNG, takes the hostname and the base
    /// environment, answers `Pong { id: ack }` ("applied"; `BootFailed`: not), and
    /// only then starts the command and workloads, so their exits always come after
    /// the answer.
    Adopt {
        identity: Box<AdoptIdentity>,
    },
}

/// What a warm VM becomes when a workspace is created from it (see
/// [`HostMessage::Adopt`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdoptIdentity {
    pub workspace_id: String,
    pub hostname: String,
    /// The base environment of every process from now on (image env merged with the
    /// user's), replacing the one the VM was booted with.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub workloads: Vec<serde_json::Value>,
    pub clock_unix_ns: u64,
    pub entropy_hex: String,
    /// The id of the `Pong` that says the identity is applied.
    #[serde(default)]
    pub ack: u64,
}

/// Who a forked VM is to become (see [`HostMessage::Fork`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForkIdentity {
    pub workspace_id: String,
    pub hostname: String,
    /// The fork's own address; `set_mac` is true (its NIC still has the parent's MAC).
    pub network: NetworkConfig,
    /// Raw runtime API token of the fork (the parent's stops working in it).
    pub api_token: Secret,
    pub clock_unix_ns: u64,
    pub entropy_hex: String,
    /// What `/proc/sys/kernel/random/boot_id` shows from now on (a UUID).
    pub boot_id: String,
}

/// Encode one message as a line.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string keys).
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    v
}
