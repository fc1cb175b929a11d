//! Before authentication (issue 13, items 1 and 2): what a peer that has proven nothing can
//! hold, and how failed logins are throttled.
//!
//! - `budget`: unauthenticated connections have their own small budget, a share per address,
//!   a short deadline, one stream and a small window; a crowd of silent peers never locks a
//!   real client out.
//! - `tcp`: the TCP transport's port: the same budget, deadline and share per address, and
//!   garbage instead of TLS closed at once.
//! - `throttle`: failed logins are counted by (source prefix, client name) after the proof, so
//!   a guesser behind the same NAT never locks the real client out.

mod budget;
mod tcp;
mod throttle;
