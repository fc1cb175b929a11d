//! Roaming: the host's addresses change (Wi-Fi to a mobile link, a new DHCP lease) while a
//! tunnel is up. The client looks at its interface addresses every [`POLL`]; when the set
//! changes, it rebinds the tunnel's endpoint to a fresh socket. quinn then moves to a new
//! connection ID and pings the server from the new socket at once, and the server validates
//! the new path and migrates the connection to it, wherever the NAT in front maps it.
//!
//! The socket is bound to the wildcard address, so the kernel would pick the new source
//! address by itself; but nothing would leave until the next keep-alive (up to
//! `keep_alive_secs`), and the server's packets to the old address would be lost until then.
//! If the new path does not carry, the tunnel's idle timeout ends it and the client reconnects
//! with its backoff.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tracing::{info, warn};
use wmproxy_tunnel::transport;

/// How often the host's addresses are read (one `getifaddrs` call).
pub const POLL: Duration = Duration::from_secs(1);

/// The host's addresses a tunnel could leave from: every interface address but loopback.
fn addresses() -> BTreeSet<IpAddr> {
    let all = if_addrs::get_if_addrs().unwrap_or_default();
    all.iter().filter(|i| !i.is_loopback()).map(if_addrs::Interface::ip).collect()
}

/// Rebinds `endpoint` to a fresh wildcard socket whenever the host's addresses change,
/// counting each rebind in `rebinds`. Runs until dropped (with its tunnel).
pub async fn follow(endpoint: &quinn::Endpoint, rebinds: &Counter) -> Infallible {
    let mut known = addresses();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = addresses();
        if now == known {
            continue;
        }
        let (gone, new) = (known.difference(&now).count(), now.difference(&known).count());
        known = now;
        let ipv6 = endpoint.local_addr().is_ok_and(|a| a.is_ipv6());
        let wildcard = if ipv6 { IpAddr::from(Ipv6Addr::UNSPECIFIED) } else { IpAddr::from(Ipv4Addr::UNSPECIFIED) };
        match transport::bind_udp(SocketAddr::new(wildcard, 0)).and_then(|socket| endpoint.rebind(socket)) {
            Ok(()) => {
                rebinds.inc();
                info!(addresses_gone = gone, addresses_new = new, local = ?endpoint.local_addr().ok(), "the host's addresses changed: moved the tunnel to a new socket");
            }
            // The old socket stays; the next change tries again.
            Err(e) => warn!(error = %e, "the host's addresses changed, but a new socket could not be bound"),
        }
    }
}
