//! Dials a [`Target`] on behalf of the other end (a TCP connection, or a UDP socket
//! connected to it for a flow), and says why it failed in the protocol's own terms
//! ([`OpenResult`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UdpSocket};

use wmproxy_wire::{OpenResult, Target};

use crate::transport;

/// Kernel buffer of a UDP flow's own socket. With Linux's default (208 KiB) a flow at
/// 500 Mbit/s lost 0.5–1 % of its packets in that socket while the flow task waited for a
/// core; 1 MiB lost none (`wmproxy-bench --only udp`). It is a cap, not an allocation.
pub const FLOW_SOCKET_BUFFER: usize = 1024 * 1024;

/// Resolves `target` and connects to the first address `permits` accepts, within `timeout` for
/// the lookup and for each connect. `permits_target` judges the name (or IP literal) and port
/// first, before any lookup. Sets `TCP_NODELAY` on success.
///
/// Failures: `NotAllowed` when `permits_target` refuses or every resolved address is refused by
/// `permits`; `Refused`, `Timeout` or `Unreachable` from the last address tried.
pub async fn dial(
    target: &Target,
    timeout: Duration,
    permits_target: impl Fn(&str, u16) -> bool,
    permits: impl Fn(IpAddr) -> bool,
) -> Result<TcpStream, OpenResult> {
    let addrs = resolve(target, timeout, permits_target).await?;
    let mut last = if addrs.is_empty() { OpenResult::Unreachable } else { OpenResult::NotAllowed };
    for addr in addrs.into_iter().filter(|a| permits(a.ip())) {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => last = OpenResult::Refused,
            // Accepted and reset before `connect` returned: an abort, not a way that failed.
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => return Err(OpenResult::Reset),
            Ok(Err(_)) => last = OpenResult::Unreachable,
            Err(_) => last = OpenResult::Timeout,
        }
    }
    Err(last)
}

/// Resolves `target` and connects a new UDP socket to the first address `permits` accepts
/// (the egress check happens here, once per flow: `permits_target` before the lookup,
/// `permits` on each resolved address).
///
/// Failures: `NotAllowed` when a check refuses every way; `Unreachable` when the name does not
/// resolve or no socket can be connected; `Timeout` for a slow lookup.
pub async fn dial_udp(
    target: &Target,
    timeout: Duration,
    permits_target: impl Fn(&str, u16) -> bool,
    permits: impl Fn(IpAddr) -> bool,
) -> Result<UdpSocket, OpenResult> {
    let addrs = resolve(target, timeout, permits_target).await?;
    let mut last = if addrs.is_empty() { OpenResult::Unreachable } else { OpenResult::NotAllowed };
    for addr in addrs.into_iter().filter(|a| permits(a.ip())) {
        let local = match addr {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let connected = async {
            let socket = UdpSocket::from_std(transport::bind_udp_with(local, FLOW_SOCKET_BUFFER)?)?;
            socket.connect(addr).await?;
            // Flows send with `try_send`, which tokio refuses until the reactor has seen the
            // socket writable once; wait for that here rather than drop the first packets.
            socket.writable().await?;
            Ok::<_, io::Error>(socket)
        };
        match connected.await {
            Ok(socket) => return Ok(socket),
            Err(_) => last = OpenResult::Unreachable,
        }
    }
    Err(last)
}

/// Looks `target` up within `timeout`, if `permits_target` allows its host and port.
async fn resolve(
    target: &Target,
    timeout: Duration,
    permits_target: impl Fn(&str, u16) -> bool,
) -> Result<Vec<SocketAddr>, OpenResult> {
    if !permits_target(target.host(), target.port()) {
        return Err(OpenResult::NotAllowed);
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host(target.as_str())).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(_)) => Err(OpenResult::Unreachable),
        Err(_) => Err(OpenResult::Timeout),
    }
}

/// How long the list of this machine's addresses is trusted before it is read again.
pub const OWN_ADDRESSES_TTL: Duration = Duration::from_secs(10);

/// This machine's interface addresses, read at most every [`OWN_ADDRESSES_TTL`]: an egress
/// policy refuses them by default, since a tunnel that dials its own end reaches services that
/// listen only for the machine itself.
#[derive(Debug, Default)]
pub struct OwnAddresses {
    read: Mutex<Option<(Instant, Vec<IpAddr>)>>,
}

impl OwnAddresses {
    /// Whether `ip` is one of this machine's addresses. If they cannot be read, none is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = read.as_ref().is_some_and(|(at, _)| at.elapsed() < OWN_ADDRESSES_TTL);
        if !fresh {
            let addrs = if_addrs::get_if_addrs().map(|all| all.iter().map(|i| i.ip()).collect()).unwrap_or_default();
            *read = Some((Instant::now(), addrs));
        }
        read.as_ref().is_some_and(|(_, addrs)| addrs.contains(&ip))
    }
}
