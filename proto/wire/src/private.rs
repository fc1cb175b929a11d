//! Private services: published with no public port, reachable only by *visitors*, other
//! clients of the same server that name the service and show that they may reach it.
//!
//! Who may visit is decided by the server, from what the service's client registered
//! ([`PrivateSpec`]): a [`Verifier`] derived from the service's secret, a list of client names,
//! or both (then both must hold). The secret itself never leaves either client:
//!
//! ```text
//! verifier = HMAC-SHA256(key = secret_key,
//!                        message = VERIFIER_LABEL | u8 len | client | u8 len | service)
//! ```
//!
//! The service's client registers the verifier; a visitor derives the same value from the
//! secret it was given and sends it in its [`crate::OpenStream::Visit`]; the server compares
//! the two in constant time. A verifier is bound to its client and service, so one leaked
//! from one service opens no other. Both travel only inside the authenticated tunnels.
//!
//! # Direct connections
//! A visitor may ask the server for a rendezvous instead ([`crate::OpenStream::Rendezvous`]):
//! the server admits it as a visit, then asks the service's client to punch
//! ([`crate::OpenStream::Punch`]) and tells each side the other's [`PeerInfo`]: the SHA-256 of
//! the certificate the peer will present (each client makes its own at start) and the
//! addresses to try ([`Candidates`]: the address the server sees, the next ports a sequential
//! NAT would give, and the peer's own interface addresses). The two clients then complete a
//! QUIC handshake to each other from the sockets of their tunnels, each pinning the other's
//! certificate, and the visitor opens `Visit` streams on that connection, which the service's
//! client checks against its own secret as the server would.

use std::fmt;

use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::Name;
use crate::auth::same_secret;

/// What a verifier's HMAC starts with, so that it is never equal to any other HMAC of the
/// same secret.
pub const VERIFIER_LABEL: &[u8] = b"wmproxy private service v1";

/// Most client names one private service may list in [`PrivateSpec::allow`].
pub const MAX_ALLOWED_VISITORS: usize = 64;

/// Most addresses in one [`Candidates`] list.
pub const MAX_CANDIDATES: usize = 16;

/// Addresses to try for a direct connection, at most [`MAX_CANDIDATES`] (checked while
/// decoding).
///
/// Layout: `[SocketAddr]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<std::net::SocketAddr>")]
pub struct Candidates(Vec<std::net::SocketAddr>);

impl Candidates {
    /// The first [`MAX_CANDIDATES`] of `addrs`, without repeats.
    pub fn new(addrs: impl IntoIterator<Item = std::net::SocketAddr>) -> Self {
        let mut out: Vec<std::net::SocketAddr> = Vec::new();
        for a in addrs {
            if out.len() == MAX_CANDIDATES {
                break;
            }
            if !out.contains(&a) {
                out.push(a);
            }
        }
        Self(out)
    }

    /// The addresses, in the order to try them.
    pub fn addrs(&self) -> &[std::net::SocketAddr] {
        &self.0
    }
}

impl TryFrom<Vec<std::net::SocketAddr>> for Candidates {
    type Error = String;

    fn try_from(addrs: Vec<std::net::SocketAddr>) -> Result<Self, String> {
        if addrs.len() > MAX_CANDIDATES {
            return Err(format!("more than {MAX_CANDIDATES} candidate addresses"));
        }
        Ok(Self(addrs))
    }
}

/// One side of a rendezvous, as the other side gets it: the server → the visitor after a
/// [`crate::OpenStream::Rendezvous`] was admitted, and the service's client → the server after
/// a [`crate::OpenStream::Punch`] (there, only its own interface addresses).
///
/// Layout: `32 bytes fingerprint | Candidates candidates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// SHA-256 of the certificate the peer presents on the direct connection.
    pub fingerprint: [u8; 32],
    /// Where to reach it, in the order to try.
    pub candidates: Candidates,
}
impl crate::WireMessage for PeerInfo {}

/// Who may visit a private service (TCP or UDP).
///
/// Layout: `Option<Verifier> verifier | [str] allow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateSpec {
    /// A visitor must show this (derived from the service's secret), if set.
    pub verifier: Option<Verifier>,
    /// A visitor must be one of these clients, if any are listed (at most
    /// [`MAX_ALLOWED_VISITORS`]).
    pub allow: Vec<Name>,
}

impl PrivateSpec {
    /// Whether it restricts visitors at all: a private service open to every client of the
    /// server is refused at registration.
    pub fn restricts(&self) -> bool {
        self.verifier.is_some() || !self.allow.is_empty()
    }

    /// Whether client `visitor`, showing `shown`, may visit: every restriction set must hold.
    /// The verifier is compared in constant time.
    pub fn admits(&self, visitor: &str, shown: Option<&Verifier>) -> bool {
        let secret_ok = match (&self.verifier, shown) {
            (None, _) => true,
            (Some(expected), Some(shown)) => expected.matches(shown),
            (Some(_), None) => false,
        };
        let name_ok = self.allow.is_empty() || self.allow.iter().any(|n| n.as_str() == visitor);
        secret_ok && name_ok
    }
}

/// The value a visitor shows for a private service (32 bytes on the wire). `Debug` is masked.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verifier(pub [u8; 32]);

impl Verifier {
    /// The verifier of `service` of `client` for `secret` (see the module's formula).
    pub fn derive(secret: &[u8], client: &str, service: &str) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(VERIFIER_LABEL);
        for part in [client, service] {
            // Names are at most MAX_NAME_LEN (64) bytes; the length keeps "ab"+"c" from "a"+"bc".
            ctx.update(&[u8::try_from(part.len()).unwrap_or(u8::MAX)]);
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        Self(out)
    }

    /// Whether `shown` is this verifier, in constant time.
    pub fn matches(&self, shown: &Verifier) -> bool {
        same_secret(&self.0, &shown.0)
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(MASKED)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).expect("a valid name")
    }

    #[test]
    fn a_verifier_is_bound_to_its_secret_client_and_service() {
        let v = Verifier::derive(b"s3cret", "home", "ssh");
        assert!(v.matches(&Verifier::derive(b"s3cret", "home", "ssh")));
        assert!(!v.matches(&Verifier::derive(b"s3cret!", "home", "ssh")));
        assert!(!v.matches(&Verifier::derive(b"s3cret", "home2", "ssh")));
        assert!(!v.matches(&Verifier::derive(b"s3cret", "home", "ssh2")));
        // The lengths keep the boundary between the names.
        assert!(!Verifier::derive(b"k", "ab", "c").matches(&Verifier::derive(b"k", "a", "bc")));
        assert_eq!(format!("{v:?}"), "Verifier(MASKED)");
    }

    #[test]
    fn every_restriction_set_must_hold() {
        let v = Verifier::derive(b"k", "home", "ssh");
        let secret = PrivateSpec { verifier: Some(v.clone()), allow: vec![] };
        assert!(secret.admits("anyone", Some(&v)));
        assert!(!secret.admits("anyone", None));
        assert!(!secret.admits("anyone", Some(&Verifier::derive(b"x", "home", "ssh"))));

        let names = PrivateSpec { verifier: None, allow: vec![name("office")] };
        assert!(names.admits("office", None));
        assert!(!names.admits("cafe", Some(&v)));

        let both = PrivateSpec { verifier: Some(v.clone()), allow: vec![name("office")] };
        assert!(both.admits("office", Some(&v)));
        assert!(!both.admits("office", None));
        assert!(!both.admits("cafe", Some(&v)));

        assert!(!PrivateSpec { verifier: None, allow: vec![] }.restricts());
        assert!(names.restricts() && secret.restricts());
    }
}
