//! Authentication bound to the TLS session.
//!
//! The client proves it knows the token without sending it, and the proof is only valid on the
//! QUIC connection it was made for:
//!
//! ```text
//! exporter = TLS-Exporter(label = EXPORTER_LABEL, context = client_name, length = 32)
//! proof    = HMAC-SHA256(key = token, message = exporter)
//! ```
//!
//! Both ends derive the same exporter value from their TLS session (RFC 5705 / RFC 8446 §7.5);
//! an attacker who relays or records a proof cannot use it on another connection, whose exporter
//! differs. The server checks the proof with [`verify`], which runs in constant time.

use std::fmt;

use ring::hmac;
use serde::{Deserialize, Serialize};

/// Label for the TLS keying-material exporter.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-wmproxy-auth-v1";

/// Length of the exported keying material, in bytes.
pub const EXPORTER_LEN: usize = 32;

/// The exporter context for `client_name`: ties the proof to the claimed name.
pub fn exporter_context(client_name: &str) -> &[u8] {
    client_name.as_bytes()
}

/// A shared secret. Its `Debug` output is masked, so it never reaches a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(Vec<u8>);

impl AuthToken {
    /// Wraps the token's bytes.
    pub fn new(token: impl Into<Vec<u8>>) -> Self {
        Self(token.into())
    }

    /// The token's bytes, for the HMAC key.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(MASKED)")
    }
}

/// An HMAC-SHA256 proof (32 bytes on the wire). `Debug` is masked.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof(pub [u8; 32]);

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Proof(MASKED)")
    }
}

/// A session's resume secret: 32 random bytes the server gives a client in its Welcome and the
/// client shows in its next Hello. `Debug` is masked; compare with [`ResumeSecret::matches`].
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeSecret(pub [u8; 32]);

impl ResumeSecret {
    /// Whether `given` is this secret, in constant time.
    pub fn matches(&self, given: &ResumeSecret) -> bool {
        same_secret(&self.0, &given.0)
    }
}

impl fmt::Debug for ResumeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeSecret(MASKED)")
    }
}

/// Computes the proof for `token` over the connection's `exporter` value.
pub fn prove(token: &AuthToken, exporter: &[u8]) -> Proof {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.expose());
    let tag = hmac::sign(&key, exporter);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    Proof(out)
}

/// Checks `proof` in constant time.
pub fn verify(token: &AuthToken, exporter: &[u8], proof: &Proof) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.expose());
    hmac::verify(&key, exporter, &proof.0).is_ok()
}

/// Whether two secrets (for example group keys) are equal, in time that does not depend on
/// where they differ.
pub fn same_secret(expected: &[u8], given: &[u8]) -> bool {
    // HMAC both under one key and let ring compare the tags in constant time: lengths and
    // contents are hidden alike.
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"wmproxy secret comparison");
    let tag = hmac::sign(&key, expected);
    hmac::verify(&key, given, tag.as_ref()).is_ok()
}
