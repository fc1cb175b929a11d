//! The client: keeps one tunnel up, reconnecting with backoff, and serves its services,
//! forwards and proxies through whichever tunnel is current.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};
use wmproxy_config::{ClientConfig, ForwardKind, Transport};
use wmproxy_tunnel::conn::TransportKind;
use wmproxy_tunnel::listener::ListenerStats;
use wmproxy_tunnel::transport;
use wmproxy_tunnel::udp::UdpStats;
use wmproxy_wire::{PROTOCOL_VERSION, RejectReason};

use crate::backoff::{Backoff, Jitter};
use crate::current::CurrentTunnel;
use crate::error::ClientError;
use crate::expose::{Exposer, STREAM_OPEN_TIMEOUT};
use crate::quic_probe::QuicProbe;
use crate::reload::Reloader;
pub use crate::status::ClientStatus;
use crate::tunnel::{DRAIN_TIMEOUT, TunnelEnd, TunnelSetup};
use crate::{forward, handshake, proxy, tls};

/// A bound local forward or proxy.
#[derive(Debug)]
enum LocalListener {
    Tcp(TcpListener, wmproxy_wire::Target),
    Udp(UdpSocket, wmproxy_wire::Target),
    Proxy(TcpListener, wmproxy_config::Proxy),
    /// Local TCP connections become WebSocket connections to a URL (directly, not through the
    /// tunnel).
    Ws(TcpListener, String),
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
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Tcp(l, _) | Self::Proxy(l, _) | Self::Ws(l, _) => l.local_addr(),
            Self::Udp(s, _) => s.local_addr(),
        }
    }
}

/// A configured client with its local listeners bound, ready to [`run`](Client::run).
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    quic: quinn::ClientConfig,
    tcp: Arc<rustls::ClientConfig>,
    locals: Vec<LocalListener>,
    status: watch::Sender<ClientStatus>,
    protocol_version: u32,
    udp_stats: Arc<UdpStats>,
    reloader: Reloader,
    control_listener: Option<TcpListener>,
}

impl Client {
    /// Builds the TLS config and binds the local forward and proxy listeners. Must be called
    /// inside a tokio runtime.
    pub async fn new(config: ClientConfig) -> Result<Self, ClientError> {
        for warning in &config.warnings {
            warn!(%warning, "config");
        }
        let mut quic = tls::quic_client_config(&config.trust)?;
        let tuning = transport::TransportTuning {
            // None until the server's Welcome tells its limits (`handshake`): the server opens
            // no stream before it.
            max_concurrent_streams: 0,
            keep_alive: Some(config.limits.keep_alive()),
            congestion: config.limits.congestion,
            ..Default::default()
        };
        quic.transport_config(Arc::new(tuning.to_config()));
        let tcp = tls::tcp_client_config(&config.trust)?;
        let listen = |addr: SocketAddr| move |source| ClientError::Listen { addr, source };
        let mut locals = Vec::with_capacity(config.forwards.len() + config.proxies.len());
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
        let control_listener = match &config.control {
            Some(control) => {
                let addr = control.addr(wmproxy_config::control::CLIENT_CONTROL_BIND);
                Some(TcpListener::bind(addr).await.map_err(listen(addr))?)
            }
            None => None,
        };
        let (status, _) = watch::channel(ClientStatus::Connecting { attempt: 0, last_error: None });
        let reloader = Reloader::new(&config, None);
        Ok(Self {
            config,
            quic,
            tcp,
            locals,
            status,
            protocol_version: PROTOCOL_VERSION,
            udp_stats: Arc::default(),
            reloader,
            control_listener,
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

    /// Follows the client's state.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Where the local forwards listen, in config order, then the proxies.
    pub fn forward_addrs(&self) -> Vec<SocketAddr> {
        self.locals.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Announces another protocol version in the Hello. For tests of version mismatch only.
    #[doc(hidden)]
    pub fn override_protocol_version(&mut self, version: u32) {
        self.protocol_version = version;
    }

    /// Keeps the tunnel up until `shutdown`, or until an error that retrying cannot fix (wrong
    /// token, untrusted server, version mismatch), which it returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ClientError> {
        let Self { config, quic, tcp, locals, status, protocol_version, udp_stats, reloader, control_listener } = self;
        let tracker = TaskTracker::new();
        let dialer = handshake::Dialer { quic, tcp, tracker: tracker.clone() };
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let listeners: Arc<Vec<Arc<ListenerStats>>> = Arc::new(locals.iter().map(LocalListener::stats).collect());
        if let (Some(listener), Some(control)) = (control_listener, &config.control) {
            if let Ok(addr) = listener.local_addr() {
                info!(listener = "control", %addr, "listening");
            }
            let api = crate::control::ClientControl {
                status: status.subscribe(),
                reloader: reloader.clone(),
                metrics: metrics.clone(),
                udp: udp_stats.clone(),
                listeners: listeners.clone(),
                stop: shutdown.clone(),
            };
            let token = control.token.expose().to_owned();
            let serve = wmproxy_ops::control::serve(listener, token, Arc::new(api), shutdown.clone(), tracker.clone());
            tracker.spawn(serve.instrument(info_span!("control_api")));
        }
        let (installer, current) = CurrentTunnel::new(STREAM_OPEN_TIMEOUT);
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
            }
        }
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
            };
        }
        let setup = TunnelSetup {
            udp_flows: Arc::new(Semaphore::new(config.limits.max_udp_flows as usize)),
            udp_stats,
            idle: config.limits.udp_flow_idle_timeout(),
            installer,
            status: status.clone(),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            probe: (config.transport == Transport::Auto).then(|| QuicProbe {
                quic: dialer.quic.clone(),
                server_addr: config.server_addr.clone(),
                server_name: config.server_name.clone(),
                interval: config.limits.quic_probe_interval(),
            }),
        };

        let own_addresses = Arc::new(wmproxy_tunnel::dial::OwnAddresses::default());
        let mut backoff = Backoff::default();
        let mut jitter = Jitter::default();
        let mut attempt = 0u32;
        // The secret of our last session: it lets the server replace that session at once.
        let mut resume = None;
        // The transport of the next attempt when it is not the configured one.
        let mut next_transport = None;
        let result = loop {
            let mut services = reloader.services();
            let wanted = services.borrow_and_update().clone();
            let established = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                r = handshake::establish(
                    &config,
                    &wanted,
                    (&dialer, next_transport.take().unwrap_or(config.transport)),
                    (protocol_version, resume),
                ) => r,
            };
            let wait = match established {
                Ok(established) => {
                    resume = Some(established.resume);
                    attempt = 0;
                    backoff.reset();
                    let transport = established.conn.kind();
                    let span = info_span!("tunnel", server = %config.server_addr, client = %config.name, %transport);
                    let exposer = Arc::new(Exposer {
                        services: services.clone(),
                        egress: config.server_proxies_egress.clone(),
                        own_addresses: own_addresses.clone(),
                        metrics: metrics.clone(),
                        bandwidths: Default::default(),
                    });
                    let ended = setup.serve(established, (wanted, services), exposer).instrument(span).await;
                    if shutdown.is_cancelled() {
                        break Ok(());
                    }
                    if matches!(ended, TunnelEnd::QuicBack) {
                        // At once, over QUIC; the TCP tunnel serves what is in flight meanwhile.
                        next_transport = Some(Transport::Quic);
                        continue;
                    }
                    if config.transport == Transport::Auto && transport == TransportKind::Tcp {
                        // UDP was blocked a moment ago: the next attempt goes over TCP at once
                        // rather than waiting out QUIC again (its probe moves it back when UDP
                        // gets through; an attempt after a failed one starts with QUIC again).
                        next_transport = Some(Transport::Tcp);
                    }
                    warn!(reason = %ended, side = %ended.side(), "tunnel lost; reconnecting");
                    status.send_replace(ClientStatus::Connecting { attempt, last_error: Some(ended.to_string()) });
                    backoff.next_delay(jitter.unit())
                }
                Err(e) if !e.is_retryable() => break Err(e),
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    let mut delay = backoff.next_delay(jitter.unit());
                    let answered = match &e {
                        ClientError::NeitherTransport { tcp, .. } => tcp.as_ref(),
                        other => other,
                    };
                    if let ClientError::Rejected(RejectReason::Throttled { retry_after_secs }) = answered {
                        delay = delay.max(Duration::from_secs(u64::from(*retry_after_secs)));
                    }
                    warn!(error = %e, side = %e.side(), attempt, retry_in = ?delay, "cannot connect to the server");
                    status.send_replace(ClientStatus::Connecting { attempt, last_error: Some(e.to_string()) });
                    delay
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        };

        if let Err(e) = &result {
            warn!(error = %e, "giving up");
        }
        status.send_replace(ClientStatus::Stopped { error: result.as_ref().err().map(ToString::to_string) });
        tracker.close();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await;
        result
    }
}
