//! Receiving on a flow's own socket without a 64 KiB buffer per flow.

use std::cell::RefCell;
use std::io;

use tokio::net::UdpSocket;

use wmproxy_wire::udp::MAX_PACKET_LEN;

thread_local! {
    /// One receive buffer per worker thread, big enough for any UDP packet, so that a thousand
    /// idle flows do not each hold 64 KiB.
    static RECV_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_PACKET_LEN]);
}

/// Receives one packet from a connected socket without waiting, and hands it to `f` (which
/// must not wait either). `WouldBlock` when nothing is queued.
pub fn try_recv_with<R>(socket: &UdpSocket, f: impl FnOnce(&[u8]) -> R) -> io::Result<R> {
    RECV_BUF.with_borrow_mut(|buf| {
        let n = socket.try_recv(buf)?;
        Ok(f(buf.get(..n).unwrap_or_default()))
    })
}
