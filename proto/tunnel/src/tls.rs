//! Certificate fingerprints and the verifiers that pin them: a server's certificate
//! ([`PinnedCertVerifier`]) and a client's ([`FingerprintClientVerifier`], for direct
//! connections between clients).
//!
//! A fingerprint is the SHA-256 of the server certificate's DER bytes, printed as 64 hex digits
//! in colon-separated pairs. Parsing one from text is the config's job
//! (`wmproxy_config::client::parse_fingerprint`).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of `cert`.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The handshake-signature checks every verifier here makes alike: with the provider's
/// algorithms (the struct's `algorithms` field). The certificate checks are each one's own.
macro_rules! signatures_by_algorithms {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Trusts exactly the server certificate whose SHA-256 is `expected`; names and dates are not
/// checked (the pin replaces them), signatures of the handshake are.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    expected: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedCertVerifier {
    /// A verifier pinned to `expected`, using `provider`'s signature algorithms.
    pub fn new(expected: Fingerprint, provider: &CryptoProvider) -> Arc<Self> {
        Arc::new(Self { expected, algorithms: provider.signature_verification_algorithms })
    }
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = Fingerprint::of(end_entity);
        // Not secret: both fingerprints are public. A plain comparison is fine here.
        if seen == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate fingerprint {seen} does not match the pinned {}",
                self.expected
            )))
        }
    }

    signatures_by_algorithms!();
}

/// Requires a client certificate, and accepts one whose fingerprint `accepts` says yes to
/// (names and dates are not checked; signatures of the handshake are).
pub struct FingerprintClientVerifier {
    accepts: Box<dyn Fn(&Fingerprint) -> bool + Send + Sync>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl FingerprintClientVerifier {
    /// A verifier that asks `accepts`, using `provider`'s signature algorithms.
    pub fn new(accepts: impl Fn(&Fingerprint) -> bool + Send + Sync + 'static, provider: &CryptoProvider) -> Arc<Self> {
        Arc::new(Self { accepts: Box::new(accepts), algorithms: provider.signature_verification_algorithms })
    }
}

impl fmt::Debug for FingerprintClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FingerprintClientVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for FingerprintClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if (self.accepts)(&Fingerprint::of(end_entity)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General("a client certificate nobody announced".into()))
        }
    }

    signatures_by_algorithms!();
}

/// The rustls crypto provider both ends use: ring, TLS 1.3 suites only, AES-128-GCM first.
///
/// ring's default order puts AES-256-GCM first; AES-128-GCM (10 rounds instead of 14) is what
/// most QUIC stacks prefer and costs less CPU per byte, though on the 2-core loopback bench the
/// difference was within run-to-run noise. ChaCha20-Poly1305 stays for peers without AES
/// instructions.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_displays_as_colon_separated_hex() {
        let shown = Fingerprint([0xab; 32]).to_string();
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert!(shown.starts_with("ab:ab:"));
    }
}
