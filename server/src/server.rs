//! The server: its QUIC endpoint, the accept loop and graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quinn::VarInt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};
use wmproxy_config::ServerConfig;
use wmproxy_proto::tls::Fingerprint;
use wmproxy_proto::transport::{self, TransportTuning};
use wmproxy_proto::udp::{UdpSnapshot, UdpStats};
use wmproxy_proto::wire::{ALPN, close_code};

use crate::groups::{self, GroupStatus, Groups};
use crate::identity::{Identity, IdentityError};
use crate::sessions::Sessions;
use crate::throttle::AuthThrottle;
use crate::{listeners, tunnel};

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
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// State every task of the server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The running config; a reload swaps it (see [`Shared::config`]).
    config: std::sync::RwLock<Arc<ServerConfig>>,
    /// The config as the file gave it (port 0 where the system picked one): what a reload
    /// compares against.
    loaded: std::sync::RwLock<Arc<ServerConfig>>,
    /// The file the config came from, if any.
    pub config_path: std::sync::OnceLock<std::path::PathBuf>,
    /// Held while a reload applies, so that two (SIGHUP and `/reload`) never interleave.
    pub reloading: tokio::sync::Mutex<()>,
    pub sessions: Sessions,
    pub tracker: TaskTracker,
    /// Counters of every client's UDP flows.
    pub udp_stats: Arc<UdpStats>,
    /// Permits for UDP flows, all clients together.
    pub udp_flows: Arc<Semaphore>,
    /// Load-balancing groups.
    pub groups: Groups,
    /// HTTP routes of the vhost port.
    pub router: crate::vhost::Router,
    /// `[vhost.tls]`: the HTTPS port terminates TLS for names no `https` route claims.
    pub vhost_tls: Option<Arc<rustls::ServerConfig>>,
    /// Prometheus counters.
    pub metrics: crate::metrics::Metrics,
    /// Stop tokens of the group ports and proxies.
    pub listeners: listeners::Listeners,
    /// Where the proxies listen (bound addresses, in config order).
    pub proxy_addrs: Vec<SocketAddr>,
    throttle: Mutex<AuthThrottle>,
}

impl Shared {
    /// The running config, as of now. A task that needs one consistent view keeps the `Arc`.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The config as loaded, for comparing with a reloaded file.
    pub fn loaded(&self) -> Arc<ServerConfig> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs a reloaded config: `running` is what tasks read, `loaded` what the file said.
    pub fn set_config(&self, running: Arc<ServerConfig>, loaded: Arc<ServerConfig>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = running;
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = loaded;
    }

    /// The failed-auth table. Never held across an `.await`.
    pub fn throttle(&self) -> MutexGuard<'_, AuthThrottle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    endpoint: quinn::Endpoint,
    group_listeners: Vec<(Arc<groups::Group>, crate::listeners::GroupSocket)>,
    proxy_listeners: Vec<(wmproxy_config::Proxy, tokio::net::TcpListener)>,
    vhost_listener: Option<tokio::net::TcpListener>,
    tls_listener: Option<tokio::net::TcpListener>,
    control_listener: Option<tokio::net::TcpListener>,
    shared: Arc<Shared>,
    fingerprint: Fingerprint,
    clients: Arc<Semaphore>,
}

/// A cheap view of a running server, for status and tests.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    // Deliberately not the endpoint: a handle must not keep the UDP port bound after `run`.
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Names of the clients connected now.
    pub fn clients(&self) -> Vec<String> {
        self.shared.sessions.names()
    }

    /// Source addresses in the failed-auth table.
    pub fn throttled_addresses(&self) -> usize {
        self.shared.throttle().len()
    }

    /// Tasks alive on the server's tracker: one per tunnel, stream and UDP flow.
    pub fn tasks(&self) -> usize {
        self.shared.tracker.len()
    }

    /// Where the HTTPS (SNI) port listens, if configured.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.shared.config().vhost.https_bind
    }

    /// Where the control API listens, if `[control]` is set.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.shared.config().control.as_ref().and_then(|c| c.bind)
    }

    /// Where the vhost port listens, if configured.
    pub fn vhost_addr(&self) -> Option<SocketAddr> {
        self.shared.config().vhost.http_bind
    }

    /// Where the server's proxies listen, in config order.
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.shared.proxy_addrs.clone()
    }

    /// Every group with its backends' health, sorted by name.
    pub fn groups(&self) -> Vec<GroupStatus> {
        let mut all: Vec<_> = self.shared.groups.all().iter().map(|g| g.status()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Drains (or restores) the backend `service` of `client` in every group it serves.
    /// Returns whether one was found.
    pub fn set_drained(&self, client: &str, service: &str, drained: bool) -> bool {
        self.shared.sessions.set_drained(client, service, drained)
    }

    /// Re-reads the config file the server was started from and applies it (what SIGHUP and
    /// `POST /reload` do); the report says what changed.
    pub async fn reload(&self) -> Result<wmproxy_config::ReloadReport, crate::reload::ReloadError> {
        crate::reload::reload(&self.shared, self.shared.config_path.get().map(|p| p.as_path())).await
    }

    /// UDP counters, all clients together (`active_flows` is the size of the flow tables).
    pub fn udp_stats(&self) -> UdpSnapshot {
        self.shared.udp_stats.snapshot()
    }
}

impl Server {
    /// Loads the identity and binds the UDP endpoint. Must be called inside a tokio runtime.
    pub fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        let identity = Identity::load_or_generate(config.tls.as_ref(), &config.state_dir)?;
        let fingerprint = identity.fingerprint;
        let limits = &config.limits;
        let tuning = TransportTuning {
            // Forwards, UDP flows (one stream each) and the control stream.
            max_concurrent_streams: limits
                .max_streams_per_client
                .saturating_add(limits.max_udp_flows_per_client)
                .saturating_add(1),
            ..TransportTuning::default()
        };
        let server_config = quic_server_config(identity, &tuning)?;
        let socket =
            transport::bind_udp(config.bind).map_err(|source| ServerError::Bind { addr: config.bind, source })?;
        let endpoint = transport::endpoint(socket, Some(server_config))
            .map_err(|source| ServerError::Bind { addr: config.bind, source })?;
        let clients = Arc::new(Semaphore::new(config.limits.max_clients as usize));
        let loaded = Arc::new(config.clone());
        let mut proxy_listeners = Vec::new();
        for proxy in &config.proxies {
            let addr = proxy.listen;
            let listener = listeners::bind_reusable(addr).map_err(|source| ServerError::Bind { addr, source })?;
            proxy_listeners.push((proxy.clone(), listener));
        }
        let vhost_listener = match config.vhost.http_bind {
            Some(addr) => Some(bind_tcp(addr).map_err(|source| ServerError::Bind { addr, source })?),
            None => None,
        };
        let tls_listener = match config.vhost.https_bind {
            Some(addr) => Some(bind_tcp(addr).map_err(|source| ServerError::Bind { addr, source })?),
            None => None,
        };
        let mut config = config;
        // With port 0 the system picked one: routes report the port actually bound.
        if let Some(bound) = vhost_listener.as_ref().and_then(|l| l.local_addr().ok()) {
            config.vhost.http_bind = Some(bound);
        }
        if let Some(bound) = tls_listener.as_ref().and_then(|l| l.local_addr().ok()) {
            config.vhost.https_bind = Some(bound);
        }
        let control_listener = match &mut config.control {
            Some(control) => {
                let addr = control.addr(wmproxy_config::control::SERVER_CONTROL_BIND);
                let listener = bind_tcp(addr).map_err(|source| ServerError::Bind { addr, source })?;
                control.bind = listener.local_addr().ok();
                Some(listener)
            }
            None => None,
        };
        let udp_flows = Arc::new(Semaphore::new(config.limits.max_udp_flows as usize));
        let groups = Groups::new(&config.groups, &config.vhost);
        let router = crate::vhost::Router::default();
        let mut group_listeners = Vec::new();
        for file in &config.groups {
            let Some(group) = groups.get(file.name.get_ref()) else { continue };
            let addr = SocketAddr::new(config.public_bind, file.remote_port);
            match listeners::bind_group(config.public_bind, file)
                .map_err(|source| ServerError::Bind { addr, source })?
            {
                Some(socket) => group_listeners.push((group, socket)),
                None => router.add_group(&group, file),
            }
        }
        let vhost_tls = match &config.vhost.tls {
            Some(files) => Some(vhost_tls_config(Identity::load(&files.cert, &files.key)?)?),
            None => None,
        };
        let shared = Arc::new(Shared {
            config: std::sync::RwLock::new(Arc::new(config)),
            loaded: std::sync::RwLock::new(loaded),
            config_path: std::sync::OnceLock::new(),
            reloading: tokio::sync::Mutex::new(()),
            sessions: Sessions::default(),
            tracker: TaskTracker::new(),
            udp_stats: Arc::default(),
            udp_flows,
            groups,
            router,
            vhost_tls,
            metrics: crate::metrics::Metrics::default(),
            listeners: listeners::Listeners::default(),
            proxy_addrs: proxy_listeners.iter().filter_map(|(_, l)| l.local_addr().ok()).collect(),
            throttle: Mutex::new(AuthThrottle::default()),
        });
        Ok(Self {
            endpoint,
            group_listeners,
            proxy_listeners,
            vhost_listener,
            tls_listener,
            control_listener,
            shared,
            fingerprint,
            clients,
        })
    }

    /// The config file this server was loaded from: `/reload` and `/adapt` re-read it.
    pub fn set_config_path(&mut self, path: std::path::PathBuf) {
        let _ = self.shared.config_path.set(path);
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
        ServerHandle { shared: self.shared.clone() }
    }

    /// Serves until `shutdown` is cancelled, then closes every tunnel and waits (up to a few
    /// seconds) for their tasks.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            endpoint,
            shared,
            clients,
            group_listeners,
            proxy_listeners,
            vhost_listener,
            tls_listener,
            control_listener,
            ..
        } = self;
        if let (Some(listener), Some(control)) = (control_listener, &shared.config().control) {
            let api = crate::control::ServerControl { shared: shared.clone(), stop: shutdown.clone() };
            let token = control.token.expose().to_owned();
            let serve =
                wmproxy_proto::control::serve(listener, token, Arc::new(api), shutdown.clone(), shared.tracker.clone());
            shared.tracker.spawn(serve.instrument(info_span!("control_api")));
        }
        if let Some(listener) = tls_listener {
            let serve = crate::vhost::serve_tls(listener, shared.clone(), shutdown.clone());
            shared.tracker.spawn(serve.instrument(info_span!("https")));
        }
        if let Some(listener) = vhost_listener {
            let serve = crate::vhost::serve(listener, shared.clone(), shutdown.clone());
            shared.tracker.spawn(serve.instrument(info_span!("vhost")));
        }
        shared.listeners.set_root(shutdown.clone());
        for (proxy, listener) in proxy_listeners {
            listeners::spawn_proxy(&shared, proxy, listener);
        }
        for (group, socket) in group_listeners {
            listeners::spawn_group(&shared, group, socket);
        }
        loop {
            let incoming = tokio::select! {
                () = shutdown.cancelled() => break,
                incoming = endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let Ok(permit) = clients.clone().try_acquire_owned() else {
                warn!(peer = %incoming.remote_address(), "client limit reached; refusing");
                incoming.refuse();
                continue;
            };
            let span = info_span!("tunnel", peer = %incoming.remote_address(), client = tracing::field::Empty);
            let task = tunnel::serve(incoming, shared.clone(), shutdown.clone());
            shared.tracker.spawn(
                async move {
                    task.await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
        info!("shutting down");
        shared.tracker.close();
        let drain = shared.config().limits.drain_grace().saturating_add(DRAIN_TIMEOUT);
        if tokio::time::timeout(drain, shared.tracker.wait()).await.is_err() {
            warn!("tasks still running after the drain timeout; closing anyway");
        }
        endpoint.close(VarInt::from_u32(close_code::NORMAL), b"server shutting down");
        endpoint.wait_idle().await;
        info!("stopped");
    }
}

/// Binds a TCP listener without awaiting (for listeners bound at start, and public ports).
/// The backlog is tokio's (1024) rather than std's 128, so bursts of users are not refused.
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The TLS setup of the HTTPS port's terminated connections (HTTP/1.1).
fn vhost_tls_config(identity: Identity) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(wmproxy_proto::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.certs, identity.key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

fn quic_server_config(identity: Identity, tuning: &TransportTuning) -> Result<quinn::ServerConfig, ServerError> {
    let provider = wmproxy_proto::tls::crypto_provider();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.certs, identity.key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| ServerError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(tuning.to_config()));
    Ok(config)
}
