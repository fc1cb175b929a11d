//! The server's control API (`[control]`, loopback, bearer token): what each endpoint does.
//! The HTTP side (auth, body limits, JSON replies) is [`wmproxy_ops::control`].
//!
//! | endpoint | |
//! |---|---|
//! | `GET /status` | clients (address, since, RTT, services), groups and backends, proxies, UDP counters |
//! | `GET /now` | the running config as its file would say it (file key names), secrets masked |
//! | `POST /reload` | re-reads the config file and applies the difference |
//! | `POST /adapt` | validates the body (or, if empty, the config file) without applying it |
//! | `POST /stop` | graceful stop |
//! | `POST /backends/{client}:{service}/drain`, `/undrain` | drains or restores a backend |
//! | `GET /metrics` | Prometheus text |
//! | `GET /history` | the last 15 minutes' traffic rates, per service (the dashboard's chart) |
//! | `GET /events` | recent connects, disconnects, health changes, reloads, drains and refusals |
//!
//! [`ServerControl::ROUTES`] lists them (public as [`crate::CONTROL_ROUTES`]), and
//! `docs/openapi/server.json` documents them (a test holds the two together). `GET /` is the
//! dashboard.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use wmproxy_config::GroupKind;
use wmproxy_ops::control::{ControlApi, HttpNames, Reply, ServiceStatus};
use wmproxy_ops::dashboard::Page;
use wmproxy_ops::routes::Route;
use wmproxy_tunnel::listener::ListenerSnapshot;
use wmproxy_tunnel::udp::UdpStats;

use crate::dashboard::events::EventKind;
use crate::dashboard::history::History;
use crate::groups::{GroupStatus, Groups};
use crate::listeners::Listeners;
use crate::metrics::{BackendHealth, Metrics, Scrape, Traffic, VisitorTraffic};
use crate::preauth::PreAuth;
use crate::reload::{ReloadError, Reloader};
use crate::sessions::Sessions;
use crate::settings::ConfigCell;

/// The server's answers to control requests, and what they read.
#[derive(Debug)]
pub(crate) struct ServerControl {
    pub config: Arc<ConfigCell>,
    pub sessions: Arc<Sessions>,
    pub groups: Arc<Groups>,
    pub metrics: Arc<Metrics>,
    pub udp: Arc<UdpStats>,
    /// Connections waiting to authenticate.
    pub preauth: Arc<PreAuth>,
    pub reloader: Arc<Reloader>,
    /// The proxies (their counters).
    pub listeners: Arc<Listeners>,
    /// Cancelled by `/stop`.
    pub stop: CancellationToken,
    /// The traffic history the dashboard charts.
    pub history: Arc<History>,
}

#[derive(Debug, Serialize)]
struct Status {
    overview: Overview,
    clients: Vec<ClientStatus>,
    groups: Vec<GroupStatus>,
    /// Each proxy: where it listens, its `via`, what it carried and refused.
    proxies: Vec<ListenerSnapshot>,
    udp: wmproxy_tunnel::udp::UdpSnapshot,
}

/// The server at a glance (the dashboard's first panel).
#[derive(Debug, Serialize)]
struct Overview {
    version: &'static str,
    uptime_secs: u64,
    /// Tunnels up now.
    tunnels: usize,
    /// Public connections open now, to every service.
    streams: i64,
    udp_flows: u64,
    /// Bytes from users to services, and back, since the server started (as sampled every
    /// few seconds for the history).
    bytes_in: u64,
    bytes_out: u64,
    reloads: u64,
    reload_failures: u64,
}

#[derive(Debug, Serialize)]
struct ClientStatus {
    name: String,
    address: String,
    /// What carries the tunnel: `quic`, or `tcp` (TLS on TCP, where UDP is blocked).
    transport: &'static str,
    /// Seconds since the Unix epoch.
    connected_since: u64,
    rtt_ms: f64,
    /// The tunnel's path MTU as QUIC has found it (UDP payload bytes); 0 on the TCP transport.
    mtu: u16,
    /// How many servers the client keeps a tunnel to at once: more than 1 means this server
    /// is one of several publishing its services (the client's `mode = "all"`).
    servers: u32,
    /// The client's own connections (its forwards' and proxies') that left from here.
    egress_connections: u64,
    services: Vec<ServiceTraffic>,
}

/// A service's registration result and what it carried.
#[derive(Debug, Serialize)]
struct ServiceTraffic {
    #[serde(flatten)]
    result: ServiceStatus,
    #[serde(flatten)]
    traffic: Traffic,
    /// A private service's visitors: how each reaches it and what it was relayed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    visitors: Vec<VisitorTraffic>,
}

impl ControlApi for ServerControl {
    const ROUTES: &'static [Route] = &[
        Route::get("/status"),
        Route::get("/now"),
        Route::post("/reload"),
        Route::post("/adapt"),
        Route::post("/stop"),
        Route::post("/backends/{backend}/drain"),
        Route::post("/backends/{backend}/undrain"),
        Route::get("/metrics"),
        Route::get("/history"),
        Route::get("/events"),
    ];
    const PAGE: Page = crate::dashboard::PAGE;

    async fn handle(&self, method: Method, path: String, body: Bytes) -> Reply {
        match (&method, path.as_str()) {
            (&Method::GET, "/status") => Reply::json(StatusCode::OK, &self.status()),
            (&Method::GET, "/now") => Reply::json(StatusCode::OK, &self.config.snapshot().to_file()),
            (&Method::POST, "/reload") => match self.reloader.reload().await {
                Ok(report) => Reply::json(StatusCode::OK, &report),
                Err(e @ ReloadError::Config(_)) => Reply::verdict(Err(e)),
                Err(e) => Reply::error(StatusCode::CONFLICT, &e.to_string()),
            },
            (&Method::POST, "/adapt") => {
                Reply::adapt(&body, self.config.path(), wmproxy_config::load_server, wmproxy_config::parse_server)
            }
            (&Method::POST, "/stop") => {
                self.stop.cancel();
                Reply::json(StatusCode::OK, &serde_json::json!({ "stopping": true }))
            }
            (&Method::POST, p) if p.starts_with("/backends/") => self.drain(p),
            (&Method::GET, "/history") => Reply::json(StatusCode::OK, &self.history.view()),
            (&Method::GET, "/events") => {
                Reply::json(StatusCode::OK, &serde_json::json!({ "events": self.metrics.events.list() }))
            }
            (&Method::GET, "/metrics") => match self.metrics.encode(&self.scrape()) {
                Ok(text) => Reply::metrics(text),
                Err(_) => Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics"),
            },
            _ => Reply::not_found(&method, &path),
        }
    }
}

impl ServerControl {
    fn status(&self) -> Status {
        let mut groups = self.groups.statuses();
        let config = self.config.snapshot();
        for group in &mut groups {
            let entry = config.groups.iter().find(|g| g.name.as_str() == group.name);
            group.http = entry.and_then(|g| match &g.kind {
                GroupKind::Http { custom_domains, locations } => {
                    Some(HttpNames { domains: custom_domains.clone(), subdomain: None, locations: locations.clone() })
                }
                GroupKind::Https { custom_domains } => {
                    Some(HttpNames { domains: custom_domains.clone(), ..Default::default() })
                }
                GroupKind::Tcp { .. } | GroupKind::Udp { .. } => None,
            });
        }
        for backend in groups.iter_mut().flat_map(|g| g.backends.iter_mut()) {
            backend.traffic = self.metrics.traffic(&backend.client, &backend.service);
        }
        let clients: Vec<ClientStatus> = self
            .sessions
            .all()
            .iter()
            .map(|s| ClientStatus {
                name: s.name.to_string(),
                address: s.tunnel.conn().remote_address().to_string(),
                transport: s.tunnel.conn().kind().as_str(),
                connected_since: s.since.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs(),
                rtt_ms: s.tunnel.conn().rtt().as_secs_f64() * 1000.0,
                mtu: s.tunnel.conn().mtu().unwrap_or(0),
                servers: s.servers,
                egress_connections: s.egress.load(std::sync::atomic::Ordering::Relaxed),
                services: s
                    .results()
                    .iter()
                    .map(|r| ServiceTraffic {
                        result: ServiceStatus::from(r).with_http(s.route_of(&r.name)),
                        traffic: self.metrics.traffic(&s.name, &r.name),
                        visitors: self.visitors(s, &r.name),
                    })
                    .collect(),
            })
            .collect();
        let proxies = self.listeners.proxy_stats().iter().map(|l| l.snapshot()).collect();
        let udp = self.udp.snapshot();
        Status { overview: self.overview(&clients, &udp), clients, groups, proxies, udp }
    }

    /// The visitors of `service` of `owner`, each with its relayed path's round-trip time.
    fn visitors(&self, owner: &crate::sessions::Session, service: &str) -> Vec<VisitorTraffic> {
        let mut visitors = self.metrics.visitors.traffic(&owner.name, service);
        for v in &mut visitors {
            if let Some(visitor) = self.sessions.get(&v.visitor) {
                let rtt = visitor.tunnel.conn().rtt() + owner.tunnel.conn().rtt();
                v.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
            }
        }
        visitors
    }

    fn overview(&self, clients: &[ClientStatus], udp: &wmproxy_tunnel::udp::UdpSnapshot) -> Overview {
        let (bytes_in, bytes_out) = self.history.totals();
        Overview {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.metrics.started.elapsed().as_secs(),
            tunnels: clients.len(),
            streams: clients.iter().flat_map(|c| &c.services).map(|s| s.traffic.active).sum(),
            udp_flows: udp.active_flows,
            bytes_in,
            bytes_out,
            reloads: self.metrics.reloads.get(),
            reload_failures: self.metrics.reload_failures.get(),
        }
    }

    /// The state the metrics read at scrape time: UDP counters and whether each group backend
    /// takes new work.
    fn scrape(&self) -> Scrape {
        let backends = self
            .groups
            .statuses()
            .into_iter()
            .flat_map(|g| {
                g.backends.into_iter().map(move |b| BackendHealth {
                    group: g.name.clone(),
                    up: b.health.state == crate::groups::health::HealthState::Healthy && !b.drained,
                    client: b.client,
                    service: b.service,
                })
            })
            .collect();
        let proxies = self.listeners.proxy_stats().iter().map(|l| l.snapshot()).collect();
        Scrape { udp: self.udp.snapshot(), backends, unauthenticated: self.preauth.waiting(), proxies }
    }

    /// `/backends/{client}:{service}/drain` and `/undrain`.
    fn drain(&self, path: &str) -> Reply {
        let rest = path.trim_start_matches("/backends/");
        let (name, drained) = match rest.rsplit_once('/') {
            Some((name, "drain")) => (name, true),
            Some((name, "undrain")) => (name, false),
            _ => return Reply::not_found(&Method::POST, path),
        };
        let Some((client, service)) = name.split_once(':') else {
            return Reply::error(StatusCode::BAD_REQUEST, "name a backend as `client:service`");
        };
        match self.groups.backend(client, service) {
            Some(backend) => {
                backend.set_drained(drained);
                let what = if drained { "drained" } else { "undrained" };
                self.metrics.events.record(EventKind::Drain, format!("{name} {what} through the control API"));
                Reply::json(StatusCode::OK, &serde_json::json!({ "backend": name, "drained": drained }))
            }
            None => Reply::error(StatusCode::NOT_FOUND, &format!("no connected backend `{name}`")),
        }
    }
}
