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
    /// A limit an end enforces (this end's, or the far end's when it answers `Busy`), or a
    /// bug: nobody's health is to blame.
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
            OpenResult::Refused
            | OpenResult::Unreachable
            | OpenResult::Timeout
            | OpenResult::UnknownService
            | OpenResult::Offline
            | OpenResult::Reset => Self::Backend,
            // The user asked for a target the far end's policy forbids, or visited a service
            // without its secret.
            OpenResult::NotAllowed | OpenResult::Forbidden => Self::User,
            // The far end's own limit: not the backend's health, nor the tunnel's.
            OpenResult::Busy => Self::Internal,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_blames_the_backend_the_user_or_a_limit() {
        let backend = [
            OpenResult::Refused,
            OpenResult::Unreachable,
            OpenResult::Timeout,
            OpenResult::UnknownService,
            OpenResult::Reset,
        ];
        for result in backend {
            assert_eq!(Side::of_refusal(result), Side::Backend, "{result}");
        }
        assert_eq!(Side::of_refusal(OpenResult::NotAllowed), Side::User);
        // A group must not eject a backend because its client is busy.
        assert_eq!(Side::of_refusal(OpenResult::Busy), Side::Internal);
    }
}
