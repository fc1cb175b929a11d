//! The valid range of every number in a config file, checked at load with the key and the line.
//! A value outside its range would at best misbehave and at worst panic the process at run
//! time (an `Instant` plus a huge duration overflows; hyper asserts on a header buffer under
//! 8 KiB), so `validate` refuses it instead. docs/configuration.md lists the same ranges.
//!
//! The values are checked as parsed (so a config built in code is checked too); the line is
//! found by looking the key's path up in toml's span-keeping tree of the source, when there is
//! one.

use std::ops::RangeInclusive;

use toml::de::{DeTable, DeValue};

use crate::{ConfigError, invalid};

/// One step of a key's path in the file.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step<'a> {
    /// A key of a table.
    Key(&'a str),
    /// An element of an array (`[[services]]`, `expect_status`).
    Index(usize),
}

pub(crate) use Step::{Index, Key};

/// Server: tunnels connected at once, and connections not yet authenticated (in all, and per
/// address).
pub const MAX_CLIENTS: RangeInclusive<u64> = 1..=100_000;
/// Streams (or UDP flows) one client may have open at once, and flows in all.
pub const MAX_STREAMS: RangeInclusive<u64> = 1..=1_000_000;
/// Handshake, authentication, stream-open, header-read and proxy handshake timeouts, seconds.
pub const TIMEOUT_SECS: RangeInclusive<u64> = 1..=300;
/// Idle time of a UDP flow, seconds.
pub const UDP_IDLE_SECS: RangeInclusive<u64> = 1..=86_400;
/// Seconds between QUIC probes of a client on the TCP transport.
pub const PROBE_SECS: RangeInclusive<u64> = 1..=3_600;
/// The drain grace period, seconds.
pub const DRAIN_GRACE_SECS: RangeInclusive<u64> = 0..=3_600;
/// The largest HTTP request head the vhost reads (hyper needs at least 8 KiB).
pub const MAX_HEADER_BYTES: RangeInclusive<u64> = 8_192..=1_048_576;
/// The client's `[limits] keep_alive_secs`: below the tunnel's 30 s idle timeout.
pub const KEEP_ALIVE_SECS: RangeInclusive<u64> = 1..=25;
/// A group's `max_fails`.
pub const MAX_FAILS: RangeInclusive<u64> = 0..=1_000;
/// A group's `fail_timeout_secs`.
pub const FAIL_TIMEOUT_SECS: RangeInclusive<u64> = 0..=86_400;
/// A group's `retries`.
pub const RETRIES: RangeInclusive<u64> = 0..=16;
/// A group member's `weight`.
pub const WEIGHT: RangeInclusive<u64> = 1..=1_000;
/// A health check's `interval_ms`.
pub const CHECK_INTERVAL_MS: RangeInclusive<u64> = 10..=3_600_000;
/// A health check's `timeout_ms`.
pub const CHECK_TIMEOUT_MS: RangeInclusive<u64> = 1..=600_000;
/// A health check's `rise` and `fall`.
pub const RISE_FALL: RangeInclusive<u64> = 1..=100;
/// An HTTP status in `expect_status`.
pub const HTTP_STATUS: RangeInclusive<u64> = 100..=599;

/// Checks that the number at `path` is in `range`; the error names the key and its line.
pub(crate) fn within(
    src: &str,
    path: &[Step<'_>],
    value: impl Into<u64>,
    range: RangeInclusive<u64>,
) -> Result<(), ConfigError> {
    let value = value.into();
    if range.contains(&value) {
        return Ok(());
    }
    let key = path.iter().filter_map(|s| if let Key(k) = s { Some(*k) } else { None }).collect::<Vec<_>>().join(".");
    let unit = |n: u64| match key.rsplit('_').next() {
        Some("secs") if n == 1 => " second",
        Some("secs") => " seconds",
        Some("ms") => " ms",
        Some("bytes") => " bytes",
        _ => "",
    };
    let (start, end) = (*range.start(), *range.end());
    let m = format!("must be at least {start}{} and at most {end}{}, got {value}", unit(start), unit(end));
    Err(invalid(src, &key, offset(src, path), &m))
}

/// Where the value at `path` is written in `src`, if it is.
fn offset(src: &str, path: &[Step<'_>]) -> Option<usize> {
    let doc = DeTable::parse(src).ok()?;
    let mut at = doc.span().start;
    let mut value = DeValue::Table(doc.into_inner());
    for step in path {
        let next = match (step, &value) {
            (Key(key), DeValue::Table(table)) => table.get(*key)?.clone(),
            (Index(i), DeValue::Array(items)) => items.get(*i)?.clone(),
            _ => return None,
        };
        at = next.span().start;
        value = next.into_inner();
    }
    Some(at)
}
/// `[vhost] user_requests_per_minute` (`0`: off).
pub const REQUESTS_PER_MINUTE: RangeInclusive<u64> = 0..=6_000_000;
/// `[vhost] user_request_burst`.
pub const REQUEST_BURST: RangeInclusive<u64> = 1..=100_000;
/// `[[services]] bandwidth_limit`, bytes per second (1 KB/s to 100 GB/s).
pub const BANDWIDTH: RangeInclusive<u64> = 1024..=100 << 30;
/// `[[services]] idle_timeout_secs` (a week at most).
pub const RELAY_IDLE_SECS: RangeInclusive<u64> = 1..=604_800;
