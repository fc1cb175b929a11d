//! The wmproxy client: keeps a QUIC tunnel to the server and serves its services and forwards.
//!
//! # Layout
//! - [`client`]: [`Client`] binds forward listeners; [`Client::run`] is the reconnect loop,
//!   publishing [`ClientStatus`] on a watch channel.
//! - [`session`]: one attempt: resolve, QUIC handshake, Hello with the TLS-bound proof,
//!   Register.
//! - `expose`: streams the server opens (a user reached a published service): dial the local
//!   address, answer, relay.
//! - `forward`: local listeners whose connections ride the current tunnel (`Connect`).
//! - `proxy`: local SOCKS5 (and HTTP) proxies whose connections become `Connect` streams.
//! - `health`: active health checks of grouped services (TCP connect or HTTP GET), reported
//!   to the server on the control stream.
//! - [`tls`]: how the server is trusted (pinned fingerprint, CA file, system roots).
//! - [`reload`]: applies a reloaded config; services are registered again on the live tunnel.
//! - `control`: the control API (`[control]`): status, reload, adapt, stop, metrics.
//! - `metrics`: its Prometheus counters (connections and bytes per service, tunnel up, UDP).
//! - [`backoff`]: reconnect delays with jitter. [`error`]: errors, and which are retried.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod client;
mod control;
pub mod error;
pub mod reload;
pub mod session;

mod expose;
mod forward;
mod health;
mod metrics;
mod proxy;
pub mod tls;

pub use client::{Client, ClientStatus};
pub use error::ClientError;
pub use reload::{ReloadError, Reloader};
