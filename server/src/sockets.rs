//! Binding the server's TCP listeners without awaiting (so a bind error is the caller's answer
//! at once), with a backlog of 1024 rather than std's 128, so bursts of users are not refused.
//! An IPv6 address takes IPv4 users too (`[::]` is every address of both versions, whatever
//! the host's `net.ipv6.bindv6only`); where the host has no IPv6, `[::]` becomes `0.0.0.0`.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use wmproxy_tunnel::transport::dual_stack_or_v4;

/// A listener on `addr`.
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    dual_stack_or_v4(addr, |addr| listen(addr, false))
}

/// A listener of the server's own config (a group port, a proxy) with `SO_REUSEPORT` as well,
/// so that a reload can bind a changed entry's address while the old listener is closing.
pub(crate) fn bind_reusable(addr: SocketAddr) -> io::Result<TcpListener> {
    dual_stack_or_v4(addr, |addr| listen(addr, true))
}

fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}
