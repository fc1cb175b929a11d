//! Local forwards: a local listener whose connections leave from the server toward a target.

use std::time::Duration;

use quinn::Connection;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};
use wmproxy_proto::datastream;
use wmproxy_proto::wire::OpenStream;

use crate::expose::STREAM_OPEN_TIMEOUT;

/// Pause after a failed `accept` (EMFILE and the like) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts local connections until `shutdown`; each rides the current tunnel, if any (without
/// one it is closed at once rather than left hanging).
pub async fn serve(
    listener: TcpListener,
    target: String,
    tunnel: watch::Receiver<Option<Connection>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let Some(conn) = tunnel.borrow().clone() else {
            warn!(%peer, "no tunnel to the server right now; closing the connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let header = OpenStream::Connect { target: target.clone(), peer_addr: peer };
        let span = info_span!("stream", %peer);
        tracker.spawn(
            async move {
                match datastream::open_and_relay(&conn, &header, tcp, STREAM_OPEN_TIMEOUT).await {
                    Ok(stats) => debug!(up = stats.tcp_to_quic, down = stats.quic_to_tcp, "forward finished"),
                    Err(e) => debug!(error = %e, "forward ended without data or aborted"),
                }
            }
            .instrument(span),
        );
    }
}
