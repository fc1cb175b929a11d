//! Authenticating a Hello: the wire's judgement (version, then the message and its name), the
//! failed-login throttle, then the proof against the client's token, in constant time.

use std::net::SocketAddr;
use std::time::Instant;

use wmproxy_config::ServerConfig;
use wmproxy_wire::{AuthToken, Name, RejectReason, auth, hello};

use crate::sessions::Sessions;

/// The name of the client whose Hello `body` is, if it may come in. `config` is the snapshot
/// this handshake took.
pub(crate) fn authenticate(
    conn: &quinn::Connection,
    peer: SocketAddr,
    body: &[u8],
    sessions: &Sessions,
    config: &ServerConfig,
) -> Result<Name, RejectReason> {
    let hello = hello::judge(body)?;
    let now = Instant::now();
    let ip = peer.ip();
    if let Err(wait) = sessions.throttle().check(ip, now) {
        return Err(RejectReason::Throttled { retry_after_secs: wait.as_secs().try_into().unwrap_or(u32::MAX).max(1) });
    }
    let mut exporter = [0u8; auth::EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, auth::EXPORTER_LABEL, auth::exporter_context(&hello.client_name))
        .map_err(|_| RejectReason::Invalid("TLS exporter unavailable".into()))?;
    // Unknown names are checked against a dummy token so both paths take the same time.
    let entry = config.client(&hello.client_name);
    let token = match entry {
        Some(entry) => AuthToken::new(entry.token.expose()),
        None => AuthToken::new(&b"wmproxy-no-such-client"[..]),
    };
    if auth::verify(&token, &exporter, &hello.proof) && entry.is_some() {
        sessions.throttle().record_success(ip);
        Ok(hello.client_name)
    } else {
        sessions.throttle().record_failure(ip, now);
        Err(RejectReason::BadCredentials)
    }
}
