//! What [`RwPool::status`](crate::RwPool::status) reports for each host.

use serde::{Deserialize, Serialize};

/// The role a host plays, as configured or as last observed
/// (`pg_is_in_recovery()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Accepts writes.
    Primary,
    /// A hot standby: reads only.
    Replica,
    /// Not known yet: the host has not answered a check.
    Unknown,
}

impl Role {
    /// `primary`, `replica` or `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the last check of a host succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// The last check succeeded.
    Up,
    /// The last check (or connection attempt) failed.
    Down,
    /// Not checked yet.
    Unknown,
}

/// Why a replica is out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EjectReason {
    /// Further behind than `max_lag_bytes` or `max_lag_ms`.
    Lag,
    /// `failure_threshold` checks or connection attempts failed in a row.
    Down,
}

/// A replica out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ejection {
    /// Why.
    pub reason: EjectReason,
    /// Time left before it may be re-admitted (if healthy by then).
    pub remaining_ms: u64,
}

/// Connections of one host's pool. Connections found closed (their server
/// went away) are dropped at the next check and not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    /// Most connections.
    pub max_size: usize,
    /// Open connections.
    pub size: usize,
    /// Open and free.
    pub idle: usize,
    /// Checked out by callers now.
    pub active: usize,
    /// Callers waiting for one.
    pub waiting: usize,
}

/// One host as the pool sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// `host:port`.
    pub host: String,
    /// The configured URL, password masked.
    pub url: String,
    /// The role it was configured with.
    pub configured_role: Role,
    /// The role it last reported.
    pub role: Role,
    /// Whether the last check succeeded.
    pub health: Health,
    /// Writes go here (the current primary).
    pub writes: bool,
    /// Reads may go here (a replica in rotation).
    pub reads: bool,
    /// Set while a replica is out of rotation.
    pub ejected: Option<Ejection>,
    /// Failed checks or connection attempts in a row.
    pub consecutive_failures: u32,
    /// The last failure, if the host is failing.
    pub last_error: Option<String>,
    /// Current WAL position (primary) or replay position (replica), like `0/3000060`.
    pub lsn: Option<String>,
    /// Bytes of WAL behind the primary (replicas that answer; None while
    /// a replica is down: its lag is unknown, not zero).
    pub lag_bytes: Option<u64>,
    /// Replay delay in milliseconds (replicas that answer; 0 when caught
    /// up, None while down).
    pub lag_ms: Option<u64>,
    /// Whether WAL replay is paused (replicas that answer).
    pub replay_paused: Option<bool>,
    /// Milliseconds since the last check.
    pub checked_ms_ago: Option<u64>,
    /// The WAL timeline the host was last seen on; a promotion starts a
    /// higher one.
    #[serde(default)]
    pub timeline: Option<u32>,
    /// Set on every host that accepts writes while another one does too (a
    /// split brain: an old primary back read-write after a failover). Writes
    /// go to the one on the highest timeline (`writes`), or nowhere when the
    /// highest is shared; the other is stale and must be stopped or rebuilt
    /// as a replica.
    #[serde(default)]
    pub split_brain: bool,
    /// Connections.
    pub pool: PoolState,
}
