//! The wmproxy server: accepts QUIC tunnels from clients and publishes their services.
//!
//! # Layout
//! - [`server`]: [`Server`] binds the endpoint; [`Server::run`] is the accept loop. Each incoming
//!   connection is handed at once to its own task; nothing is awaited in the loop itself.
//! - `tunnel`: one task per connection. The QUIC handshake, the Hello (version, proof) and the
//!   registration run there under the handshake timeout; then it serves the control stream and
//!   accepts the client's data streams.
//! - `sessions`: live tunnels by client name; a reconnecting client replaces its old session.
//! - `publish`: registers services (again on a reloaded client: unchanged ones are kept) and
//!   binds public TCP ports; each user connection becomes a data stream to the client
//!   (`Expose`), then a relay.
//! - `udp`: public UDP ports; each user address becomes a flow to the client (`UdpExpose`),
//!   carried as QUIC datagrams (see `wmproxy_proto::udp`).
//! - `vhost`: the HTTP virtual-host port: every request routed by its own `Host` and path to
//!   a client's `type = "http"` service; WebSocket upgrades passed through.
//! - `proxy`: SOCKS5 and HTTP proxies whose connections leave from a client (`via`).
//! - `connect`: data streams from the client (`Connect`, `UdpConnect`: local forwards) are
//!   dialed under the egress policy, then relayed.
//! - [`groups`]: load-balancing groups: a public port served by backends (services of
//!   clients that joined with the group's key), picked by policy, with active and passive
//!   health checks and retry on the next backend.
//! - `listeners`: the config's own listeners (group ports, proxies) and their stop tokens.
//! - [`reload`]: applies a reloaded config file (`POST /reload`, SIGHUP): what changes in
//!   place, what is started or stopped, what needs a restart.
//! - `control`: the control API's endpoints (`[control]`: status, config, reload, adapt, stop,
//!   drain, metrics) on [`wmproxy_proto::control`]'s loopback HTTP server.
//! - `metrics`: Prometheus counters (prometheus-client) bumped on the network path, plus the
//!   state read at scrape time (UDP counters, backend health).
//! - [`identity`]: the TLS certificate (from PEM, or generated and kept in the state dir) and the
//!   embedded setup's token. `throttle`: failed-auth counts per source address.
//!
//! Every task is spawned on one `TaskTracker` and carries its span (`tunnel{peer, client}`,
//! `public{service, port}`, `stream{…}`, `flow{peer, flow}`); shutdown cancels a token and waits for the tracker.
#![forbid(unsafe_code)]

pub mod groups;
pub mod identity;
pub mod server;

mod connect;
mod control;
mod listeners;
mod metrics;
mod proxy;
mod publish;
pub mod reload;
mod sessions;
mod throttle;
mod tunnel;
mod udp;
mod vhost;

pub use server::{Server, ServerError, ServerHandle};
