//! The certificate a client presents on direct connections, and the TLS configs of both sides.
//!
//! Each client makes a self-signed certificate when it starts (no file, no CA): its SHA-256
//! fingerprint goes to the peer through the server's rendezvous, and each side pins the other's.
//! The visitor verifies the service's client with a pinned server-certificate verifier; the
//! service's client requires a client certificate and accepts only fingerprints it was told of
//! by a `Punch` ([`Expected`]; `FingerprintClientVerifier`), so nobody else completes a
//! handshake with it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::Instant;
use wmproxy_tunnel::tls::{Fingerprint, FingerprintClientVerifier, PinnedCertVerifier};
use wmproxy_tunnel::transport::TransportTuning;
use wmproxy_wire::{ALPN_DIRECT, Name};

use crate::error::TlsSetupError;

/// The name in the certificate and the one a visitor asks for (the pin replaces checking it).
pub const PEER_NAME: &str = "wmproxy-peer";

/// A quiet direct connection sends a keep-alive this often: below every NAT's UDP mapping
/// timeout, and often enough that a dead path is noticed within [`IDLE`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// A direct connection with nothing heard for this long is closed: new connections then go
/// through the server until a new one is up.
pub const IDLE: Duration = Duration::from_secs(6);

/// Visitor connections (and UDP flows) a direct connection may carry at once.
pub const DIRECT_STREAMS: u32 = 1024;

/// How long a punched-for visitor may take to connect.
pub const EXPECT_FOR: Duration = Duration::from_secs(30);

/// Most visitors expected at once; the oldest is forgotten first.
const MAX_EXPECTED: usize = 64;

/// Direct handshakes in progress at once (a service's side); more are refused.
pub const MAX_HANDSHAKES: usize = 16;

/// `Punch`es being carried out at once (each sends handshakes to at most 16 addresses for a
/// few seconds); more are refused as busy.
pub const MAX_PUNCHES: usize = 16;

/// This client's certificate and key for direct connections.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    /// SHA-256 of `cert`.
    pub fingerprint: Fingerprint,
}

impl Identity {
    /// A fresh self-signed certificate.
    pub fn generate() -> Result<Self, TlsSetupError> {
        let generated =
            rcgen::generate_simple_self_signed(vec![PEER_NAME.to_owned()]).map_err(TlsSetupError::Generate)?;
        let cert = generated.cert.der().clone();
        let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
            .map_err(|e| TlsSetupError::Rustls(rustls::Error::General(e.to_owned())))?;
        Ok(Self { fingerprint: Fingerprint::of(&cert), cert, key })
    }

    /// The config of a service's client: accepts direct connections from the visitors in
    /// `expected`.
    pub fn server_config(&self, expected: Arc<Expected>) -> Result<quinn::ServerConfig, TlsSetupError> {
        let provider = wmproxy_tunnel::tls::crypto_provider();
        let verifier = FingerprintClientVerifier::new(move |fp| expected.find(fp).is_some(), &provider);
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsSetupError::Rustls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(TlsSetupError::Rustls)?;
        tls.alpn_protocols = vec![ALPN_DIRECT.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(TlsSetupError::Quic)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(Arc::new(transport(DIRECT_STREAMS)));
        // Handshakes waiting to be accepted, and what they may buffer: a few visitors at once.
        config.max_incoming(MAX_HANDSHAKES).incoming_buffer_size(64 * 1024).incoming_buffer_size_total(1 << 20);
        Ok(config)
    }

    /// The config of a visitor connecting to the peer whose certificate is `peer`.
    pub fn client_config(&self, peer: Fingerprint) -> Result<quinn::ClientConfig, TlsSetupError> {
        let provider = wmproxy_tunnel::tls::crypto_provider();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsSetupError::Rustls)?
            .dangerous()
            .with_custom_certificate_verifier(PinnedCertVerifier::new(peer, &provider))
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(TlsSetupError::Rustls)?;
        tls.alpn_protocols = vec![ALPN_DIRECT.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(TlsSetupError::Quic)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        // The visitor opens every stream; the service's client opens none.
        config.transport_config(Arc::new(transport(0)));
        Ok(config)
    }
}

/// A direct connection's transport: the tunnel's windows, keep-alives every [`KEEP_ALIVE`],
/// closed after [`IDLE`] without a packet, and `streams` for the peer to open.
fn transport(streams: u32) -> quinn::TransportConfig {
    let tuning =
        TransportTuning { max_concurrent_streams: streams, keep_alive: Some(KEEP_ALIVE), ..Default::default() };
    let mut config = tuning.to_config();
    if streams == 0 {
        config.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
    }
    // 6 s fits a QUIC idle timeout (up to 2^62 ms): the conversion cannot fail.
    config.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE).ok());
    // Punched paths are new: start from a short RTT guess so that a lost first packet is sent
    // again within a few hundred milliseconds, not a second.
    config.initial_rtt(Duration::from_millis(100));
    config
}

/// A visitor a `Punch` announced: its certificate, who it is and what it visits, and until
/// when it may connect.
#[derive(Debug, Clone)]
pub struct Visitor {
    pub fingerprint: Fingerprint,
    pub name: Name,
    pub service: Name,
    pub until: Instant,
}

/// The visitors that may connect now (at most [`MAX_EXPECTED`], each for [`EXPECT_FOR`]).
#[derive(Debug, Default)]
pub struct Expected(Mutex<Vec<Visitor>>);

impl Expected {
    /// Expects `visitor` (replacing an earlier entry of the same certificate).
    pub fn add(&self, visitor: Visitor) {
        let mut all = self.lock();
        let now = Instant::now();
        all.retain(|v| v.until > now && v.fingerprint != visitor.fingerprint);
        if all.len() >= MAX_EXPECTED {
            all.remove(0);
        }
        all.push(visitor);
    }

    /// Whether any visitor is expected now.
    pub fn any(&self) -> bool {
        let now = Instant::now();
        self.lock().iter().any(|v| v.until > now)
    }

    /// The visitor whose certificate is `fingerprint`, if it is expected now.
    pub fn find(&self, fingerprint: &Fingerprint) -> Option<Visitor> {
        let now = Instant::now();
        self.lock().iter().find(|v| v.fingerprint == *fingerprint && v.until > now).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Visitor>> {
        // Whole pushes and removes only: a poisoned lock still holds a consistent list.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
