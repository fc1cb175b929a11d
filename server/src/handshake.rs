//! A tunnel's first moments, before it is trusted: the TLS handshake and the Hello, with a
//! place in the pre-auth budget (`preauth`), the short `auth_timeout`, one stream and a small
//! window (`TransportTuning::to_pre_auth_config`). Then, for a correct proof: a place in
//! `max_clients` (or `ServerFull`), the full windows, and the Welcome.
//!
//! A peer that is evicted, too slow, or sends a QUIC datagram before it has authenticated is
//! closed with the reason.

use std::net::SocketAddr;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, sleep_until};
use wmproxy_config::ServerConfig;
use wmproxy_tunnel::stream::{read_frame_body, write_frame};
use wmproxy_wire::{HelloReply, Name, PROTOCOL_VERSION, RejectReason};

use crate::auth;
use crate::preauth::Slot;
use crate::tunnel::{TunnelError, Tunnels};

/// A client that proved who it is.
#[derive(Debug)]
pub(crate) struct Authenticated {
    pub conn: Connection,
    pub name: Name,
    /// The control stream, the Welcome sent.
    pub control: (SendStream, RecvStream),
    /// Its place in `max_clients`, held while the tunnel lives.
    pub permit: OwnedSemaphorePermit,
}

/// What the Hello got: a name and a client place, or the reason it was refused.
type Verdict = Result<(Name, OwnedSemaphorePermit), RejectReason>;

impl Tunnels {
    /// Runs the handshake of `incoming` under `config`, the snapshot the tunnel took. The
    /// proof must be in by `auth_deadline`; the caller bounds the whole.
    pub(crate) async fn handshake(
        &self,
        incoming: quinn::Incoming,
        slot: Slot,
        config: &ServerConfig,
        auth_deadline: Instant,
    ) -> Result<Authenticated, TunnelError> {
        let peer = incoming.remote_address();
        let connecting = incoming.accept()?;
        let conn = tokio::select! {
            conn = connecting => conn?,
            () = slot.evicted() => return Err(TunnelError::Evicted),
            () = sleep_until(auth_deadline) => return Err(TunnelError::AuthTimeout),
        };
        let judged = tokio::select! {
            judged = self.judge(&conn, peer, config) => judged,
            () = slot.evicted() => Err(TunnelError::Evicted),
            () = sleep_until(auth_deadline) => Err(TunnelError::AuthTimeout),
            datagram = conn.read_datagram() => Err(datagram.map_or_else(TunnelError::from, |_| TunnelError::EarlyDatagram)),
        };
        drop(slot);
        let answered = match judged {
            Ok((Ok((name, permit)), mut send, recv)) => {
                self.tuning.open_up(&conn);
                write_frame(&mut send, &HelloReply::Welcome { protocol_version: PROTOCOL_VERSION }).await?;
                Ok(Authenticated { conn: conn.clone(), name, control: (send, recv), permit })
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

    /// Reads the Hello on the first stream and judges it: the proof, then a place in
    /// `max_clients`.
    async fn judge(
        &self,
        conn: &Connection,
        peer: SocketAddr,
        config: &ServerConfig,
    ) -> Result<(Verdict, SendStream, RecvStream), TunnelError> {
        let (send, mut recv) = conn.accept_bi().await?;
        let body = read_frame_body(&mut recv).await?;
        let verdict = auth::authenticate(conn, peer, &body, &self.sessions, config).and_then(|name| {
            let permit = self.clients.clone().try_acquire_owned().map_err(|_| RejectReason::ServerFull)?;
            Ok((name, permit))
        });
        Ok((verdict, send, recv))
    }
}
