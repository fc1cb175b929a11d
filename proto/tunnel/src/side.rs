//! Whose fault an error is. Every error type of the tunnel, the server and the client answers
//! [`Side`] through a `side()` method; retry decisions (a group tries the next backend, the
//! client reconnects), log fields and the failure metrics read it instead of an error's text.

use std::fmt;

use wmproxy_wire::OpenResult;

/// The four parties a connection through a tunnel has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The user (or the local program that connected): it left, sent garbage, or asked for
    /// something it may not have.
    User,
    /// The service or target behind the far end: refused, unreachable, slow, or not healthy.
    Backend,
    /// The tunnel itself: the QUIC connection or stream failed, timed out, or the peer broke
    /// the protocol.
    Tunnel,
    /// This end: a limit it enforces, or a bug.
    Internal,
}

impl Side {
    /// The lower-case name, for log fields and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Backend => "backend",
            Self::Tunnel => "tunnel",
            Self::Internal => "internal",
        }
    }

    /// Whose fault a refusal from the far end is.
    pub fn of_refusal(result: OpenResult) -> Self {
        match result {
            // The far end could not reach its target, or does not serve it.
            OpenResult::Refused | OpenResult::Unreachable | OpenResult::Timeout | OpenResult::UnknownService => {
                Self::Backend
            }
            // The user asked for a target the far end's policy forbids.
            OpenResult::NotAllowed => Self::User,
            // The far end's own limit.
            OpenResult::Busy => Self::Tunnel,
            // `Ok` is not a refusal; anything newer is the far end's business.
            _ => Self::Tunnel,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
