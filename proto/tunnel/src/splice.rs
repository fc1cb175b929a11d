//! Splices two data streams, possibly of two tunnels: the server relaying a visitor's stream
//! to the stream it opened to the private service's client. The same rules as [`crate::relay`]:
//!
//! - Half-close is honoured: the end of one stream's data finishes the other's send half, and
//!   the other direction keeps flowing until it ends too.
//! - An error either way (a reset, a stop, a lost tunnel) ends both: each send half is reset
//!   and each receive half stopped, so neither end takes the cut for a clean end of data.
//!   Being dropped before the end (a drain grace over) does the same.
//! - A splice ends once both peers have acknowledged the last bytes (or after
//!   [`DELIVERY_TIMEOUT`]).
//! - Memory: what is in flight is bounded by the two streams' windows; quinn's received
//!   chunks are passed on as they are, without a copy.

use std::io;

use bytes::Bytes;

use crate::conn::{RecvStream, SendStream};
use crate::relay::{DELIVERY_TIMEOUT, Meter, RELAY_ABORTED, RelayStats};

/// Chunks taken from a stream per read.
const CHUNKS: usize = 16;

/// Relays `visitor` and `service` (each a stream's two halves) until both directions have
/// ended, counting the bytes in `meter` as they pass: visitor → service as `tcp_to_quic`
/// (the users' bytes, "in"), the other way as `quic_to_tcp`. Returns the totals, or the first
/// error after aborting both streams.
pub async fn splice(
    visitor: (SendStream, RecvStream),
    service: (SendStream, RecvStream),
    meter: Option<&dyn Meter>,
) -> io::Result<RelayStats> {
    let mut ends = Ends { visitor, service, finished: false };
    let Ends { visitor: (to_visitor, from_visitor), service: (to_service, from_service), .. } = &mut ends;
    let inbound = pass(from_visitor, to_service, |n| {
        if let Some(m) = meter {
            m.passed(n, 0);
        }
    });
    let outbound = pass(from_service, to_visitor, |n| {
        if let Some(m) = meter {
            m.passed(0, n);
        }
    });
    let (tcp_to_quic, quic_to_tcp) = tokio::try_join!(inbound, outbound)?;
    // Both finished: wait until both peers have what we sent them, so that a drain waiting
    // on this splice never closes a tunnel under those bytes.
    let delivered = async { tokio::join!(to_visitor.stopped(), to_service.stopped()) };
    if Box::pin(tokio::time::timeout(DELIVERY_TIMEOUT, delivered)).await.is_err() {
        tracing::debug!("a peer did not acknowledge the stream's end in time");
    }
    ends.finished = true;
    Ok(RelayStats { tcp_to_quic, quic_to_tcp })
}

/// Copies `from` into `to` until `from` ends (then finishes `to`), telling `passed` of each
/// batch once it is written. Returns the bytes copied.
async fn pass(from: &mut RecvStream, to: &mut SendStream, passed: impl Fn(u64)) -> io::Result<u64> {
    let mut total = 0u64;
    let mut chunks: [Bytes; CHUNKS] = Default::default();
    loop {
        let Some(n) = from.read_chunks(&mut chunks).await.map_err(io::Error::other)? else {
            to.finish().map_err(io::Error::from)?;
            return Ok(total);
        };
        let bytes: u64 = chunks[..n].iter().map(|c| c.len() as u64).sum();
        to.write_all_chunks(&mut chunks[..n]).await.map_err(io::Error::other)?;
        total += bytes;
        passed(bytes);
    }
}

/// The two streams of a splice, both aborted when dropped before the splice finished.
struct Ends {
    visitor: (SendStream, RecvStream),
    service: (SendStream, RecvStream),
    finished: bool,
}

impl Drop for Ends {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        for (send, recv) in [&mut self.visitor, &mut self.service] {
            // Either may already be closed; that is the point of aborting.
            let _ = send.reset(RELAY_ABORTED);
            let _ = recv.stop(RELAY_ABORTED);
        }
    }
}
