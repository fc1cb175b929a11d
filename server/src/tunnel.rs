//! One tunnel, from the QUIC handshake to its end: authenticate the Hello, register services,
//! then serve the control stream and the client's data streams until either side leaves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use quinn::{RecvStream, SendStream, VarInt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, info, info_span, warn};
use wmproxy_proto::stream::{StreamError, read_frame, read_frame_body, write_frame};
use wmproxy_proto::wire::{
    self, ControlReply, ControlRequest, Hello, HelloReply, PROTOCOL_VERSION, RejectReason, auth, close_code, frame,
};

use crate::server::Shared;
use crate::sessions::Session;
use crate::{connect, publish};

/// Why a tunnel ended abnormally. Logged; never sent to the peer beyond the close reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelError {
    #[error("QUIC handshake failed: {0}")]
    Quic(#[from] quinn::ConnectionError),
    #[error("handshake or registration timed out")]
    Timeout,
    #[error("control stream: {0}")]
    Control(#[from] StreamError),
    #[error("rejected: {0}")]
    Rejected(RejectReason),
    #[error("unexpected control message after registration")]
    Unexpected,
}

impl From<tokio::time::error::Elapsed> for TunnelError {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        Self::Timeout
    }
}

/// Serves one incoming connection to its end. Runs in its own task, under the span
/// `tunnel{peer, client}`.
pub(crate) async fn serve(incoming: quinn::Incoming, shared: Arc<Shared>, shutdown: CancellationToken) {
    match run(incoming, &shared, &shutdown).await {
        Ok(()) => info!("tunnel closed"),
        Err(TunnelError::Rejected(reason)) => warn!(%reason, "client rejected"),
        Err(e) => warn!(error = %e, "tunnel ended"),
    }
}

async fn run(incoming: quinn::Incoming, shared: &Arc<Shared>, shutdown: &CancellationToken) -> Result<(), TunnelError> {
    let peer = incoming.remote_address();
    let handshake_timeout = shared.config().limits.handshake_timeout();
    let deadline = tokio::time::Instant::now() + handshake_timeout;

    let handshake = tokio::time::timeout_at(deadline, async {
        let conn = incoming.await?;
        let (name, control) = authenticate(&conn, peer, shared).await.inspect_err(|e| {
            let code =
                if matches!(e, TunnelError::Rejected(_)) { close_code::REJECTED } else { close_code::PROTOCOL_ERROR };
            conn.close(VarInt::from_u32(code), e.to_string().as_bytes());
        })?;
        Ok::<_, TunnelError>((conn, name, control))
    })
    .await
    .map_err(TunnelError::from)
    .and_then(|r| r);
    let (conn, name, (mut send, mut recv)) = handshake.inspect_err(|e| {
        let failed = match e {
            TunnelError::Rejected(_) => &shared.metrics.auth_failures,
            _ => &shared.metrics.handshakes_failed,
        };
        failed.inc();
    })?;
    Span::current().record("client", name.as_str());
    let _counted = shared.metrics.tunnel();

    let limits = &shared.config().limits;
    let (session, replaced) = shared.sessions.insert(&name, conn.clone(), limits, shared.udp_stats.clone());
    if let Some(old) = replaced {
        info!("replacing the previous session of this client");
        old.shut(&shared.router, close_code::REPLACED, "replaced by a newer connection of this client").await;
    }
    info!("client authenticated");
    let datagrams = session.flows.clone().run(conn.clone(), limits.udp_flow_idle_timeout());
    session.listeners.spawn(datagrams.in_current_span());

    let result = async {
        let request = tokio::time::timeout_at(deadline, read_frame::<ControlRequest, _>(&mut recv)).await??;
        let ControlRequest::Register { services } = request else {
            return Err(TunnelError::Unexpected);
        };
        register(services, &mut send, &session, shared).await?;

        tokio::select! {
            () = shutdown.cancelled() => {
                drain(&session, &shared.config().limits).await;
                Ok(())
            }
            reason = conn.closed() => {
                info!(%reason, "client disconnected");
                Ok(())
            }
            result = control_loop((&mut send, &mut recv), &session, shared) => result,
            () = accept_streams(&session, shared) => Ok(()),
        }
    }
    .await;

    let (code, reason) = match &result {
        Ok(()) if shutdown.is_cancelled() => (close_code::NORMAL, "server shutting down".to_owned()),
        Ok(()) => (close_code::NORMAL, "server closing the tunnel".to_owned()),
        Err(e) => (close_code::PROTOCOL_ERROR, e.to_string()),
    };
    session.shut(&shared.router, code, &reason).await;
    shared.sessions.remove(&session);
    result
}

/// Reads the Hello and answers it. Returns the client's name and the control stream.
async fn authenticate(
    conn: &quinn::Connection,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<(String, (SendStream, RecvStream)), TunnelError> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let body = read_frame_body(&mut recv).await?;
    let verdict = judge_hello(conn, peer, shared, &body);
    match verdict {
        Ok(name) => {
            write_frame(&mut send, &HelloReply::Welcome { protocol_version: PROTOCOL_VERSION }).await?;
            Ok((name, (send, recv)))
        }
        Err(reason) => {
            write_frame(&mut send, &HelloReply::Reject(reason.clone())).await?;
            let _ = send.finish();
            // Let the Reject reach the client before the connection closes.
            let _ = send.stopped().await;
            Err(TunnelError::Rejected(reason))
        }
    }
}

fn judge_hello(
    conn: &quinn::Connection,
    peer: SocketAddr,
    shared: &Shared,
    body: &[u8],
) -> Result<String, RejectReason> {
    let version = frame::peek_protocol_version(body).map_err(|e| RejectReason::Invalid(e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(RejectReason::VersionMismatch { server: PROTOCOL_VERSION, client: version });
    }
    let hello: Hello = frame::decode_body(body).map_err(|e| RejectReason::Invalid(e.to_string()))?;
    wmproxy_config::check_name(&hello.client_name).map_err(RejectReason::Invalid)?;

    let now = Instant::now();
    let ip = peer.ip();
    if let Err(wait) = shared.throttle().check(ip, now) {
        return Err(RejectReason::Throttled { retry_after_secs: wait.as_secs().try_into().unwrap_or(u32::MAX).max(1) });
    }
    let mut exporter = [0u8; auth::EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, auth::EXPORTER_LABEL, auth::exporter_context(&hello.client_name))
        .map_err(|_| RejectReason::Invalid("TLS exporter unavailable".into()))?;
    // Unknown names are checked against a dummy token so both paths take the same time.
    let token = match shared.config().client(&hello.client_name) {
        Some(entry) => wire::AuthToken::new(entry.token.expose()),
        None => wire::AuthToken::new(&b"wmproxy-no-such-client"[..]),
    };
    let known = shared.config().client(&hello.client_name).is_some();
    if auth::verify(&token, &exporter, &hello.proof) && known {
        shared.throttle().record_success(ip);
        Ok(hello.client_name)
    } else {
        shared.throttle().record_failure(ip, now);
        Err(RejectReason::BadCredentials)
    }
}

/// The server is stopping: stops this session's public ports at once, then waits (up to the
/// grace period) until every connection through the tunnel, either way, has finished.
async fn drain(session: &Session, limits: &wmproxy_config::Limits) {
    session.cancel.cancel();
    let all = limits.max_streams_per_client;
    let finished = async {
        let _public = session.streams.acquire_many(all).await;
        let _forwards = session.forwards.acquire_many(all).await;
    };
    match tokio::time::timeout(limits.drain_grace(), finished).await {
        Ok(()) => info!("tunnel drained"),
        Err(_) => warn!("connections still open after the drain grace period; closing the tunnel"),
    }
}

/// Publishes `services` (the whole set the client wants now) and answers with the results.
async fn register(
    services: Vec<wmproxy_proto::wire::ServiceSpec>,
    send: &mut SendStream,
    session: &Arc<Session>,
    shared: &Arc<Shared>,
) -> Result<(), TunnelError> {
    let allowance = shared.config().client(&session.name).map(|c| c.allow_ports.clone()).unwrap_or_default();
    let results = publish::register(services, &allowance, session, shared).await;
    session.services.lock().unwrap_or_else(|p| p.into_inner()).clone_from(&results);
    write_frame(send, &ControlReply::Registered { results }).await?;
    Ok(())
}

/// After the first registration the client sends health reports, and a new `Register` when
/// its config was reloaded; anything else, or the stream's end, ends the tunnel.
async fn control_loop(
    (send, recv): (&mut SendStream, &mut RecvStream),
    session: &Arc<Session>,
    shared: &Arc<Shared>,
) -> Result<(), TunnelError> {
    loop {
        match read_frame::<ControlRequest, _>(recv).await {
            Ok(ControlRequest::Register { services }) => {
                info!(services = services.len(), "client registers again (its config was reloaded)");
                register(services, send, session, shared).await?;
            }
            Ok(ControlRequest::Health { service, ok, latency_us }) => {
                shared.metrics.check_latency.observe(f64::from(latency_us) / 1e6);
                let backend = session.memberships().get(&service).map(|(_, b)| b.clone());
                match backend {
                    Some(b) => b.report(ok, std::time::Duration::from_micros(u64::from(latency_us))),
                    None => debug!(%service, "health report for a service in no group; ignored"),
                }
            }
            Ok(_) => return Err(TunnelError::Unexpected),
            Err(StreamError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Accepts the client's data streams (local forwards, TCP or UDP) until the connection ends.
/// quinn's stream limit bounds how many are open at once; [`connect::serve`] applies the
/// per-kind limits once the header says which kind a stream is.
async fn accept_streams(session: &Arc<Session>, shared: &Arc<Shared>) {
    while let Ok((send, recv)) = session.conn.accept_bi().await {
        let span = info_span!("stream", id = %send.id(), target = tracing::field::Empty, flow = tracing::field::Empty);
        shared.tracker.spawn(connect::serve(send, recv, session.clone(), shared.clone()).instrument(span));
    }
    debug!("no more streams from the client");
}
