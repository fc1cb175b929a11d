//! Is the peer there? The server asks a live session when another machine presents its name:
//! it opens a stream with [`OpenStream::Ping`], and the client answers `Ok` ([`answer`]). Any
//! reaction within the timeout counts (an answer, the stream's end, a reset), for a peer that
//! reacts at all is alive; silence, or a lost connection, is not.

use std::time::Duration;

use quinn::ReadError;

use crate::conn::{Conn, SendStream};
use wmproxy_wire::{OpenResult, OpenStream};

use crate::stream::write_frame;

/// Whether the peer of `conn` reacts to a ping within `timeout`.
pub async fn probe(conn: &Conn, timeout: Duration) -> bool {
    let asked = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        write_frame(&mut send, &OpenStream::Ping).await.ok()?;
        let _ = send.finish();
        let mut byte = [0u8; 1];
        match recv.read(&mut byte).await {
            Err(ReadError::ConnectionLost(_)) => None,
            _ => Some(()),
        }
    };
    matches!(tokio::time::timeout(timeout, asked).await, Ok(Some(())))
}

/// Answers a ping on the stream it came on.
pub async fn answer(mut send: SendStream) {
    if write_frame(&mut send, &OpenResult::Ok).await.is_ok() {
        let _ = send.finish();
    }
}
