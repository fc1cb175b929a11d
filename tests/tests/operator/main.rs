//! What a new operator trips over (issue 19): what the ends log, count and report, and how
//! they read their config. Each module is one part of the issue; every test here installs the
//! binary's log capture ([`wmproxy_tests::logs`]) and picks out its own events.
//!
//! - `init` (issue 18): the starter configs of `init` connect as written.
//! - `metrics`: `last_reload_success` at start; a peer leaving during the handshake is
//!   counted, at debug.
//! - `now`: `GET /now` on both ends reads back as an equal config.
//! - `startup`: every listener either end opens is logged with its address.
//! - `status`: vhost services and HTTP groups show their host names and paths, in `/status`
//!   and in the log.
//! - `traffic`: proxies and forwards in the access log, `/metrics` and `/status` of both
//!   ends; bytes counted as they pass.
//! - `udp_blocked`: a client that gets no answer over UDP is told a firewall may block it.

mod init;
mod metrics;
mod now;
mod startup;
mod status;
mod traffic;
mod udp_blocked;
