//! Auto mode on the TCP transport asks QUIC again, every `limits.quic_probe_interval_secs`: one
//! QUIC handshake with the server, closed at once. When one completes, UDP gets through again
//! and the client moves its tunnel back to QUIC (`TunnelEnd::QuicBack`); the connections in
//! flight finish on the TCP tunnel.

use std::time::Duration;

use tracing::debug;

use crate::handshake::{QUIC_ANSWER_WITHIN, quic_endpoint};

/// What a probe needs: the QUIC setup and where the server is.
#[derive(Debug, Clone)]
pub struct QuicProbe {
    /// The client's QUIC config.
    pub quic: quinn::ClientConfig,
    /// `server_addr`.
    pub server_addr: String,
    /// The TLS name of the server.
    pub server_name: String,
    /// Time between probes.
    pub interval: Duration,
}

impl QuicProbe {
    /// Completes once a QUIC handshake with the server completes.
    pub async fn answered(&self) {
        loop {
            tokio::time::sleep(self.interval).await;
            match self.try_once().await {
                Ok(()) => return,
                Err(why) => debug!(%why, "QUIC still gets no answer; staying on TCP"),
            }
        }
    }

    async fn try_once(&self) -> Result<(), String> {
        let (addr, endpoint) = quic_endpoint(&self.server_addr).await.map_err(|e| e.to_string())?;
        let connecting =
            endpoint.connect_with(self.quic.clone(), addr, &self.server_name).map_err(|e| e.to_string())?;
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
}
