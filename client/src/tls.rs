//! The client's TLS configuration: how it trusts the server. One of a pinned fingerprint, a CA
//! file, or the system roots; there is no mode that trusts anything.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use wmproxy_config::ServerTrust;
use wmproxy_proto::tls::{Fingerprint, PinnedCertVerifier};
use wmproxy_proto::transport::TransportTuning;
use wmproxy_proto::wire::ALPN;

use crate::error::ClientError;

/// Builds the quinn client config for `trust`.
pub fn quic_client_config(trust: &ServerTrust) -> Result<quinn::ClientConfig, ClientError> {
    let provider = wmproxy_proto::tls::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut tls = match trust {
        ServerTrust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(PinnedCertVerifier::new(Fingerprint(*fp), &provider))
            .with_no_client_auth(),
        ServerTrust::CaFile(path) => builder.with_root_certificates(ca_roots(path)?).with_no_client_auth(),
        ServerTrust::SystemRoots => builder.with_root_certificates(system_roots()?).with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(TransportTuning::default().to_config()));
    Ok(config)
}

fn ca_roots(path: &Path) -> Result<RootCertStore, ClientError> {
    let bad = |reason: String| ClientError::Tls(format!("CA file {}: {reason}", path.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in file".into()));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, ClientError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(ClientError::Tls(format!("no usable system root certificates ({} errors)", found.errors.len())));
    }
    Ok(roots)
}
