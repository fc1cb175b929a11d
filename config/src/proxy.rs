//! `[[proxies]]` of either end: a SOCKS5 or HTTP proxy. On the client, its connections leave
//! from the server (under the server's egress policy); on the server, from the client named by
//! `via` (under that client's policy). `type` is required and selects the protocol; both take
//! the same keys, and only the server's take `via`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use wmproxy_wire::Name;

use crate::ranges::{self, Index, Key, within};
use crate::secret::Secret;
use crate::{ConfigError, invalid};

/// The proxy protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyType {
    /// SOCKS5 (RFC 1928), CONNECT; no-auth or username/password (RFC 1929).
    Socks5,
    /// HTTP proxy: CONNECT and absolute-form requests.
    Http,
}

impl ProxyType {
    /// Its name in the config: `socks5` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Socks5 => "socks5",
            Self::Http => "http",
        }
    }
}

/// The keys of a client's proxy, whatever its protocol.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFields {
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
}

/// The keys of a server's proxy: a client's, and `via`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerProxyFields {
    /// Address to listen on.
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
    /// The client (or the group of clients) whose network the connections leave from.
    pub via: Spanned<String>,
}

/// One client `[[proxies]]` entry as written, by its `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyFile {
    /// `type = "socks5"`.
    Socks5(ProxyFields),
    /// `type = "http"`.
    Http(ProxyFields),
}

/// One server `[[proxies]]` entry as written, by its `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerProxyFile {
    /// `type = "socks5"`.
    Socks5(ServerProxyFields),
    /// `type = "http"`.
    Http(ServerProxyFields),
}

fn default_handshake_timeout_secs() -> u64 {
    10
}

/// A validated proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proxy {
    /// The protocol.
    #[serde(rename = "type")]
    pub kind: ProxyType,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Required credentials, if any.
    pub credentials: Option<Credentials>,
    /// Time for the greeting and request.
    pub handshake_timeout: Duration,
}

/// A validated server proxy: a proxy and the client (or group) it leaves from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerProxy {
    /// The proxy.
    #[serde(flatten)]
    pub proxy: Proxy,
    /// The client or group its connections leave from.
    pub via: Name,
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

fn proxy(
    kind: ProxyType,
    listen: SocketAddr,
    (username, password): (Option<String>, Option<Secret>),
    handshake_timeout_secs: u64,
) -> Result<Proxy, &'static str> {
    let credentials = match (username, password) {
        (None, None) => None,
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        _ => return Err("set both `username` and `password`, or neither"),
    };
    if handshake_timeout_secs == 0 {
        return Err("handshake_timeout_secs must be at least 1");
    }
    Ok(Proxy { kind, listen, credentials, handshake_timeout: Duration::from_secs(handshake_timeout_secs) })
}

impl ProxyFile {
    /// Validates the entry, the `index`th of `[[proxies]]`.
    pub(crate) fn validate(self, src: &str, index: usize) -> Result<Proxy, ConfigError> {
        let (kind, f) = match self {
            Self::Socks5(f) => (ProxyType::Socks5, f),
            Self::Http(f) => (ProxyType::Http, f),
        };
        let key = [Key("proxies"), Index(index), Key("handshake_timeout_secs")];
        within(src, &key, f.handshake_timeout_secs, ranges::TIMEOUT_SECS)?;
        proxy(kind, f.listen, (f.username, f.password), f.handshake_timeout_secs)
            .map_err(|m| invalid(src, "proxies", None, m))
    }
}

impl ServerProxyFile {
    /// Validates the entry, the `index`th of `[[proxies]]`.
    pub(crate) fn validate(self, src: &str, index: usize) -> Result<ServerProxy, ConfigError> {
        let (kind, f) = match self {
            Self::Socks5(f) => (ProxyType::Socks5, f),
            Self::Http(f) => (ProxyType::Http, f),
        };
        let key = [Key("proxies"), Index(index), Key("handshake_timeout_secs")];
        within(src, &key, f.handshake_timeout_secs, ranges::TIMEOUT_SECS)?;
        let via = crate::name(src, "proxies.via", f.via)?;
        let proxy = proxy(kind, f.listen, (f.username, f.password), f.handshake_timeout_secs)
            .map_err(|m| invalid(src, "proxies", None, m))?;
        Ok(ServerProxy { proxy, via })
    }
}
