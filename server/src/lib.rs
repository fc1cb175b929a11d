//! The wmproxy server: accepts QUIC tunnels from clients and publishes their services.
//!
//! # Layout
//! Composition and lifetime:
//! - [`server`]: [`Server::bind`] builds every subsystem and gives each module only the
//!   handles it uses; [`Server::run`] is the accept loop (each connection goes at once to its
//!   own task) and the graceful shutdown. [`ServerHandle`] is the view tests and the binary use.
//! - `runtime`: the task tracker and the root stop token (alive from `bind`), and `Serving`,
//!   what every public listener needs. `settings`: the running config, one snapshot per
//!   operation. `sockets`: binding listeners.
//!
//! Tunnels:
//! - `preauth`: the budget of connections that have not authenticated yet (evict the oldest,
//!   a share per address, QUIC retry under load);
//!   the prefix one host controls is `wmproxy_tunnel::users::prefix`.
//! - `tcp_listener`: the TCP transport's port (TLS on TCP, for clients whose network blocks
//!   UDP), into the same budget and handshake.
//! - `handshake`: TLS and the Hello under that budget and the auth timeout, with a small
//!   window until the proof (`auth`, with the throttle in `sessions`) is checked; then the
//!   client's place in `max_clients`.
//! - `tunnel`: one task per connection: the handshake, registration, control stream, the
//!   client's data streams (`connect`).
//! - `sessions`: live tunnels by client name; a reconnecting client replaces its old session.
//!
//! Publications and how users reach them:
//! - `registry`: every publication, keyed by (session, service), owning its port, its routes
//!   or its group membership; dropping an entry withdraws it, the one teardown path.
//! - `upstream`: the one place a connection or a flow becomes a data stream to a client, and
//!   the upstream of one service. [`groups`]: load-balancing groups, the other upstream.
//! - `routes`: the vhost and HTTPS routes, indexed by host. `vhost`: those two ports.
//! - `proxy`: SOCKS5 and HTTP proxies whose connections leave from a client (`via`).
//! - `visit`: private services (no public port) and the visits other clients make to them,
//!   checked and spliced stream to stream. `rendezvous`: what the server does for a direct
//!   connection between two clients (tells each the other's certificate and addresses).
//! - `listeners`: what the config declares (group ports and routes, proxies), by config key.
//! - `udp`: the server-wide UDP flow budget.
//!
//! Operations:
//! - [`reload`]: applies a reloaded config file (`POST /reload`, SIGHUP).
//! - `control`: the control API's endpoints, on [`wmproxy_ops::control`]'s loopback server.
//! - `dashboard`: the page's script, and what only the page reads: recent events (a bounded
//!   ring) and the traffic history (a sampler task and a bounded ring).
//! - `metrics`: Prometheus counters bumped on the network path, plus state read at scrape time.
//! - [`starter`]: `wmproxy-server init`'s starter config.
//! - [`identity`]: the TLS certificate and the embedded setup's token. `throttle`: failed-auth
//!   counts per source address.
//!
//! # Data path of one public TCP connection
//! `registry::ports` accepts the user on the service's public port and calls
//! `ServiceUpstream::carry`, which takes a stream permit of the client's [`wmproxy_tunnel::Tunnel`]
//! and opens a QUIC stream with an `Expose` header, the user's bytes pipelined behind it; the
//! client dials its local service and answers; then [`wmproxy_tunnel::relay`] copies both ways.
//! A group port (`groups::port`), a vhost or SNI route and a proxy do the same through
//! [`wmproxy_tunnel::Upstream::open`], which waits for the answer first (so a group can try the
//! next backend).
//!
//! Every task is spawned on the runtime's tracker and carries its span (`tunnel{peer, client}`,
//! `public{service, port}`, `stream{…}`, `flow{peer, flow}`); shutdown cancels the root token
//! and waits for the tracker.
#![forbid(unsafe_code)]

mod auth;
mod connect;
mod control;
mod dashboard;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod groups;
mod handshake;
pub mod identity;
mod listeners;
mod metrics;
mod preauth;
mod proxy;
mod registry;
pub mod reload;
mod rendezvous;
mod routes;
mod runtime;
pub mod server;
mod sessions;
mod settings;
mod sockets;
pub mod starter;
mod tcp_listener;
mod throttle;
mod tunnel;
mod udp;
mod upstream;
mod vhost;
mod visit;

/// Per-service metric label sets one client may have; its further services are counted together
/// under `service="(other)"`.
pub use metrics::MAX_LABELED_PER_CLIENT;
pub use server::{Server, ServerError, ServerHandle};

/// Every route of the server's control API (the dashboard's files aside).
pub const CONTROL_ROUTES: &[wmproxy_ops::routes::Route] =
    <control::ServerControl as wmproxy_ops::control::ControlApi>::ROUTES;
