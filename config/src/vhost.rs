//! HTTP virtual hosts: the server's `[vhost]` port, and how a client's `http`, `https` and `ws`
//! services ask for host names and path prefixes.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The server's `[vhost]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VhostFile {
    /// Where the HTTP virtual-host port listens; off when unset.
    pub http_bind: Option<SocketAddr>,
    /// Where the HTTPS port listens (routing by TLS SNI, TLS passed through); off when unset.
    pub https_bind: Option<SocketAddr>,
    /// `subdomain = "x"` services are served at `x.<subdomain_host>`.
    pub subdomain_host: Option<String>,
    /// Seconds a user has to send a request head.
    pub header_read_timeout_secs: u64,
    /// Largest request head, bytes; larger gets `431`.
    pub max_header_bytes: usize,
    /// Requests one user (an address; its /64 for IPv6) may make per minute on average, over
    /// the vhost and the TLS-terminating HTTPS port together (a token bucket, like nginx's
    /// `limit_req`); more get `429` with `Retry-After`. `0`: no limit.
    pub user_requests_per_minute: u32,
    /// Requests a user may make at once above the average (the bucket's size).
    pub user_request_burst: u32,
    /// Seconds a request body may go without a byte before the request is answered `408` and
    /// its stream to the service aborted.
    pub body_timeout_secs: u64,
    /// `[vhost.tls]`: a certificate for the HTTPS port. A connection whose SNI no `https`
    /// service or group claims is then terminated here and its requests routed like the vhost
    /// port's (to `http` services and groups, `X-Forwarded-Proto: https`). Without it, such a
    /// connection is closed.
    pub tls: Option<crate::TlsFiles>,
}

impl Default for VhostFile {
    fn default() -> Self {
        Self {
            http_bind: None,
            https_bind: None,
            subdomain_host: None,
            header_read_timeout_secs: 10,
            max_header_bytes: 16 * 1024,
            user_requests_per_minute: 6_000,
            user_request_burst: 400,
            body_timeout_secs: 60,
            tls: None,
        }
    }
}

impl VhostFile {
    /// Where `http` services and groups are reached: the HTTP port, or, without one, the HTTPS
    /// port when it terminates TLS (`[vhost.tls]`). `None`: nowhere.
    pub fn http_routes_bind(&self) -> Option<SocketAddr> {
        self.http_bind.or(self.https_bind.filter(|_| self.tls.is_some()))
    }

    /// [`Self::body_timeout_secs`] as a duration.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }

    /// [`Self::header_read_timeout_secs`] as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }
}

/// How an `http` service is reached on the vhost port (validated): by host name, then path.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HttpRoute {
    /// Host names (`example.com`, `*.example.com`), lower-case.
    pub custom_domains: Vec<String>,
    /// A name under the server's `subdomain_host`, lower-case.
    pub subdomain: Option<String>,
    /// Path prefixes served (`/` when empty); the longest match wins.
    pub locations: Vec<String>,
    /// The `Host` the backend sees, if not the user's.
    pub host_header_rewrite: Option<String>,
    /// HTTP Basic credentials the server requires (user name, password).
    pub basic_auth: Option<(String, crate::Secret)>,
}

/// How an `https` service is reached on the HTTPS port: by the SNI host name alone (TLS passes
/// through, so there is no path to route by).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Hosts {
    /// Host names (`example.com`, `*.example.com`), lower-case.
    pub custom_domains: Vec<String>,
    /// A name under the server's `subdomain_host`, lower-case.
    pub subdomain: Option<String>,
}

/// How a `ws` service is reached on the vhost port: by host name, then path; the server
/// accepts the WebSocket itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct WsRoute {
    /// Host names (`example.com`, `*.example.com`), lower-case.
    pub custom_domains: Vec<String>,
    /// A name under the server's `subdomain_host`, lower-case.
    pub subdomain: Option<String>,
    /// Path prefixes served (`/` when empty).
    pub locations: Vec<String>,
}

/// Lower-cases a host name and drops a trailing dot and any `:port`.
pub fn normalize_host(host: &str) -> String {
    let without_port = match host.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') && port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}
