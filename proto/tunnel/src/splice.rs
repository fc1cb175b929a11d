//! Splices two data streams, possibly of two tunnels: the server relaying a visitor's stream
//! to the stream it opened to the private service's client, the visitor's bytes pipelined
//! behind the header and the service's answer passed back. The same rules as
//! [`crate::relay`]:
//!
//! - Half-close is honoured: the end of one stream's data finishes the other's send half, and
//!   the other direction keeps flowing until it ends too.
//! - An error either way (a reset, a stop, a lost tunnel) ends both: each send half is reset
//!   and each receive half stopped, so neither end takes the cut for a clean end of data.
//!   Being dropped before the end (a drain grace over) does the same.
//! - A splice ends once both peers have acknowledged the last bytes (or after
//!   [`DELIVERY_TIMEOUT`]).
//! - Memory: what is in flight is bounded by the two streams' windows; quinn's received
//!   chunks are passed on as they are, without a copy, in a batch that exists only while it
//!   is written ([`RecvStream::read_ready`]), so an idle splice holds none.

use std::io;
use std::time::Duration;

use wmproxy_wire::OpenResult;

use crate::conn::{RecvStream, SendStream};
use crate::datastream::{DataStreamError, read_answer};
use crate::relay::{DELIVERY_TIMEOUT, Meter, RELAY_ABORTED, RelayStats};
use crate::stream::write_frame;

/// Why a splice ended early.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// The service's end refused the stream (its answer was passed on to the visitor).
    #[error("{0}")]
    Refused(OpenResult),
    /// The service's end did not answer in time.
    #[error("no answer from the service's end in time")]
    Timeout,
    /// A stream failed, or the answer was not one.
    #[error("{0}")]
    Stream(#[source] io::Error),
}

/// Relays `visitor` and `service` (each a stream's two halves) until both directions have
/// ended, counting the bytes in `meter` as they pass: visitor → service as `tcp_to_quic`
/// (the users' bytes, "in"), the other way as `quic_to_tcp`. Returns the totals, or the first
/// error after aborting both streams.
///
/// The visitor's stream has not been answered yet, and the service's stream was just opened:
/// the visitor's bytes go on at once, behind the header (as a user's behind a data stream's
/// header), while the service's answer (within `timeout`) is passed back to the visitor
/// before anything else. A refusal ends the visitor's stream cleanly (its answer is the
/// refusal) and resets the service's.
pub async fn splice(
    visitor: (SendStream, RecvStream),
    service: (SendStream, RecvStream),
    timeout: Duration,
    meter: Option<&dyn Meter>,
) -> Result<RelayStats, SpliceError> {
    let mut ends = Ends { visitor, service, on_drop: OnDrop::Abort };
    let Ends { visitor: (to_visitor, from_visitor), service: (to_service, from_service), .. } = &mut ends;
    let mut refused = None;
    let inbound = async {
        pass(from_visitor, to_service, |n| {
            if let Some(m) = meter {
                m.passed(n, 0);
            }
        })
        .await
        .map_err(SpliceError::Stream)
    };
    let outbound = async {
        match read_answer(from_service, timeout).await {
            Ok(()) => {}
            Err(DataStreamError::Refused(result)) => {
                refused = Some(result);
                return Err(SpliceError::Refused(result));
            }
            Err(DataStreamError::Timeout) => return Err(SpliceError::Timeout),
            Err(e) => return Err(SpliceError::Stream(io::Error::other(e))),
        }
        write_frame(to_visitor, &OpenResult::Ok).await.map_err(|e| SpliceError::Stream(io::Error::other(e)))?;
        pass(from_service, to_visitor, |n| {
            if let Some(m) = meter {
                m.passed(0, n);
            }
        })
        .await
        .map_err(SpliceError::Stream)
    };
    let result = tokio::try_join!(inbound, outbound);
    let (tcp_to_quic, quic_to_tcp) = match result {
        Ok(both) => both,
        Err(e) => {
            if let Some(result) = refused {
                // The visitor is told why, and its stream ends cleanly; the service's is reset.
                let _ = write_frame(&mut ends.visitor.0, &result).await;
                let _ = ends.visitor.0.finish();
                ends.on_drop = OnDrop::AbortService;
            }
            return Err(e);
        }
    };
    // Both finished: wait until both peers have what we sent them, so that a drain waiting
    // on this splice never closes a tunnel under those bytes.
    let (to_visitor, to_service) = (&mut ends.visitor.0, &mut ends.service.0);
    let delivered = async { tokio::join!(to_visitor.stopped(), to_service.stopped()) };
    if Box::pin(tokio::time::timeout(DELIVERY_TIMEOUT, delivered)).await.is_err() {
        tracing::debug!("a peer did not acknowledge the stream's end in time");
    }
    ends.on_drop = OnDrop::Close;
    Ok(RelayStats { tcp_to_quic, quic_to_tcp })
}

/// Copies `from` into `to` until `from` ends (then finishes `to`), telling `passed` of each
/// batch once it is written. Returns the bytes copied.
async fn pass(from: &mut RecvStream, to: &mut SendStream, passed: impl Fn(u64)) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(mut ready) = from.read_ready().await.map_err(io::Error::other)? {
        let bytes: u64 = ready.iter().map(|c| c.len() as u64).sum();
        to.write_all_chunks(&mut ready).await.map_err(io::Error::other)?;
        total += bytes;
        passed(bytes);
    }
    to.finish().map_err(io::Error::from)?;
    Ok(total)
}

/// What a splice's streams get when it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDrop {
    /// It finished: both close as usual.
    Close,
    /// The service refused: the visitor's stream was ended with the refusal; the service's
    /// is reset.
    AbortService,
    /// It failed, or was cancelled before it ended: both are reset and stopped.
    Abort,
}

/// The two streams of a splice, aborted as [`OnDrop`] says when dropped.
struct Ends {
    visitor: (SendStream, RecvStream),
    service: (SendStream, RecvStream),
    on_drop: OnDrop,
}

impl Drop for Ends {
    fn drop(&mut self) {
        // Either stream may already be closed; that is the point of aborting.
        match self.on_drop {
            OnDrop::Close => {}
            OnDrop::AbortService => {
                let _ = self.visitor.1.stop(RELAY_ABORTED);
                abort(&mut self.service);
            }
            OnDrop::Abort => {
                abort(&mut self.visitor);
                abort(&mut self.service);
            }
        }
    }
}

/// Resets `send` and stops `recv`.
fn abort((send, recv): &mut (SendStream, RecvStream)) {
    let _ = send.reset(RELAY_ABORTED);
    let _ = recv.stop(RELAY_ABORTED);
}
