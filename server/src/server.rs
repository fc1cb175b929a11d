//! The server, composed: [`Server::bind`] builds each subsystem and hands every module only
//! the handles it uses; [`Server::run`] is the accept loop and the graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, info, info_span, warn};
use wmproxy_config::{GroupKind, ServerConfig};
use wmproxy_tunnel::tls::Fingerprint;
use wmproxy_tunnel::transport::{self, TransportTuning};
use wmproxy_tunnel::udp::UdpSnapshot;
use wmproxy_wire::{ALPN, close_code};

use wmproxy_tunnel::accept::Silent;
use wmproxy_tunnel::users::UserLimit;

use crate::control::ServerControl;
use crate::dashboard::history::{self, History};
use crate::groups::{self, GroupStatus, Groups};
use crate::handshake::Arrival;
use crate::identity::{Identity, IdentityError};
use crate::listeners::Listeners;
use crate::metrics::{Metrics, Refusal};
use crate::preauth::{Admission, PreAuth};
use crate::registry::{Registry, VhostPorts};
use crate::reload::{ReloadError, Reloader};
use crate::routes::Routes;
use crate::runtime::{Runtime, Serving};
use crate::sessions::Sessions;
use crate::settings::ConfigCell;
use crate::sockets::{bind_reusable, bind_tcp};
use crate::tunnel::Tunnels;
use crate::udp::UdpBudget;
use crate::vhost::{RequestRate, Vhost};

/// How long shutdown waits, beyond the drain grace period, for tasks to end before closing the
/// endpoint regardless.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS identity could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The certificate or key was refused by TLS.
    #[error("TLS setup failed: {0}")]
    Tls(#[source] rustls::Error),
    /// The certificate suits no QUIC cipher suite.
    #[error("TLS setup failed: {0}")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Where the server's own listeners are bound (port 0 in the config becomes the real port).
#[derive(Debug, Clone, Default)]
struct Bound {
    tcp: Option<SocketAddr>,
    vhost: Option<SocketAddr>,
    https: Option<SocketAddr>,
    control: Option<SocketAddr>,
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    endpoint: quinn::Endpoint,
    fingerprint: Fingerprint,
    handle: ServerHandle,
    tunnels: Arc<Tunnels>,
    vhost: Vhost,
    vhost_listener: Option<TcpListener>,
    tls_listener: Option<TcpListener>,
    /// The TCP transport's port, and its TLS setup.
    tcp_listener: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    control: Option<(TcpListener, String)>,
    /// Stops everything started so far if the server is dropped without running.
    _stop_unless_run: DropGuard,
}

/// A cheap view of a running server, for status and tests.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    // Deliberately not the endpoint: a handle must not keep the UDP port bound after `run`.
    sessions: Arc<Sessions>,
    groups: Arc<Groups>,
    listeners: Arc<Listeners>,
    reloader: Arc<Reloader>,
    udp: UdpBudget,
    runtime: Runtime,
    config: Arc<ConfigCell>,
    bound: Bound,
    users: Arc<UserLimit>,
}

impl ServerHandle {
    /// Names of the clients connected now.
    pub fn clients(&self) -> Vec<String> {
        self.sessions.all().iter().map(|s| s.name.to_string()).collect()
    }

    /// Keys (source prefix, client name) in the failed-login table.
    pub fn throttled_addresses(&self) -> usize {
        self.sessions.throttle().len()
    }

    /// Public TCP connections the user of `ip` (its /64 for IPv6) has open now, as
    /// `max_connections_per_user` counts them.
    pub fn open_connections_of(&self, ip: std::net::IpAddr) -> u32 {
        self.users.open(ip)
    }

    /// Tasks alive on the server's tracker: one per tunnel, stream and UDP flow.
    pub fn tasks(&self) -> usize {
        self.runtime.tracker.len()
    }

    /// Where the TCP transport listens, unless it is off.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.bound.tcp
    }

    /// Where the HTTPS (SNI) port listens, if configured.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.bound.https
    }

    /// Where the control API listens, if `[control]` is set.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.bound.control
    }

    /// Where the vhost port listens, if configured.
    pub fn vhost_addr(&self) -> Option<SocketAddr> {
        self.bound.vhost
    }

    /// Where the server's proxies listen now, in the order they started.
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.proxy_addrs()
    }

    /// Every group with its backends' health, sorted by name.
    pub fn groups(&self) -> Vec<GroupStatus> {
        self.groups.statuses()
    }

    /// Drains (or restores) the backend `service` of `client`. Returns whether one was found.
    pub fn set_drained(&self, client: &str, service: &str, drained: bool) -> bool {
        self.groups.backend(client, service).map(|b| b.set_drained(drained)).is_some()
    }

    /// Re-reads the config file the server was started from and applies it (what SIGHUP and
    /// `POST /reload` do); the report says what changed.
    pub async fn reload(&self) -> Result<wmproxy_config::ReloadReport, ReloadError> {
        self.reloader.reload().await
    }

    /// UDP counters, all clients together (`active_flows` is the size of the flow tables).
    pub fn udp_stats(&self) -> UdpSnapshot {
        self.udp.stats.snapshot()
    }
}

impl Server {
    /// Loads the identity, binds every socket and builds the subsystems. Must be called inside
    /// a tokio runtime.
    pub fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        let bind_err = |addr: SocketAddr| move |source| ServerError::Bind { addr, source };
        let identity = Identity::load_or_generate(config.tls.as_ref(), &config.state_dir)?;
        let fingerprint = identity.fingerprint;
        let limits = config.limits.clone();
        let tuning = TransportTuning {
            // Forwards, UDP flows (one stream each) and the control stream.
            max_concurrent_streams: transport::client_opened(&limits.tunnel()),
            // No keep-alives from the server: its idle timer then runs from the client's last
            // packet, so a dead tunnel is given up within the idle timeout (a keep-alive sent
            // after that packet would restart the timer, adding up to one period). Clients
            // send theirs, which also hold their NAT's mapping.
            keep_alive: None,
            congestion: limits.congestion,
            ..TransportTuning::default()
        };
        let socket = transport::bind_udp(config.bind).map_err(bind_err(config.bind))?;
        let endpoint = transport::endpoint(socket, Some(quic_server_config(&identity, &tuning)?))
            .map_err(bind_err(config.bind))?;
        let tcp_listener = match config.tcp_bind.addr(config.bind) {
            Some(addr) => Some((
                bind_tcp(addr).map_err(bind_err(addr))?,
                Arc::new(tunnel_tls(&identity, wmproxy_wire::ALPN_TCP)?),
            )),
            None => None,
        };

        let bind_opt = |addr: Option<SocketAddr>| addr.map(|a| bind_tcp(a).map_err(bind_err(a))).transpose();
        let vhost_listener = bind_opt(config.vhost.http_bind)?;
        let tls_listener = bind_opt(config.vhost.https_bind)?;
        let control = match &config.control {
            Some(control) => {
                let addr = control.addr(wmproxy_config::control::SERVER_CONTROL_BIND);
                Some((bind_tcp(addr).map_err(bind_err(addr))?, control.token.expose().to_owned()))
            }
            None => None,
        };
        let local = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        let bound = Bound {
            tcp: tcp_listener.as_ref().and_then(|(l, _)| l.local_addr().ok()),
            vhost: local(&vhost_listener),
            https: local(&tls_listener),
            control: control.as_ref().and_then(|(l, _)| l.local_addr().ok()),
        };
        let vhost_ports = VhostPorts {
            // Without an HTTP port, a TLS-terminating HTTPS port serves the `http` routes.
            http: bound.vhost.or(bound.https.filter(|_| config.vhost.tls.is_some())).map(|a| a.port()),
            https: bound.https.map(|a| a.port()),
            subdomain_host: config.vhost.subdomain_host.as_deref().map(wmproxy_config::vhost::normalize_host),
        };

        let runtime = Runtime::default();
        // Stops whatever starts below if `bind` fails half-way, or the server never runs.
        let stop_unless_run = runtime.shutdown.clone().drop_guard();
        let metrics = Arc::new(Metrics::default());
        let udp = UdpBudget::new(limits.max_udp_flows);
        let users = {
            let metrics = metrics.clone();
            UserLimit::new(limits.max_connections_per_user, move || metrics.refused(Refusal::ConnectionsPerUser))
        };
        let serving = Serving {
            runtime: runtime.clone(),
            grace: limits.drain_grace(),
            open_timeout: limits.stream_open_timeout(),
            metrics: metrics.clone(),
            udp_stats: udp.stats.clone(),
            users: users.clone(),
            silent: {
                let metrics = metrics.clone();
                let max = limits.max_silent_connections as usize;
                Silent::new(max, move || metrics.refused(Refusal::SilentConnections))
            },
        };
        let sessions = Arc::new(Sessions::new(limits.max_streams_per_client));
        let routes = Arc::new(Routes::default());
        let groups = Arc::new(Groups::new(limits.stream_open_timeout(), udp.clone(), metrics.events.clone()));
        // What a reload may change is read from the cell at run time; the rest of `config` is
        // handed out below.
        let cell = Arc::new(ConfigCell::new(config.clone()));
        let registry = Arc::new(Registry::new(
            cell.clone(),
            routes.clone(),
            groups.clone(),
            serving.clone(),
            udp.clone(),
            (config.public_bind, vhost_ports.clone()),
        ));
        let listeners =
            Arc::new(Listeners::new(groups.clone(), routes.clone(), sessions.clone(), serving.clone(), udp.clone()));

        // The config's own listeners start at once: their stop tokens are children of the root,
        // which the drop guard cancels if `bind` fails or the server never runs.
        for entry in &config.groups {
            let port = match &entry.kind {
                GroupKind::Tcp { remote_port } | GroupKind::Udp { remote_port } => *remote_port,
                GroupKind::Http { .. } => vhost_ports.http.unwrap_or_default(),
                GroupKind::Https { .. } => vhost_ports.https.unwrap_or_default(),
            };
            let group = groups.insert(entry, port);
            listeners.set_group_routes(group.clone(), entry);
            let addr = SocketAddr::new(config.public_bind, port);
            if let Some(socket) = groups::bind_port(config.public_bind, &entry.kind).map_err(bind_err(addr))? {
                listeners.start_group_port(group, socket);
            }
        }
        for proxy in &config.proxies {
            let addr = proxy.proxy.listen;
            listeners.start_proxy(proxy.clone(), bind_reusable(addr).map_err(bind_err(addr))?);
        }
        let vhost = Vhost {
            routes,
            serving,
            header_read_timeout: config.vhost.header_read_timeout(),
            max_header_bytes: config.vhost.max_header_bytes,
            rate: Arc::new(RequestRate::new(config.vhost.user_requests_per_minute, config.vhost.user_request_burst)),
            body_timeout: config.vhost.body_timeout(),
            tls: match &config.vhost.tls {
                Some(files) => Some(vhost_tls_config(Identity::load(&files.cert, &files.key)?)?),
                None => None,
            },
        };

        let config = cell;
        let reloader = Arc::new(Reloader {
            config: config.clone(),
            groups: groups.clone(),
            listeners: listeners.clone(),
            registry: registry.clone(),
            sessions: sessions.clone(),
            metrics: metrics.clone(),
            vhost: vhost_ports,
            one_at_a_time: tokio::sync::Mutex::new(()),
        });
        let tunnels = Arc::new(Tunnels {
            sessions: sessions.clone(),
            registry,
            config: config.clone(),
            metrics,
            udp: udp.clone(),
            runtime: runtime.clone(),
            preauth: Arc::new(PreAuth::new(limits.max_unauthenticated, limits.max_unauthenticated_per_address)),
            clients: Arc::new(Semaphore::new(limits.max_clients as usize)),
            limits,
            own_addresses: Arc::default(),
            tuning,
        });
        let handle =
            ServerHandle { sessions, groups, listeners, reloader, udp, runtime: runtime.clone(), config, bound, users };
        Ok(Self {
            endpoint,
            fingerprint,
            handle,
            tunnels,
            vhost,
            vhost_listener,
            tls_listener,
            tcp_listener,
            control,
            _stop_unless_run: stop_unless_run,
        })
    }

    /// The config file this server was loaded from: `/reload` and `/adapt` re-read it.
    pub fn set_config_path(&mut self, path: std::path::PathBuf) {
        self.handle.config.set_path(path);
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// SHA-256 of the server certificate: what clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// A view for status queries.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Serves until `shutdown` is cancelled (or `/stop`), then closes every tunnel and waits (up
    /// to the drain grace and a few seconds more) for their tasks.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            endpoint,
            handle,
            tunnels,
            vhost,
            vhost_listener,
            tls_listener,
            tcp_listener,
            control,
            _stop_unless_run: stop_guard,
            ..
        } = self;
        let runtime = handle.runtime.clone();
        let root = runtime.shutdown.clone();
        if let Ok(addr) = endpoint.local_addr() {
            info!(listener = "tunnel", protocol = "quic (udp)", %addr, "listening");
        }
        if let Some(addr) = handle.bound.tcp {
            info!(listener = "tunnel", protocol = "tls (tcp)", %addr, "listening");
        }
        for (listener, addr) in
            [("control", handle.bound.control), ("vhost", handle.bound.vhost), ("https", handle.bound.https)]
        {
            if let Some(addr) = addr {
                info!(listener, protocol = "tcp", %addr, "listening");
            }
        }
        let tracker = runtime.tracker.clone();
        if let Some((listener, token)) = control {
            let history = Arc::new(History::default());
            let sampler = history::run(history.clone(), tunnels.metrics.clone(), root.clone());
            tracker.spawn(sampler.instrument(info_span!("traffic_history")));
            let api = ServerControl {
                history,
                config: handle.config.clone(),
                sessions: handle.sessions.clone(),
                groups: handle.groups.clone(),
                metrics: tunnels.metrics.clone(),
                udp: handle.udp.stats.clone(),
                preauth: tunnels.preauth.clone(),
                reloader: handle.reloader.clone(),
                listeners: handle.listeners.clone(),
                stop: root.clone(),
            };
            let serve = wmproxy_ops::control::serve(listener, token, Arc::new(api), root.clone(), tracker.clone());
            tracker.spawn(serve.instrument(info_span!("control_api")));
        }
        if let Some(listener) = tls_listener {
            tracker
                .spawn(crate::vhost::serve_tls(listener, vhost.clone(), root.clone()).instrument(info_span!("https")));
        }
        if let Some((listener, tls)) = tcp_listener {
            let serve = crate::tcp_listener::serve((listener, tls), tunnels.clone(), root.clone());
            tracker.spawn(serve.instrument(info_span!("tcp_transport")));
        }
        if let Some(listener) = vhost_listener {
            tracker.spawn(crate::vhost::serve(listener, vhost, root.clone()).instrument(info_span!("vhost")));
        }

        loop {
            let incoming = tokio::select! {
                () = shutdown.cancelled() => break,
                () = root.cancelled() => break,
                incoming = endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let peer = wmproxy_tunnel::users::canonical(incoming.remote_address());
            // Per connection, and cheap: nothing here waits or logs above debug.
            match tunnels.preauth.admit(peer.ip(), incoming.remote_address_validated()) {
                Admission::Retry => {
                    tunnels.metrics.address_validations.inc();
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().refuse();
                    }
                }
                Admission::AddressFull => {
                    debug!(%peer, "too many connections from this address waiting to authenticate; refusing");
                    tunnels.metrics.refused(Refusal::UnauthenticatedPerAddress);
                    incoming.refuse();
                }
                Admission::Admitted { slot, evicted_oldest } => {
                    if evicted_oldest {
                        debug!(%peer, "too many connections waiting to authenticate; the oldest makes room");
                    }
                    let span = info_span!("tunnel", %peer, transport = "quic", client = tracing::field::Empty);
                    tracker.spawn(tunnels.clone().serve(Arrival::Quic(Box::new(incoming)), slot).instrument(span));
                }
            }
        }
        let grace = tunnels.limits.drain_grace();
        let (clients, connections) = tunnels.in_flight();
        info!(
            clients,
            connections,
            grace_secs = grace.as_secs(),
            "stopping: no new connections; those in flight get the drain grace (a second signal stops at once)"
        );
        drop(stop_guard);
        tracker.close();
        let started = tokio::time::Instant::now();
        if tokio::time::timeout(grace.saturating_add(DRAIN_TIMEOUT), tracker.wait()).await.is_err() {
            let (clients, connections) = tunnels.in_flight();
            warn!(clients, connections, "tasks still running after the drain timeout; closing anyway");
        } else {
            info!(drained_in_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "drained");
        }
        endpoint.close(VarInt::from_u32(close_code::NORMAL), b"server shutting down");
        endpoint.wait_idle().await;
        info!("stopped");
    }
}

/// The TLS setup of the HTTPS port's terminated connections (HTTP/1.1).
fn vhost_tls_config(identity: Identity) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(wmproxy_tunnel::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(ServerError::Tls)?
        .with_no_client_auth()
        .with_single_cert(identity.certs, identity.key)
        .map_err(ServerError::Tls)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// The TLS setup of the tunnel's transports: TLS 1.3 only, the server's identity, `alpn`.
pub(crate) fn tunnel_tls(identity: &Identity, alpn: &[u8]) -> Result<rustls::ServerConfig, ServerError> {
    let provider = wmproxy_tunnel::tls::crypto_provider();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ServerError::Tls)?
        .with_no_client_auth()
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .map_err(ServerError::Tls)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

fn quic_server_config(identity: &Identity, tuning: &TransportTuning) -> Result<quinn::ServerConfig, ServerError> {
    let tls = tunnel_tls(identity, ALPN)?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(ServerError::Quic)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    // Small until the client has authenticated (`Tunnels::handshake` opens it up).
    config.transport_config(Arc::new(tuning.to_pre_auth_config()));
    Ok(config)
}
