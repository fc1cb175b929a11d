//! The TCP transport: a tunnel over TLS 1.3 on TCP, for networks that block UDP. Streams are
//! HTTP/2 streams (the `h2` crate: per-stream and whole-connection flow control, resets with a
//! code, bounded headers), datagrams and the close code ride the link stream
//! ([`wmproxy_wire::link`]), and a keepalive ping measures the round trip and finds a dead
//! peer.
//!
//! HTTP/2 lets only its client open streams, and a tunnel needs both ends to. So the end that
//! accepted the TCP connection (the wmproxy server) is the HTTP/2 client, the **opener**: it
//! opens the streams of users of exposed services natively, one request each, as the
//! hot path. The other end (the wmproxy client) is the HTTP/2 server, the **offerer**: it
//! opens a stream by answering one of the *offers*, requests the opener keeps outstanding for
//! that purpose (a few before authentication, more after; [`TcpConn::open_up`]).
//!
//! ```text
//! opener (wmproxy server, h2 client)          offerer (wmproxy client, h2 server)
//!   POST /link   ───────────────────────────▶  link stream: datagrams, close frames
//!   POST /stream ───────────────────────────▶  a stream the opener opened (answered 200)
//!   POST /offer  ───────────────────────────▶  parked; answering it (200) opens a stream
//!                ◀─────────────────────────── the offerer's stream  (back to the opener)
//! ```
//!
//! Limits: the offerer takes the opener's streams only while it has permits for them
//! ([`TcpConn::allow_streams`], the tunnel's `streams` limit), and offers only up to
//! [`MAX_OFFERS`]; the opener keeps at most that many offers out. Windows are the QUIC
//! transport's ([`crate::transport::TransportTuning`]), and before the peer has authenticated the
//! opener's whole-connection window is [`crate::transport::PRE_AUTH_WINDOW`].

mod drive;
mod link;
mod state;
mod stream;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, SendDatagramError};
use tokio::sync::{Mutex, Semaphore, mpsc};

pub use drive::{offerer, opener};
pub use stream::{TcpRecv, TcpSend};

use self::link::Closing;
use self::state::State;
use super::ExportError;

/// Offers an offerer keeps at most (and an opener keeps out at most).
pub const MAX_OFFERS: usize = 64;

/// The largest HTTP/2 frame either end sends: fewer frames (and fewer TLS records) per byte
/// than h2's 16 KiB default.
const MAX_FRAME: u32 = 64 * 1024;

/// The header block either end accepts: a request here is a method and a path.
const MAX_HEADERS: u32 = 4 * 1024;

/// Exporter label of the secret a tunnel's proofs derive from
/// ([`TcpConn::export_keying_material`]).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-wmproxy-tcp-transport";

/// The error of setting up the HTTP/2 layer, or of its connection.
pub use h2::Error as MuxError;

/// The secret a TLS session exports for [`TcpConn::export_keying_material`].
pub fn exported_secret<D>(tls: &rustls::ConnectionCommon<D>) -> Result<[u8; 32], rustls::Error> {
    tls.export_keying_material([0u8; 32], EXPORTER_LABEL, None)
}

/// What the HTTP/2 layer of the TCP transport is built with.
#[derive(Debug, Clone, Copy)]
pub struct TcpSettings {
    /// Per-stream receive window, bytes.
    pub stream_window: u32,
    /// Whole-connection receive window, bytes.
    pub connection_window: u32,
    /// How often a keepalive ping goes out.
    pub keep_alive: Duration,
    /// A peer that answers no ping for this long is gone.
    pub idle_timeout: Duration,
}

/// One tunnel's connection over TLS on TCP. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TcpConn {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The opener's request handle (`None` at an offerer).
    requests: Option<h2::client::SendRequest<Bytes>>,
    /// Offers to answer (an offerer's; an opener's stays empty).
    offers: Mutex<mpsc::Receiver<drive::Offer>>,
    /// Streams the peer opened. Unbounded, but each entry is a live stream the peer may have
    /// open only within its limit (the offerer's permits, the opener's offers).
    inbound: Mutex<mpsc::UnboundedReceiver<(TcpSend, TcpRecv)>>,
    datagrams_out: mpsc::Sender<Bytes>,
    datagrams_in: Mutex<mpsc::Receiver<Bytes>>,
    /// The offerer's permits for streams the opener opens.
    peer_streams: Arc<Semaphore>,
    /// The opener's: commands to its driver (windows, offers).
    commands: Option<mpsc::UnboundedSender<drive::Command>>,
    closing: Arc<Closing>,
    state: Arc<State>,
    remote: SocketAddr,
    secret: ExportedSecret,
}

/// The TLS session's exported secret; its `Debug` shows nothing of it.
pub(super) struct ExportedSecret(pub [u8; 32]);

impl std::fmt::Debug for ExportedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportedSecret(…)")
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: as quinn does, the connection closes.
        self.state.end(ConnectionError::LocallyClosed);
    }
}

impl TcpConn {
    /// Opens a bidirectional stream: natively at the opener; at the offerer by answering an
    /// offer (waiting for one if none is out).
    pub async fn open_bi(&self) -> Result<(TcpSend, TcpRecv), ConnectionError> {
        let lost = || self.inner.state.lost();
        if self.inner.state.is_ended() {
            return Err(lost());
        }
        let state = self.inner.state.clone();
        match &self.inner.requests {
            Some(requests) => {
                let ready = tokio::select! {
                    ready = requests.clone().ready() => ready,
                    () = state.ended() => return Err(lost()),
                };
                let mut requests = ready.map_err(|_| lost())?;
                let (response, send) =
                    requests.send_request(drive::request(drive::STREAM), false).map_err(|_| lost())?;
                Ok((TcpSend::new(send, state.clone()), TcpRecv::waiting(response, state)))
            }
            None => {
                loop {
                    let offer = tokio::select! {
                        offer = async { self.inner.offers.lock().await.recv().await } => offer,
                        () = state.ended() => None,
                    };
                    let drive::Offer { body, mut respond } = offer.ok_or_else(lost)?;
                    // An offer the opener gave up on meanwhile fails here: take the next.
                    if let Ok(send) = respond.send_response(http::Response::new(()), false) {
                        return Ok((TcpSend::new(send, state.clone()), TcpRecv::open(body, state, None)));
                    }
                }
            }
        }
    }

    /// The next stream the peer opens.
    pub async fn accept_bi(&self) -> Result<(TcpSend, TcpRecv), ConnectionError> {
        let state = &self.inner.state;
        tokio::select! {
            stream = async { self.inner.inbound.lock().await.recv().await } => stream.ok_or_else(|| state.lost()),
            () = state.ended() => Err(state.lost()),
        }
    }

    /// Queues a datagram for the link stream, or drops it if the queue is full.
    pub fn send_datagram(&self, datagram: Bytes) -> Result<(), SendDatagramError> {
        if let Some(reason) = self.inner.state.reason() {
            return Err(SendDatagramError::ConnectionLost(reason));
        }
        if datagram.len() > wmproxy_wire::link::MAX_LINK_DATAGRAM {
            return Err(SendDatagramError::TooLarge);
        }
        let _ = self.inner.datagrams_out.try_send(datagram);
        Ok(())
    }

    /// The next datagram from the peer.
    pub async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        let state = &self.inner.state;
        tokio::select! {
            datagram = async { self.inner.datagrams_in.lock().await.recv().await } => datagram.ok_or_else(|| state.lost()),
            () = state.ended() => Err(state.lost()),
        }
    }

    /// Closes the connection: the peer reads `code` and `reason` from the link stream.
    pub fn close(&self, code: u32, reason: &[u8]) {
        if self.inner.state.is_ended() {
            return;
        }
        self.inner.state.closing(ConnectionError::LocallyClosed);
        self.inner.closing.request(code, String::from_utf8_lossy(reason).into_owned());
    }

    /// Why the connection ended, or `None` while it is up.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.inner.state.reason()
    }

    /// Completes when the connection ends, with why.
    pub async fn closed(&self) -> ConnectionError {
        self.inner.state.ended().await;
        self.inner.state.lost()
    }

    /// The peer's address (the TCP peer: a proxy's, when the connection came through one).
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote
    }

    /// The round trip the last keepalive ping took.
    pub fn rtt(&self) -> Duration {
        self.inner.state.rtt()
    }

    /// Keying material for `label` and `context`, derived (HKDF-SHA256) from the secret this
    /// connection's TLS session exported under [`EXPORTER_LABEL`]: bound to the session as an
    /// RFC 5705 export is.
    pub fn export_keying_material(&self, out: &mut [u8], label: &[u8], context: &[u8]) -> Result<(), ExportError> {
        struct Len(usize);
        impl ring::hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let prk = ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, &self.inner.secret.0);
        let info = [label, &[0u8], context];
        let okm = prk.expand(&info, Len(out.len())).map_err(|_| ExportError)?;
        okm.fill(out).map_err(|_| ExportError)
    }

    /// The peer has authenticated: the opener gives it the full windows and `offers` offers
    /// (at most [`MAX_OFFERS`]). Does nothing at an offerer.
    pub fn open_up(&self, settings: &TcpSettings, offers: usize) {
        if let Some(commands) = &self.inner.commands {
            let _ = commands.send(drive::Command::OpenUp { settings: *settings, offers: offers.min(MAX_OFFERS) });
        }
    }

    /// Lets the opener have `streams` more streams open at once (an offerer's limit, which
    /// starts at none).
    pub fn allow_streams(&self, streams: usize) {
        self.inner
            .peer_streams
            .add_permits(streams.min(Semaphore::MAX_PERMITS - self.inner.peer_streams.available_permits()));
    }
}
