//! The ws↔tcp bridge both ends use: a WebSocket connection carries one byte stream as binary
//! messages, each way, until either side ends. WebSocket has no half-close: the end of one
//! side's bytes sends a Close, which ends both directions.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Largest read turned into one message.
const CHUNK: usize = 16 * 1024;

/// Largest WebSocket frame and message the bridge accepts from a peer (tungstenite's defaults,
/// 16 and 64 MiB, would let one peer make us buffer that much). A peer that sends more loses
/// the connection, and nothing of the message is carried. The bridge's own messages are at
/// most 16 KiB.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// The WebSocket settings both ends' bridges use: [`MAX_MESSAGE`] for frames and messages.
pub fn config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Copies `io`'s bytes into binary messages of `ws` and every message's payload into `io`,
/// until both directions end (a close, or the stream's end, ends its direction). Returns the
/// bytes carried (from the WebSocket, to the WebSocket).
pub async fn bridge<S, T>(ws: WebSocketStream<S>, io: T) -> (u64, u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let from_ws = async {
        let mut total = 0u64;
        while let Some(Ok(message)) = ws_rx.next().await {
            let payload = match message {
                Message::Binary(b) => b,
                Message::Text(t) => t.as_bytes().to_vec().into(),
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&payload).await.is_err() {
                break;
            }
            total += payload.len() as u64;
        }
        let _ = wr.shutdown().await;
        total
    };
    let to_ws = async {
        let mut total = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        return total;
                    }
                    total += n as u64;
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
        total
    };
    tokio::join!(from_ws, to_ws)
}
