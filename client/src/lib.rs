//! The wmproxy client: keeps QUIC tunnels to its servers and serves its services, forwards and
//! proxies through them.
//!
//! # Layout
//! - [`client`]: [`Client`] binds the local listeners; [`Client::run`] starts the reconnect
//!   loops and waits for them.
//! - `link`: one reconnect loop, publishing [`ClientStatus`] (`status`) on a watch channel: one
//!   per server (`mode = "all"`), or one for a failover list, which moves down the list when a
//!   server is lost and back up when an earlier one has answered for a while (`failback`).
//! - [`handshake`]: one attempt: resolve, QUIC handshake, Hello with the TLS-bound proof,
//!   Register; gives an [`handshake::Established`] tunnel.
//! - `tunnel`: serves one established tunnel until it ends: installs it as the current tunnel,
//!   accepts the server's streams, follows reloads on the control stream.
//! - [`current`]: [`CurrentTunnel`], the one handle for "the tunnels up now", which forwards and
//!   proxies hold as their [`wmproxy_tunnel::Upstream`]; it picks a tunnel per `egress`.
//! - `expose`: streams the server opens (a user reached a published service; a visitor will
//!   connect directly). `local`: how a user reaches a local service: dial the local address,
//!   answer, relay, log the connection.
//! - `forward`: local TCP/UDP ports whose traffic leaves from the server (`Connect`), and `ws`
//!   forwards. `proxy`: local SOCKS5 and HTTP proxies. `visitor`: local ports that reach
//!   other clients' private services, over a direct connection (`direct`: rendezvous through
//!   the server, then a QUIC connection between the two clients' tunnel sockets) or relayed by
//!   the server.
//! - `health`: active health checks of grouped services, reported on the control stream.
//! - [`starter`]: `wmproxy-client init`'s starter config.
//! - [`tls`]: how the server is trusted (pinned fingerprint, CA file, system roots).
//! - [`reload`]: applies a reloaded config; services are registered again on the live tunnel.
//! - `roaming`: moves the live tunnel to a new socket when the host's addresses change.
//! - `control`: the control API (`[control]`). `metrics`: its Prometheus counters.
//! - [`backoff`]: reconnect delays with jitter. [`error`]: errors, and their side (which decides
//!   whether to retry).
//!
//! Data flow: a local connection to a forward → [`CurrentTunnel::carry`] → a `Connect` stream
//! through the tunnel up now → the server dials the target. A user of a published service →
//! the server opens an `Expose` stream → `expose` dials the local service and relays.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod client;
mod control;
pub mod current;
pub mod error;
/// Entry points for the fuzz targets (`fuzz/`), built only with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::local::proxy_header;
}
pub mod handshake;
pub mod reload;
pub mod starter;
pub mod tls;

mod direct;
mod expose;
mod failback;
mod forward;
mod health;
mod link;
mod local;
mod metrics;
mod proxy;
mod quic_probe;
mod roaming;
mod status;
mod tcp_proxy;
mod tcp_transport;
mod tunnel;
mod visitor;

pub use client::{Client, ClientStatus};
pub use current::CurrentTunnel;
pub use error::ClientError;

/// Every route of the client's control API (the dashboard's files aside).
pub const CONTROL_ROUTES: &[wmproxy_ops::routes::Route] =
    <control::ClientControl as wmproxy_ops::control::ControlApi>::ROUTES;
pub use reload::{ReloadError, Reloader};
