//! Load-balancing test helpers: group and member config entries, backends that say who they
//! are, backends that can be stopped and started again on the same port, and a tiny HTTP
//! health endpoint whose answer the test sets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use wmproxy_config::group::{HttpGroupFile, PortGroupFile};
use wmproxy_config::{
    CheckType, Exposure, GroupFile, GroupJoin, HealthCheck, Policy, Publish, Secret, Service, ServiceKind,
};

/// The key test groups use.
pub const GROUP_KEY: &str = "group-key-0123";

/// The settings of a TCP or UDP group (wrap it: `GroupFile::Tcp(…)`, `GroupFile::Udp(…)`).
pub fn group(name: &str, port: u16, policy: Policy) -> PortGroupFile {
    PortGroupFile {
        name: toml::Spanned::new(0..0, name.to_owned()),
        key: Secret::new(GROUP_KEY),
        remote_port: port,
        policy,
        max_fails: 1,
        fail_timeout_secs: 10,
        retries: 2,
    }
}

/// A TCP group entry for the server config.
pub fn tcp_group(name: &str, port: u16, policy: Policy) -> GroupFile {
    GroupFile::Tcp(group(name, port, policy))
}

/// An HTTP group entry serving `domain` on the vhost port.
pub fn http_group(name: &str, domain: &str) -> GroupFile {
    let tcp = group(name, 0, Policy::RoundRobin);
    GroupFile::Http(HttpGroupFile {
        name: tcp.name,
        key: tcp.key,
        policy: tcp.policy,
        max_fails: tcp.max_fails,
        fail_timeout_secs: tcp.fail_timeout_secs,
        retries: tcp.retries,
        custom_domains: vec![domain.to_owned()],
        locations: Vec::new(),
    })
}

/// A service entry of `kind` that joins `group` with `weight`, with an optional active check.
pub fn member_of(
    kind: ServiceKind,
    (name, local): (&str, SocketAddr),
    group: &str,
    weight: u32,
    check: Option<HealthCheck>,
) -> Service {
    let join =
        GroupJoin { group: crate::name(group), key: Secret::new(GROUP_KEY), weight, drain: false, health_check: check };
    let exposure = match kind {
        ServiceKind::Udp => Exposure::Udp { publish: Publish::Group(join), bandwidth_limit: None },
        ServiceKind::Http => Exposure::Http { publish: Publish::Group(join), proxy_protocol: None },
        _ => Exposure::Tcp {
            publish: Publish::Group(join),
            proxy_protocol: None,
            bandwidth_limit: None,
            idle_timeout_secs: None,
        },
    };
    Service { exposure, ..crate::tcp_service(name, local, 0) }
}

/// A TCP service entry that joins `group` with `weight`, with an optional active check.
pub fn member(name: &str, local: SocketAddr, group: &str, weight: u32, check: Option<HealthCheck>) -> Service {
    member_of(ServiceKind::Tcp, (name, local), group, weight, check)
}

/// A TCP connect check every `interval_ms`.
pub fn tcp_check(interval_ms: u64, rise: u32, fall: u32) -> HealthCheck {
    HealthCheck {
        kind: CheckType::Tcp,
        addr: None,
        path: "/".into(),
        host: None,
        expect_status: Vec::new(),
        interval_ms,
        timeout_ms: 500,
        rise,
        fall,
        start_healthy: false,
    }
}

/// An HTTP check of `addr` every `interval_ms`.
pub fn http_check(addr: SocketAddr, interval_ms: u64, rise: u32, fall: u32) -> HealthCheck {
    HealthCheck {
        kind: CheckType::Http,
        addr: Some(addr.to_string()),
        path: "/health".into(),
        ..tcp_check(interval_ms, rise, fall)
    }
}

/// A backend that writes `tag` and a newline to every connection, then echoes.
pub async fn tagged(tag: &str) -> Result<Switchable> {
    Switchable::start(tag, "127.0.0.1:0".parse()?).await
}

/// A tagged backend that can be stopped (its port then refuses) and started again on the
/// same port.
#[derive(Debug)]
pub struct Switchable {
    /// Where it listens.
    pub addr: SocketAddr,
    tag: String,
    stop: CancellationToken,
}

impl Switchable {
    async fn start(tag: &str, addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let (line, token) = (format!("{tag}\n"), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut stream, _)) = accepted else { break };
                let (line, token) = (line.clone(), token.clone());
                tokio::spawn(async move {
                    if stream.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = stream.split();
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::io::copy(&mut r, &mut w) => {}
                    }
                });
            }
        });
        Ok(Self { addr, tag: tag.to_owned(), stop })
    }

    /// Stops listening and drops its connections: its port refuses.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop.cancel();
        *self = Self::start(&self.tag.clone(), self.addr).await?;
        Ok(())
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connects to `addr` (from `from`, if given) and returns the backend's tag line and the open
/// connection.
pub async fn which_from(addr: SocketAddr, from: Option<std::net::IpAddr>) -> Result<(String, TcpStream)> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let n = tokio::time::timeout(crate::DEADLINE, reader.read_line(&mut line)).await.context("no tag")??;
    anyhow::ensure!(n > 0, "connection closed before the backend's tag");
    Ok((line.trim_end().to_owned(), reader.into_inner()))
}

/// The tag of the backend that serves a new connection to `addr`.
pub async fn which(addr: SocketAddr) -> Result<String> {
    Ok(which_from(addr, None).await?.0)
}

/// An HTTP/1.1 endpoint that answers its `n`-th request (from 0) with status `answer(n)`,
/// `Connection: close`.
pub async fn http_endpoint(answer: impl Fn(u64) -> u16 + Send + Sync + 'static) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            let status = answer(n);
            n += 1;
            tokio::spawn(async move {
                if crate::proxy::read_head(&mut stream).await.is_none() {
                    return;
                }
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// An HTTP endpoint answering with the status in the returned knob (200 at first).
pub async fn http_status_endpoint() -> Result<(SocketAddr, Arc<AtomicU16>)> {
    let status = Arc::new(AtomicU16::new(200));
    let knob = status.clone();
    let addr = http_endpoint(move |_| status.load(Ordering::Relaxed)).await?;
    Ok((addr, knob))
}

/// An HTTP endpoint that alternates 200 and 503, request by request: a flapping backend.
pub async fn flapping_endpoint() -> Result<SocketAddr> {
    http_endpoint(|n| if n % 2 == 0 { 200 } else { 503 }).await
}
