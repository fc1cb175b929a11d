//! Dials a `host:port` target on behalf of the other end, and says why it failed in the
//! protocol's own terms ([`OpenResult`]).

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::wire::{MAX_TARGET_LEN, OpenResult};

/// Resolves `target` and connects to the first address `permits` accepts, within `timeout` for
/// the lookup and for each connect. Sets `TCP_NODELAY` on success.
///
/// Failures: `NotAllowed` when every resolved address is refused by `permits`; `Refused`,
/// `Timeout` or `Unreachable` from the last address tried.
pub async fn dial(target: &str, timeout: Duration, permits: impl Fn(IpAddr) -> bool) -> Result<TcpStream, OpenResult> {
    if target.len() > MAX_TARGET_LEN {
        return Err(OpenResult::Unreachable);
    }
    let addrs: Vec<_> = match tokio::time::timeout(timeout, tokio::net::lookup_host(target)).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(_)) => return Err(OpenResult::Unreachable),
        Err(_) => return Err(OpenResult::Timeout),
    };
    let mut last = if addrs.is_empty() { OpenResult::Unreachable } else { OpenResult::NotAllowed };
    for addr in addrs.into_iter().filter(|a| permits(a.ip())) {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => last = OpenResult::Refused,
            Ok(Err(_)) => last = OpenResult::Unreachable,
            Err(_) => last = OpenResult::Timeout,
        }
    }
    Err(last)
}
