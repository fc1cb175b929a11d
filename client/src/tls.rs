//! The client's TLS configuration: how it trusts the server. One of a pinned fingerprint, a CA
//! file, or the system roots; there is no mode that trusts anything.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use wmproxy_config::ServerTrust;
use wmproxy_tunnel::tls::{Fingerprint, PinnedCertVerifier};
use wmproxy_tunnel::transport::TransportTuning;
use wmproxy_wire::{ALPN, ALPN_TCP};

use crate::error::TlsSetupError;

/// Builds the quinn client config for `trust`.
pub fn quic_client_config(trust: &ServerTrust) -> Result<quinn::ClientConfig, TlsSetupError> {
    let tls = rustls_config(trust, ALPN)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(TlsSetupError::Quic)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(TransportTuning::default().to_config()));
    Ok(config)
}

/// Builds the TLS config of the TCP transport for `trust`: the same trust and TLS 1.3, ALPN
/// [`ALPN_TCP`].
pub fn tcp_client_config(trust: &ServerTrust) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    Ok(Arc::new(rustls_config(trust, ALPN_TCP)?))
}

fn rustls_config(trust: &ServerTrust, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsSetupError> {
    let provider = wmproxy_tunnel::tls::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsSetupError::Rustls)?;
    let mut tls = match trust {
        ServerTrust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(PinnedCertVerifier::new(Fingerprint(*fp), &provider))
            .with_no_client_auth(),
        ServerTrust::CaFile(path) => builder.with_root_certificates(ca_roots(path)?).with_no_client_auth(),
        ServerTrust::SystemRoots => builder.with_root_certificates(system_roots()?).with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

fn ca_roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let pem = |source| TlsSetupError::CaFile { path: path.to_owned(), source };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(pem)? {
        roots.add(cert.map_err(pem)?).map_err(|source| TlsSetupError::CaCert { path: path.to_owned(), source })?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::EmptyCaFile(path.to_owned()));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsSetupError::NoSystemRoots(found.errors.len()));
    }
    Ok(roots)
}
