//! The task of one flow, on either end: open (or accept) the flow stream, then move packets
//! until the flow ends.
//!
//! ```text
//! opener (listener side)                    acceptor (dialer side)
//!   open_bi, table.insert(stream id)
//!   ── UdpExpose/UdpConnect ──────────────▶  read header, set up a connected socket
//!   ══ early packets, on the stream ══════▶  table.insert(stream id)
//!                           ◀────── OpenResult::Ok
//!   confirm: datagrams from now on           datagrams from the start
//!   ◀════════ datagrams (and large packets on the stream) ════════▶
//!   the flow's end (idle sweep, either side's socket or shutdown) finishes the stream
//! ```

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;

use crate::conn::{Conn, RecvStream, SendStream};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug};
use wmproxy_wire::udp::{PACKET_HEADER_LEN, packet_header, packet_len};
use wmproxy_wire::{OpenResult, OpenStream, close_code};

use super::socket::try_recv_with;
use super::stats::UdpStats;
use super::table::{Flow, Queued};
use crate::Tunnel;
use crate::stream::{StreamError, read_frame, write_frame};

/// Packets read from a flow's own socket before the task yields to others.
const SOCKET_BATCH: usize = 32;

/// Why a flow ended.
#[derive(Debug, thiserror::Error)]
enum FlowEnd {
    #[error("closed")]
    Closed,
    #[error("the peer ended the flow")]
    PeerFinished,
    #[error("refused by the peer: {0}")]
    Refused(OpenResult),
    #[error("no answer from the peer in time")]
    Timeout,
    #[error("tunnel lost: {0}")]
    Connection(#[source] quinn::ConnectionError),
    #[error("stream: {0}")]
    Stream(#[source] StreamError),
    #[error("stream read: {0}")]
    Read(#[source] quinn::ReadExactError),
    #[error("stream write: {0}")]
    Write(#[source] quinn::WriteError),
    #[error("local socket: {0}")]
    Socket(#[source] io::Error),
}

impl From<StreamError> for FlowEnd {
    fn from(e: StreamError) -> Self {
        Self::Stream(e)
    }
}

impl From<quinn::ReadError> for FlowEnd {
    fn from(e: quinn::ReadError) -> Self {
        Self::Read(quinn::ReadExactError::ReadError(e))
    }
}

impl From<quinn::ReadExactError> for FlowEnd {
    fn from(e: quinn::ReadExactError) -> Self {
        Self::Read(e)
    }
}

/// Opens the stream of a flow a listener created on `tunnel`, sends `header`, and runs the
/// flow to its end. Packets already queued on `flow` follow the header on the stream.
pub async fn open(
    tunnel: Arc<Tunnel>,
    flow: Arc<Flow>,
    rx: mpsc::Receiver<Queued>,
    header: OpenStream,
    timeout: Duration,
) {
    open_with(&tunnel, (flow, rx), header, timeout, None).await;
}

/// Opens a flow on `tunnel` with `header` whose local side is `socket` (connected: what it
/// receives goes into the flow, what the flow brings is sent on it), and runs it to its end,
/// or until `ends` is cancelled (which it cancels when it ends). The server's half of a
/// relayed UDP visit towards the service.
pub async fn open_connected(
    tunnel: Arc<Tunnel>,
    socket: Arc<UdpSocket>,
    header: OpenStream,
    timeout: Duration,
    ends: CancellationToken,
) {
    let flow = Flow::ending_with(super::table::Sink::Connected(socket.clone()), tunnel.flows(), Some(&ends));
    open_with(&tunnel, flow, header, timeout, Some(socket)).await;
    ends.cancel();
}

async fn open_with(
    tunnel: &Tunnel,
    (flow, rx): (Arc<Flow>, mpsc::Receiver<Queued>),
    header: OpenStream,
    timeout: Duration,
    socket: Option<Arc<UdpSocket>>,
) {
    let (mut send, recv) = match tokio::time::timeout(timeout, tunnel.conn().open_bi()).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return end(&flow, &FlowEnd::Connection(e)),
        Err(_) => return end(&flow, &FlowEnd::Timeout),
    };
    let id = send.id();
    Span::current().record("flow", id);
    tunnel.flows().insert(id, flow.clone());
    if let Err(e) = write_frame(&mut send, &header).await {
        tunnel.flows().remove(id);
        return end(&flow, &e.into());
    }
    run(tunnel, flow, (send, recv), rx, socket, Some(timeout)).await;
}

/// Runs a flow the peer opened on `tunnel`: its header is read and `socket` is connected to
/// the target. Enters the flow in the tunnel's table, answers `Ok`, and moves packets until
/// the flow ends.
pub async fn accept(tunnel: &Tunnel, socket: Arc<UdpSocket>, send: SendStream, recv: RecvStream) {
    accept_within(tunnel, socket, (send, recv), None).await;
}

/// [`accept`], with what the flow sends into the tunnel within `limit` (the service's
/// bandwidth on this end).
pub async fn accept_within(
    tunnel: &Tunnel,
    socket: Arc<UdpSocket>,
    stream: (SendStream, RecvStream),
    limit: Option<Arc<crate::bandwidth::Bandwidth>>,
) {
    let flow = Flow::new(super::table::Sink::Connected(socket.clone()), tunnel.flows());
    if let Some(limit) = limit {
        flow.0.limit_to(limit);
    }
    accept_with(tunnel, socket, stream, flow).await;
}

/// [`accept`] for a flow that also ends when `ends` is cancelled (and cancels it when it
/// ends), its bytes counted in `meter` (what the socket side sends into the tunnel as
/// `tcp_to_quic`): the server's half of a relayed UDP visit towards the visitor.
pub async fn accept_ending_with(
    tunnel: &Tunnel,
    socket: Arc<UdpSocket>,
    stream: (SendStream, RecvStream),
    (ends, meter): (CancellationToken, Option<Arc<dyn crate::relay::Meter>>),
) {
    let flow = Flow::ending_with(super::table::Sink::Connected(socket.clone()), tunnel.flows(), Some(&ends));
    if let Some(meter) = meter {
        flow.0.metered(meter);
    }
    accept_with(tunnel, socket, stream, flow).await;
    ends.cancel();
}

async fn accept_with(
    tunnel: &Tunnel,
    socket: Arc<UdpSocket>,
    (mut send, recv): (SendStream, RecvStream),
    (flow, rx): (Arc<Flow>, mpsc::Receiver<Queued>),
) {
    let id = send.id();
    Span::current().record("flow", id);
    tunnel.flows().insert(id, flow.clone());
    flow.confirm();
    if let Err(e) = write_frame(&mut send, &OpenResult::Ok).await {
        tunnel.flows().remove(id);
        return end(&flow, &e.into());
    }
    run(tunnel, flow, (send, recv), rx, Some(socket), None).await;
}

async fn run(
    tunnel: &Tunnel,
    flow: Arc<Flow>,
    (mut send, mut recv): (SendStream, RecvStream),
    mut rx: mpsc::Receiver<Queued>,
    socket: Option<Arc<UdpSocket>>,
    answer_timeout: Option<Duration>,
) {
    let id = send.id();
    let stats = tunnel.flows().stats().clone();
    let ended = tokio::select! {
        () = flow.done().cancelled() => FlowEnd::Closed,
        e = write_packets(&mut send, &mut rx, &stats) => e,
        e = read_packets(&mut recv, &flow, &stats, answer_timeout) => e,
        e = pump_socket(socket.as_deref(), tunnel.conn(), &flow) => e,
    };
    tunnel.flows().remove(id);
    if matches!(ended, FlowEnd::Refused(_)) {
        UdpStats::bump(&stats.flows_refused);
    }
    // Finishing (not resetting) lets packets already written reach the peer, whose reader
    // then sees the end and ends its side of the flow.
    let _ = send.finish();
    let _ = recv.stop(VarInt::from_u32(close_code::NORMAL));
    end(&flow, &ended);
}

fn end(flow: &Flow, why: &FlowEnd) {
    flow.done().cancel();
    debug!(reason = %why, "flow ended");
}

/// Writes the packets queued for the stream, each behind its length.
async fn write_packets(send: &mut SendStream, rx: &mut mpsc::Receiver<Queued>, stats: &UdpStats) -> FlowEnd {
    while let Some(queued) = rx.recv().await {
        let Ok(header) = packet_header(queued.payload.len()) else {
            continue;
        };
        let mut chunks = [Bytes::copy_from_slice(&header), queued.payload.clone()];
        if let Err(e) = send.write_all_chunks(&mut chunks).await {
            return FlowEnd::Write(e);
        }
        UdpStats::bump(&stats.stream_packets_sent);
    }
    FlowEnd::Closed
}

/// Reads the answer (on the opener's side), then the packets the peer sends on the stream,
/// and delivers them.
async fn read_packets(
    recv: &mut RecvStream,
    flow: &Flow,
    stats: &UdpStats,
    answer_timeout: Option<Duration>,
) -> FlowEnd {
    if let Some(timeout) = answer_timeout {
        match tokio::time::timeout(timeout, read_frame::<OpenResult, _>(recv)).await {
            Ok(Ok(OpenResult::Ok)) => flow.confirm(),
            Ok(Ok(refused)) => return FlowEnd::Refused(refused),
            Ok(Err(e)) => return e.into(),
            Err(_) => return FlowEnd::Timeout,
        }
    }
    loop {
        let mut header = [0u8; PACKET_HEADER_LEN];
        match recv.read(&mut header).await {
            Ok(None) => return FlowEnd::PeerFinished,
            Ok(Some(0)) => continue,
            Ok(Some(1)) => {
                if let Err(e) = recv.read_exact(&mut header[1..]).await {
                    return e.into();
                }
            }
            Ok(Some(_)) => {}
            Err(e) => return e.into(),
        }
        // Every u16 is a valid length; the allocation is at most 64 KiB.
        let mut payload = vec![0u8; packet_len(header)];
        if let Err(e) = recv.read_exact(&mut payload).await {
            return e.into();
        }
        flow.touch();
        UdpStats::bump(&stats.stream_packets_received);
        match flow.sink().send(&payload).await {
            Ok(_) => flow.delivered(payload.len()),
            Err(e) => {
                debug!(error = %e, "dropping a packet the local socket would not take");
                UdpStats::bump(&stats.dropped_socket);
            }
        }
    }
}

/// Sends what arrives on the flow's own socket into the tunnel. Pending forever for flows
/// without one (their listener reads for them).
async fn pump_socket(socket: Option<&UdpSocket>, conn: &Conn, flow: &Flow) -> FlowEnd {
    let Some(socket) = socket else {
        return std::future::pending().await;
    };
    loop {
        if let Err(e) = socket.readable().await {
            return FlowEnd::Socket(e);
        }
        for _ in 0..SOCKET_BATCH {
            match try_recv_with(socket, |payload| flow.send(conn, payload)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // An ICMP error for an earlier send (nothing listens at the target yet): UDP
                // carries on, as it would without the tunnel.
                Err(e) => debug!(error = %e, "socket error"),
            }
        }
    }
}
