//! The client: keeps its tunnels up (one reconnect loop per server, or one for a failover
//! list: `link`), and serves its services, forwards and proxies through whichever tunnels are
//! current.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};
use wmproxy_config::{ClientConfig, ForwardKind, ServerEntry, ServersMode, ServiceKind, Transport};
use wmproxy_tunnel::listener::ListenerStats;
use wmproxy_tunnel::transport;
use wmproxy_tunnel::udp::UdpStats;
use wmproxy_wire::PROTOCOL_VERSION;

use crate::current::CurrentTunnel;
use crate::direct::path::DirectPath;
use crate::error::ClientError;
use crate::failback::Failback;
use crate::link::{Link, Shared};
use crate::local::STREAM_OPEN_TIMEOUT;
use crate::reload::Reloader;
pub use crate::status::ClientStatus;
use crate::tunnel::{DRAIN_TIMEOUT, TunnelSetup};
use crate::{forward, handshake, proxy, tls, visitor};
use wmproxy_config::visitor::VisitMode;

/// A bound local forward, proxy or visitor.
#[derive(Debug)]
enum LocalListener {
    Tcp(TcpListener, wmproxy_wire::Target),
    Udp(UdpSocket, wmproxy_wire::Target),
    Proxy(TcpListener, wmproxy_config::Proxy),
    /// Local TCP connections become WebSocket connections to a URL (directly, not through the
    /// tunnel).
    Ws(TcpListener, String),
    /// Local TCP connections visit another client's private service.
    Visitor(TcpListener, Arc<wmproxy_config::visitor::Visitor>),
    /// Local UDP senders visit another client's private UDP service.
    UdpVisitor(UdpSocket, Arc<wmproxy_config::visitor::Visitor>),
}

impl LocalListener {
    /// New counters for it, as `/status` and `/metrics` name it.
    fn stats(&self) -> Arc<ListenerStats> {
        let listen = self.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        match self {
            Self::Tcp(_, target) => ListenerStats::new("forward", "tcp", listen, target.to_string()),
            Self::Udp(_, target) => ListenerStats::new("forward", "udp", listen, target.to_string()),
            Self::Ws(_, url) => ListenerStats::new("forward", "ws", listen, url.clone()),
            Self::Proxy(_, p) => ListenerStats::new("proxy", p.kind.as_str(), listen, String::new()),
            Self::Visitor(_, v) => ListenerStats::new("visitor", "tcp", listen, format!("{}/{}", v.client, v.service)),
            Self::UdpVisitor(_, v) => {
                ListenerStats::new("visitor", "udp", listen, format!("{}/{}", v.client, v.service))
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Tcp(l, _) | Self::Proxy(l, _) | Self::Ws(l, _) | Self::Visitor(l, _) => l.local_addr(),
            Self::Udp(s, _) | Self::UdpVisitor(s, _) => s.local_addr(),
        }
    }
}

/// A configured client with its local listeners bound, ready to [`run`](Client::run).
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    /// Each server with its TLS setups (QUIC's and the TCP transport's), in order.
    servers: Vec<(ServerEntry, quinn::ClientConfig, Arc<rustls::ClientConfig>)>,
    locals: Vec<LocalListener>,
    /// One per reconnect loop: per server with `mode = "all"`, one for a failover list.
    status: Vec<watch::Sender<ClientStatus>>,
    protocol_version: u32,
    udp_stats: Arc<UdpStats>,
    reloader: Reloader,
    control_listener: Option<TcpListener>,
    /// Direct connections between clients: this client's certificate, its tunnel's endpoint.
    direct: Arc<crate::direct::Direct>,
}

impl Client {
    /// Builds the TLS config and binds the local forward and proxy listeners. Must be called
    /// inside a tokio runtime.
    pub async fn new(config: ClientConfig) -> Result<Self, ClientError> {
        for warning in &config.warnings {
            warn!(%warning, "config");
        }
        let tuning = transport::TransportTuning {
            // None until the server's Welcome tells its limits (`handshake`): the server opens
            // no stream before it.
            max_concurrent_streams: 0,
            keep_alive: Some(config.limits.keep_alive()),
            congestion: config.limits.congestion,
            ..Default::default()
        };
        let tuning = Arc::new(tuning.to_config());
        let mut servers = Vec::with_capacity(config.servers.len());
        for server in &config.servers {
            let mut quic = tls::quic_client_config(&server.trust)?;
            quic.transport_config(tuning.clone());
            servers.push((server.clone(), quic, tls::tcp_client_config(&server.trust)?));
        }
        let listen = |addr: SocketAddr| move |source| ClientError::Listen { addr, source };
        let mut locals = Vec::with_capacity(config.forwards.len() + config.proxies.len() + config.visitors.len());
        for f in &config.forwards {
            locals.push(match &f.kind {
                ForwardKind::Tcp { target } => {
                    LocalListener::Tcp(TcpListener::bind(f.listen).await.map_err(listen(f.listen))?, target.clone())
                }
                ForwardKind::Udp { target } => LocalListener::Udp(
                    transport::bind_udp(f.listen).and_then(UdpSocket::from_std).map_err(listen(f.listen))?,
                    target.clone(),
                ),
                ForwardKind::Ws { target } => {
                    LocalListener::Ws(TcpListener::bind(f.listen).await.map_err(listen(f.listen))?, target.clone())
                }
            });
        }
        for p in &config.proxies {
            locals.push(LocalListener::Proxy(TcpListener::bind(p.listen).await.map_err(listen(p.listen))?, p.clone()));
        }
        for v in &config.visitors {
            locals.push(match v.kind {
                ServiceKind::Udp => LocalListener::UdpVisitor(
                    transport::bind_udp(v.listen).and_then(UdpSocket::from_std).map_err(listen(v.listen))?,
                    Arc::new(v.clone()),
                ),
                _ => LocalListener::Visitor(
                    TcpListener::bind(v.listen).await.map_err(listen(v.listen))?,
                    Arc::new(v.clone()),
                ),
            });
        }
        let control_listener = match &config.control {
            Some(control) => {
                let addr = control.addr(wmproxy_config::control::CLIENT_CONTROL_BIND);
                Some(TcpListener::bind(addr).await.map_err(listen(addr))?)
            }
            None => None,
        };
        let loops = match config.mode {
            ServersMode::All => config.servers.len(),
            ServersMode::Failover => 1,
        };
        let status = (0..loops).map(|_| watch::channel(ClientStatus::Connecting { attempt: 0, last_error: None }).0);
        let status = status.collect();
        let reloader = Reloader::new(&config, None);
        let udp_stats: Arc<UdpStats> = Arc::default();
        let direct = crate::direct::Direct::new(crate::direct::Udp {
            flows: Arc::new(Semaphore::new(config.limits.max_udp_flows as usize)),
            stats: udp_stats.clone(),
            idle: config.limits.udp_flow_idle_timeout(),
        })?;
        Ok(Self {
            config,
            servers,
            locals,
            status,
            protocol_version: PROTOCOL_VERSION,
            udp_stats,
            reloader,
            control_listener,
            direct,
        })
    }

    /// The config file this client was loaded from: `/reload`, SIGHUP and `/adapt` read it.
    pub fn set_config_path(&mut self, path: std::path::PathBuf) {
        self.reloader = Reloader::new(&self.config, Some(path));
    }

    /// Applies reloaded configs to this client while it runs.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Where the control API listens, if `[control]` is set.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The client's UDP counters (`active_flows` is the size of its flow table).
    pub fn udp_stats(&self) -> Arc<UdpStats> {
        self.udp_stats.clone()
    }

    /// Follows the client's state: with several servers, that of the first server's tunnel
    /// (`mode = "all"`) or of the failover list's one tunnel. [`Client::statuses`] has each.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status[0].subscribe()
    }

    /// Follows each tunnel's state: one per server with `mode = "all"`, in the list's order;
    /// one with `"failover"`.
    pub fn statuses(&self) -> Vec<watch::Receiver<ClientStatus>> {
        self.status.iter().map(watch::Sender::subscribe).collect()
    }

    /// Where the local forwards listen, in config order, then the proxies, then the visitors.
    pub fn forward_addrs(&self) -> Vec<SocketAddr> {
        self.locals.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Announces another protocol version in the Hello. For tests of version mismatch only.
    #[doc(hidden)]
    pub fn override_protocol_version(&mut self, version: u32) {
        self.protocol_version = version;
    }

    /// Keeps the tunnels up until `shutdown`, or until every server refused the client with an
    /// error that retrying cannot fix (wrong token, untrusted server, version mismatch): then
    /// returns the first such error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ClientError> {
        let Self { config, servers, locals, status, protocol_version, udp_stats, reloader, control_listener, direct } =
            self;
        let config = Arc::new(config);
        let tracker = TaskTracker::new();
        let dialers: Arc<Vec<handshake::Dialer>> = Arc::new(
            servers
                .into_iter()
                .map(|(server, quic, tcp)| handshake::Dialer { server, quic, tcp, tracker: tracker.clone() })
                .collect(),
        );
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let listeners: Arc<Vec<Arc<ListenerStats>>> = Arc::new(locals.iter().map(LocalListener::stats).collect());
        let (installers, current) = CurrentTunnel::new(status.len(), config.egress, STREAM_OPEN_TIMEOUT);
        let checks = Arc::new(crate::health::CheckResults::default());
        // One direct path per visitor that may use one, kept up by a task of its own.
        let paths: Vec<Arc<DirectPath>> = locals
            .iter()
            .zip(listeners.iter())
            .filter_map(|(l, stats)| match l {
                LocalListener::Visitor(_, v) | LocalListener::UdpVisitor(_, v) => {
                    Some(DirectPath::new(v.clone(), stats.clone()))
                }
                _ => None,
            })
            .collect();
        for path in paths.iter().filter(|p| p.mode() != VisitMode::Relay) {
            let span = info_span!("direct_path", visitor = %path.name());
            let maintain = path.clone().maintain(direct.clone(), (tracker.clone(), shutdown.clone()));
            tracker.spawn(maintain.instrument(span));
        }
        if let (Some(listener), Some(control)) = (control_listener, &config.control) {
            if let Ok(addr) = listener.local_addr() {
                info!(listener = "control", %addr, "listening");
            }
            let api = crate::control::ClientControl {
                status: status.iter().map(watch::Sender::subscribe).collect(),
                servers: dialers.iter().map(|d| d.server.addr.clone()).collect(),
                current: current.clone(),
                reloader: reloader.clone(),
                metrics: metrics.clone(),
                udp: udp_stats.clone(),
                listeners: listeners.clone(),
                checks: checks.clone(),
                stop: shutdown.clone(),
                paths: paths.clone(),
                direct: direct.clone(),
            };
            let token = control.token.expose().to_owned();
            let serve = wmproxy_ops::control::serve(listener, token, Arc::new(api), shutdown.clone(), tracker.clone());
            tracker.spawn(serve.instrument(info_span!("control_api")));
        }
        for local in &locals {
            let addr = local.local_addr().ok();
            match local {
                LocalListener::Tcp(_, target) => {
                    info!(listener = "forward", protocol = "tcp", addr = ?addr, %target, "listening")
                }
                LocalListener::Udp(_, target) => {
                    info!(listener = "forward", protocol = "udp", addr = ?addr, %target, "listening")
                }
                LocalListener::Ws(_, url) => {
                    info!(listener = "forward", protocol = "ws", addr = ?addr, target = %url, "listening")
                }
                LocalListener::Proxy(_, p) => {
                    info!(listener = "proxy", kind = p.kind.as_str(), addr = ?addr, "listening")
                }
                LocalListener::Visitor(_, v) | LocalListener::UdpVisitor(_, v) => {
                    let (client, service, kind) = (v.client.as_str(), v.service.as_str(), v.kind.to_string());
                    info!(listener = "visitor", visitor = v.name.as_str(), addr = ?addr, %kind, client, service, "listening")
                }
            }
        }
        let mut visitor_paths = paths.iter();
        for (local, counted) in locals.into_iter().zip(listeners.iter().cloned()) {
            let span = info_span!("forward", listen = ?local.local_addr().ok());
            let (current, tasks, stop) = (current.clone(), tracker.clone(), shutdown.clone());
            match local {
                LocalListener::Tcp(l, target) => {
                    tracker.spawn(forward::serve_tcp(l, (target, counted), current, tasks, stop).instrument(span))
                }
                LocalListener::Udp(s, target) => {
                    let stats = udp_stats.clone();
                    tracker
                        .spawn(forward::serve_udp(s, (target, counted), current, stats, tasks, stop).instrument(span))
                }
                LocalListener::Proxy(l, p) => {
                    let (stats, grace) = (udp_stats.clone(), (stop, DRAIN_TIMEOUT));
                    tracker.spawn(proxy::serve(l, (p, counted), current, (stats, tasks), grace).instrument(span))
                }
                LocalListener::Ws(l, url) => {
                    tracker.spawn(forward::serve_ws(l, (url, counted), tasks, stop).instrument(span))
                }
                LocalListener::Visitor(l, v) => {
                    // Visitors are listed in the same order as their paths.
                    let Some(path) = visitor_paths.next().cloned() else { continue };
                    let serve = visitor::serve(l, (v, counted), (current, path), tasks, stop);
                    tracker.spawn(serve.instrument(span))
                }
                LocalListener::UdpVisitor(s, v) => {
                    let Some(path) = visitor_paths.next().cloned() else { continue };
                    let serve = visitor::serve_udp(s, (v, counted), (current, path, udp_stats.clone()), tasks, stop);
                    tracker.spawn(serve.instrument(span))
                }
            };
        }

        // One limit over every tunnel, direct connections included.
        let udp_flows = direct.udp.flows.clone();
        let shared = Shared {
            config: config.clone(),
            reloader,
            metrics,
            own_addresses: Arc::default(),
            protocol_version,
            direct,
        };
        let failover = config.mode == ServersMode::Failover && dialers.len() > 1;
        let mut links = tokio::task::JoinSet::new();
        for (i, (installer, status)) in installers.into_iter().zip(status.iter().cloned()).enumerate() {
            let setup = TunnelSetup {
                udp_flows: udp_flows.clone(),
                udp_stats: udp_stats.clone(),
                idle: config.limits.udp_flow_idle_timeout(),
                installer,
                status,
                tracker: tracker.clone(),
                shutdown: shutdown.clone(),
                quic_probe: (config.transport == Transport::Auto).then(|| config.limits.quic_probe_interval()),
                checks: checks.clone(),
                client: config.name.clone(),
                failback: failover.then(|| Failback {
                    dialers: dialers.clone(),
                    config: config.clone(),
                    transport: config.transport,
                    hold: config.limits.failback_after(),
                }),
            };
            let mine = if failover { dialers.clone() } else { Arc::new(vec![dialers[i].clone()]) };
            let link = Link { dialers: mine, setup };
            let span = info_span!("link", server = %if failover { "failover".to_owned() } else { dialers[i].server.addr.clone() });
            links.spawn(link.run(shared.clone()).instrument(span));
        }
        // Every loop runs until the client stops, or until its servers refused the client for
        // good; the client stops when every loop has.
        let mut result = Ok(());
        while let Some(ended) = links.join_next().await {
            if let (Ok(Err(e)), Ok(())) = (ended, &result) {
                result = Err(e);
            }
        }
        tracker.close();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await;
        result
    }
}
