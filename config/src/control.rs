//! `[control]`: the control API of the server or the client (loopback HTTP, JSON, bearer
//! token).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::Secret;

/// The server's control API address when `bind` is left out.
pub const SERVER_CONTROL_BIND: &str = "127.0.0.1:8837";

/// The client's control API address when `bind` is left out.
pub const CLIENT_CONTROL_BIND: &str = "127.0.0.1:8838";

/// `[control]`. Without this table the control API is off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlFile {
    /// Where it listens: loopback unless you mean otherwise (anyone who reaches it and holds
    /// the token can reconfigure and stop this end).
    #[serde(default)]
    pub bind: Option<SocketAddr>,
    /// What callers send as `Authorization: Bearer <token>`.
    pub token: Secret,
}

impl ControlFile {
    /// `bind`, or `default` ([`SERVER_CONTROL_BIND`] or [`CLIENT_CONTROL_BIND`]).
    pub fn addr(&self, default: &str) -> SocketAddr {
        self.bind.unwrap_or_else(|| default.parse().expect("the default control addresses are literals"))
    }
}
