//! Authenticating a Hello: the wire's judgement (version, then the message and its name), then
//! the proof against the client's token, in constant time; a wrong proof is counted by the
//! failed-login throttle, which answers `Throttled` once its key has failed too often.

use std::net::SocketAddr;
use std::time::Instant;

use wmproxy_config::{Secret, ServerConfig};
use wmproxy_wire::{AuthToken, Name, RejectReason, ResumeSecret, auth, hello};

use crate::sessions::Sessions;

/// A Hello with a correct proof.
#[derive(Debug)]
pub(crate) struct Proven {
    /// The client's name.
    pub name: Name,
    /// The resume secret it showed, if any.
    pub resume: Option<ResumeSecret>,
    /// It authenticated with the shared token, not a `[[clients]]` entry of its own.
    pub shared: bool,
    /// The token it proved: its session is installed only if the running config still has it
    /// for this name.
    pub token: Secret,
    /// How many servers the client keeps a tunnel to (its Hello says).
    pub servers: u32,
}

/// Who sent the Hello `body`, if it may come in. `config` is the snapshot this handshake took.
pub(crate) fn authenticate(
    conn: &wmproxy_tunnel::Conn,
    peer: SocketAddr,
    body: &[u8],
    sessions: &Sessions,
    config: &ServerConfig,
) -> Result<Proven, RejectReason> {
    let hello = hello::judge(body)?;
    let mut exporter = [0u8; auth::EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, auth::EXPORTER_LABEL, auth::exporter_context(&hello.client_name))
        .map_err(|_| RejectReason::Invalid("TLS exporter unavailable".into()))?;
    // Unknown names are checked against a dummy token so both paths take the same time.
    let entry = config.client(&hello.client_name);
    let token = match entry {
        Some(entry) => AuthToken::new(entry.token.expose()),
        None => AuthToken::new(&b"wmproxy-no-such-client"[..]),
    };
    // The proof first: a correct one is never refused for failures, its own or anyone else's.
    if let Some(entry) = entry.filter(|_| auth::verify(&token, &exporter, &hello.proof)) {
        sessions.throttle().record_success(peer.ip(), &hello.client_name);
        let shared = !config.clients.contains_key(hello.client_name.as_str());
        let token = entry.token.clone();
        return Ok(Proven { name: hello.client_name, resume: hello.resume, shared, token, servers: hello.servers });
    }
    match sessions.throttle().record_failure(peer.ip(), &hello.client_name, Instant::now()) {
        Ok(()) => Err(RejectReason::BadCredentials),
        Err(wait) => {
            Err(RejectReason::Throttled { retry_after_secs: wait.as_secs().try_into().unwrap_or(u32::MAX).max(1) })
        }
    }
}
