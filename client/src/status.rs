//! [`ClientStatus`]: what the client is doing, as its watch channel and `/status` tell it.

use wmproxy_wire::{RegisterOutcome, ServiceResult};

/// What the client is doing, published on a watch channel ([`crate::Client::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStatus {
    /// Trying to (re)connect; `last_error` is why the previous attempt failed.
    Connecting {
        /// Attempts since the last working tunnel.
        attempt: u32,
        /// The previous attempt's error, if any.
        last_error: Option<String>,
    },
    /// The tunnel is up; one result per configured service.
    Connected {
        /// Per-service registration results.
        services: Vec<ServiceResult>,
        /// What carries the tunnel: `quic`, or `tcp` (TLS over TCP, where UDP is blocked).
        transport: &'static str,
        /// The server's address, as its entry gives it.
        server: String,
    },
    /// `run` has returned; `error` is why, if it was not a requested shutdown.
    Stopped {
        /// The fatal error.
        error: Option<String>,
    },
}

impl ClientStatus {
    /// The public port of `service`, when connected and published.
    pub fn port_of(&self, service: &str) -> Option<u16> {
        let Self::Connected { services, .. } = self else {
            return None;
        };
        services.iter().find(|s| s.name == service).and_then(|s| match s.outcome {
            RegisterOutcome::Ok { port } => Some(port),
            _ => None,
        })
    }
}
