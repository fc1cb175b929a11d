//! Load-balancing groups: `[[groups]]` on the server (a public port served by several
//! backends), and how a client's `[[services]]` entry joins one, with its health check.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::ServiceType;
use crate::secret::Secret;

/// How a group picks the backend for a new connection or flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Each healthy backend in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx): shares follow the weights, evenly interleaved.
    WeightedRoundRobin,
    /// The backend with the fewest active connections per unit of weight.
    LeastConnections,
    /// Consistent hash of the user's IP address: a user sticks to a backend, and a backend
    /// leaving moves only its own users.
    IpHash,
}

/// One `[[groups]]` entry on the server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    /// The group's name, as clients name it in `group`.
    pub name: toml::Spanned<String>,
    /// What a client must send as `group_key` to join.
    pub key: Secret,
    /// `"tcp"` (default), `"udp"`, `"http"` (host names on the vhost port) or `"https"` (SNI
    /// names on the HTTPS port, TLS passed through).
    #[serde(default, rename = "type")]
    pub kind: ServiceType,
    /// TCP and UDP: the public port, bound at server start on `public_bind`.
    #[serde(default)]
    pub remote_port: u16,
    /// HTTP and HTTPS: the host names the group serves (`example.com`, `*.example.com`). They
    /// are the operator's, so no client's `allow_domains` applies.
    #[serde(default)]
    pub custom_domains: Vec<String>,
    /// HTTP: path prefixes served (`/` when empty).
    #[serde(default)]
    pub locations: Vec<String>,
    /// How a backend is picked.
    #[serde(default)]
    pub policy: Policy,
    /// Passive check: this many failed dials within `fail_timeout_secs` eject a backend for
    /// `fail_timeout_secs`. `0` turns passive checks off.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// The window and the ejection time of the passive check.
    #[serde(default = "default_fail_timeout_secs")]
    pub fail_timeout_secs: u64,
    /// Further backends tried when a dial fails before any byte was relayed.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_max_fails() -> u32 {
    1
}
fn default_fail_timeout_secs() -> u64 {
    10
}
fn default_retries() -> u32 {
    2
}

impl GroupFile {
    /// [`Self::fail_timeout_secs`] as a duration.
    pub fn fail_timeout(&self) -> Duration {
        Duration::from_secs(self.fail_timeout_secs)
    }
}

/// What kind of active check a backend gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    /// A TCP connect to the backend.
    #[default]
    Tcp,
    /// An HTTP/1.1 `GET` of `path`; healthy when the status is in `expect_status`.
    Http,
}

/// `[services.health_check]`: an active check the client runs against its backend and reports
/// to the server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `"tcp"` (default) or `"http"`.
    #[serde(default, rename = "type")]
    pub kind: CheckType,
    /// Where to check; defaults to the service's `local_addr` (set it for a UDP service).
    #[serde(default)]
    pub addr: Option<String>,
    /// HTTP: the path to `GET`.
    #[serde(default = "default_path")]
    pub path: String,
    /// HTTP: the `Host` header (default: the address checked).
    #[serde(default)]
    pub host: Option<String>,
    /// HTTP: statuses that count as healthy; empty means any 2xx.
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// Milliseconds between checks.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Milliseconds a check may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive successes that make an unhealthy backend healthy.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Healthy from the start instead of after the first `rise` successes.
    #[serde(default)]
    pub start_healthy: bool,
}

fn default_path() -> String {
    "/".into()
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

impl HealthCheck {
    /// Whether `status` counts as healthy.
    pub fn accepts(&self, status: u16) -> bool {
        if self.expect_status.is_empty() { (200..300).contains(&status) } else { self.expect_status.contains(&status) }
    }
    /// [`Self::interval_ms`] as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    /// [`Self::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    /// The first problem with the values, if any.
    pub fn problem(&self) -> Option<&'static str> {
        if self.interval_ms == 0 || self.timeout_ms == 0 {
            return Some("interval_ms and timeout_ms must be at least 1");
        }
        if self.rise == 0 || self.fall == 0 {
            return Some("rise and fall must be at least 1");
        }
        if !self.path.starts_with('/') {
            return Some("path must start with `/`");
        }
        None
    }
}

/// How a client service joins a group (validated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupJoin {
    /// The group's name.
    pub group: String,
    /// Its key.
    pub key: Secret,
    /// Relative share of work (at least 1).
    pub weight: u32,
    /// Joins drained: keeps current connections, gets no new ones.
    pub drain: bool,
    /// The active check, if any. Without one the backend is healthy unless passive checks
    /// eject it.
    pub health_check: Option<HealthCheck>,
}
