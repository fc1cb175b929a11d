//! `[[proxies]]` on the client: a local SOCKS5 or HTTP proxy whose connections leave from the
//! server, under the server's egress policy.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The proxy protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyType {
    /// SOCKS5 (RFC 1928), CONNECT; no-auth or username/password (RFC 1929).
    Socks5,
    /// HTTP proxy: CONNECT and absolute-form requests.
    Http,
}

/// One `[[proxies]]` entry as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// `"socks5"` or `"http"`.
    #[serde(rename = "type")]
    pub kind: ProxyType,
    /// Local address to listen on.
    pub listen: SocketAddr,
    /// Require this user name (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Require this password (with `username`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Seconds a user has to finish the greeting and request.
    #[serde(default = "default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// Server only: the client whose network the connections leave from.
    #[serde(default)]
    pub via: Option<String>,
}

fn default_handshake_timeout_secs() -> u64 {
    10
}

/// A validated proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proxy {
    /// The protocol.
    pub kind: ProxyType,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Required credentials, if any.
    pub credentials: Option<Credentials>,
    /// Time for the greeting and request.
    pub handshake_timeout: Duration,
    /// Server only: the client the connections leave from.
    pub via: Option<String>,
}

/// A user name and password a proxy requires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: Secret,
}

impl Proxy {
    /// The credentials as (user name, password), for the proxy front-end.
    pub fn credential_pair(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|c| (c.username.as_str(), c.password.expose()))
    }
}

impl ProxyFile {
    /// Validates the entry; the error is a message for the caller to place.
    pub fn validate(self) -> Result<Proxy, &'static str> {
        let credentials = match (self.username, self.password) {
            (None, None) => None,
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            _ => return Err("set both `username` and `password`, or neither"),
        };
        if self.handshake_timeout_secs == 0 {
            return Err("handshake_timeout_secs must be at least 1");
        }
        Ok(Proxy {
            kind: self.kind,
            listen: self.listen,
            credentials,
            handshake_timeout: Duration::from_secs(self.handshake_timeout_secs),
            via: self.via,
        })
    }
}
