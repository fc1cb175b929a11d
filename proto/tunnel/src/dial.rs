//! Dials a [`Target`] on behalf of the other end (a TCP connection, or a UDP socket
//! connected to it for a flow), and says why it failed in the protocol's own terms
//! ([`OpenResult`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use wmproxy_wire::{OpenResult, Target};

use crate::transport;

/// Kernel buffer of a UDP flow's own socket. With Linux's default (208 KiB) a flow at
/// 500 Mbit/s lost 0.5–1 % of its packets in that socket while the flow task waited for a
/// core; 1 MiB lost none (`wmproxy-bench --only udp`). It is a cap, not an allocation.
pub const FLOW_SOCKET_BUFFER: usize = 1024 * 1024;

/// Resolves `target` and connects to the first address `permits` accepts, within `timeout` for
/// the lookup and for each connect. `permits_target` judges the name (or IP literal) and port
/// first, before any lookup. Sets `TCP_NODELAY` and keepalive ([`crate::accept::keepalive`])
/// on success.
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
                crate::accept::keepalive(&stream);
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

/// Name lookups running at once, all dials of this process together. A lookup is a blocking
/// `getaddrinfo` on tokio's blocking pool, and one that times out keeps its thread until the
/// system resolver gives up; without a bound, a flood of names that never resolve would take
/// every blocking thread.
pub const MAX_LOOKUPS: usize = 64;

static LOOKUPS: Semaphore = Semaphore::const_new(MAX_LOOKUPS);

/// Looks `target` up within `timeout`, if `permits_target` allows its host and port. An IP
/// literal needs no lookup; a name waits for none: with [`MAX_LOOKUPS`] running, it is refused
/// at once (`Busy`).
async fn resolve(
    target: &Target,
    timeout: Duration,
    permits_target: impl Fn(&str, u16) -> bool,
) -> Result<Vec<SocketAddr>, OpenResult> {
    resolve_within(target, timeout, permits_target, &LOOKUPS).await
}

async fn resolve_within(
    target: &Target,
    timeout: Duration,
    permits_target: impl Fn(&str, u16) -> bool,
    lookups: &'static Semaphore,
) -> Result<Vec<SocketAddr>, OpenResult> {
    if !permits_target(target.host(), target.port()) {
        return Err(OpenResult::NotAllowed);
    }
    if let Ok(ip) = target.host().trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, target.port())]);
    }
    let permit = lookups.try_acquire().map_err(|_| OpenResult::Busy)?;
    let name = target.as_str().to_owned();
    // The lookup keeps its permit until it returns, even after we stop waiting for it.
    let lookup = tokio::spawn(async move {
        let found = tokio::net::lookup_host(name).await.map(Iterator::collect::<Vec<_>>);
        drop(permit);
        found
    });
    match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(Ok(addrs))) => Ok(addrs),
        Ok(_) => Err(OpenResult::Unreachable),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> Target {
        Target::new(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[tokio::test]
    async fn names_wait_for_no_lookup_slot_and_literals_need_none() {
        static FULL: Semaphore = Semaphore::const_new(1);
        let all = |_: &str, _| true;
        let taken = FULL.try_acquire().unwrap_or_else(|e| panic!("{e}"));
        // Every slot taken (lookups stuck in the system resolver): a name is refused at once.
        let busy = resolve_within(&target("localhost:80"), Duration::from_secs(5), all, &FULL).await;
        assert_eq!(busy, Err(OpenResult::Busy));
        // Literals are not looked up.
        let v4 = resolve_within(&target("192.0.2.1:80"), Duration::from_secs(5), all, &FULL).await;
        assert_eq!(v4, Ok(vec![SocketAddr::from(([192, 0, 2, 1], 80))]));
        let v6 = resolve_within(&target("[2001:db8::1]:443"), Duration::from_secs(5), all, &FULL).await;
        assert_eq!(v6.map(|a| a.len()), Ok(1));
        // A slot back: the name resolves (from the hosts file), and gives its slot back.
        drop(taken);
        let found = resolve_within(&target("localhost:80"), Duration::from_secs(5), all, &FULL).await;
        assert!(found.is_ok_and(|a| !a.is_empty()));
        assert_eq!(FULL.available_permits(), 1);
    }

    #[tokio::test]
    async fn both_legs_of_a_relay_have_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let stop = tokio_util::sync::CancellationToken::new();
        let to = target(&addr.to_string());
        let (dialed, accepted) = tokio::join!(
            dial(&to, Duration::from_secs(5), |_, _| true, |_| true),
            crate::accept::next(&listener, &stop)
        );
        let dialed = dialed.unwrap_or_else(|e| panic!("{e}"));
        let (accepted, _) = accepted.unwrap_or_else(|| panic!("accepted"));
        for tcp in [&dialed, &accepted] {
            let sock = socket2::SockRef::from(tcp);
            assert!(sock.keepalive().unwrap_or(false));
            assert_eq!(sock.tcp_keepalive_time().ok(), Some(crate::accept::KEEPALIVE_IDLE));
        }
    }
}
