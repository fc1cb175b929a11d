//! Helpers for end-to-end tests: real servers, clients and backends, in-process, on
//! `127.0.0.1` with port 0. Nothing here sleeps to wait: waits are on the client's status
//! channel or on sockets, each under a deadline.
//!
//! # Layout
//! - [`TestServer`], [`TestClient`]: a server or client with test defaults, running in a task.
//! - [`backend`]: TCP backends (echo with half-close, a reply-after-EOF server).
//! - [`browser`]: headless Chromium over the DevTools protocol (navigate, evaluate, screenshot).
//! - [`raw`]: a hand-driven QUIC peer for adversarial tests (garbage, oversized frames).
//! - [`metrics`]: a server's `/metrics`, parsed. [`logs`]: what the binary logged, captured.
//! - [`netbed`]: a public host, a NAT and a home host (or two of each) in network namespaces,
//!   with loss, delay, rate and MTU settings (needs root).
//! - [`groups`]: load-balancing config entries, tagged and switchable backends, HTTP health
//!   endpoints.
//! - [`proxy`]: an HTTP file server, proxy entries, curl, raw SOCKS5 bytes.
//! - [`udp`]: a UDP echo backend, user sockets with request/reply retries, UDP config entries.
//! - [`eventually`]: polls a condition (every 10 ms, within [`DEADLINE`]) for state that has no
//!   event to wait on, such as a counter.
#![forbid(unsafe_code)]

pub mod backend;
pub mod browser;
pub mod groups;
pub mod logs;
pub mod metrics;
pub mod netbed;
pub mod proxy;
pub mod raw;
pub mod tls;
pub mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wmproxy_client::{Client, ClientError, ClientStatus};
use wmproxy_config::{
    ClientConfig, Exposure, Forward, ForwardKind, Hosts, HttpRoute, Name, PortRange, Publish, Secret, ServerFile,
    ServerTrust, Service, ServiceKind, Target, WsRoute,
};
use wmproxy_server::{Server, ServerHandle};
use wmproxy_tunnel::tls::Fingerprint;

/// The shared token test servers accept.
pub const TOKEN: &str = "test-token-0123456789";
/// The control API token of test servers and clients.
pub const CONTROL_TOKEN: &str = "control-token-9876543210";

/// A control API on a free loopback port with [`CONTROL_TOKEN`]: what test servers have, and
/// what a test gives a client whose API it calls.
pub fn control_api() -> wmproxy_config::ControlFile {
    wmproxy_config::ControlFile { bind: Some(([127, 0, 0, 1], 0).into()), token: Secret::new(CONTROL_TOKEN) }
}

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A server running in a task.
#[derive(Debug)]
pub struct TestServer {
    /// The UDP address clients connect to.
    pub addr: SocketAddr,
    /// The TCP transport's address (the server's own port, not `addr`'s number, so that tests
    /// never race another socket for it); `addr` when the transport is off.
    pub tcp_addr: SocketAddr,
    /// What clients pin.
    pub fingerprint: Fingerprint,
    /// Status view.
    pub handle: ServerHandle,
    file: ServerFile,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    _state: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with test defaults (shared [`TOKEN`], ports 1024-65535, public ports on
    /// 127.0.0.1), adjusted by `adjust`.
    pub async fn start(adjust: impl FnOnce(&mut ServerFile)) -> Result<Self> {
        let state = tempfile::tempdir()?;
        let mut file = ServerFile {
            bind: "127.0.0.1:0".parse()?,
            state_dir: state.path().to_owned(),
            public_bind: "127.0.0.1".parse()?,
            token: Some(Secret::new(TOKEN)),
            allow_ports: vec![PortRange::new(1024, 65535).context("range")?],
            // Tests stop servers with connections open; they need not wait the default 30 s.
            limits: wmproxy_config::Limits { drain_grace_secs: 1, ..wmproxy_config::Limits::default() },
            control: Some(control_api()),
            tcp_bind: Some(toml::Spanned::new(0..0, "127.0.0.1:0".to_owned())),
            ..ServerFile::default()
        };
        adjust(&mut file);
        let mut server = Self::spawn(file).await?;
        server._state = Some(state);
        Ok(server)
    }

    /// A server started from the config file at `path`, as the binary does: `/reload` and
    /// `/adapt` read that file.
    pub async fn start_from(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let file = wmproxy_config::parse_server_file(&text)?;
        let config = wmproxy_config::load_server(path)?;
        let mut server = Server::bind(config)?;
        server.set_config_path(path.to_owned());
        Self::run(server, file)
    }

    async fn spawn(file: ServerFile) -> Result<Self> {
        let config = file.clone().validate("")?;
        Self::run(Server::bind(config)?, file)
    }

    fn run(server: Server, file: ServerFile) -> Result<Self> {
        let addr = server.local_addr()?;
        let fingerprint = server.fingerprint();
        let handle = server.handle();
        let tcp_addr = handle.tcp_addr().unwrap_or(addr);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Ok(Self { addr, tcp_addr, fingerprint, handle, file, shutdown, task: Some(task), _state: None })
    }

    /// Sends `method path` with `body` to the server's control API with the right token;
    /// returns the status and the body (JSON, or text for `/metrics`).
    pub async fn control(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let addr = self.handle.control_addr().context("the control API is off")?;
        control_call(addr, Some(CONTROL_TOKEN), method, path, body).await
    }

    /// Stops the server and waits until it has closed its endpoint.
    pub async fn stop(&mut self) -> Result<()> {
        self.shutdown.cancel();
        self.wait_stopped().await
    }

    /// Waits until the server has stopped by itself (`/stop`) and closed its endpoint.
    pub async fn wait_stopped(&mut self) -> Result<()> {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task).await.context("server did not stop")??;
        }
        Ok(())
    }

    /// Stops the server and starts it again on the same address and state directory.
    ///
    /// quinn's endpoint driver releases the UDP socket a moment after `run` returns, so binding
    /// the same port is retried (every 10 ms, within [`DEADLINE`]) while it is still in use.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        let mut file = self.file.clone();
        file.bind = self.addr;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut fresh = loop {
            match Self::spawn(file.clone()).await {
                Err(e) if port_busy(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => break other?,
            }
        };
        fresh._state = self._state.take();
        *self = fresh;
        Ok(())
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.file.state_dir.clone()
    }

    /// The head of a client config file (TOML) that trusts this server, named `name`, with the
    /// shared token and a control API on port 0 with [`CONTROL_TOKEN`]; append services.
    pub fn client_toml(&self, name: &str) -> String {
        format!(
            "server_addr = \"{}\"\ntcp_server_addr = \"{}\"\nserver_name = \"wmproxy\"\nserver_fingerprint = \"{}\"\n\
             name = \"{name}\"\ntoken = \"{TOKEN}\"\n\n[control]\nbind = \"127.0.0.1:0\"\ntoken = \"{CONTROL_TOKEN}\"\n",
            self.addr, self.tcp_addr, self.fingerprint
        )
    }

    /// This server as an entry of a client's server list: trusted by its fingerprint, with the
    /// shared token.
    pub fn entry(&self) -> wmproxy_config::ServerEntry {
        wmproxy_config::ServerEntry {
            addr: self.addr.to_string(),
            tcp_addr: self.tcp_addr.to_string(),
            server_name: "wmproxy".into(),
            trust: ServerTrust::Fingerprint(self.fingerprint.0),
            token: Secret::new(TOKEN),
        }
    }

    /// A client config that trusts this server, named `name`, with the shared token.
    pub fn client_config(&self, name: &str) -> ClientConfig {
        ClientConfig {
            servers: vec![self.entry()],
            mode: wmproxy_config::ServersMode::All,
            egress: wmproxy_config::EgressChoice::First,
            // QUIC only, so that a test of QUIC's behaviour never falls back; tests of the
            // TCP transport set their own.
            transport: wmproxy_config::Transport::Quic,
            tcp_proxy: None,
            name: self::name(name),
            services: Vec::new(),
            forwards: Vec::new(),
            proxies: Vec::new(),
            visitors: Vec::new(),
            server_proxies_egress: wmproxy_config::EgressPolicy::client(wmproxy_config::egress::EgressFile::default()),
            warnings: Vec::new(),
            limits: wmproxy_config::ClientLimits::default(),
            control: None,
        }
    }
}

fn port_busy(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<wmproxy_server::ServerError>(),
        Some(wmproxy_server::ServerError::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse)
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Sends one request to a control API at `addr` with `token`; the status and the body.
pub async fn control_call(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String)> {
    let method = hyper::Method::from_bytes(method.as_bytes())?;
    let body = bytes::Bytes::copy_from_slice(body.as_bytes());
    Ok(wmproxy_ops::control::call(addr, token, method, path, body).await?)
}

/// A `[[clients]]` entry for a server config: `name` with its own `token`, no port or domain
/// rules.
pub fn client_entry(name: &str, token: &str) -> wmproxy_config::server::ClientEntryFile {
    wmproxy_config::server::ClientEntryFile {
        name: toml::Spanned::new(0..0, name.into()),
        token: Secret::new(token),
        allow_ports: Vec::new(),
        allow_domains: Vec::new(),
    }
}

/// `text` as a name; test names are valid.
pub fn name(text: &str) -> Name {
    Name::new(text).unwrap_or_else(|e| panic!("test name `{text}`: {e}"))
}

/// `addr` as a target.
pub fn target(addr: SocketAddr) -> Target {
    Target::new(&addr.to_string()).unwrap_or_else(|e| panic!("test target `{addr}`: {e}"))
}

/// A plain service entry of `kind` for a client config: a port of its own for TCP and UDP
/// (`remote_port`, 0: any), no routes yet for HTTP-like kinds, no PROXY header.
pub fn service(kind: ServiceKind, name: &str, local: SocketAddr, remote_port: u16) -> Service {
    let exposure = match kind {
        ServiceKind::Udp => Exposure::Udp { publish: Publish::Own(remote_port), bandwidth_limit: None },
        ServiceKind::Http => Exposure::Http { publish: Publish::Own(HttpRoute::default()), proxy_protocol: None },
        ServiceKind::Https => Exposure::Https { publish: Publish::Own(Hosts::default()), proxy_protocol: None },
        ServiceKind::Ws => Exposure::Ws { publish: Publish::Own(WsRoute::default()), proxy_protocol: None },
        _ => Exposure::Tcp {
            publish: Publish::Own(remote_port),
            proxy_protocol: None,
            bandwidth_limit: None,
            idle_timeout_secs: None,
        },
    };
    Service { name: self::name(name), local_addr: target(local), access_log: true, exposure }
}

/// `service` (a TCP or UDP entry) published privately: visitors need `secret` (if given) and
/// must be one of `allow` (if any are listed).
pub fn private(mut service: Service, secret: Option<&str>, allow: &[&str]) -> Service {
    let access = wmproxy_config::visitor::PrivateAccess {
        secret_key: secret.map(Secret::new),
        allow_visitors: allow.iter().map(|n| self::name(n)).collect(),
    };
    match &mut service.exposure {
        Exposure::Tcp { publish, .. } | Exposure::Udp { publish, .. } => *publish = Publish::Private(access),
        other => panic!("a test made a private service of {other:?}"),
    }
    service
}

/// A TCP service entry for a client config.
pub fn tcp_service(name: &str, local: SocketAddr, remote_port: u16) -> Service {
    service(ServiceKind::Tcp, name, local, remote_port)
}

/// An `http` service entry for a client config, on `route`.
pub fn http_service(name: &str, local: SocketAddr, route: HttpRoute) -> Service {
    let exposure = Exposure::Http { publish: Publish::Own(route), proxy_protocol: None };
    Service { exposure, ..service(ServiceKind::Http, name, local, 0) }
}

/// A local forward entry of `kind` (TCP or UDP) for a client config, listening on a free
/// loopback port.
pub fn forward(kind: ServiceKind, to: SocketAddr) -> Forward {
    let kind = match kind {
        ServiceKind::Udp => ForwardKind::Udp { target: target(to) },
        _ => ForwardKind::Tcp { target: target(to) },
    };
    Forward { listen: SocketAddr::from(([127, 0, 0, 1], 0)), kind }
}

/// A TCP local forward entry for a client config, listening on a free loopback port.
pub fn forward_to(target: SocketAddr) -> Forward {
    forward(ServiceKind::Tcp, target)
}

/// Starts an echo backend and a client `name` that publishes it as service `echo` on a port the
/// server picks. Returns the running client and the public address of the service.
pub async fn echo_client(server: &TestServer, name: &str) -> Result<(TestClient, SocketAddr)> {
    let echo = backend::echo().await?;
    let mut config = server.client_config(name);
    config.services.push(tcp_service("echo", echo, 0));
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("echo").await?;
    Ok((client, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// Polls `check` every 10 ms until it holds; fails after [`DEADLINE`], naming `what`.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Polls the async `check` every 10 ms until it holds, within [`DEADLINE`]; an error from it
/// ends the wait.
pub async fn eventually_async(what: &str, mut check: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await? {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A client running in a task.
#[derive(Debug)]
pub struct TestClient {
    /// The client's state (with several servers, the first tunnel's).
    pub status: watch::Receiver<ClientStatus>,
    /// Each tunnel's state: one per server with `mode = "all"`.
    pub statuses: Vec<watch::Receiver<ClientStatus>>,
    /// Its UDP counters.
    pub udp: std::sync::Arc<wmproxy_tunnel::udp::UdpStats>,
    /// Where its forwards listen.
    pub forward_addrs: Vec<SocketAddr>,
    /// Where its control API listens, if its config has `[control]`.
    pub control_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ClientError>>>,
}

impl TestClient {
    /// Starts a client with `config`.
    pub async fn start(config: ClientConfig) -> Result<Self> {
        Self::start_with(config, |_| {}).await
    }

    /// Starts a client with `config`, adjusting the [`Client`] before it runs.
    pub async fn start_with(config: ClientConfig, adjust: impl FnOnce(&mut Client)) -> Result<Self> {
        let mut client = Client::new(config).await?;
        adjust(&mut client);
        let (status, statuses) = (client.status(), client.statuses());
        let forward_addrs = client.forward_addrs();
        let control_addr = client.control_addr();
        let udp = client.udp_stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(client.run(shutdown.clone()));
        Ok(Self { status, statuses, udp, forward_addrs, control_addr, shutdown, task: Some(task) })
    }

    /// Starts a client from the config file at `path`, as the binary does (`/reload` reads
    /// that file); returns it and where its control API listens (the file must have `[control]`).
    pub async fn start_from(path: &std::path::Path) -> Result<(Self, SocketAddr)> {
        let mut control = None;
        let client = Self::start_with(wmproxy_config::load_client(path)?, |c| {
            c.set_config_path(path.to_owned());
            control = c.control_addr();
        })
        .await?;
        Ok((client, control.context("the client's control API is off")?))
    }

    /// Waits until the status satisfies `pred`; returns that status.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&ClientStatus) -> bool) -> Result<ClientStatus> {
        let waited =
            tokio::time::timeout(DEADLINE, async { self.status.wait_for(|s| pred(s)).await.map(|s| s.clone()) }).await;
        match waited {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_)) => bail!("client status channel closed while waiting for {what}"),
            Err(_) => bail!("timed out waiting for {what}; status: {:?}", *self.status.borrow()),
        }
    }

    /// Waits until tunnel `i`'s status (see [`TestClient::statuses`]) satisfies `pred`;
    /// returns that status.
    pub async fn wait_for_tunnel(
        &mut self,
        i: usize,
        what: &str,
        pred: impl Fn(&ClientStatus) -> bool,
    ) -> Result<ClientStatus> {
        let status = self.statuses.get_mut(i).with_context(|| format!("no tunnel {i}"))?;
        let waited = tokio::time::timeout(DEADLINE, async { status.wait_for(|s| pred(s)).await.map(|s| s.clone()) });
        match waited.await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_)) => bail!("client status channel closed while waiting for {what}"),
            Err(_) => bail!("timed out waiting for {what}; tunnel {i}: {:?}", *status.borrow()),
        }
    }

    /// Waits until connected and returns the public port of `service`.
    pub async fn port_of(&mut self, service: &str) -> Result<u16> {
        let status = self.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
        status.port_of(service).with_context(|| format!("service {service} not published: {status:?}"))
    }

    /// Waits for `run` to return by itself (a fatal error) and returns its result.
    pub async fn finished(&mut self) -> Result<Result<(), ClientError>> {
        let task = self.task.take().context("already finished")?;
        Ok(tokio::time::timeout(DEADLINE, task).await.context("client did not stop")??)
    }

    /// Stops the client and waits until it has closed its tunnel.
    pub async fn stop(&mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task).await.context("client did not stop")???;
        }
        Ok(())
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Raises this process's open-file limit to at least `files`: the soft limit up to the hard
/// one, and the hard one too where allowed (root). Fails, saying what is missing, if neither
/// reaches it.
pub fn open_files_at_least(files: u64) -> Result<()> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get()?;
    if soft >= files {
        return Ok(());
    }
    if Resource::NOFILE.set(files, hard.max(files)).is_err() {
        rlimit::increase_nofile_limit(files)?;
    }
    let (soft, hard) = Resource::NOFILE.get()?;
    anyhow::ensure!(
        soft >= files,
        "this needs {files} open files; the limit is {soft} (hard {hard}): raise it (`ulimit -Hn`) or run as root"
    );
    Ok(())
}
