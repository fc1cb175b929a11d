//! A tunnel's first moments, before it is trusted: the transport's handshake (QUIC, or TLS on
//! TCP with HTTP/2 over it) and the Hello, with a
//! place in the pre-auth budget (`preauth`), the short `auth_timeout`, one stream and a small
//! window (`TransportTuning::to_pre_auth_config`). Then, for a correct proof, the full windows
//! and a seat: the client's session, installed under its name, with a place in `max_clients`.
//!
//! A name has one machine. A live session of the name is replaced at once when the client
//! shows that session's resume secret or the session's connection is closed; otherwise it is
//! pinged (`wmproxy_tunnel::probe`), and if it answers within [`PROBE_TIMEOUT`] it keeps the
//! name and the newcomer is refused `NameInUse`. A replacing session takes the old one's place
//! in `max_clients`, so a client coming back to a full server is not refused.
//!
//! A peer that is evicted, too slow, or sends a QUIC datagram before it has authenticated is
//! closed with the reason.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info};
use wmproxy_config::ServerConfig;
use wmproxy_tunnel::conn::tcp;
use wmproxy_tunnel::stream::{read_frame_body, write_frame};
use wmproxy_tunnel::{Conn, RecvStream, SendStream, probe, transport};
use wmproxy_wire::{ALPN_TCP, HelloReply, RejectReason};

use crate::auth::{self, Proven};
use crate::preauth::Slot;
use crate::sessions::{Refused, Seat, Session, Sessions};
use crate::tunnel::{TunnelError, Tunnels};

/// How long a live session has to answer a ping when another connection presents its name.
/// Generous: a wrong "dead" hands a live client's name to whoever asked.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a seat is tried again when another connection of the name came in meanwhile.
const SEAT_ATTEMPTS: usize = 3;

/// A connection that came in, before its transport's handshake.
#[derive(Debug)]
pub(crate) enum Arrival {
    /// A QUIC connection attempt.
    Quic(Box<quinn::Incoming>),
    /// A TCP connection to the TCP transport's port, from this address, and the port's TLS setup.
    Tcp(TcpStream, SocketAddr, Arc<rustls::ServerConfig>),
}

/// A client that proved who it is, seated: its session is installed under its name.
#[derive(Debug)]
pub(crate) struct Authenticated {
    pub conn: Conn,
    pub session: Arc<Session>,
    /// The session of the same name it replaced, to be ended.
    pub replaced: Option<Arc<Session>>,
    /// The control stream; the Welcome is the caller's to send.
    pub control: (SendStream, RecvStream),
}

impl Tunnels {
    /// Runs the handshake of `incoming` under `config`, the snapshot the tunnel took. The
    /// proof must be in by `auth_deadline`; the caller bounds the whole.
    pub(crate) async fn handshake(
        &self,
        arrival: Arrival,
        slot: Slot,
        config: &ServerConfig,
        auth_deadline: Instant,
    ) -> Result<Authenticated, TunnelError> {
        let peer = match &arrival {
            Arrival::Quic(incoming) => incoming.remote_address(),
            Arrival::Tcp(_, peer, _) => *peer,
        };
        let conn = tokio::select! {
            conn = self.arrive(arrival) => conn?,
            () = slot.evicted() => return Err(TunnelError::Evicted),
            () = sleep_until(auth_deadline) => return Err(TunnelError::AuthTimeout),
        };
        let judged = tokio::select! {
            judged = judge(&conn, peer, config, &self.sessions) => judged,
            () = slot.evicted() => Err(TunnelError::Evicted),
            () = sleep_until(auth_deadline) => Err(TunnelError::AuthTimeout),
            datagram = conn.read_datagram() => Err(datagram.map_or_else(TunnelError::from, |_| TunnelError::EarlyDatagram)),
        };
        drop(slot);
        let seated = match judged {
            Ok((Ok(proven), send, recv)) => {
                self.tuning.open_up(&conn, &config.limits.tunnel());
                Ok((self.seat(proven, &conn, config).await, send, recv))
            }
            Ok((Err(reason), send, recv)) => Ok((Err(reason), send, recv)),
            Err(e) => Err(e),
        };
        let answered = match seated {
            Ok((Ok((session, replaced)), send, recv)) => {
                Ok(Authenticated { conn: conn.clone(), session, replaced, control: (send, recv) })
            }
            Ok((Err(reason), mut send, _)) => {
                write_frame(&mut send, &HelloReply::Reject(reason.clone())).await?;
                let _ = send.finish();
                // Let the Reject reach the client before the connection closes.
                let _ = send.stopped().await;
                Err(TunnelError::Rejected(reason))
            }
            Err(e) => Err(e),
        };
        answered.inspect_err(|e| conn.close(VarInt::from_u32(e.close_code()), e.to_string().as_bytes()))
    }

    /// The transport's handshake: QUIC's, or TLS on TCP and the HTTP/2 layer over it.
    async fn arrive(&self, arrival: Arrival) -> Result<Conn, TunnelError> {
        match arrival {
            Arrival::Quic(incoming) => Ok(Conn::from(incoming.accept()?.await?)),
            Arrival::Tcp(tcp, peer, tls) => {
                let tls = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await.map_err(TunnelError::Tls)?;
                let (_, session) = tls.get_ref();
                if session.alpn_protocol() != Some(ALPN_TCP) {
                    return Err(TunnelError::Tls(io::Error::new(io::ErrorKind::InvalidData, "no wmproxy ALPN")));
                }
                let secret = tcp::exported_secret(session).map_err(|e| TunnelError::Tls(io::Error::other(e)))?;
                let settings = (self.tuning.tcp_settings(), transport::PRE_AUTH_WINDOW);
                let conn = tcp::opener(tls, (peer, secret), settings, &self.runtime.tracker).await?;
                Ok(Conn::from(conn))
            }
        }
    }

    /// Seats a proven client: decides about a live session of its name (see the module docs),
    /// takes a place in `max_clients` (the replaced session's, or a free one) and installs the
    /// new session. Nothing awaits after the install, so a handshake cut off by its timeout
    /// never leaves a session behind.
    async fn seat(&self, proven: Proven, conn: &Conn, config: &ServerConfig) -> Result<Seated, RejectReason> {
        let max_shared = config.limits.max_shared_clients;
        for _ in 0..SEAT_ATTEMPTS {
            let old = match self.sessions.seat(&proven.name, proven.resume.as_ref()) {
                Seat::Free => None,
                Seat::Replace(old) => Some(old),
                Seat::Contested(old) if probe::probe(old.tunnel.conn(), PROBE_TIMEOUT).await => {
                    return Err(RejectReason::NameInUse);
                }
                Seat::Contested(old) => {
                    info!("the live session of this name does not answer; it will be replaced");
                    Some(old)
                }
            };
            let place = match old.as_ref().and_then(|old| old.take_place()) {
                Some(place) => place,
                None => self.clients.clone().try_acquire_owned().map_err(|_| RejectReason::ServerFull)?,
            };
            let tunnel = self.tunnel(conn.clone());
            let session = self.sessions.create(proven.name.clone(), tunnel, (proven.shared, place), proven.servers);
            let still_valid = || self.config.snapshot().client(&proven.name).is_some_and(|e| e.token == proven.token);
            match self.sessions.install(&session, (old.map(|old| old.id), max_shared as usize), still_valid) {
                Ok(replaced) => return Ok((session, replaced)),
                Err(Refused::SharedFull) => return Err(RejectReason::SharedTokenFull { max: max_shared }),
                Err(Refused::Revoked) => {
                    info!("a reload revoked this client's token while it was being seated");
                    return Err(RejectReason::BadCredentials);
                }
                Err(Refused::Raced) => debug!("another connection of this name came in meanwhile; deciding again"),
            }
        }
        Err(RejectReason::NameInUse)
    }
}

/// A seated client's session, and the session it replaced.
type Seated = (Arc<Session>, Option<Arc<Session>>);

/// Reads the Hello on the first stream and judges it.
async fn judge(
    conn: &Conn,
    peer: SocketAddr,
    config: &ServerConfig,
    sessions: &Sessions,
) -> Result<(Result<Proven, RejectReason>, SendStream, RecvStream), TunnelError> {
    let (send, mut recv) = conn.accept_bi().await?;
    let body = read_frame_body(&mut recv).await?;
    Ok((auth::authenticate(conn, peer, &body, sessions, config), send, recv))
}
