//! The tasks of the link stream ([`wmproxy_wire::link`]): one writes this end's datagrams and,
//! last, its close frame; the other reads the peer's, delivering datagrams and taking in the
//! close code. Datagrams keep their UDP nature at the edges: a full queue drops them.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::{ApplicationClose, ConnectionError, VarInt};
use tokio::sync::{Notify, mpsc};
use wmproxy_wire::link::{self, LinkFrame};

use super::state::State;
use super::stream::{TcpRecv, TcpSend};

/// Datagrams queued each way. One more is dropped, as a full UDP buffer drops it.
pub(super) const DATAGRAM_QUEUE: usize = 1024;

/// Bytes of datagrams written to the link stream at once.
const WRITE_BATCH: usize = 64 * 1024;

/// How long a closing end waits for its peer to drop the connection after its close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// This end's close request: code and reason, once.
#[derive(Debug, Default)]
pub(super) struct Closing {
    request: OnceLock<(u32, String)>,
    asked: Notify,
}

impl Closing {
    /// Asks the writer to send the close frame; only the first request counts.
    pub fn request(&self, code: u32, reason: String) {
        if self.request.set((code, reason)).is_ok() {
            self.asked.notify_one();
        }
    }

    /// Completes once a close is asked, with its code and reason.
    pub async fn asked(&self) -> &(u32, String) {
        loop {
            if let Some(request) = self.request.get() {
                return request;
            }
            self.asked.notified().await;
        }
    }
}

/// Writes datagrams from `outgoing` until a close is asked, then the close frame; then waits
/// (at most [`CLOSE_LINGER`]) for the peer to drop the connection, and drops it.
pub(super) async fn write(
    mut send: TcpSend,
    mut outgoing: mpsc::Receiver<Bytes>,
    closing: Arc<Closing>,
    state: Arc<State>,
) {
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = state.stopped() => return,
            &(code, ref reason) = closing.asked() => {
                link::encode_close(&mut buf, code, reason);
                if send.write_chunk(Bytes::from(std::mem::take(&mut buf))).await.is_ok() {
                    let _ = send.finish();
                    let _ = tokio::time::timeout(CLOSE_LINGER, state.stopped()).await;
                }
                state.stop();
                return;
            }
            datagram = outgoing.recv() => {
                let Some(datagram) = datagram else { return };
                let _ = link::encode_datagram(&mut buf, &datagram);
                while buf.len() < WRITE_BATCH {
                    let Ok(datagram) = outgoing.try_recv() else { break };
                    let _ = link::encode_datagram(&mut buf, &datagram);
                }
                if send.write_chunk(Bytes::from(std::mem::take(&mut buf))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads the peer's link frames: datagrams into `incoming` (dropped when it is full), and its
/// close frame, which ends the connection with the peer's code and reason. Garbage, or the
/// link's end without a close frame, ends it too.
pub(super) async fn read(mut recv: TcpRecv, incoming: mpsc::Sender<Bytes>, state: Arc<State>) {
    let mut buf = BytesMut::new();
    loop {
        loop {
            match link::decode(&buf) {
                Ok(Some((LinkFrame::Datagram(datagram), used))) => {
                    // Copied, not split off `buf`: a queued datagram that shared a 64 KiB read
                    // buffer would keep all of it alive (1,024 of them, 64 MiB).
                    let _ = incoming.try_send(Bytes::copy_from_slice(datagram));
                    buf.advance(used);
                }
                Ok(Some((LinkFrame::Close { code, reason }, _))) => {
                    let close =
                        ApplicationClose { error_code: VarInt::from_u32(code), reason: Bytes::copy_from_slice(reason) };
                    state.end(ConnectionError::ApplicationClosed(close));
                    return;
                }
                Ok(None) => break,
                Err(e) => {
                    let error = quinn_proto::TransportError {
                        code: quinn_proto::TransportErrorCode::PROTOCOL_VIOLATION,
                        frame: None,
                        reason: format!("link stream: {e}"),
                    };
                    state.end(ConnectionError::TransportError(error));
                    return;
                }
            }
        }
        // At most one partial frame (3 + 65,535 bytes) waits in `buf` when a chunk is added.
        let chunk = tokio::select! {
            () = state.stopped() => return,
            chunk = recv.read_chunk() => chunk,
        };
        match chunk {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) | Err(_) => {
                state.end(ConnectionError::Reset);
                return;
            }
        }
    }
}
