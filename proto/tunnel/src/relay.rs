//! Copies bytes between a TCP socket and a QUIC bidirectional stream, both ways.
//!
//! - Half-close is honoured: EOF from TCP becomes `finish()` on the QUIC stream, and the end of
//!   the QUIC stream becomes `shutdown()` of the TCP write half; the other direction keeps
//!   flowing until it ends too.
//! - An error in either direction (TCP reset, QUIC reset or stop) ends both: the QUIC stream is
//!   reset and stopped, and the TCP socket is reset (closed with a zero linger, so its peer gets
//!   an RST), unless the far end refused the stream before any byte came back (then it is just
//!   closed). An abort therefore reaches the far end as an abort, hop by hop: a backend's reset
//!   becomes the user's, and the other way round. A truncated transfer never passes for a
//!   complete one (which a FIN, a clean end of data, would claim).
//! - A relay dropped before it ends (its task cancelled: a drain grace over, a service
//!   withdrawn) aborts both sides the same way, so a cut connection is never a clean end.
//! - Delivery: a relay ends only once the peer has acknowledged the last bytes it sent (or
//!   after [`DELIVERY_TIMEOUT`]), so whoever waits for it to end (a drain) can close the
//!   connection without losing them.
//! - Memory: an idle relay holds no buffer. QUIC → TCP writes quinn's own received chunks,
//!   gathered into a batch that exists only while it is written ([`RecvStream::read_ready`]); TCP → QUIC allocates a chunk
//!   only once the socket is readable and hands it to quinn without a copy. What is in flight is
//!   bounded by the QUIC stream window and the TCP socket buffers. A held connection costs its
//!   relay's task (a few KiB, most of it the two directions' state): keep what a relay stores
//!   across an `.await` small.

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::VarInt;

use crate::conn::{READY_CHUNKS, RecvStream, SendStream};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::bandwidth::Bandwidth;

/// Largest single read from TCP. Measured (one stream, loopback): 16 KiB → 4.02 Gbit/s, 64 KiB →
/// 4.36, 256 KiB → 4.15. 64 KiB also stays under glibc's mmap threshold.
const READ_CHUNK: usize = 64 * 1024;

/// Reads at most this long are copied into an exact-size buffer, so a small message in flight
/// does not pin a whole [`READ_CHUNK`].
const SMALL_READ: usize = 4 * 1024;

/// How long a finished relay waits for the peer to acknowledge its last bytes.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Application error code sent with a stream reset or stop after a relay failure.
pub const RELAY_ABORTED: VarInt = VarInt::from_u32(1);

/// What bounds a relay besides its peers: the service's bandwidth on this end (TCP → QUIC),
/// and an idle timeout (no byte either way for this long aborts it, as a reset both ways); and
/// what counts its bytes as they pass.
#[derive(Clone, Copy, Default)]
pub struct Limits<'a> {
    /// What this end sends into the tunnel, if limited.
    pub bandwidth: Option<&'a Bandwidth>,
    /// Off when `None`.
    pub idle: Option<Duration>,
    /// Told of every chunk as it is passed on, so that a relay cut half-way (a lost tunnel, a
    /// reset) still reports what it carried.
    pub meter: Option<&'a dyn Meter>,
}

impl std::fmt::Debug for Limits<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").field("bandwidth", &self.bandwidth).field("idle", &self.idle).finish_non_exhaustive()
    }
}

/// Counts a relay's bytes as they pass: each chunk once it is handed on (to quinn, or written
/// to the socket). Called per chunk (up to 64 KiB), so it must be cheap: atomics.
pub trait Meter: Send + Sync + std::fmt::Debug {
    /// `tcp_to_quic` bytes went from the TCP socket into the stream, and `quic_to_tcp` the
    /// other way (one of the two is 0).
    fn passed(&self, tcp_to_quic: u64, quic_to_tcp: u64);
}

/// Both meters count.
impl<A: Meter, B: Meter> Meter for (A, B) {
    fn passed(&self, tcp_to_quic: u64, quic_to_tcp: u64) {
        self.0.passed(tcp_to_quic, quic_to_tcp);
        self.1.passed(tcp_to_quic, quic_to_tcp);
    }
}

/// A [`Meter`] that keeps the totals, for the end of the connection (its access log line).
#[derive(Debug, Default)]
pub struct Tally {
    tcp_to_quic: std::sync::atomic::AtomicU64,
    quic_to_tcp: std::sync::atomic::AtomicU64,
}

impl Tally {
    /// What passed so far.
    pub fn stats(&self) -> RelayStats {
        use std::sync::atomic::Ordering::Relaxed;
        RelayStats { tcp_to_quic: self.tcp_to_quic.load(Relaxed), quic_to_tcp: self.quic_to_tcp.load(Relaxed) }
    }
}

impl Meter for Tally {
    fn passed(&self, tcp_to_quic: u64, quic_to_tcp: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.tcp_to_quic.fetch_add(tcp_to_quic, Relaxed);
        self.quic_to_tcp.fetch_add(quic_to_tcp, Relaxed);
    }
}

impl<M: Meter + ?Sized> Meter for std::sync::Arc<M> {
    fn passed(&self, tcp_to_quic: u64, quic_to_tcp: u64) {
        (**self).passed(tcp_to_quic, quic_to_tcp);
    }
}

impl<M: Meter + ?Sized> Meter for &M {
    fn passed(&self, tcp_to_quic: u64, quic_to_tcp: u64) {
        (**self).passed(tcp_to_quic, quic_to_tcp);
    }
}

/// Bytes moved by a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// From the TCP socket into the QUIC stream.
    pub tcp_to_quic: u64,
    /// From the QUIC stream out to the TCP socket.
    pub quic_to_tcp: u64,
}

/// Relays until both directions have ended. Returns the byte counts, or the first error (after
/// aborting both directions).
pub async fn relay(tcp: TcpStream, send: SendStream, recv: RecvStream) -> io::Result<RelayStats> {
    relay_gated(tcp, (send, recv), async |_| Ok(()), &Limits::default()).await
}

/// [`relay`], within `limits` (and counted by its meter).
pub async fn relay_within(
    tcp: TcpStream,
    (send, recv): (SendStream, RecvStream),
    limits: &Limits<'_>,
) -> io::Result<RelayStats> {
    relay_gated(tcp, (send, recv), async |_| Ok(()), limits).await
}

/// Like [`relay`], but QUIC → TCP first runs `gate` on the receive half (the stream's opener
/// reads the peer's answer there), while TCP → QUIC starts at once, within `limits`. An error
/// from `gate` aborts both directions; if its kind is `ConnectionRefused` (the far end
/// refused), the TCP socket is closed rather than reset, since nothing was carried back.
pub async fn relay_gated(
    tcp: TcpStream,
    (send, recv): (SendStream, RecvStream),
    gate: impl AsyncFnOnce(&mut RecvStream) -> io::Result<()>,
    limits: &Limits<'_>,
) -> io::Result<RelayStats> {
    let mut ends = Ends { tcp: Some(tcp.into_split()), send, recv, on_drop: OnDrop::Abort };
    let Ends { tcp: Some((tcp_read, tcp_write)), send, recv, .. } = &mut ends else {
        return Err(io::Error::other("the relay's socket is gone"));
    };
    let mut refused = false;
    let activity = limits.idle.map(|_| Activity::default());
    let work = async {
        tokio::try_join!(tcp_to_quic(tcp_read, send, limits, activity.as_ref()), async {
            gate(recv).await.inspect_err(|e| refused = e.kind() == io::ErrorKind::ConnectionRefused)?;
            quic_to_tcp(recv, tcp_write, limits, activity.as_ref()).await
        })
    };
    // One `select!` either way, so `work` (the relay's state) is stored once.
    let idle = async {
        match (limits.idle, &activity) {
            // Boxed: an idle relay (the common case) keeps no timer inline.
            (Some(idle), Some(activity)) => Box::pin(activity.idle_for(idle)).await,
            _ => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        biased;
        result = work => result,
        () = idle => Err(io::Error::new(io::ErrorKind::TimedOut, "no data either way for the idle timeout")),
    };
    match result {
        Ok((tcp_to_quic, quic_to_tcp)) => {
            // Our last bytes are written, not yet delivered: wait until the peer acknowledges
            // them, so that a drain waiting on this relay (its permit) never closes the tunnel
            // under them. (Boxed: a relay's state while it carries data holds no timer.)
            if Box::pin(tokio::time::timeout(DELIVERY_TIMEOUT, ends.send.stopped())).await.is_err() {
                tracing::debug!("the peer did not acknowledge the stream's end in time");
            }
            ends.on_drop = OnDrop::Close;
            Ok(RelayStats { tcp_to_quic, quic_to_tcp })
        }
        Err(e) => {
            // A connection the far end refused carried nothing back: it is closed, as before
            // any relay. One that carried data is aborted (by `ends` as it drops).
            if refused {
                ends.on_drop = OnDrop::AbortStream;
            }
            Err(e)
        }
    }
}

/// What a relay's two ends get when it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDrop {
    /// It finished: both ends close as usual.
    Close,
    /// The far end refused it: the stream is reset, the TCP socket just closed.
    AbortStream,
    /// It failed, or was cancelled before it ended (its task dropped when a drain grace was
    /// over, a service withdrawn): the stream is reset and stopped and the TCP socket reset,
    /// so that neither side takes the cut for a clean end of data.
    Abort,
}

/// The TCP socket and QUIC stream of one relay, aborted as [`OnDrop`] says when dropped.
struct Ends {
    tcp: Option<(OwnedReadHalf, OwnedWriteHalf)>,
    send: SendStream,
    recv: RecvStream,
    on_drop: OnDrop,
}

impl Drop for Ends {
    fn drop(&mut self) {
        if self.on_drop == OnDrop::Close {
            return;
        }
        // Either may already be closed; that is the point of aborting.
        let _ = self.send.reset(RELAY_ABORTED);
        let _ = self.recv.stop(RELAY_ABORTED);
        if self.on_drop == OnDrop::Abort
            && let Some((read, write)) = self.tcp.take()
        {
            reset_tcp(read, write);
        }
    }
}

/// When a relay last moved a byte, either way: milliseconds after it started.
#[derive(Debug)]
struct Activity {
    started: tokio::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self { started: tokio::time::Instant::now(), last_ms: std::sync::atomic::AtomicU64::new(0) }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
            let due = self.started + last + idle;
            if tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Closes the TCP socket with an RST. The halves are put back together first: dropping the
/// write half alone would send a FIN before the reset, and the peer would read a clean end.
fn reset_tcp(read: OwnedReadHalf, write: OwnedWriteHalf) {
    if let Ok(tcp) = read.reunite(write) {
        reset(tcp);
    }
}

/// Closes `tcp` with an RST, so its peer sees an abort rather than a clean end of data.
pub fn reset(tcp: TcpStream) {
    // Zero linger: `close` sends an RST at once and never blocks.
    let _ = tcp.set_zero_linger();
}

async fn tcp_to_quic(
    tcp: &mut OwnedReadHalf,
    send: &mut SendStream,
    limits: &Limits<'_>,
    activity: Option<&Activity>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        tcp.readable().await?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        match tcp.try_read_buf(&mut buf) {
            Ok(0) => {
                send.finish().map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
                return Ok(total);
            }
            Ok(n) => {
                total += n as u64;
                if let Some(activity) = activity {
                    activity.touch();
                }
                if let Some(wait) = limits.bandwidth.and_then(|l| l.charge(n)) {
                    // Boxed, so a relay's state holds no timer unless it is over its limit.
                    Box::pin(tokio::time::sleep(wait)).await;
                }
                let chunk = if n <= SMALL_READ { Bytes::copy_from_slice(&buf) } else { buf.freeze() };
                send.write_chunk(chunk).await?;
                if let Some(meter) = limits.meter {
                    meter.passed(n as u64, 0);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn quic_to_tcp(
    recv: &mut RecvStream,
    tcp: &mut OwnedWriteHalf,
    limits: &Limits<'_>,
    activity: Option<&Activity>,
) -> io::Result<u64> {
    let mut total = 0u64;
    // A lone small message is written at once; a batch is one `writev`.
    while let Some(mut ready) = recv.read_ready().await? {
        let len = ready.iter().map(|c| c.len() as u64).sum::<u64>();
        total += len;
        if let Some(activity) = activity {
            activity.touch();
        }
        write_all_vectored(tcp, &mut ready).await?;
        if let Some(meter) = limits.meter {
            meter.passed(0, len);
        }
    }
    tcp.shutdown().await?;
    Ok(total)
}

/// Writes every byte of `chunks` with as few `writev` calls as the socket allows, emptying them.
async fn write_all_vectored(tcp: &mut OwnedWriteHalf, chunks: &mut [Bytes]) -> io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        // The slices are made afresh at each poll, so the future keeps none between polls.
        let mut written = std::future::poll_fn(|cx| {
            let mut slices = [io::IoSlice::new(&[]); READY_CHUNKS];
            let count = (chunks.len() - first).min(READY_CHUNKS);
            for (slice, chunk) in slices.iter_mut().zip(&chunks[first..]) {
                *slice = io::IoSlice::new(chunk);
            }
            std::pin::Pin::new(&mut *tcp).poll_write_vectored(cx, &slices[..count])
        })
        .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let chunk = &mut chunks[first];
            let step = written.min(chunk.len());
            chunk.advance(step);
            written -= step;
            if chunk.is_empty() {
                first += 1;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    Ok(())
}
