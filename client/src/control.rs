//! The client's control API (`[control]`, loopback, bearer token; default
//! `127.0.0.1:8838`). The HTTP side is [`wmproxy_ops::control`].
//!
//! | endpoint | |
//! |---|---|
//! | `GET /status` | the tunnel's state, each service's registration result, each forward's and proxy's counters |
//! | `GET /now` | the running config as its file would say it (file key names), secrets masked |
//! | `POST /reload` | re-reads the config file and publishes the services again on the live tunnel |
//! | `POST /adapt` | validates the body (or, if empty, the config file) without applying it |
//! | `POST /stop` | stops the client (it does not reconnect) |
//! | `GET /metrics` | Prometheus text: connections and bytes per service and per forward or proxy, tunnel up, UDP |

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wmproxy_ops::control::{ControlApi, HttpNames, Reply, ServiceStatus};
use wmproxy_tunnel::listener::{ListenerSnapshot, ListenerStats};

use crate::reload::{ReloadError, Reloader};
use crate::status::ClientStatus;

/// The client's answers to control requests.
#[derive(Debug)]
pub(crate) struct ClientControl {
    pub status: watch::Receiver<ClientStatus>,
    pub reloader: Reloader,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub udp: std::sync::Arc<wmproxy_tunnel::udp::UdpStats>,
    /// The proxies' and forwards' counters, in config order (forwards, then proxies).
    pub listeners: std::sync::Arc<Vec<std::sync::Arc<ListenerStats>>>,
    /// Cancelled by `/stop`.
    pub stop: CancellationToken,
}

#[derive(Debug, Serialize)]
struct Status {
    /// `connecting`, `connected` or `stopped`.
    state: &'static str,
    /// Why the last attempt or tunnel failed, while connecting.
    last_error: Option<String>,
    /// While connected: `quic`, or `tcp` (TLS over TCP, where UDP is blocked).
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<&'static str>,
    services: Vec<ServiceStatus>,
    /// Each forward and proxy: where it listens, what it carried and refused.
    listeners: Vec<ListenerSnapshot>,
}

impl ControlApi for ClientControl {
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
                let transport = match &*self.status.borrow() {
                    ClientStatus::Connected { transport, .. } => Some(*transport),
                    _ => None,
                };
                match self.metrics.encode(transport, &self.udp.snapshot(), &self.listeners()) {
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
        let mut transport = None;
        let (state, last_error, services) = match &*self.status.borrow() {
            ClientStatus::Connecting { last_error, .. } => ("connecting", last_error.clone(), Vec::new()),
            ClientStatus::Stopped { error } => ("stopped", error.clone(), Vec::new()),
            ClientStatus::Connected { services, transport: carried_by } => {
                transport = Some(*carried_by);
                let running = self.reloader.running();
                let http = |name: &wmproxy_wire::Name| {
                    let service = running.services.iter().find(|s| s.name == *name)?;
                    wmproxy_wire::ServiceSpec::from(service).http.as_ref().map(HttpNames::from)
                };
                let services = services.iter().map(|r| ServiceStatus::from(r).with_http(http(&r.name))).collect();
                ("connected", None, services)
            }
        };
        Status { state, last_error, transport, services, listeners: self.listeners() }
    }

    fn listeners(&self) -> Vec<ListenerSnapshot> {
        self.listeners.iter().map(|l| l.snapshot()).collect()
    }
}
