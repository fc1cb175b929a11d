//! The client's control API (`[control]`, loopback, bearer token; default
//! `127.0.0.1:8838`). The HTTP side is [`wmproxy_ops::control`].
//!
//! | endpoint | |
//! |---|---|
//! | `GET /status` | the tunnel's state, each service's registration result, each forward's and proxy's counters; with several servers, each server's tunnel (`servers`) |
//! | `GET /now` | the running config as its file would say it (file key names), secrets masked |
//! | `POST /reload` | re-reads the config file and publishes the services again on the live tunnel |
//! | `POST /adapt` | validates the body (or, if empty, the config file) without applying it |
//! | `POST /stop` | stops the client (it does not reconnect) |
//! | `GET /metrics` | Prometheus text: connections and bytes per service and per forward or proxy, tunnel up (per server, with its RTT), UDP |
//!
//! [`ClientControl::ROUTES`] lists them (public as [`crate::CONTROL_ROUTES`]), and
//! `docs/openapi/client.json` documents them (a test holds the two together). `GET /` is the
//! dashboard.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wmproxy_ops::control::{ControlApi, HttpNames, Reply, ServiceStatus};
use wmproxy_ops::dashboard::Page;
use wmproxy_ops::routes::Route;
use wmproxy_tunnel::listener::{ListenerSnapshot, ListenerStats};

use crate::reload::{ReloadError, Reloader};
use crate::status::ClientStatus;

/// The client's answers to control requests.
#[derive(Debug)]
pub(crate) struct ClientControl {
    /// Each reconnect loop's state: per server with `mode = "all"`, one for a failover list.
    pub status: Vec<watch::Receiver<ClientStatus>>,
    /// Every server's address, in the list's order.
    pub servers: Vec<String>,
    /// The tunnels up now (their round-trip times).
    pub current: crate::current::CurrentTunnel,
    pub reloader: Reloader,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub udp: std::sync::Arc<wmproxy_tunnel::udp::UdpStats>,
    /// The proxies' and forwards' counters, in config order (forwards, then proxies).
    pub listeners: std::sync::Arc<Vec<std::sync::Arc<ListenerStats>>>,
    /// The health checks' last results.
    pub checks: std::sync::Arc<crate::health::CheckResults>,
    /// Cancelled by `/stop`.
    pub stop: CancellationToken,
    /// Each visitor's direct path.
    pub paths: Vec<std::sync::Arc<crate::direct::path::DirectPath>>,
    /// Direct connections accepted from visitors.
    pub direct: std::sync::Arc<crate::direct::Direct>,
}

/// `/status`: the first tunnel's state at the top (with one server, the tunnel's), every
/// tunnel's under `servers`, then the forwards and proxies.
#[derive(Debug, Serialize)]
struct Status {
    #[serde(flatten)]
    first: TunnelState,
    /// Each tunnel: per server with `mode = "all"`, in the list's order; the one tunnel of a
    /// failover list.
    servers: Vec<TunnelState>,
    /// Each forward and proxy: where it listens, what it carried and refused.
    listeners: Vec<ListenerSnapshot>,
    /// Each grouped service's health check: its last result.
    health_checks: Vec<crate::health::LastCheck>,
    /// Each visitor: its mode and the path a new connection takes now (its counters are its
    /// entry in `listeners`).
    visitors: Vec<crate::direct::path::PathStatus>,
    /// Direct connections of visitors to this client's private services, open now.
    direct_visitors: Vec<crate::direct::accept::AcceptedStatus>,
}

/// One tunnel's state.
#[derive(Debug, Serialize)]
struct TunnelState {
    /// The server it goes to (`mode = "failover"`: the one it is on now, if any).
    server: Option<String>,
    /// `connecting`, `connected` or `stopped`.
    state: &'static str,
    /// Why the last attempt or tunnel failed, while connecting.
    last_error: Option<String>,
    /// While connected: `quic`, or `tcp` (TLS over TCP, where UDP is blocked).
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<&'static str>,
    /// While connected: the smoothed round-trip time to the server, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt_ms: Option<f64>,
    services: Vec<ServiceStatus>,
}

impl ControlApi for ClientControl {
    const ROUTES: &'static [Route] = &[
        Route::get("/status"),
        Route::get("/now"),
        Route::post("/reload"),
        Route::post("/adapt"),
        Route::post("/stop"),
        Route::get("/metrics"),
    ];
    const PAGE: Page = Page { title: "wmproxy client", script: include_str!("dashboard.js") };

    async fn handle(&self, method: Method, path: String, body: Bytes) -> Reply {
        match (&method, path.as_str()) {
            (&Method::GET, "/status") => Reply::json(StatusCode::OK, &self.status()),
            (&Method::GET, "/now") => Reply::json(StatusCode::OK, &self.reloader.running().to_file()),
            (&Method::POST, "/reload") => match self.reloader.reload() {
                Ok(report) => Reply::json(StatusCode::OK, &report),
                Err(ReloadError::NoFile) => Reply::error(StatusCode::CONFLICT, &ReloadError::NoFile.to_string()),
                Err(e) => Reply::verdict(Err(e)),
            },
            (&Method::POST, "/adapt") => {
                Reply::adapt(&body, self.reloader.path(), wmproxy_config::load_client, wmproxy_config::parse_client)
            }
            (&Method::POST, "/stop") => {
                self.stop.cancel();
                Reply::json(StatusCode::OK, &serde_json::json!({ "stopping": true }))
            }
            (&Method::GET, "/metrics") => {
                let tunnels: Vec<crate::metrics::TunnelGauges> = (0..self.status.len())
                    .filter_map(|i| {
                        let state = self.tunnel(i);
                        Some(crate::metrics::TunnelGauges {
                            server: state.server?,
                            transport: state.transport,
                            rtt: state.rtt_ms.map(|ms| ms / 1_000.0),
                        })
                    })
                    .collect();
                match self.metrics.encode(&tunnels, &self.udp.snapshot(), &self.listeners()) {
                    Ok(text) => Reply::metrics(text),
                    Err(_) => Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics"),
                }
            }
            _ => Reply::not_found(&method, &path),
        }
    }
}

impl ClientControl {
    fn status(&self) -> Status {
        let servers: Vec<TunnelState> = (0..self.status.len()).map(|i| self.tunnel(i)).collect();
        Status {
            first: self.tunnel(0),
            servers,
            listeners: self.listeners(),
            health_checks: self.checks.list(),
            visitors: self.paths.iter().map(|p| p.status()).collect(),
            direct_visitors: self.direct.accepted.list(),
        }
    }

    /// Reconnect loop `i`'s tunnel.
    fn tunnel(&self, i: usize) -> TunnelState {
        let failover = self.status.len() < self.servers.len();
        let mut state = TunnelState {
            server: if failover { None } else { self.servers.get(i).cloned() },
            state: "connecting",
            last_error: None,
            transport: None,
            rtt_ms: None,
            services: Vec::new(),
        };
        let Some(status) = self.status.get(i) else { return state };
        match &*status.borrow() {
            ClientStatus::Connecting { last_error, .. } => state.last_error.clone_from(last_error),
            ClientStatus::Stopped { error } => {
                state.state = "stopped";
                state.last_error.clone_from(error);
            }
            ClientStatus::Connected { services, transport, server } => {
                state.state = "connected";
                state.server = Some(server.clone());
                state.transport = Some(*transport);
                let tunnel = self.current.slots().get(i).cloned().flatten();
                state.rtt_ms = tunnel.map(|t| t.conn().rtt().as_secs_f64() * 1_000.0);
                let running = self.reloader.running();
                let http = |name: &wmproxy_wire::Name| {
                    let service = running.services.iter().find(|s| s.name == *name)?;
                    service.spec(&running.name).http.as_ref().map(HttpNames::from)
                };
                state.services = services.iter().map(|r| ServiceStatus::from(r).with_http(http(&r.name))).collect();
            }
        }
        state
    }

    fn listeners(&self) -> Vec<ListenerSnapshot> {
        self.listeners.iter().map(|l| l.snapshot()).collect()
    }
}
