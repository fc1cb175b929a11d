//! Auto mode on the TCP transport asks QUIC again, every `limits.quic_probe_interval_secs`: one
//! QUIC handshake with the server, closed at once. When one completes, UDP gets through again
//! and the client moves its tunnel back to QUIC (`TunnelEnd::QuicBack`); the connections in
//! flight finish on the TCP tunnel. [`answers`] is one such handshake, which failover's probes
//! of earlier servers use too.

use std::time::Duration;

use tracing::debug;
use wmproxy_config::Transport;

use crate::handshake::{Dialer, QUIC_ANSWER_WITHIN, quic_endpoint};

/// What a probe needs: the server and how often to ask.
#[derive(Debug, Clone)]
pub struct QuicProbe {
    /// The server, with the client's QUIC config for it.
    pub dialer: Dialer,
    /// Time between probes.
    pub interval: Duration,
}

impl QuicProbe {
    /// Completes once a QUIC handshake with the server completes.
    pub async fn answered(&self) {
        loop {
            tokio::time::sleep(self.interval).await;
            match quic_answers(&self.dialer).await {
                Ok(()) => return,
                Err(why) => debug!(%why, "QUIC still gets no answer; staying on TCP"),
            }
        }
    }
}

/// Whether the server completes a handshake over `transport` (auto: QUIC, then TLS on TCP),
/// closed at once; why not, if it does not.
pub(crate) async fn answers(
    dialer: &Dialer,
    transport: Transport,
    config: &wmproxy_config::ClientConfig,
) -> Result<(), String> {
    if transport != Transport::Tcp {
        match quic_answers(dialer).await {
            Ok(()) => return Ok(()),
            Err(why) if transport == Transport::Quic => return Err(why),
            Err(_) => {}
        }
    }
    let within = crate::handshake::HANDSHAKE_TIMEOUT;
    match tokio::time::timeout(within, crate::tcp_transport::connect(config, dialer)).await {
        Ok(Ok(conn)) => {
            conn.close(0u32.into(), b"probe");
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {} s", within.as_secs())),
    }
}

/// One QUIC handshake with the server, closed at once.
async fn quic_answers(dialer: &Dialer) -> Result<(), String> {
    let server = &dialer.server;
    let (addr, endpoint) = quic_endpoint(&server.addr).await.map_err(|e| e.to_string())?;
    let connecting =
        endpoint.connect_with(dialer.quic.clone(), addr, &server.server_name).map_err(|e| e.to_string())?;
    let answered = match tokio::time::timeout(QUIC_ANSWER_WITHIN, connecting).await {
        Ok(Ok(conn)) => {
            conn.close(0u32.into(), b"probe");
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {} s", QUIC_ANSWER_WITHIN.as_secs())),
    };
    endpoint.close(0u32.into(), b"probe");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    answered
}
